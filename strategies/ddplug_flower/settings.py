"""The settings of a federated run: read from the run config, sent to the clients in every message.

The ServerApp reads them from ``[tool.flwr.app.config]`` (or is given them by the
command line) and puts them in the ConfigRecord of each message, so the clients of a
simulation and of a real deployment see the same values; only node-local facts
(``partition-id``, ``num-partitions``, ``data-root``) come from the node config.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ddplug.data import DatasetSplits, ImageDataset, default_data_root, load_dataset
from ddplug.devices import check_device_name, resolve_device
from ddplug.methods import available_methods, get_condenser
from ddplug.errors import DdplugError
from ddplug.models import create_model
from ddplug.presets import Preset, get_preset
from ddplug import settings as flags
from ddplug.settings import convert_field, fields_from_mapping, kebab, parse_assignments
from ddplug.seeding import derive_seed
from ddplug.sets import IMAGE_ENCODINGS, create_param
from ddplug.privacy import calibrate_noise
from ddplug_flower.payload import DEFAULT_LR_RANGE, SetSpec

MODES = ("distill", "fedavg")
PARTITIONERS = ("iid", "dirichlet", "pathological")
ROUND_KEY = "server-round"  # what Flower's strategies add to the config of each round


def _setting(default: Any, help: str = "") -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


# The uploads' defaults: of the one-shot uploads measured at alpha 0.5, the one that leaks
# least within 1 point of the best accuracy (docs: privacy): 20 four-bit images per class in
# the bytes of 10, each started as the mean of 3 real images of its class.
PRIVATE_PARAM = "pixels:bits=4"
PRIVATE_INIT = "blend:images=3"


@dataclass(frozen=True)
class FederatedSettings:
    """Every setting of a run, written once: the run-config keys are the field names with
    ``-`` for ``_`` (``[tool.flwr.app.config]`` holds these defaults, checked by a test),
    and ``ddplug fl`` has one flag per field, generated from them (:func:`add_setting_flags`)."""

    mode: str = _setting("distill", "distill: clients upload synthetic sets; fedavg: the FedAvg baseline")
    rounds: int = _setting(1, "distill: 1 = one-shot; more = distil around the global model (FedDM)")
    clients: int = _setting(10, "nodes the server waits for")
    dataset: str = _setting("fashion-mnist")
    data_root: str = _setting("", "'' = $DDPLUG_DATA or ~/.cache/ddplug/data; a node's data-root overrides it")
    partitioner: str = _setting("dirichlet", "iid, dirichlet or pathological")
    alpha: float = _setting(0.5, "Dirichlet concentration (small: skewed clients)")
    classes_per_client: int = _setting(2, "pathological partitions")
    seed: int = _setting(0)
    ipc: int = _setting(10, "images per class each client uploads")
    method: str = _setting("dm", "one-shot method: " + ", ".join(
        name for name in available_methods() if get_condenser(name).per_class))
    preset: str = _setting("cpu")
    overrides: str = _setting("", "preset overrides, space-separated: 'eval.epochs=50 dm.iterations=200'")
    encoding: str = _setting("uint8", "how clients ship plain-pixel sets' images: uint8, float16 or float32")
    param: str = _setting("", "distill: what clients learn and upload in the bytes of ipc raw images per class "
                              "(pixels, pixels:bits=4, multi:factor=2, multi:factor=2,bits=4, dct:keep=0.25, "
                              f"factor:bases=4); the server decodes it. '' = {PRIVATE_PARAM} for a distillation "
                              "method, pixels for a selection")
    init: str = _setting("", "distill: start each set from real images, blends of N real images of a class "
                             f"(blend:images=N), noise or herding (docs: what each leaks). '' = {PRIVATE_INIT}")
    dp_epsilon: float = _setting(0.0, "distill: > 0 = differentially private uploads, (epsilon, dp-delta) per client "
                                      "over all rounds; needs init noise")
    dp_delta: float = _setting(1e-5, "distill: the delta of dp-epsilon")
    leakage_probes: int = _setting(100, "distill: real images per client probed for the upload's leakage report")
    anchor_noise: float = _setting(0.01, "multi-round: std of the noise around the global model's weights")
    local_epochs: int = _setting(1, "fedavg: epochs of local training per round")
    max_upload_bytes: int = _setting(0, "per client and round; 0 = the largest payload an honest client sends")
    lr_min: float = _setting(DEFAULT_LR_RANGE[0], "distill: smallest learned lr accepted from a client")
    lr_max: float = _setting(DEFAULT_LR_RANGE[1], "distill: largest learned lr accepted; the union trains with the valid ones' median")
    max_examples: int = _setting(0, "fedavg: largest num-examples a client may claim; 0 = the partition size it "
                                    "reported when queried")
    max_weight: float = _setting(1000.0, "fedavg: largest magnitude of any weight in a client's update")
    round_timeout: float = _setting(3600.0, "seconds the server waits for replies in a round")
    node_wait: float = _setting(300.0, "seconds the server waits for the nodes to connect, then to describe themselves")
    device: str = _setting("auto", "auto, cpu, cuda")
    out: str = _setting("runs/federated", "where the server writes history.json")

    def __post_init__(self) -> None:
        choices = {"mode": MODES, "partitioner": PARTITIONERS, "encoding": IMAGE_ENCODINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DdplugError(f"{kebab(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("rounds", "clients", "ipc", "classes_per_client", "local_epochs", "leakage_probes"):
            if getattr(self, name) < 1:
                raise DdplugError(f"{kebab(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("alpha", "round_timeout"):
            if getattr(self, name) <= 0:
                raise DdplugError(f"{kebab(name)} must be positive, got {getattr(self, name)}")
        for name in ("anchor_noise", "max_upload_bytes", "node_wait", "max_examples", "dp_epsilon"):
            if getattr(self, name) < 0:
                raise DdplugError(f"{kebab(name)} cannot be negative, got {getattr(self, name)}")
        for setting in dataclasses.fields(self):
            value = getattr(self, setting.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise DdplugError(f"{kebab(setting.name)} must be a finite number, got {value}")
        if not 0 < self.lr_min <= self.lr_max:
            raise DdplugError(f"need 0 < lr-min <= lr-max, got {self.lr_min} and {self.lr_max}")
        if self.max_weight <= 0:
            raise DdplugError(f"max-weight must be positive, got {self.max_weight}")
        if self.method not in available_methods():
            raise DdplugError(f"unknown method {self.method!r}; choose one of {', '.join(available_methods())}")
        learns = get_condenser(self.method).learns
        if not self.param:
            object.__setattr__(self, "param", PRIVATE_PARAM if learns else "pixels")
        if not self.init:
            object.__setattr__(self, "init", PRIVATE_INIT)
        if self.mode == "distill" and self.rounds > 1 and self.method != "dm":
            raise DdplugError(f"multi-round distillation matches distributions around the global model (DM); "
                              f"method {self.method!r} only works one-shot (rounds = 1)")
        create_param(self.param)  # an unknown parameterisation or option fails here
        if self.param != "pixels" and not get_condenser(self.method).learns:
            raise DdplugError(f"method {self.method!r} selects real images, which travel as pixels: drop param")
        self.resolved_preset()  # bad overrides fail here, not in the middle of a round
        check_device_name(self.device)
        # What each client will distil with, checked here by the core's own rules (init, DP,
        # the method's privacy), so that a setting no client can run fails on the server
        # before any process starts.
        config = self.client_config()
        if self.dp_epsilon and config is None:
            raise DdplugError(f"dp-epsilon makes distilled uploads private; mode {self.mode} with method "
                              f"{self.method} uploads no distilled set: use mode distill and method dm")
        if config is not None:
            config.check()
            if self.dp_epsilon:  # the worst case: a class no larger than its batch (every step sees it all)
                per_round = self.privacy_per_round()
                calibrate_noise(per_round["dp_epsilon"], per_round["dp_delta"], 1.0, config.iterations)

    def upload_settings(self) -> dict[str, Any]:
        """What every distilled upload is made with: the run's parameterisation (the upload
        carries its code) and initialisation, and its share of the DP budget."""
        return {"param": self.param, "init": self.init, **self.privacy_per_round()}

    def client_config(self) -> Any:
        """The config of the clients' method (None for a selection), as the clients build it."""
        condenser = get_condenser(self.method)
        if not condenser.learns or self.mode != "distill":
            return None
        return condenser.make_config({**self.resolved_preset().method_settings(self.method), **self.upload_settings(),
                                      "ipc": self.ipc})

    def learns_labels(self, config: Any = None) -> bool:
        """Whether the clients' sets carry learned soft labels (their bytes inside the budget);
        ``config``: the client config when already built (else built here)."""
        config = self.client_config() if config is None else config
        return bool(getattr(config, "learn_labels", False))

    def check_for(self, data: DatasetSplits) -> None:
        """Fail now on what only the data shows: an upload code that does not fit its images,
        a set that would not fit in memory."""
        if self.mode != "distill":
            return
        config = self.client_config()
        SetSpec.for_dataset(data.train, ipc=self.ipc, encoding=self.encoding, param=self.param,
                            soft_labels=self.learns_labels(config))
        if config is not None:
            config.validate(data.train)

    def privacy_per_round(self) -> dict[str, float]:
        """Each round's share of the (epsilon, delta) budget: rounds compose sequentially
        (their epsilons and deltas add up), and each client distils once per round."""
        if not self.dp_epsilon:
            return {}
        return {"dp_epsilon": self.dp_epsilon / self.rounds, "dp_delta": self.dp_delta / self.rounds}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FederatedSettings:
        """Settings from a run config or a message's ConfigRecord (kebab-case keys)."""
        # A run config is TOML: rounds = 1.5 or alpha = "x" arrive with the wrong type.
        return cls(**fields_from_mapping(cls, {key: value for key, value in config.items() if key != ROUND_KEY},
                                         "federated setting"))

    def to_config(self) -> dict[str, Any]:
        """The settings as a flat dict with run-config keys (fits a ConfigRecord)."""
        return {kebab(name): value for name, value in dataclasses.asdict(self).items()}

    def resolved_preset(self) -> Preset:
        return get_preset(self.preset).override(parse_assignments(self.overrides.split()))

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def global_model(self, data: ImageDataset) -> torch.nn.Module:
        """The federation's model (the preset's evaluation model) at its seeded initial weights."""
        return create_model(self.resolved_preset().evaluation.model, in_channels=data.in_channels,
                            num_classes=data.num_classes, image_size=data.image_size,
                            seed=derive_seed(self.seed, "global-model"))


