"""Differentiable siamese augmentation (DSA, Zhao & Bilen, ICML 2021) on top of kornia.

One transform family is drawn per call from the strategy string; its random parameters
are drawn once and can be shared by several batches (the real and the synthetic batch of a
distillation step) so that both see the same transform and gradients reach the synthetic
images. Everything after the family choice is tensor arithmetic on the input's device, with
no host synchronisation, so it can run in the inner loop of distillation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from torch import Tensor, nn

from ddplug.errors import DdplugError

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
_IDENTITY_STRATEGIES = ("", "none")
_NO_FLIP_DATASETS = ("mnist", "svhn")


@dataclass(frozen=True)
class DSAConfig:
    """Which families DSA draws from, and the strength of each.

    ``strategy`` joins family names with ``_``; ``""`` or ``"none"`` means no augmentation.
    Repeating a family makes it proportionally more likely to be drawn.

    Attributes:
        strategy: the families, e.g. ``color_crop_cutout_flip_scale_rotate`` (DSA's own default).
        brightness, saturation, contrast: the colour jitters' strengths.
        crop: the largest shift, as a fraction of the image side.
        cutout: the side of the cut square, as a fraction of the image side.
        flip: the probability of a horizontal flip.
        scale: the largest scale factor.
        rotate: the largest rotation, in degrees.
    """

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop: float = 0.125
    cutout: float = 0.5
    flip: float = 0.5
    scale: float = 1.2
    rotate: float = 15.0

    def __post_init__(self) -> None:
        unknown = [name for name in self.families if name not in FAMILIES]
        if unknown:
            raise DdplugError(
                f"unknown DSA family {', '.join(map(repr, unknown))} in strategy {self.strategy!r}; "
                f"valid families are {', '.join(FAMILIES)} joined with '_' (or 'none' for no augmentation)"
            )
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name != "strategy" and not (math.isfinite(value) and value >= 0):
                raise DdplugError(f"DSA {field.name} must be a finite number >= 0, got {value!r}")
        if self.scale < 1:
            raise DdplugError(f"DSA scale must be >= 1 (factors are drawn from [1/scale, scale]), got {self.scale!r}")

    @property
    def families(self) -> tuple[str, ...]:
        """The family names in ``strategy``, in order (empty for no augmentation)."""
        if self.strategy.strip().lower() in _IDENTITY_STRATEGIES:
            return ()
        return tuple(self.strategy.split("_"))

    @classmethod
    def for_dataset(cls, name: str) -> DSAConfig:
        """The published strategy for a dataset: no flip for digits (MNIST, SVHN)."""
        default = cls()
        if name.strip().lower() not in _NO_FLIP_DATASETS:
            return default
        return replace(default, strategy="_".join(f for f in default.families if f != "flip"))


@dataclass
class DSAParams:
    """One draw of DSA parameters: a family and, per key, a tensor of ``num_groups`` rows.

    Keys by family (all float unless said otherwise):

    - ``color``: ``brightness`` (added), ``saturation`` and ``contrast`` (factors), each ``(G,)``.
    - ``crop``: ``translate`` ``(G, 2)`` uniforms in [0, 1) for (x, y) and ``ratio`` ``(G,)``; once the
      image size is known they become an integer shift in ``[-s, s]`` with ``s = round(ratio * size)``.
    - ``cutout``: ``center`` ``(G, 2)`` uniforms in [0, 1) for (x, y) and ``ratio`` ``(G,)``, the
      side of the zeroed square as a fraction of the image size.
    - ``flip``: ``flip`` ``(G,)`` bool, True flips horizontally.
    - ``scale``: ``scale`` ``(G, 2)`` per-axis sampling stretch, as in the original code: the
      output at offset d from the centre shows the input at offset ``scale * d``.
    - ``rotate``: ``angle`` ``(G,)`` in degrees.
    - ``none``: no keys; the identity.
    """

    family: str
    values: dict[str, Tensor]


Uniform = Callable[..., Tensor]


def _sample_color(config: DSAConfig, uniform: Uniform) -> dict[str, Tensor]:
    return {
        "brightness": (uniform() - 0.5) * config.brightness,
        "saturation": uniform() * config.saturation,
        "contrast": uniform() + config.contrast,
    }


def _sample_crop(config: DSAConfig, uniform: Uniform) -> dict[str, Tensor]:
    translate = uniform(2)
    return {"translate": translate, "ratio": torch.full_like(translate[:, 0], config.crop)}


def _sample_cutout(config: DSAConfig, uniform: Uniform) -> dict[str, Tensor]:
    center = uniform(2)
    return {"center": center, "ratio": torch.full_like(center[:, 0], config.cutout)}


def _sample_flip(config: DSAConfig, uniform: Uniform) -> dict[str, Tensor]:
    return {"flip": uniform() < config.flip}


def _sample_scale(config: DSAConfig, uniform: Uniform) -> dict[str, Tensor]:
    low = 1.0 / config.scale
    return {"scale": uniform(2) * (config.scale - low) + low}


def _sample_rotate(config: DSAConfig, uniform: Uniform) -> dict[str, Tensor]:
    return {"angle": (uniform() - 0.5) * (2.0 * config.rotate)}


_SAMPLERS: dict[str, Callable[[DSAConfig, Uniform], dict[str, Tensor]]] = {
    "color": _sample_color,
    "crop": _sample_crop,
    "cutout": _sample_cutout,
    "flip": _sample_flip,
    "scale": _sample_scale,
    "rotate": _sample_rotate,
}


def _draw_family(families: tuple[str, ...], generator: torch.Generator | None) -> str:
    # The family picks a code path, so it must be a Python value: draw it on the CPU, where
    # reading it back costs no device synchronisation. A CUDA generator cannot serve here.
    cpu_generator = generator if generator is not None and generator.device.type == "cpu" else None
    return families[int(torch.randint(len(families), (1,), generator=cpu_generator))]


def _device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from the CPU ``generator``."""
    # Reading a seed off a CPU generator and seeding a device generator are both host-side,
    # so the parameters are drawn on the device without waiting for it.
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def sample_dsa_params(
    config: DSAConfig,
    num_groups: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> DSAParams:
    """Draw a family from ``config`` and ``num_groups`` independent parameter sets for it.

    The family is drawn from ``generator`` when it is a CPU generator, otherwise from torch's
    default CPU generator (a CUDA generator is not used for it). The parameter tensors are drawn
    on ``device`` (default: the generator's device, else the CPU): from ``generator`` if it lives
    there, from a device generator seeded by a CPU ``generator``, or from the default generator.
    So a seeded CPU generator gives the same output on a given device, with no device sync.
    """
    families = config.families
    if not families:
        return DSAParams("none", {})
    family = _draw_family(families, generator)
    if device is not None:
        target = torch.device(device)
    else:
        target = generator.device if generator is not None else torch.device("cpu")
    if generator is not None and generator.device.type == "cpu" and target.type != "cpu":
        generator = _device_generator(generator, target)
    draw_device = generator.device if generator is not None else target

    def uniform(*shape: int) -> Tensor:
        return torch.rand((num_groups, *shape), generator=generator, device=draw_device)

    # The move only happens for a device generator serving another device (e.g. CUDA for CPU).
    values = {key: value.to(target) for key, value in _SAMPLERS[family](config, uniform).items()}
    return DSAParams(family, values)


def _per_image(value: Tensor, x: Tensor) -> Tensor:
    return value.to(x.dtype).view(-1, 1, 1, 1)


def _color(x: Tensor, values: dict[str, Tensor]) -> Tensor:
    x = x + _per_image(values["brightness"], x)
    # For one channel the channel mean is the pixel itself, so saturation is the identity.
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _per_image(values["saturation"], x) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_image(values["contrast"], x) + mean


def _pixels(ratio: Tensor, size: int) -> Tensor:
    """``round(ratio * size)`` as a whole-pixel float, rounding halves up as the original."""
    return torch.floor(ratio * size + 0.5)


def _uniform_to_integer(u: Tensor, count: Tensor) -> Tensor:
    """Map uniforms in [0, 1) to integers ``0 .. count - 1`` (as floats), guarding rounding at 1."""
    return torch.minimum(torch.floor(u * count), count - 1)


def _warp(
    x: Tensor,
    *,
    translation: Tensor | None = None,
    scale: Tensor | None = None,
    angle: Tensor | None = None,
    mode: str = "bilinear",
) -> Tensor:
    """Warp each image about its centre with zero fill; the matrix maps input to output pixels."""
    n, _, height, width = x.shape
    zeros = x.new_zeros(n, 2)
    center = torch.stack([zeros[:, 0] + (width - 1) / 2, zeros[:, 1] + (height - 1) / 2], dim=1)
    matrix = get_affine_matrix2d(
        translations=zeros if translation is None else translation.to(x.dtype),
        center=center,
        scale=zeros + 1 if scale is None else scale.to(x.dtype),
        angle=zeros[:, 0] if angle is None else angle.to(x.dtype),
    )
    # align_corners=True puts pixel centres on integer coordinates, so integer shifts are exact.
    return warp_affine(x, matrix[:, :2], (height, width), mode=mode, padding_mode="zeros", align_corners=True)


def _integer_shift(u: Tensor, ratio: Tensor, size: int) -> Tensor:
    """A whole-pixel shift in ``[-s, s]``, ``s = round(ratio * size)``, uniform over the integers."""
    max_shift = _pixels(ratio, size)
    return _uniform_to_integer(u, 2 * max_shift + 1) - max_shift


def _crop(x: Tensor, values: dict[str, Tensor]) -> Tensor:
    height, width = x.shape[-2:]
    u, ratio = values["translate"].to(x.dtype), values["ratio"].to(x.dtype)
    shift = torch.stack([_integer_shift(u[:, 0], ratio, width), _integer_shift(u[:, 1], ratio, height)], dim=1)
    # Shifts are whole pixels: nearest sampling copies values exactly, free of rounding error.
    return _warp(x, translation=shift, mode="nearest")


def _cutout_span(u: Tensor, ratio: Tensor, size: int) -> Tensor:
    """``(G, size)`` mask of the positions the square covers along one axis (clipped at the border)."""
    side = _pixels(ratio, size)
    # As the original: an even side has size + 1 possible centres, an odd one size.
    center = _uniform_to_integer(u, size + 1 - torch.remainder(side, 2))
    start = (center - torch.div(side, 2, rounding_mode="floor"))[:, None]
    position = torch.arange(size, device=u.device, dtype=u.dtype)
    return (position >= start) & (position < start + side[:, None])


def _cutout(x: Tensor, values: dict[str, Tensor]) -> Tensor:
    height, width = x.shape[-2:]
    u, ratio = values["center"].to(x.dtype), values["ratio"].to(x.dtype)
    covered = _cutout_span(u[:, 1], ratio, height)[:, :, None] & _cutout_span(u[:, 0], ratio, width)[:, None, :]
    return x * (~covered)[:, None].to(x.dtype)


def _flip(x: Tensor, values: dict[str, Tensor]) -> Tensor:
    return torch.where(values["flip"].view(-1, 1, 1, 1), x.flip(-1), x)


def _scale(x: Tensor, values: dict[str, Tensor]) -> Tensor:
    # The stored factor stretches the sampling grid (as the original); kornia scales the content.
    return _warp(x, scale=1.0 / values["scale"])


def _rotate(x: Tensor, values: dict[str, Tensor]) -> Tensor:
    return _warp(x, angle=values["angle"])


_APPLIERS: dict[str, Callable[[Tensor, dict[str, Tensor]], Tensor]] = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


def apply_dsa(x: Tensor, params: DSAParams, groups: Tensor | None = None) -> Tensor:
    """Apply ``params`` to the images ``x`` ``(N, C, H, W)``; differentiable in ``x``.

    ``groups`` (int64 ``(N,)`` on ``x``'s device) says which parameter set each image uses;
    without it image i uses set i. The values are never clamped (inputs are normalised).
    """
    if params.family == "none":
        return x
    if groups is None:
        num_groups = next(iter(params.values.values())).shape[0]
        if num_groups != x.shape[0]:
            raise DdplugError(
                f"DSA params hold {num_groups} parameter sets but the batch has {x.shape[0]} images; "
                "pass groups= to say which set each image uses, or sample one set per image"
            )
        values = params.values
    else:
        if groups.shape != (x.shape[0],):
            raise DdplugError(
                f"DSA groups must have shape ({x.shape[0]},), one id per image; got {tuple(groups.shape)}"
            )
        values = {key: value[groups] for key, value in params.values.items()}
    return _APPLIERS[params.family](x, values)


class DSA(nn.Module):
    """DSA as a module: ``forward`` for evaluation training, ``siamese`` for distillation.

    Args:
        config: the families and strengths (:class:`DSAConfig`), or a strategy string such as
            ``"color_crop_cutout"``.

    Examples:
        >>> import torch
        >>> dsa = DSA("flip")
        >>> x = torch.rand(4, 1, 8, 8)
        >>> dsa(x, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(self, config: DSAConfig | str = DSAConfig()) -> None:
        super().__init__()
        self.config = DSAConfig(strategy=config) if isinstance(config, str) else config

    def extra_repr(self) -> str:
        return f"strategy={self.config.strategy!r}"

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment each image with its own random parameters (one family for the batch)."""
        params = sample_dsa_params(self.config, x.shape[0], generator=generator, device=x.device)
        return apply_dsa(x, params)

    def siamese(
        self,
        *batches: Tensor,
        groups: Sequence[Tensor] | None = None,
        num_groups: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, ...]:
        """Augment several batches with ONE draw of parameters.

        Without ``groups`` every image of every batch gets the same transform. With ``groups``
        (one int64 tensor of ids in ``[0, num_groups)`` per batch) images with the same id share
        a transform across batches, e.g. class c of the real and of the synthetic batch.
        """
        if not batches:
            raise DdplugError("DSA.siamese needs at least one batch of images")
        if groups is None:
            if num_groups is not None:
                raise DdplugError("DSA.siamese got num_groups without groups; pass both or neither")
            groups = [torch.zeros(len(batch), dtype=torch.long, device=batch.device) for batch in batches]
            num_groups = 1
        elif num_groups is None or len(groups) != len(batches):
            raise DdplugError(
                f"DSA.siamese needs num_groups and one group tensor per batch with groups; "
                f"got num_groups={num_groups}, {len(groups)} group tensors for {len(batches)} batches"
            )
        params = sample_dsa_params(self.config, num_groups, generator=generator, device=batches[0].device)
        return tuple(apply_dsa(batch, params, ids) for batch, ids in zip(batches, groups))
