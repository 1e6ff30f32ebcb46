"""The synthetic set: what every distiller and baseline produces and every consumer reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ddplug.errors import DdplugError
from ddplug.sets.param import denormalise


@dataclass(frozen=True)
class SetLimits:
    """The values a set must keep to be trained on (:meth:`SyntheticSet.check`).

    ``pixel_range`` bounds the images on the [0, 1] pixel scale of their normalisation
    (None: any finite value; never applied to ZCA-whitened images, which are not pixels);
    ``lr_range`` bounds a learned learning rate (exclusive of 0); soft labels must be
    non-negative and sum to 1 within ``label_sum_tolerance``, as a softmax does.
    """

    pixel_range: tuple[float, float] | None = None
    lr_range: tuple[float, float] = (0.0, math.inf)
    label_sum_tolerance: float = 1e-3


@dataclass
class SyntheticSet:
    """A small labelled image set standing in for a real training set.

    ``images`` are normalised with ``mean``/``std`` (the real data's constants), so a
    model trains on them exactly as on normalised real images. ``labels`` are either
    hard class ids (int64, shape ``(N,)``) or soft label vectors (float, ``(N, K)``,
    used as targets as they are). ``lr`` is a learned training learning rate (MTT)
    that the evaluator uses instead of the protocol's. ``meta`` records provenance:
    method, dataset, ipc, config, seed, library version; and ``zca_epsilon`` when the
    images live in the ZCA-whitened space of the real training images (see
    ``ddplug.data.ZCA``), where they must be trained on and tested against whitened data.

    Attributes:
        images: (N, C, H, W), normalised.
        labels: (N,) class ids or (N, K) soft labels.
        num_classes: K.
        mean: the normalisation's per-channel mean.
        std: its per-channel standard deviation.
        lr: a learned learning rate, or None.
        meta: provenance.
        code: the parameterisation's tensors the images decode from, or None.
        param: the parameterisation's spec.

    Examples:
        >>> import torch
        >>> synthetic = SyntheticSet(torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), num_classes=2,
        ...                          mean=(0.5,), std=(0.25,))
        >>> len(synthetic), synthetic.denormalised().max().item()
        (4, 0.5)
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    lr: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # What a distiller learned, when the images are decoded from it (``ddplug.sets.param``):
    # the code's tensors and the parameterisation's spec. Files store the code, not the images.
    code: dict[str, Tensor] | None = None
    param: str = "pixels"

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DdplugError(f"synthetic images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        n, channels = self.images.shape[:2]
        if self.labels.ndim not in (1, 2):
            raise DdplugError(f"labels must be class ids (N,) or soft labels (N, K), got shape {tuple(self.labels.shape)}")
        if self.labels.shape[0] != n:
            raise DdplugError(f"{n} synthetic images but {self.labels.shape[0]} labels")
        if self.soft_labels and self.labels.shape[1] != self.num_classes:
            raise DdplugError(f"soft labels have {self.labels.shape[1]} columns for {self.num_classes} classes")
        if len(self.mean) != channels or len(self.std) != channels:
            raise DdplugError(f"mean/std have {len(self.mean)}/{len(self.std)} entries for {channels}-channel images")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def check(self, limits: SetLimits = SetLimits()) -> None:
        """Raise :class:`DdplugError` naming the first thing that would make training on the
        set fail or learn nothing: no images, NaN/inf or out-of-range pixels, labels that are
        not class ids or not probability vectors, a learned lr that is not finite, positive
        and within range. One pass over the values (a host sync): call it where a set
        arrives (a file, an upload), not in a training loop."""
        if len(self) == 0:
            raise DdplugError("the set holds no images")
        images = self.images.detach()
        bad = int((~torch.isfinite(images)).sum())
        if bad:
            raise DdplugError(f"{bad} of its {images.numel()} image values are NaN or infinite")
        if limits.pixel_range is not None and self.zca_epsilon is None:
            with torch.no_grad():
                pixels = self.denormalised()
            low, high = float(pixels.min()), float(pixels.max())
            allowed_low, allowed_high = limits.pixel_range
            if low < allowed_low or high > allowed_high:
                raise DdplugError(f"its pixels range over {low:.4g}..{high:.4g} on the [0, 1] scale, outside the "
                                  f"allowed {allowed_low:g}..{allowed_high:g}")
        self._check_labels(limits)
        self._check_meta()
        if self.lr is not None:
            if self.lr.numel() != 1:
                raise DdplugError(f"its learned lr should be one number, got shape {tuple(self.lr.shape)}")
            lr = float(self.lr)
            low, high = limits.lr_range
            if not (math.isfinite(lr) and max(low, 0.0) < lr <= high):
                raise DdplugError(f"its learned lr {lr:g} is not within ({max(low, 0.0):g}, {high:g}]")

    def _check_meta(self) -> None:
        """The metadata ddplug reads back (what a consumer acts on) must have its types."""
        kinds: dict[str, tuple[type, ...]] = {"method": (str,), "dataset": (str,), "ipc": (int,), "param": (str,),
                                              "zca_epsilon": (int, float), "iterations": (int,), "seed": (int,),
                                              "distill_seconds": (int, float)}
        for key, allowed in kinds.items():
            value = self.meta.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, allowed) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise DdplugError(f"its metadata {key} is {value!r}, not a {' or '.join(k.__name__ for k in allowed)}")
            if isinstance(value, str) and len(value) > 200:
                raise DdplugError(f"its metadata {key} is a string of {len(value)} characters")
        for key in ("ipc", "iterations", "seed", "zca_epsilon", "distill_seconds"):
            value = self.meta.get(key)
            if value is not None and (value < 0 or (key in ("ipc", "zca_epsilon") and value <= 0)):
                raise DdplugError(f"its metadata {key} is {value!r}, out of range")

    def _check_labels(self, limits: SetLimits) -> None:
        labels = self.labels.detach()
        if not self.soft_labels:
            if labels.dtype != torch.int64:
                raise DdplugError(f"its labels are {labels.dtype} class ids; hard labels must be int64 "
                                  "(or give soft labels as an (N, classes) float tensor)")
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise DdplugError(f"its labels range over {low}..{high}, outside the classes 0..{self.num_classes - 1}")
            return
        if not labels.is_floating_point():
            raise DdplugError(f"its soft labels are {labels.dtype}; they must be float probability vectors")
        if not bool(torch.isfinite(labels).all()) or float(labels.min()) < 0:
            raise DdplugError("its soft labels hold negative, NaN or infinite values; they must be probabilities")
        off = float((labels.double().sum(dim=1) - 1).abs().max())
        if off > limits.label_sum_tolerance:
            raise DdplugError(f"its soft labels do not sum to 1 (off by up to {off:.3g}, tolerance "
                              f"{limits.label_sum_tolerance:g}); they must be probability vectors")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def soft_labels(self) -> bool:
        return self.labels.ndim == 2

    @property
    def hard_labels(self) -> Tensor:
        """Class ids: the labels themselves, or the arg-max of soft labels."""
        return self.labels.argmax(dim=1) if self.soft_labels else self.labels

    @property
    def zca_epsilon(self) -> float | None:
        """The epsilon of the ZCA whitening the images live in, or None if they are not whitened."""
        return self.meta.get("zca_epsilon")

    @property
    def ipc(self) -> int:
        """Images per class (of the largest class, for unbalanced sets)."""
        return int(torch.bincount(self.hard_labels.cpu(), minlength=self.num_classes).max())

    @property
    def budget_ipc(self) -> int:
        """The set's budget in raw uint8 images per class: what a baseline of the same bytes
        holds. A set coded by a parameterisation records it (``meta["ipc"]``, which the
        decoded images may exceed: ``multi:factor=2`` decodes 40 per class in the bytes of
        10); for a set of plain pixels it is :attr:`ipc`.

        Examples:
            >>> import torch
            >>> from ddplug.sets import SyntheticSet
            >>> two_each = SyntheticSet(torch.zeros(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2]), 3, (0.5,), (0.25,))
            >>> two_each.ipc, two_each.budget_ipc
            (2, 2)
        """
        if self.param != "pixels" and self.meta.get("ipc") is not None:
            return int(self.meta["ipc"])
        return self.ipc

    def denormalised(self) -> Tensor:
        """Images on the [0, 1] pixel scale (not clamped)."""
        return denormalise(self.images, self.mean, self.std)

    def to(self, device: torch.device | str) -> SyntheticSet:
        lr = None if self.lr is None else self.lr.to(device)
        code = None if self.code is None else {name: tensor.to(device) for name, tensor in self.code.items()}
        return replace(self, images=self.images.to(device), labels=self.labels.to(device), lr=lr, code=code)

    def detach(self) -> SyntheticSet:
        """A copy that shares no autograd graph and no storage with learnable tensors."""
        lr = None if self.lr is None else self.lr.detach().clone()
        return replace(
            self,
            images=self.images.detach().clone(),
            labels=self.labels.detach().clone(),
            lr=lr,
            meta=dict(self.meta),
            code=None if self.code is None else {name: tensor.detach().clone() for name, tensor in self.code.items()},
        )

    @classmethod
    def concatenate(cls, parts: list[SyntheticSet], meta: dict[str, Any]) -> SyntheticSet:
        """One set holding every image of ``parts`` (same classes and normalisation).

        Hard labels become one-hot rows when any part has soft labels. The learned lr is the
        median of the parts' (the lower middle one for an even count): no single part, and
        not the order of the parts, decides how the union trains.
        """
        first = parts[0]
        soft = any(part.soft_labels for part in parts)
        labels = [torch.nn.functional.one_hot(part.labels, first.num_classes).float()
                  if soft and not part.soft_labels else part.labels for part in parts]
        lrs = [part.lr.reshape(()) for part in parts if part.lr is not None]
        return cls(torch.cat([part.images for part in parts]), torch.cat(labels), first.num_classes, first.mean,
                   first.std, lr=torch.stack(lrs).median() if lrs else None, meta=meta)