def add_setting_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """One ``--kebab-name`` flag per setting (default None: the setting's own default)."""
    group = parser.add_argument_group("run settings", "the run config's keys; defaults as in pyproject.toml")
    flags.add_setting_flags(group, {field.name: f"{field.metadata['help']} (default: {field.default!r})".lstrip()
                                    for field in dataclasses.fields(FederatedSettings) if field.name not in skip})


def settings_from_flags(args: argparse.Namespace, **values: Any) -> FederatedSettings:
    """The settings the flags of :func:`add_setting_flags` give, then ``values``."""
    given = flags.given_settings(args, [field.name for field in dataclasses.fields(FederatedSettings)])
    return FederatedSettings(**{**{name: convert_field(FederatedSettings, name, value) for name, value in given.items()},
                                **values})


def data_source(root: str) -> str:
    """Where a dataset named with ``root`` is read from, as a cache key: ``root``, or the
    default root as it is now (``DDPLUG_DATA`` may change within one process)."""
    return root or f"default:{default_data_root()}"


def cached_dataset(name: str, root: str) -> DatasetSplits:
    """A dataset loaded once per process and folder (a simulated client process serves many
    partitions)."""
    return _cached_dataset(name, root, data_source(root))


@functools.lru_cache(maxsize=2)
def _cached_dataset(name: str, root: str, source: str) -> DatasetSplits:  # ``source`` keys the cache
    return load_dataset(name, root or None)
