"""``ddplug cl``: class-incremental learning with a condensed memory, next to Avalanche's own strategies.

    ddplug cl --strategy condensed --seeds 1
    ddplug cl --strategy replay --seeds 1

Builds a class-incremental stream from ddplug's local copy of a dataset (``split-fmnist``:
Fashion-MNIST in experiences of equally many classes, in class order), trains one strategy on
it once per seed, and prints the accuracy matrix (row i: after training experience i; column
j: test experience j), the final average accuracy and the average forgetting, mean ± std over
seeds. Every strategy gets the same model, initial weights, memory budget in bytes (those of
``--mem-per-class`` raw uint8 images for each class seen, or of ``--mem-size`` images in all,
shared by the classes seen: Avalanche's buffers hold that many raw images, the condensed
memory the codes of its parameterisation in the same bytes), optimiser, learning rate,
batch size and epochs. Finished
(strategy, seed) runs are kept in the output folder, so a re-run resumes, and the plot there
shows every strategy run on the same stream.

Strategies: ``condensed`` (ddplug's condensed memory replayed in every minibatch),
``condensed-retrain`` (a fresh model trained on the condensed memory alone at each step, the
DM paper's protocol), and Avalanche's ``replay``, ``gdumb``, ``icarl`` and ``naive``.

Avalanche is imported only when a run starts, so building this parser is cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from json import dumps, loads
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddplug.commands import Command
from ddplug.devices import resolve_device
from ddplug.data import ImageDataset, load_dataset
from ddplug.methods import CONDENSERS, get_condenser, select_subset
from ddplug.errors import DdplugError
from ddplug.evaluation.report import format_table, percent, pyplot, save_figure
from ddplug.models import create_model
from ddplug.presets import Preset, get_preset
from ddplug.seeding import derive_seed
from ddplug.sets import create_param
from ddplug.storage import path_part, writable_folder, write_json

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
STREAMS: dict[str, dict[str, Any]] = {
    "cpu": {"model": "convnet:width=16", "epochs": 2, "memory_epochs": 30, "batch_size": 64,
            "condense": {"iterations": 200, "batch_real": 32, "param": "multi:factor=2,bits=4"},
            "train_per_class": 1000, "test_per_class": 300},
    "paper": {"epochs": 5, "memory_epochs": 200, "batch_size": 128, "condense": {"iterations": 1000},
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


def build_strategy(name: str, info: StreamInfo, *, method: str, memory: MemoryBudget, preset: Preset,
                   settings: StreamSettings, device: torch.device, seed: int, evaluator: Any,
                   param: str | None = None) -> Any:
    """The strategy ``name`` with a fresh model (same initial weights for every strategy of a seed);
    ``param`` replaces the condensation's parameterisation (default: the preset's)."""
    from avalanche.training.plugins import GDumbPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer
    from avalanche.training.supervised import ICaRL, Naive

    from ddplug_avalanche import Condensation, CondensedReplay

    model = create_model(settings.model, in_channels=info.in_channels, num_classes=info.num_classes,
                         image_size=info.image_size, seed=derive_seed(seed, "continual-model"))
    protocol = preset.evaluation
    optimizer = torch.optim.SGD(model.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                                weight_decay=protocol.weight_decay)
    epochs = settings.memory_epochs if name in MEMORY_ONLY else settings.epochs
    common = dict(optimizer=optimizer, train_mb_size=settings.batch_size, train_epochs=epochs, eval_mb_size=512,
                  device=device, evaluator=evaluator)
    if name in CONDENSED:
        mode = "replay" if name == "condensed" else "retrain"
        condensation = Condensation(method=method, preset=preset, settings=_condense_settings(settings, param),
                                    dataset=info.name, mean=info.mean, std=info.std, seed=seed)
        return CondensedReplay(model=model, max_size=memory.total, mem_per_class=memory.per_class, mode=mode,
                               condensation=condensation, **common)
    if name == "icarl":
        # fixed_memory: memory_size is shared by the classes seen; otherwise it is per class.
        return ICaRL(feature_extractor=nn.Sequential(model.features, nn.Flatten()), classifier=model.classifier,
                     memory_size=memory.total or memory.per_class, buffer_transform=None,
                     fixed_memory=memory.total is not None, **common)
    if memory.total is None:  # every class its own share of a total sized for all classes
        total = memory.per_class * info.num_classes
        per_class = ClassBalancedBuffer(total, adaptive_size=False, total_num_classes=info.num_classes)
    else:  # the classes seen share the total
        total = memory.total
        per_class = ClassBalancedBuffer(total, adaptive_size=True)
    plugins: list[Any] = []
    if name == "replay":
        plugins = [ReplayPlugin(total, storage_policy=per_class)]
    elif name == "gdumb":
        gdumb = GDumbPlugin(total)
        gdumb.storage_policy = per_class
        plugins = [gdumb]
    return Naive(model=model, criterion=nn.CrossEntropyLoss(), plugins=plugins, **common)


_ACCURACY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/(?:Task\d+/)?Exp(\d+)$")


def run_one(name: str, seed: int, *, benchmark: Any, experiences: int, method: str, memory: MemoryBudget,
            preset: Preset, settings: StreamSettings, device: torch.device, param: str | None = None) -> dict[str, Any]:
    """Train ``name`` on the stream for one seed; its accuracy matrix, time and condensation costs."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.logging import TextLogger
    from avalanche.training.determinism.rng_manager import RNGManager
    from avalanche.training.plugins import EvaluationPlugin

    RNGManager.set_random_seeds(seed)  # Avalanche's loaders shuffle with the global generators
    scenario, info = build_stream(benchmark, experiences, settings, seed)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[TextLogger(sys.stderr)])
    strategy = build_strategy(name, info, method=method, memory=memory, preset=preset,
                              settings=settings, device=device, seed=seed, evaluator=evaluator, param=param)
    began = time.perf_counter()
    matrix, memory_sizes, memory_bytes = [], [], []
    pixels = info.in_channels * math.prod(info.image_size)
    for experience in scenario.train_stream:
        strategy.train(experience)
        memory_sizes.append(memory_size(strategy))
        memory_bytes.append(memory_in_bytes(strategy, pixels))
        row = [0.0] * len(scenario.test_stream)
        for key, value in strategy.eval(scenario.test_stream).items():
            match = _ACCURACY.match(key)
            if match:
                row[int(match[1])] = float(value)
        matrix.append(row)
    costs = strategy.plugin.storage_policy.costs if name in CONDENSED else []
    return {"matrix": matrix, "seconds": time.perf_counter() - began, "memory_sizes": memory_sizes,
            "memory_bytes": memory_bytes,
            "condensation": [dataclasses.asdict(cost) for cost in costs]}


