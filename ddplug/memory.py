"""Bounds on what a file or a setting may make ddplug allocate, checked before it does.

A set file, an upload or a setting declares sizes (images, image shapes, a pool of
networks); each is held to what this machine can hold before any tensor of that size
exists, so a small file or a typo costs one line, not the machine's memory.
"""

from __future__ import annotations

import math

import psutil

from ddplug.errors import DdplugError

# The largest image a set may declare: C x H x W values (a 2048 x 2048 RGB image; ImageNet's are 224 x 224).
MAX_IMAGE_VALUES = 3 * 2048 * 2048
MAX_CHANNELS = 64
MAX_SIDE = 4096  # height or width: some decoders build side x side matrices (the DCT's)
# What one decoded set may take, as a fraction of the memory available now: training on it
# needs room for its augmented copies and the networks beside it.
DECODED_SHARE = 0.25


def available_bytes() -> int:
    """Memory the system can give this process now (psutil's ``available``)."""
    return int(psutil.virtual_memory().available)


def check_image_shape(shape: tuple[int, ...], what: str = "the image shape") -> None:
    """Raise :class:`DdplugError` unless ``shape`` is (C, H, W) of whole sizes within the bounds."""
    if len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise DdplugError(f"{what} {tuple(shape)} is not (C, H, W) of positive whole sizes")
    if shape[0] > MAX_CHANNELS or max(shape[1:]) > MAX_SIDE or math.prod(shape) > MAX_IMAGE_VALUES:
        raise DdplugError(f"{what} {tuple(shape)} is larger than ddplug handles (at most {MAX_CHANNELS} channels, "
                          f"sides of {MAX_SIDE} and {MAX_IMAGE_VALUES} values per image)")


def check_decoded_size(images: int, shape: tuple[int, ...], what: str, fix: str) -> None:
    """Raise :class:`DdplugError` if ``images`` float32 images of ``shape`` would take more than
    :data:`DECODED_SHARE` of the memory available now; ``fix`` says what to change."""
    needed = images * math.prod(shape) * 4
    allowed = int(available_bytes() * DECODED_SHARE)
    if needed > allowed:
        raise DdplugError(f"{what} would decode to {images} images of {'x'.join(map(str, shape))} "
                          f"({needed / 2**30:.3g} GiB as float32), over the {allowed / 2**30:.3g} GiB this machine "
                          f"can spare now: {fix}")
