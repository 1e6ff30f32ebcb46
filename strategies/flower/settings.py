"""The settings of a federated run: read from the run config, sent to the clients in every message.

The ServerApp reads them from ``[tool.flwr.app.config]`` (or is given them by the
command line) and puts them in the ConfigRecord of each message, so the clients of a
simulation and of a real deployment see the same values; only node-local facts
(``partition-id``, ``num-partitions``, ``data-root``) come from the node config.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ddplug.data import DatasetSplits, ImageDataset, load_dataset
from ddplug.devices import resolve_device
from ddplug.distill import available_methods
from ddplug.errors import DdplugError
from ddplug.models import create_model
from ddplug.presets import Preset, convert_field, get_preset, parse_assignments
from ddplug.seeding import derive_seed
from ddplug.sets import IMAGE_ENCODINGS

MODES = ("distill", "fedavg")
PARTITIONERS = ("iid", "dirichlet", "pathological")
FAULTS = ("raise", "hang", "nan", "shape", "label", "dtype", "oversize")
ROUND_KEY = "server-round"  # what Flower's strategies add to the config of each round


@dataclass(frozen=True)
class FederatedSettings:
    """Every setting of a run; run-config keys are the field names with ``-`` for ``_``."""

    mode: str = "distill"  # distill: clients upload synthetic sets; fedavg: the FedAvg baseline
    rounds: int = 1  # distill with 1 round is one-shot; more rounds distil around the global model
    clients: int = 10  # nodes the server waits for
    dataset: str = "fashion-mnist"
    data_root: str = ""  # "" = $DDPLUG_DATA or ~/.cache/ddplug/data; a node's data-root overrides it
    partitioner: str = "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration
    classes_per_client: int = 2  # pathological partitions
    seed: int = 0
    ipc: int = 10
    method: str = "dm"  # one-shot distillation method (or a selection: random, herding, kcenter)
    preset: str = "cpu"
    overrides: str = ""  # preset overrides, space-separated: "eval.epochs=50 dm.iterations=200"
    encoding: str = "uint8"  # how clients ship images: uint8, float16 or float32
    anchor_noise: float = 0.01  # multi-round: std of the noise around the global model's weights
    local_epochs: int = 1  # fedavg: epochs of local training per round
    max_upload_bytes: int = 0  # per client and round; 0 = the largest payload an honest client sends
    round_timeout: float = 3600.0  # seconds the server waits for replies in a round
    node_wait: float = 300.0  # seconds the server waits for the nodes to connect, and then to describe themselves
    device: str = "auto"
    out: str = "runs/federated"  # where the server writes history.json
    inject_faults: str = ""  # for tests: "PARTITION:FAULT ..." with FAULT in FAULTS

    def __post_init__(self) -> None:
        choices = {"mode": MODES, "partitioner": PARTITIONERS, "encoding": IMAGE_ENCODINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DdplugError(f"{_key(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("rounds", "clients", "ipc", "classes_per_client", "local_epochs"):
            if getattr(self, name) < 1:
                raise DdplugError(f"{_key(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("alpha", "round_timeout"):
            if getattr(self, name) <= 0:
                raise DdplugError(f"{_key(name)} must be positive, got {getattr(self, name)}")
        if self.anchor_noise < 0 or self.max_upload_bytes < 0 or self.node_wait < 0:
            raise DdplugError("anchor-noise, max-upload-bytes and node-wait cannot be negative")
        if self.method not in available_methods():
            raise DdplugError(f"unknown method {self.method!r}; choose one of {', '.join(available_methods())}")
        if self.mode == "distill" and self.rounds > 1 and self.method != "dm":
            raise DdplugError(f"multi-round distillation matches distributions around the global model (DM); "
                              f"method {self.method!r} only works one-shot (rounds = 1)")
        self.resolved_preset()  # bad overrides and fault specs fail here, not in the middle of a round
        self.faults()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FederatedSettings:
        """Settings from a run config or a message's ConfigRecord (kebab-case keys)."""
        kinds = {field.name: field.type for field in dataclasses.fields(cls)}  # "int", "float", "str"
        values = {}
        for key, value in config.items():
            if key == ROUND_KEY:
                continue
            name = key.replace("-", "_")
            if name not in kinds:
                raise DdplugError(f"unknown federated setting {key!r}; settings: {', '.join(map(_key, sorted(kinds)))}")
            value = convert_field(cls, name, value)
            # A run config is TOML: rounds = 1.5 or alpha = "x" arrive with the wrong type.
            allowed = {"int": (int,), "float": (int, float), "str": (str,)}[kinds[name]]
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise DdplugError(f"setting {key} expects {kinds[name]}, got {value!r}")
            values[name] = value
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        """The settings as a flat dict with run-config keys (fits a ConfigRecord)."""
        return {_key(name): value for name, value in dataclasses.asdict(self).items()}

    def resolved_preset(self) -> Preset:
        return get_preset(self.preset).override(parse_assignments(self.overrides.split()))

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def global_model(self, data: ImageDataset) -> torch.nn.Module:
        """The federation's model (the preset's evaluation model) at its seeded initial weights."""
        return create_model(self.resolved_preset().evaluation.model, in_channels=data.in_channels,
                            num_classes=data.num_classes, image_size=data.image_size,
                            seed=derive_seed(self.seed, "global-model"))

    def faults(self) -> dict[int, str]:
        """The injected faults: partition id -> fault."""
        faults = {}
        for item in self.inject_faults.split():
            partition, _, fault = item.partition(":")
            if not partition.isdigit() or fault not in FAULTS:
                raise DdplugError(f"inject-faults takes PARTITION:FAULT items with FAULT one of {', '.join(FAULTS)}, "
                                  f"got {item!r}")
            faults[int(partition)] = fault
        return faults


def _key(name: str) -> str:
    return name.replace("_", "-")


@functools.lru_cache(maxsize=2)
def cached_dataset(name: str, root: str) -> DatasetSplits:
    """A dataset loaded once per process (a simulated client process serves many partitions)."""
    return load_dataset(name, root or None)
