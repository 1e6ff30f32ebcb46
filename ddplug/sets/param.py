"""Parameterisations: what a synthetic set stores (a code) and how it becomes images (a decoder).

A parameterisation fills a byte budget per class with its code and decodes the code,
differentiably, into more (or as many) images than raw pixels would give in those bytes.
Specs read like model specs: ``pixels``, ``multi:factor=2``, ``dct:keep=0.25``,
``factor:bases=8``. Every matching method optimises the code through the decoder.

- ``pixels``: one stored image per image (uint8 when saved).
- ``multi`` (IDC's multi-formation): each stored image of the original size holds
  ``factor x factor`` images at ``1/factor`` resolution, upsampled bilinearly to train on.
- ``dct`` (frequency domain, FreD-style): the lowest-frequency ``keep`` fraction of each
  image's orthonormal 2-D DCT coefficients (zig-zag order), fp16 when saved.
- ``factor`` (factorised, HaBa / low-rank style): ``bases`` basis images shared by all
  classes and per-image coefficients, fp16 when saved.

``pixels`` and ``multi`` store pixels; ``bits=B`` (1 to 8, default 8) stores each at ``2**B``
grey levels, packed, so ``pixels:bits=4`` holds 2 images in one raw image's bytes and
``multi:factor=2,bits=4`` 8.

The byte accounting is exact for the saved code: ``stored_bytes`` of the layout counts
every value at its storage dtype (pixels at their ``bits``). Hard labels are implied by the
class-ordered layout and cost nothing; learned soft labels cost ``decoded images x classes
x 4`` bytes more.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from torch import Tensor

from ddplug.errors import DdplugError
from ddplug.registry import Registry
from ddplug.settings import parse_spec

Code = dict[str, Tensor]


@dataclass(frozen=True)
class Layout:
    """How a parameterisation fills a budget: the code's tensor shapes and dtypes, and what it decodes to."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]  # storage dtype of each code tensor
    decoded_per_class: int
    bits: int = 8  # bits per stored pixel (the uint8 tensors); below 8 they are packed

    def stored_shape(self, name: str) -> tuple[int, ...]:
        """The shape the tensor ``name`` is stored in: packed pixels are one flat run of bytes."""
        if self.dtypes[name] == torch.uint8 and self.bits < 8:
            return (packed_length(math.prod(self.shapes[name]), self.bits),)
        return self.shapes[name]

    @property
    def stored_bytes(self) -> int:
        return sum(math.prod(self.stored_shape(name)) * _itemsize(self.dtypes[name]) for name in self.shapes)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class Parameterisation(ABC):
    """A code and its differentiable decoder for images of shape ``(C, H, W)``."""

    name: ClassVar[str]
    storage: ClassVar[dict[str, torch.dtype]]  # each code tensor's dtype in files (uint8: pixel-scale images)
    options: dict[str, Any]
    bits: int = 8  # grey levels of the stored pixels (uint8 tensors): 2**bits

    def __init__(self, **options: Any) -> None:
        self.options = options

    @property
    def spec(self) -> str:
        return self.name + ("" if not self.options else ":" + ",".join(f"{k}={v}" for k, v in self.options.items()))

    @abstractmethod
    def layout(self, num_classes: int, image_shape: tuple[int, int, int], budget_per_class: int) -> Layout:
        """The code that fits ``budget_per_class`` bytes per class; an error if not even one image fits."""

    @abstractmethod
    def decode(self, code: Code, image_shape: tuple[int, int, int]) -> Tensor:
        """Images ``(N, C, H, W)``, class by class as the code is, differentiable in the code."""

    @abstractmethod
    def encode(self, images: Tensor, layout: Layout) -> Code:
        """A code of ``layout`` whose decoding approximates ``images`` (``decoded_per_class``
        images of each class, class by class)."""

    @abstractmethod
    def decoded_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        """How many images a code whose tensors have ``shapes`` decodes to, known before
        anything is decoded (what a file declares is bounded by it)."""


PARAMETERISATIONS: Registry[type[Parameterisation]] = Registry("parameterisation")


def register_param(cls: type[Parameterisation]) -> type[Parameterisation]:
    """Class decorator: register a :class:`Parameterisation` under its ``name`` (once)."""
    PARAMETERISATIONS.add(cls.name, cls)
    return cls


