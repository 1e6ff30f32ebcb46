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

import dataclasses
import hashlib
import math
import re
import sys
import time
from json import dumps, loads
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddplug.devices import resolve_device
from ddplug.methods import CONDENSERS, get_condenser
from ddplug.errors import DdplugError
from ddplug.models import create_model
from ddplug.presets import Preset, get_preset
from ddplug.seeding import derive_seed
from ddplug.sets import create_param
from ddplug.storage import path_part, writable_folder, write_json
from ddplug_avalanche.report import save_plot, summarise, table
from ddplug_avalanche.streams import (
    BENCHMARK_PREFIX,
    CONDENSED,
    MEMORY_ONLY,
    STRATEGIES,
    MemoryBudget,
    StreamInfo,
    StreamSettings,
    build_stream,
    condense_settings,
    stream_settings,
)


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
        condensation = Condensation(method=method, preset=preset, settings=condense_settings(settings, param),
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


def _stream_key(benchmark: str, experiences: int, memory: MemoryBudget, preset: Preset,
                settings: StreamSettings) -> dict[str, Any]:
    """What makes runs comparable (and a cached run reusable): everything but the strategy and seed."""
    return {"benchmark": benchmark, "experiences": experiences, **memory.key(), "preset": preset.name,
            "settings": dataclasses.asdict(settings)}


def _run_file(out: Path, label: str, seed: int, key: dict[str, Any]) -> Path:
    digest = hashlib.blake2b(dumps(key, sort_keys=True).encode(), digest_size=6).hexdigest()
    return out / "runs" / f"{label}-seed{seed}-{digest}.json"


@dataclasses.dataclass(frozen=True)
class ContinualRun:
    """What a class-incremental benchmark runs, checked when built (before any data is read).

    Attributes:
        strategy: one of ``STRATEGIES``: ``condensed``, ``condensed-retrain`` or Avalanche's
            ``replay``, ``gdumb``, ``icarl``, ``naive``.
        experiences: the stream's experiences (the class count must divide evenly).
        memory: every strategy's budget, in raw uint8 images' bytes.
        method: the condensed strategies' condensation method (a per-class one).
        param: the condensed memory's parameterisation; None for the stream's. Part of the
            run's label, so the baselines' runs stay comparable.
        preset: the preset of the model, the optimiser and the condensation.
        epochs: epochs per experience; None for the preset's.

    Examples:
        >>> ContinualRun(strategy="condensed", memory=MemoryBudget(per_class=1)).label
        'condensed-dm'
        >>> ContinualRun(strategy="ewc")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: unknown strategy 'ewc'; choose one of condensed, condensed-retrain, replay, gdumb, icarl, naive
    """

    strategy: str = "condensed"
    experiences: int = 5
    memory: MemoryBudget = MemoryBudget(per_class=10)
    method: str = "dm"
    param: str | None = None
    preset: str = "cpu"
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise DdplugError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        methods = [name for name, condenser in CONDENSERS.items() if condenser.per_class]
        if self.method not in methods:
            raise DdplugError(f"unknown condensation method {self.method!r}; choose one of {', '.join(methods)}")
        for option, value in (("experiences", self.experiences), ("epochs", 1 if self.epochs is None else self.epochs)):
            if value < 1:
                raise DdplugError(f"--{option} must be at least 1, got {value}")
        if self.param is not None:
            if self.strategy not in CONDENSED or not get_condenser(self.method).learns:
                raise DdplugError(f"--param applies to a distiller's condensed memory; {self.strategy} with "
                                  f"{self.method} stores raw images: drop --param")
            create_param(self.param)
        get_preset(self.preset)

    @property
    def label(self) -> str:
        """The name of this run's results: the strategy, and for a condensed one its method and code."""
        if self.strategy not in CONDENSED:
            return self.strategy
        return f"{self.strategy}-{self.method}" + ("" if self.param is None else f"-{path_part(self.param)}")


def run_benchmark(benchmark: Any = "split-fmnist", run: ContinualRun = ContinualRun(), *, seeds: int = 3,
                  device: torch.device | str = "auto", out: str | Path | None = None,
                  print_json: bool = False) -> dict[str, Any]:
    """Run ``run`` on ``benchmark`` for seeds 0..seeds-1, print the table, save the results
    and the plot; finished (strategy, seed) runs in ``out`` are reused.

    Args:
        benchmark: ``split-DATASET`` (a dataset ddplug reads, split in class order) or a ready
            Avalanche scenario (its runs are not cached: nothing identifies its data).
        run: the strategy, memory, condensation and schedule.
        seeds: runs with seeds 0..seeds-1.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or a device.
        out: the output folder; default ``results/continual-<benchmark>-<preset>-<budget>-exp<N>``.
        print_json: print the summary as the last stdout line.

    Returns:
        The summary: accuracy matrices, final accuracy and forgetting (mean and std over
        seeds), memory sizes and bytes, seconds and the condensation's share, files.
    """
    if isinstance(benchmark, str) and not benchmark.startswith(BENCHMARK_PREFIX):
        raise DdplugError(f"unknown benchmark {benchmark!r}; write split-DATASET for a dataset ddplug reads "
                          "(split-fmnist, split-mnist, split-cifar10, ...)")
    if seeds < 1:
        raise DdplugError(f"--seeds must be at least 1, got {seeds}")
    chosen = get_preset(run.preset)
    settings = stream_settings(chosen, run.epochs)
    device = resolve_device(device) if isinstance(device, str) else device
    name = benchmark if isinstance(benchmark, str) else type(benchmark).__name__
    memory = run.memory
    budget = f"mem{memory.per_class}" if memory.total is None else f"size{memory.total}"
    out = writable_folder(out or f"results/continual-{name}-{run.preset}-{budget}-exp{run.experiences}")
    key = _stream_key(name, run.experiences, memory, chosen, settings)
    runs = []
    for seed in range(seeds):
        path = _run_file(out, run.label, seed, key)
        if isinstance(benchmark, str) and path.is_file():
            runs.append(loads(path.read_text()))
            continue
        result = run_one(run.strategy, seed, benchmark=benchmark, experiences=run.experiences, method=run.method,
                         memory=memory, preset=chosen, settings=settings, device=device, param=run.param)
        result = {"label": run.label, "seed": seed, "stream": key, "device": str(device), **result}
        if isinstance(benchmark, str):
            write_json(path, result)
        runs.append(result)
    summary = summarise(runs, strategy=run.strategy, method=run.method if run.strategy in CONDENSED else None,
                        key=key, settings=settings, device=device, out=out, param=run.param)
    summary["files"] = {"results": str(write_json(out / f"results-{run.label}.json", summary)),
                        "plot": str(save_plot(out, key)) if isinstance(benchmark, str) else None}
    print(table(summary))
    if print_json:
        print(dumps(summary))
    return summary
