"""One interface for everything that makes a synthetic set, and the registry of them by name.

A :class:`Condenser` turns real data into a :class:`Condensed` set of ``ipc`` images per
class. Distillers (DM, DC, MTT, ...) become condensers through ``@register_distiller``;
the selections (random, herding, k-center, full) are condensers of their own. The CLI, the
pipeline and the adapters look a method up here and never branch on its name, so a user or
an adapter adds a method by registering it::

    @register_condenser
    class MySelection(Condenser):
        name = "mine"
        def condense(self, real, *, ipc, preset, seed=0, settings=None, device="cpu", **_): ...
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

from ddplug.data import ZCA, ImageDataset
from ddplug.errors import DdplugError
from ddplug.registry import Registry
from ddplug.sets import SyntheticSet
from ddplug.settings import convert_field

if TYPE_CHECKING:  # presets name methods, so they import this module, not the other way round
    from ddplug.presets import Preset

CHECKPOINT_FILE = "checkpoint.pt"
SNAPSHOT_FOLDER = "snapshots"


@dataclass
class Condensed:
    """What any condenser returns."""

    synthetic: SyntheticSet
    method: str
    iterations: int  # iterations completed in total, resumed ones included (0 for selections)
    seconds: float  # wall time of the whole distillation, earlier (resumed) segments included
    losses: list[float] = field(default_factory=list)  # loss of every iteration
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM before the configured iterations
    zca: ZCA | None = None  # the whitening a ZCA-whitened set lives in (fitted on the real training images)


class Condenser(ABC):
    """Makes a synthetic set of ``ipc`` images per class from ``real``."""

    name: ClassVar[str]
    config_class: ClassVar[type | None] = None  # its settings (a dataclass), or None: it takes none
    baseline: ClassVar[bool] = False  # a reference point rather than a method to tune
    per_class: ClassVar[bool] = True  # makes ipc images per class (False: its size is its own)
    private: ClassVar[bool] = False  # can make its set differentially private (settings dp_epsilon, dp_delta)
    learns: ClassVar[bool] = False  # learns a parameterisation's code (a distiller); False: it picks real images

    @abstractmethod
    def condense(
        self,
        real: ImageDataset,
        *,
        ipc: int,
        preset: Preset,
        seed: int = 0,
        settings: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        out_dir: str | Path | None = None,
        progress: bool = True,
        snapshots: int = 0,
    ) -> Condensed:
        """``settings`` override the preset's for this method; ``out_dir`` (where supported)
        holds a checkpoint to resume and ``snapshots`` intermediate sets."""

    def make_config(self, settings: dict[str, Any] | None = None) -> Any:
        """The method's config with ``settings`` (values may be CLI strings) applied."""
        if self.config_class is None:
            if settings:
                raise DdplugError(f"{self.name} takes no settings, got {', '.join(settings)}")
            return None
        values = {name: convert_field(self.config_class, name, value) for name, value in (settings or {}).items()}
        return self.config_class(**values)

    def setting_names(self) -> list[str]:
        return [] if self.config_class is None else [f.name for f in dataclasses.fields(self.config_class)]


CONDENSERS: Registry[Condenser] = Registry("method")
C = TypeVar("C", bound=type)


def register_condenser(cls: C) -> C:
    """Class decorator: register an instance of a :class:`Condenser` subclass under its name."""
    CONDENSERS.add(cls.name, cls())
    return cls


def get_condenser(name: str) -> Condenser:
    """The method or baseline called ``name``; an unknown one lists methods, then baselines."""
    if name not in CONDENSERS:
        raise DdplugError(f"unknown method {name!r}; choose one of {', '.join(available_methods())}")
    return CONDENSERS[name]


def available_methods() -> list[str]:
    """Every name ``ddplug distill --method`` accepts.

    Returns:
        The distillation methods, then the baselines, each in registration order.

    Examples:
        >>> methods = available_methods()
        >>> methods[0], "random" in methods
        ('dc', True)
    """
    return sorted(CONDENSERS, key=lambda name: CONDENSERS[name].baseline)


def snapshot_path(out_dir: str | Path, synthetic: SyntheticSet) -> Path:
    """Where a distillation saves the snapshot of ``synthetic`` (its meta names the iteration)."""
    return Path(out_dir) / SNAPSHOT_FOLDER / f"iter-{synthetic.meta['iterations']:06d}.safetensors"


def timed(method: str, make: Any) -> Condensed:
    """``make()``'s set as a :class:`Condensed` of no iterations, with its wall time."""
    began = time.perf_counter()
    synthetic = make()
    return Condensed(synthetic, method, 0, time.perf_counter() - began)
