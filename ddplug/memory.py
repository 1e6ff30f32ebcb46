"""Bounds on what a file or a setting may make ddplug allocate, checked before it does.

A set file, an upload or a setting declares sizes (images, image shapes, a pool of
networks); each is held to what this machine can hold before any tensor of that size
exists, so a small file or a typo costs one line, not the machine's memory.
"""

from __future__ import annotations

import math
import resource
import weakref
from collections.abc import Callable

import psutil
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

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


def peak_memory(device: torch.device | str) -> tuple[float, str]:
    """This process's peak memory so far in MiB, and what was measured: the CUDA caching
    allocator's peak on a GPU (``"cuda-allocated"``), the resident set's high-water mark on
    the CPU (``"process-max-rss"``), which covers the whole process, not one step of it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda-allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process-max-rss"


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak bytes ``fn`` allocates on ``device`` beyond what was allocated before it ran.

    On CUDA, the caching allocator's own peak. On the CPU, whose allocator keeps no
    statistics, the peak of the tensor storage that ``fn``'s ops create and keep alive
    (including what the autograd graph holds), counted op by op.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _LiveTensorBytes() as counter:
        fn()
    return counter.peak


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages that ops create while they are alive, and the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        output = func(*args, **(kwargs or {}))
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, Tensor):
                self._track(tensor.untyped_storage())
        self.peak = max(self.peak, self.live)
        return output

    def _track(self, storage: torch.UntypedStorage) -> None:
        key, size = storage._cdata, storage.nbytes()
        if key in self.tracked:  # a view or an in-place result: no new memory
            return
        self.tracked.add(key)
        self.live += size
        # Storage objects live exactly as long as their memory, so this runs when it is freed.
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.tracked.discard(key)
        self.live -= size