def memory_size(strategy: Any) -> int:
    """Samples in the strategy's rehearsal memory now (0 without one)."""
    for plugin in strategy.plugins:
        policy = getattr(plugin, "storage_policy", None)
        if policy is not None:
            return len(policy.buffer)
        if hasattr(plugin, "x_memory"):  # iCaRL keeps its exemplars per class in its own plugin
            return sum(len(images) for images in plugin.x_memory)
    return 0


def memory_in_bytes(strategy: Any, pixels: int) -> int:
    """The rehearsal memory's bytes: a condensed memory's codes, otherwise its samples as raw
    uint8 images of ``pixels`` bytes each (what Avalanche's buffers would store)."""
    for plugin in strategy.plugins:
        policy = getattr(plugin, "storage_policy", None)
        if hasattr(policy, "memory_bytes"):
            return policy.memory_bytes
    return memory_size(strategy) * pixels


def final_accuracy(matrix: list[list[float]]) -> float:
    """Mean accuracy over all test experiences after the last training experience."""
    return statistics.fmean(matrix[-1])


def forgetting(matrix: list[list[float]]) -> float:
    """Mean over earlier experiences of their best accuracy before the last step minus the final one."""
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    return statistics.fmean(max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last))


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _label(strategy: str, method: str, param: str | None = None) -> str:
    if strategy not in CONDENSED:
        return strategy
    return f"{strategy}-{method}" + ("" if param is None else f"-{path_part(param)}")


