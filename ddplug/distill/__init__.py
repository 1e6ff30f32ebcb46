"""Distillation methods behind one interface, and the coreset baselines beside them."""

from __future__ import annotations

from typing import Any

import torch

from ddplug.data import ImageDataset
from ddplug.distill.anchored import AnchoredDistributionMatching, AnchoredDMConfig
from ddplug.distill.base import DistillConfig, Distiller, DistillResult, run_distillation
from ddplug.distill.dm import DistributionMatching, DMConfig
from ddplug.distill.gradient import DatasetCondensation, DatasetCondensationDSA, GradientMatchingConfig
from ddplug.distill.kernel import KIP, FRePo, FRePoConfig, KIPConfig
from ddplug.distill.selection import NEEDS_FEATURES, SELECTIONS, select_subset
from ddplug.distill.trajectory import MTTConfig, TrajectoryMatching
from ddplug.errors import DdplugError
from ddplug.presets import convert_field

DISTILLERS: dict[str, type[Distiller]] = {
    cls.name: cls
    for cls in (DatasetCondensation, DatasetCondensationDSA, DistributionMatching, AnchoredDistributionMatching,
                TrajectoryMatching, KIP, FRePo)
}


def available_methods() -> list[str]:
    """Every name ``ddplug distill --method`` accepts: distillers, then selections."""
    return [*DISTILLERS, *SELECTIONS]


def make_config(method: str, settings: dict[str, Any] | None = None) -> DistillConfig:
    """The config of ``method`` with ``settings`` (values may be CLI strings) applied."""
    if method not in DISTILLERS:
        raise DdplugError(f"unknown distillation method {method!r}; choose one of {', '.join(available_methods())}")
    config_class = DISTILLERS[method].config_class
    values = {name: convert_field(config_class, name, value) for name, value in (settings or {}).items()}
    return config_class(**values)


def create_distiller(method: str, real: ImageDataset, config: DistillConfig | None = None, device: torch.device | str = "cpu") -> Distiller:
    """A distiller of ``method`` for ``real`` (default config if none is given)."""
    config = config if config is not None else make_config(method)
    distiller_class = DISTILLERS[method] if method in DISTILLERS else None
    if distiller_class is None:
        raise DdplugError(f"unknown distillation method {method!r}; choose one of {', '.join(available_methods())}")
    if not isinstance(config, distiller_class.config_class):
        raise DdplugError(f"{method} needs a {distiller_class.config_class.__name__}, got {type(config).__name__}")
    return distiller_class(real, config, device)


__all__ = [
    "DISTILLERS", "AnchoredDMConfig", "AnchoredDistributionMatching", "KIP", "NEEDS_FEATURES", "SELECTIONS", "DMConfig", "FRePo", "FRePoConfig", "KIPConfig",
    "DatasetCondensation", "DatasetCondensationDSA", "GradientMatchingConfig", "DistillConfig", "DistillResult", "Distiller",
    "DistributionMatching", "MTTConfig", "TrajectoryMatching", "available_methods", "create_distiller", "make_config", "run_distillation",
    "select_subset",
]