def create_param(spec: str) -> Parameterisation:
    """The parameterisation of a spec such as ``multi:factor=2``; one clear error for a bad one.

    Examples:
        Four half-resolution images in the bytes of each stored 28x28 image, at 4 bits:

        >>> param = create_param("multi:factor=2,bits=4")
        >>> layout = param.layout(num_classes=10, image_shape=(1, 28, 28), budget_per_class=784)
        >>> layout.decoded_per_class
        8
        >>> create_param("wavelet")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: unknown parameterisation 'wavelet'; choose one of pixels, multi, dct, factor
    """
    name, options = parse_spec(spec, "parameterisation", "multi:factor=2")
    return PARAMETERISATIONS.lookup(name)(**options)


def _option(options: dict[str, Any], name: str, kind: type, default: Any, spec: str,
            check: Callable[[Any], bool], rule: str) -> Any:
    text = options.pop(name, None)
    try:
        value = default if text is None else kind(text)
    except ValueError:
        raise DdplugError(f"{spec}: {name} must be {rule}, got {text!r}") from None
    if not check(value):
        raise DdplugError(f"{spec}: {name} must be {rule}, got {text!r}")
    return value


def _no_more(name: str, options: dict[str, Any]) -> None:
    if options:
        raise DdplugError(f"{name} has no option {', '.join(options)}")


def _too_small(spec: str, budget: int, needed: int) -> DdplugError:
    return DdplugError(f"a budget of {budget} bytes per class is too small for one image of {spec} "
                       f"({needed} bytes per class): raise --ipc or choose another --param")


def _bits(options: dict[str, Any], spec: str) -> dict[str, int]:
    """The ``bits`` option of a pixel code, kept in the spec only when it is not the default 8."""
    bits = _option(options, "bits", int, 8, spec, lambda b: 1 <= b <= 8, "a whole number from 1 to 8")
    return {} if bits == 8 else {"bits": bits}


def raw_images_per_class(total_bytes: int, num_classes: int, image_shape: tuple[int, int, int]) -> int:
    """Whole raw uint8 images per class that a budget of ``total_bytes`` for the whole set
    holds: its ``ipc``, at which the random / herding / k-center baselines take no more bytes.

    Examples:
        >>> raw_images_per_class(50_000, num_classes=10, image_shape=(1, 28, 28))
        6
    """
    return total_bytes // (num_classes * math.prod(image_shape))


def _stored_images(spec: str, budget_per_class: int, image_shape: tuple[int, int, int], bits: int) -> int:
    """Whole images of ``bits``-bit pixels that fit the budget per class (an error if none)."""
    per_image_bits = math.prod(image_shape) * bits
    stored = budget_per_class * 8 // per_image_bits
    if stored < 1:
        raise _too_small(spec, budget_per_class, math.ceil(per_image_bits / 8))
    return stored


@register_param
class Pixels(Parameterisation):
    """One stored image per image: uint8, or ``bits`` per pixel packed."""

    name = "pixels"
    storage = {"images": torch.uint8}

    def __init__(self, **options: Any) -> None:
        rest = dict(options)
        bits = _bits(rest, "pixels")
        _no_more(self.name, rest)
        super().__init__(**bits)
        self.bits = bits.get("bits", 8)

    def layout(self, num_classes: int, image_shape: tuple[int, int, int], budget_per_class: int) -> Layout:
        per_class = _stored_images(self.spec, budget_per_class, image_shape, self.bits)
        return Layout({"images": (num_classes * per_class, *image_shape)}, self.storage, per_class, self.bits)

    def decode(self, code: Code, image_shape: tuple[int, int, int]) -> Tensor:
        return code["images"]

    def encode(self, images: Tensor, layout: Layout) -> Code:
        return {"images": images.clone()}

    def decoded_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        return shapes["images"][0]