def _condense_settings(settings: StreamSettings, param: str | None) -> dict[str, Any]:
    return settings.condense if param is None else {**settings.condense, "param": param}


def _stream_key(benchmark: str, experiences: int, memory: MemoryBudget, preset: Preset,
                settings: StreamSettings) -> dict[str, Any]:
    """What makes runs comparable (and a cached run reusable): everything but the strategy and seed."""
    return {"benchmark": benchmark, "experiences": experiences, **memory.key(), "preset": preset.name,
            "settings": dataclasses.asdict(settings)}


def _run_file(out: Path, label: str, seed: int, key: dict[str, Any]) -> Path:
    digest = hashlib.blake2b(dumps(key, sort_keys=True).encode(), digest_size=6).hexdigest()
    return out / "runs" / f"{label}-seed{seed}-{digest}.json"


def save_plot(out: Path, key: dict[str, Any]) -> Path:
    """Average accuracy on the experiences seen so far, after each one, for every strategy run on this stream."""
    curves: dict[str, list[list[float]]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        run = loads(path.read_text())
        if run["stream"] == key:
            curves.setdefault(run["label"], []).append(
                [100 * statistics.fmean(row[: i + 1]) for i, row in enumerate(run["matrix"])])
    figure, axes = pyplot().subplots(figsize=(6, 4))
    for label, runs in sorted(curves.items()):
        steps = range(1, len(runs[0]) + 1)
        mean = [statistics.fmean(values) for values in zip(*runs)]
        std = [statistics.pstdev(values) for values in zip(*runs)]
        axes.plot(steps, mean, marker="o", label=f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        axes.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        axes.set_xticks(list(steps))
    axes.set_xlabel("experiences trained")
    axes.set_ylabel("accuracy on the classes seen (%)")
    memory = MemoryBudget(key["mem_per_class"], key.get("mem_size"))
    axes.set_title(f"{key['benchmark']}, {memory.describe()}, {key['preset']} preset", fontsize=10)
    axes.legend(fontsize=8)
    return save_figure(figure, out / "accuracy.png")


def _check(benchmark: Any, experiences: int, strategy: str, method: str, seeds: int, epochs: int | None) -> None:
    if strategy not in STRATEGIES:
        raise DdplugError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if isinstance(benchmark, str) and not benchmark.startswith(BENCHMARK_PREFIX):
        raise DdplugError(f"unknown benchmark {benchmark!r}; write split-DATASET for a dataset ddplug reads "
                          "(split-fmnist, split-mnist, split-cifar10, ...)")
    methods = [name for name, condenser in CONDENSERS.items() if condenser.per_class]
    if method not in methods:
        raise DdplugError(f"unknown condensation method {method!r}; choose one of {', '.join(methods)}")
    for option, value in (("experiences", experiences), ("seeds", seeds),
                          ("epochs", 1 if epochs is None else epochs)):
        if value < 1:
            raise DdplugError(f"--{option} must be at least 1, got {value}")


def run_benchmark(
    benchmark: Any = "split-fmnist",
    experiences: int = 5,
    strategy: str = "condensed",
    mem_per_class: int | None = 10,
    method: str = "dm",
    preset: str = "cpu",
    seeds: int = 3,
    device: torch.device | str = "auto",
    json: bool = False,
    epochs: int | None = None,
    out: str | Path | None = None,
    mem_size: int | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """Run ``strategy`` for seeds 0..seeds-1 with a memory of ``mem_per_class`` images per class
    seen or (with ``mem_per_class=None``) ``mem_size`` images in all, print the table (and with
    ``json`` the summary as the last stdout line), save results and the plot into ``out``;
    returns the summary. ``param`` (condensed strategies) replaces the preset's parameterisation
    of the condensed memory; it is part of the label, so the baselines' runs stay comparable.

    Runs on a ready Avalanche scenario are not cached (nothing identifies its data)."""
    _check(benchmark, experiences, strategy, method, seeds, epochs)
    if param is not None:
        if strategy not in CONDENSED or not get_condenser(method).learns:
            raise DdplugError(f"--param applies to a distiller's condensed memory; {strategy} with {method} stores raw "
                              "images: drop --param")
        create_param(param)  # a bad spec fails before any work
    memory = MemoryBudget(mem_per_class, mem_size)
    chosen = get_preset(preset)
    settings = stream_settings(chosen, epochs)
    device = resolve_device(device) if isinstance(device, str) else device
    label = _label(strategy, method, param)
    name = benchmark if isinstance(benchmark, str) else type(benchmark).__name__
    budget = f"mem{mem_per_class}" if mem_size is None else f"size{mem_size}"
    out = writable_folder(out or f"results/continual-{name}-{preset}-{budget}-exp{experiences}")
    key = _stream_key(name, experiences, memory, chosen, settings)
    runs = []
    for seed in range(seeds):
        path = _run_file(out, label, seed, key)
        if isinstance(benchmark, str) and path.is_file():
            runs.append(loads(path.read_text()))
            continue
        run = run_one(strategy, seed, benchmark=benchmark, experiences=experiences, method=method,
                      memory=memory, preset=chosen, settings=settings, device=device, param=param)
        run = {"label": label, "seed": seed, "stream": key, "device": str(device), **run}
        if isinstance(benchmark, str):
            write_json(path, run)
        runs.append(run)
    summary = summarise(runs, strategy=strategy, method=method if strategy in CONDENSED else None,
                        key=key, settings=settings, device=device, out=out, param=param)
    summary["files"] = {"results": str(write_json(out / f"results-{label}.json", summary)),
                        "plot": str(save_plot(out, key)) if isinstance(benchmark, str) else None}
    print(table(summary))
    if json:
        print(dumps(summary))
    return summary


def summarise(runs: list[dict[str, Any]], *, strategy: str, method: str | None, key: dict[str, Any],
              settings: StreamSettings, device: torch.device, out: Path, param: str | None = None) -> dict[str, Any]:
    """Mean ± std over seeds of the final accuracy and forgetting, and the mean accuracy matrix."""
    matrices = [run["matrix"] for run in runs]
    accuracy, accuracy_std = _spread([final_accuracy(m) for m in matrices])
    forgot, forgot_std = _spread([forgetting(m) for m in matrices])
    seconds, seconds_std = _spread([run["seconds"] for run in runs])
    condensation = [sum(cost["seconds"] for cost in run["condensation"]) for run in runs]
    peaks = [cost["peak_memory_mb"] for run in runs for cost in run["condensation"]]
    return {
        "strategy": strategy, "method": method, "label": runs[0]["label"],
        "final_accuracy": accuracy, "final_accuracy_std": accuracy_std,
        "forgetting": forgot, "forgetting_std": forgot_std,
        "seconds": seconds, "seconds_std": seconds_std,
        "mem_per_class": key["mem_per_class"], "mem_size": key.get("mem_size"), "experiences": key["experiences"],
        "benchmark": key["benchmark"],
        "preset": key["preset"], "seeds": len(runs), "model": settings.model, "epochs": settings.epochs,
        "memory_epochs": settings.memory_epochs, "batch_size": settings.batch_size,
        "condense_settings": _condense_settings(settings, param) if method else None,
        "condensation_seconds": statistics.fmean(condensation) if peaks else None,
        "condensation_peak_memory_mb": max(peaks) if peaks else None,
        "accuracy_matrix": [[statistics.fmean(values) for values in zip(*rows)] for rows in zip(*matrices)],
        "accuracy_matrices": matrices, "memory_sizes": [run.get("memory_sizes") for run in runs],
        "memory_bytes": [run.get("memory_bytes") for run in runs],
        "device": str(device), "out_dir": str(out),
    }


def table(summary: dict[str, Any]) -> str:
    """The mean accuracy matrix and the headline numbers, as text."""
    matrix = summary["accuracy_matrix"]
    rows = [(f"after exp {i}", *(f"{100 * value:.1f}" for value in row)) for i, row in enumerate(matrix)]
    epochs = summary["memory_epochs"] if summary["strategy"] in MEMORY_ONLY else summary["epochs"]
    condensation = summary["condensation_seconds"]
    lines = [
        f"{summary['benchmark']}, {summary['experiences']} experiences, "
        f"{MemoryBudget(summary['mem_per_class'], summary['mem_size']).describe()}, "
        f"preset {summary['preset']} ({summary['model']}, {epochs} epochs per experience, "
        f"batch {summary['batch_size']}); "
        f"{summary['label']}, {summary['seeds']} seed(s), {summary['device']}",
        "test accuracy (%) after training experience i (rows) on test experience j (columns), mean over seeds",
        format_table(("", *(f"exp {j}" for j in range(len(matrix[0])))), rows),
        f"final average accuracy: {percent(summary['final_accuracy'], summary['final_accuracy_std'])} %   "
        f"average forgetting: {percent(summary['forgetting'], summary['forgetting_std'])} %   "
        f"seconds per run: {summary['seconds']:.0f}"
        + ("" if condensation is None else f" (condensation {condensation:.0f})"),
        f"written to {summary['out_dir']}/",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ddplug cl``."""
    parser.add_argument("--benchmark", default="split-fmnist",
                        help="split-DATASET: a dataset ddplug reads, split in class order")
    parser.add_argument("--experiences", type=int, default=5, help="experiences (the class count must divide evenly)")
    parser.add_argument("--strategy", default="condensed", help=", ".join(STRATEGIES))
    parser.add_argument("--mem-per-class", type=int, default=None,
                        help="memory budget per class seen, in raw uint8 images' bytes, for every strategy "
                             "(default 10)")
    parser.add_argument("--mem-size", type=int, default=None,
                        help="instead: a budget of that many raw images' bytes in all, shared by the classes seen "
                             "(shares shrink as classes arrive)")
    parser.add_argument("--method", default="dm",
                        help="condensation method of the condensed strategies: dm, random, herding, ...")
    parser.add_argument("--param", default=None,
                        help="parameterisation of the condensed memory, e.g. pixels or multi:factor=2 (default: the "
                             "stream's: multi:factor=2,bits=4 with the cpu preset)")
    parser.add_argument("--preset", default="cpu", help="cpu (minutes on 2 cores: data subsets, small model) or paper")
    parser.add_argument("--seeds", type=int, default=3, help="runs with seeds 0..N-1")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per experience (default: the preset's; gdumb and condensed-retrain keep theirs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None, help="output folder (default: results/continual-<benchmark>-...)")


def run_from_args(args: argparse.Namespace) -> int:
    mem_per_class = 10 if args.mem_per_class is None and args.mem_size is None else args.mem_per_class
    run_benchmark(args.benchmark, args.experiences, args.strategy, mem_per_class, args.method, args.preset,
                  args.seeds, args.device, args.json, args.epochs, args.out, mem_size=args.mem_size, param=args.param)
    return 0


COMMAND = Command(name="cl", help="class-incremental learning with a condensed memory (Avalanche)", extra="avalanche",
                  requires=("avalanche",), add_arguments=add_arguments, run=run_from_args)
