"""Everything that makes a synthetic set, behind one interface (:class:`Condenser`) and one
registry (``CONDENSERS``): the distillation methods and the coreset baselines beside them."""

from __future__ import annotations

import torch

from ddplug.data import ImageDataset
from ddplug.methods.base import Distiller
from ddplug.methods.config import DistillConfig
from ddplug.methods.running import DistillerCondenser, register_distiller, run_distillation
from ddplug.methods.condenser import (
    CONDENSERS,
    Condensed,
    Condenser,
    available_methods,
    get_condenser,
    register_condenser,
)

# Imported for their registrations, in the order `ddplug list` shows them.
from ddplug.methods.gradient import DatasetCondensation, DatasetCondensationDSA, GradientMatchingConfig  # noqa: I001
from ddplug.methods.dm import DistributionMatching, DMConfig
from ddplug.methods.anchored import AnchoredDistributionMatching, AnchoredDMConfig
from ddplug.methods.trajectory import MTTConfig, TrajectoryMatching
from ddplug.methods.kernel_ridge import KIP, FRePo, FRePoConfig, KIPConfig
from ddplug.methods.selection import Selection, feature_network, select_subset
from ddplug.errors import DdplugError


def make_config(method: str, settings: dict | None = None) -> DistillConfig | None:
    """The config of ``method`` with ``settings`` (values may be CLI strings) applied.

    Args:
        method: a name of :func:`available_methods`.
        settings: field -> value; strings are converted to the field's type.

    Returns:
        The method's config (a :class:`DistillConfig` subclass), checked; None for a
        baseline that has no settings.

    Raises:
        DdplugError: an unknown method, field or value.

    Examples:
        >>> config = make_config("dm", {"ipc": 10, "iterations": "250", "param": "multi:factor=2"})
        >>> config.ipc, config.iterations, config.param
        (10, 250, 'multi:factor=2')
        >>> make_config("dm", {"iteratoins": 3})
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: DMConfig has no setting 'iteratoins'; settings: ...
    """
    return get_condenser(method).make_config(settings)


def create_distiller(method: str, real: ImageDataset, config: DistillConfig | None = None,
                     device: torch.device | str = "cpu") -> Distiller:
    """A distiller of ``method`` for ``real`` (default config if none is given).

    Args:
        method: a distillation method (``dm``, ``dc``, ``dsa``, ``mtt``, ``kip``, ``frepo``, ...).
        real: the real training images.
        config: the method's config (:func:`make_config`); None for its defaults.
        device: where the set is learned.

    Returns:
        The distiller, with its code initialised; :func:`run_distillation` runs it.

    Raises:
        DdplugError: a selection instead of a method, or another method's config.

    Examples:
        >>> from ddplug.data import load_dataset
        >>> digits = load_dataset("digits")
        >>> distiller = create_distiller("dm", digits.train, make_config("dm", {"ipc": 2, "iterations": 3}))
        >>> distiller.images.shape
        torch.Size([20, 1, 8, 8])
    """
    condenser = get_condenser(method)
    if not condenser.learns:
        raise DdplugError(f"{method} is not a distillation method; distillers: "
                          f"{', '.join(name for name, c in CONDENSERS.items() if c.learns)}")
    config = config if config is not None else condenser.make_config()
    if not isinstance(config, condenser.config_class):
        raise DdplugError(f"{method} needs a {condenser.config_class.__name__}, got {type(config).__name__}")
    return condenser.distiller_class(real, config, device)


__all__ = [
    "CONDENSERS", "KIP", "AnchoredDMConfig", "AnchoredDistributionMatching", "Condensed", "Condenser", "DMConfig",
    "DatasetCondensation", "DatasetCondensationDSA", "DistillConfig", "DistillerCondenser", "Distiller",
    "DistributionMatching", "FRePo", "FRePoConfig", "GradientMatchingConfig", "KIPConfig", "MTTConfig", "Selection",
    "TrajectoryMatching", "available_methods", "create_distiller", "feature_network", "get_condenser",
    "make_config", "register_condenser", "register_distiller", "run_distillation", "select_subset",
]
