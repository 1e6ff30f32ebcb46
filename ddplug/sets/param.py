"""Parameterisations: what a synthetic set stores (a code) and how it becomes images (a decoder).

A parameterisation fills a byte budget per class with its code and decodes the code,
differentiably, into more (or as many) images than raw pixels would give in those bytes.
Specs read like model specs: ``pixels``, ``multi:factor=2``, ``dct:keep=0.25``,
``factor:bases=8``. Every matching method optimises the code through the decoder.

- ``pixels``: one stored image per image (uint8 when saved).
- ``multi`` (IDC's multi-formation): each stored image of the original size holds
  ``factor x factor`` images at ``1/factor`` resolution, upsampled bilinearly to train on.
- ``dct`` (frequency domain, FreD-style): a ``keep`` fraction of each image's orthonormal
  2-D DCT coefficients, fp16 when saved: the lowest frequencies (zig-zag order), or with
  ``select=variance`` (FreD's choice) those of highest variance over each class's real
  images, named by one bit per coefficient and class, stored with the code.
- ``factor`` (factorised, HaBa / low-rank style): ``bases`` basis images shared by all
  classes and per-image coefficients, fp16 when saved.

``pixels`` and ``multi`` store pixels; ``bits=B`` (1 to 8, default 8) stores each at ``2**B``
grey levels, packed, so ``pixels:bits=4`` holds 2 images in one raw image's bytes and
``multi:factor=2,bits=4`` 8.

The byte accounting is exact for the saved code: ``stored_bytes`` of the layout counts
every value at its storage dtype (pixels at their ``bits``, masks at one bit each). Hard labels are implied by the
class-ordered layout and cost nothing; learned soft labels are stored in float16, ``decoded
images x classes x 2`` bytes, inside the budget (:func:`fit_layout` shrinks the code to make room).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
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
    dtypes: dict[str, torch.dtype]  # storage dtype of each code tensor (bool: a mask, one bit per value)
    decoded_per_class: int
    bits: int = 8  # bits per stored uint8 value (pixels, DCT levels); below 8 they are packed

    def stored_shape(self, name: str) -> tuple[int, ...]:
        """The shape the tensor ``name`` is stored in: packed pixels and masks are one flat run of bytes."""
        if self.dtypes[name] == torch.bool:
            return (packed_length(math.prod(self.shapes[name]), 1),)
        if self.dtypes[name] == torch.uint8 and self.bits < 8:
            return (packed_length(math.prod(self.shapes[name]), self.bits),)
        return self.shapes[name]

    def stored_dtype(self, name: str) -> torch.dtype:
        """The dtype the tensor ``name`` is stored in (a mask's packed bits are uint8)."""
        return torch.uint8 if self.dtypes[name] == torch.bool else self.dtypes[name]

    @property
    def stored_bytes(self) -> int:
        return sum(math.prod(self.stored_shape(name)) * _itemsize(self.stored_dtype(name)) for name in self.shapes)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class Parameterisation(ABC):
    """A code and its differentiable decoder for images of shape ``(C, H, W)``.

    Float code tensors are learned; a bool tensor is a mask chosen once by :meth:`encode`
    from the real data and then fixed (FreD's choice of coefficients).
    """

    name: ClassVar[str]
    # each code tensor's dtype in files (uint8: pixel-scale images; bool: a mask, packed to bits)
    storage: dict[str, torch.dtype]
    options: dict[str, Any]
    bits: int = 8  # grey levels of the stored pixels (uint8 tensors): 2**bits
    whitened_floats: bool = True  # a whitened set may store float32 for its storage dtypes (its values are no pixels)

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
    def encode(self, images: Tensor, layout: Layout, reference: Tensor | None = None) -> Code:
        """A code of ``layout`` whose decoding approximates ``images`` (``decoded_per_class``
        images of each class, class by class). ``reference``, when given, holds as many real
        images of every class, class by class, for a code whose masks are chosen from the
        data; without it they are chosen from ``images``."""

    @abstractmethod
    def decoded_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        """How many images a code whose tensors have ``shapes`` decodes to, known before
        anything is decoded (what a file declares is bounded by it); :class:`DdplugError`
        if the shapes do not fit together."""

    def check_code(self, code: Code, image_shape: tuple[int, int, int]) -> None:
        """Raise :class:`DdplugError` if a code read from outside cannot be decoded into
        images of ``image_shape`` as it says (a mask of another size, or keeping another
        number of values); the shapes among themselves are :meth:`decoded_count`'s to check."""

    def store(self, code: Code, mean: Sequence[float], std: Sequence[float], *, whitened: bool = False,
              packed: bool = True) -> Code:
        """The code as files and uploads hold it (the layout's stored shapes and dtypes): uint8
        pixels as ``2**bits`` levels on the [0, 1] scale of the normalisation, packed below 8
        bits; masks packed to one bit per value; the rest at their storage dtype. A whitened
        set's values are not pixels: they stay float32. ``packed=False`` leaves levels and
        masks one per value (the same values, for :meth:`rounded`, which need not pack them)."""
        stored = {}
        for name, tensor in code.items():
            dtype = self.storage[name]
            if dtype == torch.bool:
                stored[name] = pack_levels(tensor.to(torch.uint8), 1) if packed else tensor
            elif dtype == torch.uint8 and not whitened:
                levels = (denormalise(tensor, mean, std).clamp(0, 1) * (2**self.bits - 1)).round().to(torch.uint8)
                stored[name] = levels.contiguous() if self.bits == 8 or not packed else pack_levels(levels, self.bits)
            else:
                stored[name] = tensor.to(torch.float32 if whitened else dtype).contiguous()
        return stored

    def rounded(self, code: Code, mean: Sequence[float], std: Sequence[float], *, whitened: bool = False) -> Code:
        """``code`` as storing it and reading it back gives, with gradients passed straight
        through the rounding (the straight-through estimator): a method that decodes this
        learns the code that is judged, at its grey levels, rather than one that storage
        rounds afterwards. Masks pass as they are.

        Examples:
            >>> import torch
            >>> param = create_param("pixels:bits=1")
            >>> code = {"images": torch.tensor([[[[0.2, 0.7]]]], requires_grad=True)}
            >>> rounded = param.rounded(code, mean=(0.0,), std=(1.0,))["images"]
            >>> rounded.tolist(), torch.autograd.grad(rounded.sum(), code["images"])[0].tolist()
            ([[[[0.0, 1.0]]]], [[[[1.0, 1.0]]]])
        """
        with torch.no_grad():
            shapes = {name: tuple(tensor.shape) for name, tensor in code.items()}
            restored = self.restore(self.store(code, mean, std, whitened=whitened, packed=False), shapes, mean, std,
                                    packed=False)
        # restored + (x - x): the stored values exactly, and the gradient of x.
        return {name: restored[name].to(tensor.dtype) + (tensor - tensor.detach()) if tensor.is_floating_point()
                else tensor for name, tensor in code.items()}

    def stored_shapes(self, stored: Code, image_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
        """The shape of each code tensor in ``stored`` as it will be unpacked, known before
        anything is unpacked: packed pixels are whole images of ``image_shape``, a mask one
        row of H x W bits per class."""
        for name, tensor in stored.items():
            self._check_dtype(name, tensor)
        pixels = math.prod(image_shape[1:])
        shapes = {}
        for name, tensor in stored.items():
            dtype = self.storage.get(name)
            if dtype == torch.bool:
                shapes[name] = (tensor.numel() * 8 // pixels, pixels)
                if packed_length(math.prod(shapes[name]), 1) != tensor.numel():
                    raise DdplugError(f"its code.{name} holds {tensor.numel()} bytes, not whole masks of {pixels} "
                                      "bits packed (one per class)")
            elif dtype == torch.uint8 and tensor.dtype == torch.uint8 and self.bits < 8:
                shapes[name] = (tensor.numel() * 8 // self.bits // math.prod(image_shape), *image_shape)
            else:
                shapes[name] = tuple(tensor.shape)
        return shapes

    def restore(self, stored: Code, shapes: dict[str, tuple[int, ...]], mean: Sequence[float],
                std: Sequence[float], *, packed: bool = True) -> Code:
        """The code a stored one holds (:meth:`store` undone, but for its rounding): floats on
        the normalised scale, and masks. ValueError if packed bytes do not fill ``shapes``.
        ``packed=False`` takes what ``store(..., packed=False)`` gave in this process, which is
        not checked again."""
        code = {}
        for name, tensor in stored.items():
            if self.storage.get(name) == torch.bool:
                code[name] = unpack_levels(tensor.reshape(-1), 1, shapes[name]).bool() if packed else tensor.bool()
            elif tensor.dtype == torch.uint8:
                levels = tensor if self.bits == 8 or not packed else unpack_levels(tensor, self.bits, shapes[name])
                code[name] = normalise_levels(levels, mean, std, 2**self.bits - 1)
            else:
                code[name] = tensor.float()
        return code

    def _check_dtype(self, name: str, tensor: Tensor) -> None:
        """A stored tensor must be at its storage dtype (or float32: a whitened set's)."""
        if name not in self.storage:
            return
        mask = self.storage[name] == torch.bool
        wanted = torch.uint8 if mask else self.storage[name]
        if tensor.dtype != wanted and (mask or not self.whitened_floats or tensor.dtype != torch.float32):
            raise DdplugError(f"its code.{name} is {str(tensor.dtype).removeprefix('torch.')}, where {self.spec} "
                              f"stores {str(wanted).removeprefix('torch.')}")


def denormalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised images (N, C, H, W) back on the [0, 1] pixel scale (not clamped)."""
    return images * torch.tensor(std, device=images.device).view(1, -1, 1, 1) + \
        torch.tensor(mean, device=images.device).view(1, -1, 1, 1)


def normalise_levels(levels: Tensor, mean: Sequence[float], std: Sequence[float], top: int = 255) -> Tensor:
    """Normalised float32 images from uint8 pixel levels 0 to ``top``."""
    return (levels.float() / top - torch.tensor(mean, device=levels.device).view(1, -1, 1, 1)) / \
        torch.tensor(std, device=levels.device).view(1, -1, 1, 1)


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


SOFT_LABEL_DTYPE = torch.float16  # a learned soft label value in files: 2 bytes, counted in the budget


def soft_label_bytes(images: int, num_classes: int) -> int:
    """The bytes of the learned soft labels of ``images`` decoded images, one value per class."""
    return images * num_classes * _itemsize(SOFT_LABEL_DTYPE)


def fit_layout(param: Parameterisation, num_classes: int, image_shape: tuple[int, int, int], budget_per_class: int,
               *, soft_labels: bool = False) -> Layout:
    """``param``'s layout in ``budget_per_class`` bytes per class; with ``soft_labels`` the code
    shrinks until it and the soft labels of every image it decodes fit the budget together.

    Examples:
        >>> pixels = create_param("pixels:bits=2")  # 196 bytes per 28x28 image, 20 per image's labels
        >>> fit_layout(pixels, 10, (1, 28, 28), 7840).decoded_per_class
        40
        >>> fit_layout(pixels, 10, (1, 28, 28), 7840, soft_labels=True).decoded_per_class
        36
    """
    layout = param.layout(num_classes, image_shape, budget_per_class)  # the code's own error if nothing fits
    if not soft_labels:
        return layout

    def over(spend: int) -> bool:  # the code of ``spend`` bytes per class leaves no room for its labels
        try:
            layout = param.layout(num_classes, image_shape, spend)
        except DdplugError:  # too few bytes for the code alone: not over
            return False
        labels = soft_label_bytes(layout.decoded_per_class * num_classes, num_classes)
        return layout.stored_bytes + labels > budget_per_class * num_classes

    # the code's bytes grow with ``spend``: the largest spend not over the budget, by bisection
    low, high = 0, budget_per_class + 1  # not over(low), over(high)
    if not over(budget_per_class):
        low = budget_per_class
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if not over(middle) else (low, middle)
    try:
        return param.layout(num_classes, image_shape, low)
    except DdplugError:
        raise DdplugError(f"a budget of {budget_per_class} bytes per class holds no {param.spec} image with its "
                          f"learned soft labels ({soft_label_bytes(1, num_classes)} bytes per decoded image): "
                          "raise --ipc or --bytes, or drop learn_labels") from None


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

    def encode(self, images: Tensor, layout: Layout, reference: Tensor | None = None) -> Code:
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

    def encode(self, images: Tensor, layout: Layout, reference: Tensor | None = None) -> Code:
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
def _dct_basis(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The row and column DCT matrices and every coefficient's flat index in zig-zag order,
    made once per shape and device (every decode of every step needs them)."""
    return _dct_matrix(height).to(device), _dct_matrix(width).to(device), _zigzag(height, width).to(device)


def _zigzag(height: int, width: int) -> Tensor:
    """Flat indices of the coefficients from the lowest frequency up (by ``u + v``, then ``u``)."""
    u = torch.arange(height).view(-1, 1)
    v = torch.arange(width).view(1, -1)
    return torch.argsort(((u + v) * height + u).flatten(), stable=True)  # ties of (u + v, u) are none


SELECTIONS = ("low", "variance")
MASKS = ("class", "set")  # select=variance: one mask per class, or one for the set


@register_param
class FrequencyDomain(Parameterisation):
    """FreD-style: each image is a ``keep`` fraction of its orthonormal 2-D DCT coefficients
    (per channel); the rest are zero.

    ``select=low`` keeps the lowest frequencies. ``select=variance`` keeps, for each class,
    the coefficients of highest variance over the class's real images (their spectra
    averaged over channels, as FreD does; ties go to the lower frequency) and stores that
    choice as a mask of one bit per coefficient and class, counted in the budget; with
    ``mask=set`` one mask, of highest variance over all classes' images, serves every class
    (the bits of one class instead of all, and shared steps).

    Coefficients are stored as fp16, or with ``bits=B`` (1 to 8) as ``2**B`` evenly spaced
    levels, packed, with one fp16 step per kept coefficient and channel (per class under
    per-class masks, whose classes keep different ones) fitted to the largest value.

    Examples:
        >>> param = create_param("dct:keep=0.25,select=variance")
        >>> layout = param.layout(num_classes=10, image_shape=(1, 28, 28), budget_per_class=784 * 10)
        >>> layout.decoded_per_class, layout.shapes["mask"], layout.stored_shape("mask")
        (19, (10, 784), (980,))
        >>> create_param("dct:keep=0.0625,bits=4").layout(10, (1, 28, 28), 784).decoded_per_class
        31
        >>> create_param("dct:keep=0.0625,select=variance,mask=set").layout(10, (1, 28, 28), 784).shapes["mask"]
        (1, 784)
    """

    name = "dct"

    def __init__(self, **options: Any) -> None:
        rest = dict(options)
        keep = _option(rest, "keep", float, 0.25, "dct", lambda k: 0 < k <= 1, "a fraction in (0, 1]")
        select = _option(rest, "select", str, "low", "dct", lambda s: s in SELECTIONS,
                         f"one of {', '.join(SELECTIONS)}")
        bits = _option(rest, "bits", int, 0, "dct", lambda b: 1 <= b <= 8,
                       "a whole number from 1 to 8 (absent: fp16 coefficients)") if "bits" in rest else 0
        if "mask" in rest and select != "variance":
            raise DdplugError("dct: mask= chooses the masks of select=variance; add select=variance or drop mask=")
        mask = _option(rest, "mask", str, "class", "dct", lambda m: m in MASKS, f"one of {', '.join(MASKS)}")
        _no_more(self.name, rest)
        super().__init__(keep=keep, **({} if select == "low" else {"select": select}),
                         **({"mask": mask} if mask != "class" else {}), **({"bits": bits} if bits else {}))
        self.keep = keep
        self.select = select
        self.shared_mask = mask == "set"
        self.levels = 2**bits if bits else 0  # 0: fp16 coefficients
        self.bits = bits or 8
        self.whitened_floats = not bits
        self.storage = {"coefficients": torch.uint8 if bits else torch.float16,
                        **({"steps": torch.float16} if bits else {}),
                        **({"mask": torch.bool} if select == "variance" else {})}

    def _count(self, height: int, width: int) -> int:
        return max(1, round(self.keep * height * width))

    def layout(self, num_classes: int, image_shape: tuple[int, int, int], budget_per_class: int) -> Layout:
        c, h, w = image_shape
        count = self._count(h, w)
        mask_rows = 0 if self.select == "low" else 1 if self.shared_mask else num_classes
        masks = packed_length(mask_rows * h * w, 1)
        groups = max(mask_rows, 1)
        steps = groups * c * count * 2 if self.levels else 0
        left_bits = max(num_classes * budget_per_class - masks - steps, 0) * 8
        per_class = left_bits // (num_classes * c * count * (self.bits if self.levels else 16))
        if per_class < 1:
            needed = math.ceil((num_classes * c * count * (self.bits if self.levels else 16) / 8 + masks + steps)
                               / num_classes)
            raise _too_small(self.spec, budget_per_class, needed)
        shapes = {"coefficients": (num_classes * per_class, c, count),
                  **({"steps": (groups, c, count)} if steps else {}),
                  **({"mask": (mask_rows, h * w)} if masks else {})}
        return Layout(shapes, self.storage, per_class, self.bits)

    @staticmethod
    def _index(mask: Tensor | None, zigzag: Tensor, images: int, channels: int, count: int) -> Tensor:
        """Each image's and channel's kept coefficients as flat indices, (images, channels, count):
        the lowest frequencies, or each class's mask row."""
        if mask is None:
            positions = zigzag[:count].view(1, -1)
        else:  # a stable sort puts each row's kept indices first, in increasing order, with no host sync
            positions = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :count]
        return positions.repeat_interleave(images // len(positions), dim=0).unsqueeze(1).expand(images, channels, count)

    def decode(self, code: Code, image_shape: tuple[int, int, int]) -> Tensor:
        coefficients = code["coefficients"]
        n, c, count = coefficients.shape
        _, h, w = image_shape
        rows, cols, zigzag = _dct_basis(h, w, coefficients.device)
        index = self._index(code.get("mask"), zigzag, n, c, count)
        full = coefficients.new_zeros(n, c, h * w).scatter(2, index, coefficients)
        return rows.T @ full.reshape(n, c, h, w) @ cols  # inverse of D x D^T (orthonormal)

    def encode(self, images: Tensor, layout: Layout, reference: Tensor | None = None) -> Code:
        n, c, h, w = images.shape
        rows, cols, zigzag = _dct_basis(h, w, images.device)
        spectrum = (rows @ images @ cols.T).reshape(n, c, h * w)
        code: Code = {}
        if self.select == "variance":
            groups = layout.shapes["mask"][0]
            source = spectrum if reference is None else (rows @ reference @ cols.T).reshape(len(reference), c, h * w)
            variance = source.mean(dim=1).reshape(groups, -1, h * w).var(dim=1, correction=0)
            # Highest variance first; among equal variances (one image per class) the lower frequency.
            by_variance = torch.argsort(-variance[:, zigzag], dim=1, stable=True)[:, :layout.shapes["coefficients"][2]]
            code["mask"] = torch.zeros(groups, h * w, dtype=torch.bool, device=images.device).scatter_(
                1, zigzag[by_variance], True)
        index = self._index(code.get("mask"), zigzag, n, c, layout.shapes["coefficients"][2])
        return {"coefficients": spectrum.gather(2, index).contiguous(), **code}

    def decoded_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        coefficients = shapes["coefficients"]
        if len(coefficients) != 3:
            raise DdplugError(f"its coefficients have shape {coefficients}, not (images, channels, kept)")
        if self.select == "variance":
            mask = shapes["mask"]
            if self.shared_mask and tuple(mask[:1]) != (1,):
                raise DdplugError(f"its mask has shape {mask}, where {self.spec} stores one row for the whole set")
            if len(mask) != 2 or mask[0] < 1 or coefficients[0] % mask[0]:
                raise DdplugError(f"its mask has shape {mask}, not one row per class of {coefficients[0]} images")
        return coefficients[0]

    def store(self, code: Code, mean: Sequence[float], std: Sequence[float], *, whitened: bool = False,
              packed: bool = True) -> Code:
        if not self.levels:
            return super().store(code, mean, std, whitened=whitened, packed=packed)
        # Levels are fitted to the coefficients' own range, not to pixels: whitened codes too.
        coefficients = code["coefficients"].detach()
        n, c, count = coefficients.shape
        groups = len(code["mask"]) if "mask" in code else 1
        largest = coefficients.abs().reshape(groups, -1, c, count).amax(dim=1)
        # A coefficient zero everywhere gets the smallest step, so its levels decode to about 0.
        steps = (2 * largest / (self.levels - 1)).to(torch.float16).clamp_min(torch.finfo(torch.float16).tiny)
        per_image = steps.float().repeat_interleave(n // groups, dim=0)
        levels = (coefficients / per_image + (self.levels - 1) / 2).round().clamp(0, self.levels - 1).to(torch.uint8)
        stored = {"coefficients": levels.contiguous() if self.bits == 8 or not packed else pack_levels(levels, self.bits),
                  "steps": steps}
        if "mask" in code:
            stored["mask"] = pack_levels(code["mask"].to(torch.uint8), 1) if packed else code["mask"]
        return stored

    def stored_shapes(self, stored: Code, image_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
        shapes = super().stored_shapes(stored, image_shape)
        if self.levels and self.bits < 8 and "coefficients" in stored:  # packed levels: whole images of kept values
            c, h, w = image_shape
            count = self._count(h, w)
            shapes["coefficients"] = (stored["coefficients"].numel() * 8 // self.bits // (c * count), c, count)
        return shapes

    def restore(self, stored: Code, shapes: dict[str, tuple[int, ...]], mean: Sequence[float],
                std: Sequence[float], *, packed: bool = True) -> Code:
        if not self.levels:
            return super().restore(stored, shapes, mean, std, packed=packed)
        if "steps" not in stored:
            raise DdplugError(f"its code has no steps, which a {self.spec} code needs")
        coefficients, steps = stored["coefficients"], stored["steps"]
        n, c, count = shapes["coefficients"]
        groups = shapes["mask"][0] if "mask" in shapes else 1
        if tuple(steps.shape) != (groups, c, count):
            raise DdplugError(f"its steps have shape {tuple(steps.shape)}, where {self.spec} stores one per kept "
                              f"coefficient and channel{' and class' if groups > 1 else ''}: {(groups, c, count)}")
        # Steps from outside are checked; an in-process round trip's (``packed=False``, each step
        # of rounding) are store's own, and reading them back would stall a GPU at every step.
        if packed and not bool((torch.isfinite(steps) & (steps > 0)).all()):
            raise DdplugError("its steps hold values that are not finite and positive")
        levels = coefficients.reshape(shapes["coefficients"]) if self.bits == 8 or not packed else \
            unpack_levels(coefficients, self.bits, shapes["coefficients"])
        masks = super().restore({name: stored[name] for name in ("mask",) if name in stored}, shapes, mean, std,
                                packed=packed)
        values = (levels.float() - (self.levels - 1) / 2) * steps.float().repeat_interleave(n // groups, dim=0)
        return {"coefficients": values, **masks}

    def check_code(self, code: Code, image_shape: tuple[int, int, int]) -> None:
        _, h, w = image_shape
        count = code["coefficients"].shape[2]
        if count != self._count(h, w):
            raise DdplugError(f"its code holds {count} coefficients per image, where {self.spec} keeps "
                              f"{self._count(h, w)} of {h}x{w}")
        if "mask" in code:
            if code["mask"].shape[1] != h * w:
                raise DdplugError(f"its mask has {code['mask'].shape[1]} bits per class for images of {h}x{w} "
                                  f"({h * w} coefficients)")
            kept = code["mask"].sum(dim=1)
            if not bool((kept == count).all()):
                raise DdplugError(f"its mask keeps {kept.tolist()} coefficients per class, where its code holds "
                                  f"{count} per image")


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

    def encode(self, images: Tensor, layout: Layout, reference: Tensor | None = None) -> Code:
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
