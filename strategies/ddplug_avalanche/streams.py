"""The class-incremental streams of ``ddplug cl``: a dataset ddplug reads, split in class
order into experiences, with the stream settings of each preset and the memory budget."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddplug.data import ImageDataset, load_dataset
from ddplug.methods import select_subset
from ddplug.errors import DdplugError
from ddplug.presets import Preset
from ddplug.seeding import derive_seed


# The strategies `ddplug cl` runs on a stream.
STRATEGIES = ("condensed", "condensed-retrain", "replay", "gdumb", "icarl", "naive")
CONDENSED = ("condensed", "condensed-retrain")
MEMORY_ONLY = ("condensed-retrain", "gdumb")  # train on the memory alone, for memory_epochs
BENCHMARK_PREFIX = "split-"


@dataclass(frozen=True)
class StreamSettings:
    """How a preset runs a stream; the optimiser (lr, momentum, weight decay) is the preset's."""

    model: str
    epochs: int  # per experience, on the experience's data (and memory)
    memory_epochs: int  # per experience, for the strategies that train on the memory alone
    batch_size: int
    condense: dict[str, Any]  # settings of each experience's condensation (method settings)
    train_per_class: int | None  # a class-balanced random subset of the train split; None: all
    test_per_class: int | None


# How each preset runs a stream; the model defaults to the preset's evaluation model and
# condensation matches with the stream's model. ``cpu`` fits a condensed Split-FMNIST run in
# minutes on 2 CPU cores; ``paper`` uses whole splits and the full-size model (a GPU). The
# ``cpu`` memory stores 4-bit mosaics: at 10 images' bytes per class they beat 8-bit ones by
# 1.2 points of final accuracy for 1.4x the time per run (README, class-incremental learning).
# ``paper`` keeps the DM paper's memory of raw-size 8-bit images.


STREAMS: dict[str, dict[str, Any]] = {
    "cpu": {"model": "convnet:width=16", "epochs": 2, "memory_epochs": 30, "batch_size": 64,
            "condense": {"iterations": 200, "batch_real": 32, "param": "multi:factor=2,bits=4"},
            "train_per_class": 1000, "test_per_class": 300},
    "paper": {"epochs": 5, "memory_epochs": 200, "batch_size": 128, "condense": {"iterations": 1000, "param": "pixels"},
              "train_per_class": None, "test_per_class": None},
}


def stream_settings(preset: Preset, epochs: int | None = None) -> StreamSettings:
    """The stream settings of ``preset`` (``epochs`` replaces its epochs per experience)."""
    if preset.name not in STREAMS:
        raise DdplugError(f"no continual-learning settings for preset {preset.name!r}; choose one of "
                          f"{', '.join(STREAMS)}")
    values = {"model": preset.evaluation.model, **STREAMS[preset.name]}
    values["condense"] = {"model": values["model"], **values["condense"]}
    settings = StreamSettings(**values)
    return settings if epochs is None else dataclasses.replace(settings, epochs=epochs)


@dataclass(frozen=True)
class MemoryBudget:
    """Every strategy's memory budget, in raw uint8 images' bytes: ``per_class`` images for each
    class seen, or ``total`` images in all, of which each class seen gets ``total // classes``
    (a share that shrinks as classes arrive)."""

    per_class: int | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        if (self.per_class is None) == (self.total is None):
            raise DdplugError("give the memory as --mem-per-class K or as --mem-size N, not both")
        for option, value in (("mem-per-class", self.per_class), ("mem-size", self.total)):
            if value is not None and value < 1:
                raise DdplugError(f"--{option} must be at least 1, got {value}")

    def describe(self) -> str:
        return f"memory {self.per_class} per class" if self.total is None else f"memory {self.total} in all"

    def key(self) -> dict[str, int | None]:
        """The budget as run-cache key entries (a per-class budget keeps the key it always had)."""
        return {"mem_per_class": self.per_class} if self.total is None else {"mem_per_class": None,
                                                                              "mem_size": self.total}


@dataclass(frozen=True)
class StreamInfo:
    """What the strategies need to know about the stream's data."""

    name: str  # for DSA's choice of transforms
    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def _subset(split: ImageDataset, per_class: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if per_class is None or per_class >= int(split.class_counts().min()):
        return split.images, split.labels
    chosen = select_subset("random", split, per_class, seed=seed)
    return chosen.images, chosen.labels


def build_stream(benchmark: Any, experiences: int, settings: StreamSettings, seed: int) -> tuple[Any, StreamInfo]:
    """A class-incremental scenario and its data's description.

    ``benchmark`` is ``"split-NAME"`` for any dataset ``ddplug.load_dataset`` reads (the data
    is normalised there; the benchmark adds no transforms), or a ready Avalanche scenario such
    as ``SplitFMNIST(n_experiences=5)`` whose data is present.
    """
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark

    if not isinstance(benchmark, str):
        x = benchmark.train_stream[0].dataset[0][0]
        return benchmark, StreamInfo("", x.shape[0], tuple(x.shape[1:]), benchmark.n_classes, None, None)
    data = load_dataset(benchmark.removeprefix(BENCHMARK_PREFIX))
    train, test = data.train, data.test
    if train.num_classes % experiences:
        raise DdplugError(f"{train.num_classes} classes cannot be split into {experiences} equal experiences; "
                          f"choose --experiences among the divisors of {train.num_classes}")
    scenario = nc_benchmark(
        torch.utils.data.TensorDataset(*_subset(train, settings.train_per_class, derive_seed(seed, "train-subset"))),
        torch.utils.data.TensorDataset(*_subset(test, settings.test_per_class, derive_seed(seed, "test-subset"))),
        n_experiences=experiences, task_labels=False, seed=seed, fixed_class_order=list(range(train.num_classes)))
    info = StreamInfo(train.name, train.in_channels, train.image_size, train.num_classes, train.mean, train.std)
    return scenario, info


def condense_settings(settings: StreamSettings, param: str | None) -> dict[str, Any]:
    return settings.condense if param is None else {**settings.condense, "param": param}
