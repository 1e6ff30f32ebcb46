"""Named bundles of settings: ``paper`` (the field's protocol) and ``cpu`` (minutes on 2 cores).

A preset fixes the evaluation protocol and each method's distillation settings; every
field can be overridden by name (``eval.epochs=100``, ``dm.iterations=500``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ddplug.errors import DdplugError
from ddplug.evaluate.training import TrainSettings


@dataclass(frozen=True)
class EvalProtocol:
    """How a set is judged: train ``num_models`` fresh networks on it, test on real data."""

    model: str = "convnet"
    epochs: int = 1000
    num_models: int = 20
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: bool = True  # DSA while training on the set (per-image parameters)
    full_epochs: int = 50  # epochs for the whole-dataset upper bound
    feature_epochs: int = 10  # training of the network whose features herding/k-center use

    def train_settings(self, epochs: int | None = None) -> TrainSettings:
        return TrainSettings(
            epochs=self.epochs if epochs is None else epochs,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
        )


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    evaluation: EvalProtocol
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> distill config overrides

    def method_settings(self, method: str) -> dict[str, Any]:
        return {**self.methods.get("*", {}), **self.methods.get(method, {})}

    def override(self, assignments: dict[str, str]) -> Preset:
        """A copy with ``{"eval.epochs": "100", "dm.iterations": "50", ...}`` applied.

        Values are strings (as typed on the command line); ``eval.*`` values are converted
        to the field's type here, method values when the method's config is built.
        """
        evaluation = self.evaluation
        methods = {name: dict(values) for name, values in self.methods.items()}
        for key, value in assignments.items():
            scope, _, name = key.partition(".")
            if not name:
                raise DdplugError(f"override {key!r} should look like eval.FIELD=VALUE or METHOD.FIELD=VALUE")
            if scope == "eval":
                evaluation = dataclasses.replace(evaluation, **{name: convert_field(EvalProtocol, name, value)})
            else:
                methods.setdefault(scope, {})[name] = value
        return dataclasses.replace(self, evaluation=evaluation, methods=methods)


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["eval.epochs=100", ...]`` (``--set`` values) as ``{"eval.epochs": "100", ...}``."""
    assignments = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DdplugError(f"--set expects KEY=VALUE (e.g. eval.epochs=100 or dm.iterations=200), got {item!r}")
        assignments[key.strip()] = value.strip()
    return assignments


def convert_field(cls: type, name: str, value: Any) -> Any:
    """``value`` converted to the type of dataclass field ``cls.name`` (strings from a CLI)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise DdplugError(f"{cls.__name__} has no setting {name!r}; settings: {', '.join(sorted(fields))}")
    if not isinstance(value, str):
        return value
    kind = str(fields[name].type)
    try:
        if kind.startswith("bool"):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except ValueError:
        raise DdplugError(f"setting {name} expects {kind}, got {value!r}") from None
    if "None" in kind and value.lower() == "none":
        return None
    return value


CPU_MODEL = "convnet:width=32"

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="the field's protocol: ConvNet-3 width 128, 1000 epochs, 20 models (GPU)",
        evaluation=EvalProtocol(),
        methods={
            "*": {"model": "convnet"},
            "dm": {"iterations": 20000, "batch_real": 256},
            "dc": {"iterations": 1000, "batch_real": 256},
            "dsa": {"iterations": 1000, "batch_real": 256},
            # KIP/FRePo paper settings are not yet run (no GPU so far); KIP needs ~2.4-6.8 GB at IPC 1-50.
            "kip": {"kernel": "nngp", "num_networks": 4, "batch_real": 100, "iterations": 5000, "lr_images": 100,
                    "max_kernel_memory_gb": 16},
            "frepo": {"iterations": 20000, "batch_real": 100, "pool_size": 10, "max_online_steps": 100, "lr_images": 1000},
            # MTT's ConvNet settings: 100 experts of 50 epochs on all the data, syn_steps 20, 2 expert epochs.
            "mtt": {"iterations": 5000, "num_experts": 100, "expert_train_epochs": 50, "syn_steps": 20,
                    "expert_epochs": 2, "max_start_epoch": 20, "lr_images": 100, "lr_lr": 1e-5},
        },
    ),
    "cpu": Preset(
        name="cpu",
        description="minutes on 2 CPU cores: ConvNet-3 width 32, 300 epochs, 5 models",
        evaluation=EvalProtocol(model=CPU_MODEL, epochs=300, num_models=5, full_epochs=3, feature_epochs=2),
        methods={
            "*": {"model": CPU_MODEL},
            "dm": {"iterations": 1000, "batch_real": 64},
            # DC/DSA cpu budgets are a first guess, not yet measured on Fashion-MNIST.
            "dc": {"iterations": 100, "batch_real": 64, "inner_loop": 10},
            "dsa": {"iterations": 100, "batch_real": 64, "inner_loop": 10},
            "kip": {"kernel": "nngp", "num_networks": 2, "batch_real": 10, "iterations": 300, "lr_images": 100},
            "frepo": {"iterations": 300, "batch_real": 20, "lr_images": 1000},
            # 5 experts trained for just the epochs matched, on 500 images per class (about 2 min).
            "mtt": {"iterations": 200, "num_experts": 5, "expert_per_class": 500, "syn_steps": 10,
                    "expert_epochs": 2, "max_start_epoch": 4, "lr_images": 100, "lr_lr": 1e-5},
        },
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise DdplugError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