@register_param
class MultiFormation(Parameterisation):
    """IDC's multi-formation: each stored image is a ``factor x factor`` mosaic of images at
    ``1/factor`` resolution, each upsampled bilinearly to the full size."""

    name = "multi"
    storage = {"images": torch.uint8}

    def __init__(self, **options: Any) -> None:
        rest = dict(options)
        factor = _option(rest, "factor", int, 2, "multi", lambda f: 1 <= f <= 8, "a whole number from 1 to 8")
        bits = _bits(rest, "multi")
        _no_more(self.name, rest)
        super().__init__(factor=factor, **bits)
        self.factor = factor
        self.bits = bits.get("bits", 8)

    def layout(self, num_classes: int, image_shape: tuple[int, int, int], budget_per_class: int) -> Layout:
        _, height, width = image_shape
        if height % self.factor or width % self.factor:
            raise DdplugError(f"{self.spec}: factor {self.factor} does not divide the image size {height}x{width}")
        stored = _stored_images(self.spec, budget_per_class, image_shape, self.bits)
        return Layout({"images": (num_classes * stored, *image_shape)}, self.storage, stored * self.factor**2,
                      self.bits)

    def decode(self, code: Code, image_shape: tuple[int, int, int]) -> Tensor:
        stored = code["images"]
        f = self.factor
        n, c, h, w = stored.shape
        tiles = stored.reshape(n, c, f, h // f, f, w // f).permute(0, 2, 4, 1, 3, 5).reshape(n * f * f, c, h // f, w // f)
        return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)

    def encode(self, images: Tensor, layout: Layout) -> Code:
        f = self.factor
        n, c, h, w = images.shape
        small = F.interpolate(images, size=(h // f, w // f), mode="area")
        mosaic = small.reshape(n // (f * f), f, f, c, h // f, w // f).permute(0, 3, 1, 4, 2, 5).reshape(n // (f * f), c, h, w)
        return {"images": mosaic.contiguous()}

    def decoded_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        return shapes["images"][0] * self.factor**2


def _dct_matrix(size: int) -> Tensor:
    """The orthonormal DCT-II matrix (scipy's), so that ``D @ x`` is the DCT of ``x``."""
    return torch.from_numpy(scipy.fft.dct(np.eye(size), axis=0, norm="ortho")).float()


@functools.lru_cache(maxsize=16)
def _dct_basis(height: int, width: int, count: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The row and column DCT matrices and the kept indices, made once per shape and device
    (every decode of every step needs them)."""
    return _dct_matrix(height).to(device), _dct_matrix(width).to(device), _zigzag(height, width, count).to(device)


def _zigzag(height: int, width: int, count: int) -> Tensor:
    """Flat indices of the ``count`` lowest-frequency coefficients (by ``u + v``, then ``u``)."""
    u = torch.arange(height).view(-1, 1)
    v = torch.arange(width).view(1, -1)
    order = torch.argsort(((u + v) * height + u).flatten(), stable=True)  # ties of (u + v, u) are none
    return order[:count].clone()


@register_param
class FrequencyDomain(Parameterisation):
    """FreD-style: each image is its lowest-frequency ``keep`` fraction of orthonormal 2-D DCT
    coefficients (per channel, fp16 when saved); the rest are zero."""

    name = "dct"
    storage = {"coefficients": torch.float16}

    def __init__(self, **options: Any) -> None:
        rest = dict(options)
        keep = _option(rest, "keep", float, 0.25, "dct", lambda k: 0 < k <= 1, "a fraction in (0, 1]")
        _no_more(self.name, rest)
        super().__init__(keep=keep)
        self.keep = keep

    def _count(self, height: int, width: int) -> int:
        return max(1, round(self.keep * height * width))

    def layout(self, num_classes: int, image_shape: tuple[int, int, int], budget_per_class: int) -> Layout:
        c, h, w = image_shape
        per_image = c * self._count(h, w) * 2
        per_class = budget_per_class // per_image
        if per_class < 1:
            raise _too_small(self.spec, budget_per_class, per_image)
        return Layout({"coefficients": (num_classes * per_class, c, self._count(h, w))}, self.storage, per_class)

    def _basis(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        return _dct_basis(h, w, self._count(h, w), device)

    def decode(self, code: Code, image_shape: tuple[int, int, int]) -> Tensor:
        coefficients = code["coefficients"]
        c, h, w = image_shape
        rows, cols, kept = self._basis(h, w, coefficients.device)
        full = coefficients.new_zeros(len(coefficients), c, h * w).index_copy(2, kept, coefficients)
        return rows.T @ full.reshape(-1, c, h, w) @ cols  # inverse of D x D^T (orthonormal)

    def encode(self, images: Tensor, layout: Layout) -> Code:
        n, c, h, w = images.shape
        rows, cols, kept = self._basis(h, w, images.device)
        spectrum = (rows @ images @ cols.T).reshape(n, c, h * w)
        return {"coefficients": spectrum[:, :, kept].contiguous()}

    def decoded_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        return shapes["coefficients"][0]


@register_param
class Factorised(Parameterisation):
    """HaBa / low-rank style: ``bases`` basis images shared by all classes, and for every
    image one coefficient per basis (both fp16 when saved); the bases take their bytes
    from the whole budget, the rest buys coefficient rows."""

    name = "factor"
    storage = {"bases": torch.float16, "coefficients": torch.float16}

    def __init__(self, **options: Any) -> None:
        rest = dict(options)
        bases = _option(rest, "bases", int, 8, "factor", lambda b: b >= 1, "a whole number of at least 1")
        _no_more(self.name, rest)
        super().__init__(bases=bases)
        self.bases = bases

    def layout(self, num_classes: int, image_shape: tuple[int, int, int], budget_per_class: int) -> Layout:
        pixels = math.prod(image_shape)
        left = num_classes * budget_per_class - self.bases * pixels * 2
        per_class = left // (num_classes * self.bases * 2) if left > 0 else 0
        if per_class < 1:
            raise _too_small(self.spec, budget_per_class,
                             math.ceil((self.bases * pixels * 2 + num_classes * self.bases * 2) / num_classes))
        return Layout({"bases": (self.bases, *image_shape), "coefficients": (num_classes * per_class, self.bases)},
                      self.storage, per_class)

    def decode(self, code: Code, image_shape: tuple[int, int, int]) -> Tensor:
        bases = code["bases"]
        return (code["coefficients"] @ bases.reshape(len(bases), -1)).reshape(-1, *image_shape)

    def encode(self, images: Tensor, layout: Layout) -> Code:
        flat = images.reshape(len(images), -1)
        # The best rank-`bases` fit (least squares) of the images: their top right singular vectors.
        _, singular, right = torch.linalg.svd(flat, full_matrices=False)
        bases = right[: self.bases] * singular[: self.bases, None].sqrt()
        coefficients = torch.linalg.lstsq(bases.T, flat.T).solution.T
        return {"bases": bases.reshape(self.bases, *images.shape[1:]).contiguous(), "coefficients": coefficients}

    def decoded_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        return shapes["coefficients"][0]


def packed_length(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take packed."""
    return -(-count * bits // 8)


def _bit_planes(values: Tensor, width: int) -> Tensor:
    """The lowest ``width`` bits of each integer in ``values``, most significant first: (N, width)."""
    shifts = torch.arange(width - 1, -1, -1, device=values.device)
    return (values.reshape(-1, 1).to(torch.int32) >> shifts) & 1


def _from_bit_planes(planes: Tensor) -> Tensor:
    """The uint8 integers whose bits, most significant first, are the rows of ``planes``."""
    shifts = torch.arange(planes.shape[1] - 1, -1, -1, device=planes.device)
    return (planes << shifts).sum(dim=1).to(torch.uint8)


def pack_levels(levels: Tensor, bits: int) -> Tensor:
    """Integer levels in ``[0, 2**bits)`` (uint8) as one flat run of bytes, ``bits`` each,
    big-endian (numpy's ``packbits`` order), on ``levels``' device.

    Examples:
        >>> import torch
        >>> packed = pack_levels(torch.tensor([3, 0, 1, 2], dtype=torch.uint8), bits=2)
        >>> packed.tolist(), unpack_levels(packed, 2, (4,)).tolist()
        ([198], [3, 0, 1, 2])
    """
    flat = _bit_planes(levels, bits).reshape(-1)
    return _from_bit_planes(F.pad(flat, (0, -len(flat) % 8)).reshape(-1, 8))


def unpack_levels(packed: Tensor, bits: int, shape: tuple[int, ...]) -> Tensor:
    """The uint8 levels of :func:`pack_levels`, in ``shape``; ValueError if the bytes do not fit it."""
    count = math.prod(shape)
    if packed.ndim != 1 or len(packed) != packed_length(count, bits):
        raise ValueError(f"{tuple(packed.shape)} bytes do not hold {count} values of {bits} bits "
                         f"({packed_length(count, bits)} bytes): the code was cut or padded")
    planes = _bit_planes(packed, 8).reshape(-1)[: count * bits].reshape(count, bits)
    return _from_bit_planes(planes).reshape(shape)


def available_params() -> list[str]:
    return list(PARAMETERISATIONS)
