"""Condense part of a dataset, save a set and judge it: the compositions the CLI, the
benchmarks and the adapters share (a whole dataset is condensed by
``get_condenser(method).condense``). Every file is written atomically as soon as it exists, so a later failure
(e.g. during evaluation) never loses the set already made."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ddplug.data import ZCA, DatasetSplits, ImageDataset
from ddplug.methods import CONDENSERS, Condensed, get_condenser
from ddplug.methods.condenser import CHECKPOINT_FILE
from ddplug.errors import DdplugError
from ddplug.evaluation.evaluator import EvalResult, Evaluator
from ddplug.evaluation.published import published_result
from ddplug.evaluation.report import format_table, percent, save_accuracy_plot
from ddplug.presets import Preset
from ddplug.sets import SET_FILE, SyntheticSet, save_grid, save_set
from ddplug.storage import write_json


def condense_classes(
    real: ImageDataset,
    method: str,
    *,
    ipc: int,
    preset: Preset,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    copy_small_classes: bool = True,
) -> SyntheticSet:
    """Condense whatever classes ``real`` holds into the bytes of ``ipc`` raw images each.

    For data that is only part of a dataset (an experience of a class-incremental stream,
    one client's partition): absent classes are skipped, and a class with ``ipc`` or fewer
    real images keeps them as they are, or with ``copy_small_classes=False`` (a set that
    leaves its owner: no real image may be in it) is left out, listed in the result's
    ``meta["left_out_classes"]``; ``meta["privacy"]`` is the distiller's DP report (None
    without DP), and a set of condensed classes only keeps the distiller's code. The others are condensed together (all classes in one
    batched run), relabelled to their positions and back, so the result's labels are in
    ``real``'s class space (hard, or soft with ``real.num_classes`` columns).
    """
    condenser = get_condenser(method)
    condensed_classes, small_classes = _split_classes(real, ipc)
    check_condensation(real, method, ipc=ipc, preset=preset, settings=settings)
    kept_classes = small_classes if copy_small_classes else small_classes[:0]
    kept = torch.isin(real.labels, kept_classes)
    parts = [SyntheticSet(real.images[kept], real.labels[kept], real.num_classes, real.mean, real.std)]
    privacy, made = None, None
    if len(condensed_classes):
        local = _local_classes(real, condensed_classes)
        made = condenser.condense(local, ipc=ipc, preset=preset, seed=seed, settings=settings, device=device,
                        progress=progress).synthetic.to("cpu")
        labels = condensed_classes[made.labels] if not made.soft_labels else torch.zeros(
            len(made), real.num_classes).index_copy_(1, condensed_classes, made.labels)
        parts.append(SyntheticSet(made.images, labels, real.num_classes, real.mean, real.std, lr=made.lr))
        privacy = made.meta.get("privacy")
    union = SyntheticSet.concatenate(parts, meta={"method": method, "dataset": real.name, "ipc": ipc, "seed": seed,
                                     "privacy": privacy, "kept_real_classes": kept_classes.tolist(),
                                     "left_out_classes": [] if copy_small_classes else small_classes.tolist()})
    if made is None or made.code is None or len(kept_classes):
        return union
    # Condensed classes only: the set keeps its code (class by class, ``meta["classes"]``), to be stored or sent as it.
    return replace(union, code=made.code, param=made.param, meta={**union.meta, "classes": condensed_classes.tolist()})


def check_condensation(real: ImageDataset, method: str, *, ipc: int, preset: Preset,
                       settings: dict[str, Any] | None = None) -> None:
    """Raise :class:`DdplugError` now if :func:`condense_classes` with these arguments would
    fail on ``real`` for its settings (cheap: nothing is condensed)."""
    condenser = get_condenser(method)
    config = condenser.make_config({**preset.method_settings(method), **(settings or {}), "ipc": ipc}
                                   if condenser.config_class else settings)
    if config is None:
        return
    if config.zca:
        # The kept real images and the data the consumers (replay, federated clients) train
        # on are not whitened, so a whitened set would not fit in with them.
        raise DdplugError("zca is for benchmark distillation, not for condensing part of a dataset: drop zca")
    condensed_classes, _ = _split_classes(real, ipc)
    if len(condensed_classes):
        config.validate(_local_classes(real, condensed_classes))
    else:
        config.check()


def _split_classes(real: ImageDataset, ipc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes present in ``real`` with more than ``ipc`` images (condensed), and the others."""
    counts = real.class_counts()
    present = torch.nonzero(counts).flatten()
    return present[counts[present] > ipc], present[counts[present] <= ipc]


def _local_classes(real: ImageDataset, classes: torch.Tensor) -> ImageDataset:
    """The images of ``classes``, relabelled to their positions in ``classes``."""
    members = torch.isin(real.labels, classes)
    position = torch.full((real.num_classes,), -1, dtype=torch.long)
    position[classes] = torch.arange(len(classes))
    local = real.subset(torch.nonzero(members).flatten())
    return replace(local, labels=position[local.labels], num_classes=len(classes), class_names=None)


GRID_FILE = "synthetic.png"
JUDGEMENT_FILES = ("evaluation.json", "accuracy.png")
DISTILL_FILES = (SET_FILE, GRID_FILE, CHECKPOINT_FILE, *JUDGEMENT_FILES)  # what `ddplug distill` writes


def save_outputs(condensed: Condensed, out_dir: str | Path) -> dict[str, str]:
    """Write the set and its picture into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    files = {"set": str(save_set(condensed.synthetic, out_dir / SET_FILE))}
    files["grid"] = str(save_grid(condensed.synthetic, out_dir / GRID_FILE, zca=condensed.zca))
    return files


@dataclass
class Judgement:
    """A set's evaluation next to the random-subset baseline and the published numbers.

    Attributes:
        method: what made the set.
        dataset: the dataset it was judged on.
        ipc: its budget in raw images per class.
        result: its networks' accuracies.
        baselines: baseline name -> the same for its real subset of the same bytes.
        preset: the evaluation protocol's preset.
        seed: the evaluation's seed.
        zca_epsilon: set when the set and the baselines were trained and tested whitened.
        extra: how the set was made and where its files are.
    """

    method: str
    dataset: str
    ipc: int | None
    result: EvalResult
    baselines: dict[str, EvalResult]
    preset: str
    seed: int
    zca_epsilon: float | None = None  # the set and the baselines were trained and tested whitened
    extra: dict[str, Any] = field(default_factory=dict)  # how the set was made, where its files are: in summary()

    @property
    def mean(self) -> float:
        """The set's mean test accuracy (a fraction)."""
        return self.result.mean

    @property
    def std(self) -> float:
        return self.result.std

    @property
    def accuracies(self) -> list[float]:
        """One test accuracy per fresh network trained on the set."""
        return self.result.accuracies

    def summary(self) -> dict[str, Any]:
        """What ``evaluation.json`` and ``--json`` hold: the accuracies, the baselines, the
        published numbers at this budget, and :attr:`extra`."""
        published = published_result(self.method, self.dataset, self.ipc)
        published_random = published_result("random", self.dataset, self.ipc)
        random = self.baselines.get("random")
        summary: dict[str, Any] = {
            "method": self.method,
            "dataset": self.dataset,
            "ipc": self.ipc,
            "preset": self.preset,
            "seed": self.seed,
            "accuracy_mean": self.result.mean,
            "accuracy_std": self.result.std,
            "accuracies": self.result.accuracies,
            "random_baseline_mean": None if random is None else random.mean,
            "random_baseline_std": None if random is None else random.std,
            "zca_epsilon": self.zca_epsilon,
            "eval_model": self.result.model,
            "eval_epochs": self.result.epochs,
            "eval_models": len(self.result.accuracies),
            "eval_seconds_per_model": self.result.seconds_per_model,
            "published_accuracy": None if published is None else published.accuracy / 100,
            "published_source": None if published is None else published.source,
            "published_random_accuracy": None if published_random is None else published_random.accuracy / 100,
        }
        for name, baseline in self.baselines.items():
            if name != "random":
                summary[f"{name}_baseline_mean"] = baseline.mean
                summary[f"{name}_baseline_std"] = baseline.std
        return {**summary, **self.extra}

    def rows(self) -> list[tuple[str, str, str]]:
        rows = [(f"{self.method} (this set)", percent(self.result.mean, self.result.std), f"{self.preset} preset, {self.result.model}")]
        rows += [(f"{name} subset", percent(b.mean, b.std), "same protocol") for name, b in self.baselines.items()]
        for name in dict.fromkeys([self.method, *self.baselines, "full"]):
            published = published_result(name, self.dataset, self.ipc)
            if published is not None:
                note = "published" + ("" if published.confirmed else " (unconfirmed)")
                rows.append((f"{name} (paper)", f"{published.accuracy:.2f}", note))
        return rows

    def table(self) -> str:
        ipc = "all" if self.ipc is None else self.ipc
        title = f"{self.dataset}, ipc {ipc}: test accuracy (%) over {len(self.result.accuracies)} models"
        return title + "\n" + format_table(("set", "accuracy %", "protocol"), self.rows())

    def plot(self, path: str | Path) -> Path:
        bars = [(f"{self.method} (here)", 100 * self.result.mean, 100 * self.result.std, "measured")]
        bars += [(f"{name} (here)", 100 * b.mean, 100 * b.std, "measured") for name, b in self.baselines.items()]
        for name in dict.fromkeys([self.method, *self.baselines]):
            published = published_result(name, self.dataset, self.ipc)
            if published is not None:
                bars.append((f"{name} (paper)", published.accuracy, 0.0, "published"))
        return save_accuracy_plot(path, bars, f"{self.dataset}, ipc {self.ipc}, {self.preset} preset ({self.result.model})")


def judge(
    synthetic: SyntheticSet,
    data: DatasetSplits,
    preset: Preset,
    *,
    method: str,
    baselines: tuple[str, ...] = ("random",),
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    zca: ZCA | None = None,
) -> Judgement:
    """Evaluate ``synthetic`` and each baseline selection at the same bytes (raw uint8 images
    per class: the set's budget) on one protocol.

    A ZCA-whitened set is tested on whitened test images, and its baselines are selected from
    (and trained on) the whitened training images, so that all are compared in one space;
    ``zca`` is the whitening of ``data.train`` if the caller has it already (saves refitting).
    """
    evaluator = Evaluator(data, preset.evaluation, device=device, progress=progress, zca=zca)
    full = method in CONDENSERS and not CONDENSERS[method].per_class  # the whole dataset: no ipc, no baselines
    ipc = None if full else synthetic.budget_ipc  # baselines get the set's bytes, not its decoded count
    epochs = preset.evaluation.full_epochs if full else None
    result = evaluator.evaluate(synthetic, seed=seed, epochs=epochs, label=method)
    baseline_results = {}
    epsilon = synthetic.zca_epsilon
    baselines = () if full else tuple(name for name in baselines if name != method)
    if baselines:
        train = data.train if epsilon is None else evaluator.zca(epsilon).whiten_dataset(data.train)
        for name in baselines:
            baseline = get_condenser(name).condense(train, ipc=ipc, preset=preset, seed=seed, device=device,
                                                    progress=progress)
            baseline.synthetic.meta["zca_epsilon"] = epsilon  # it lives in the space it was picked in
            baseline_results[name] = evaluator.evaluate(baseline.synthetic, seed=seed, label=name)
    return Judgement(method, data.train.name, ipc, result, baseline_results, preset.name, seed, epsilon)


def write_judgement(judgement: Judgement, out_dir: str | Path) -> dict[str, Any]:
    """Save ``evaluation.json`` and ``accuracy.png`` (their paths join ``judgement.extra``);
    returns the summary written."""
    out_dir = Path(out_dir)
    evaluation, plot = (out_dir / name for name in JUDGEMENT_FILES)
    files = {"evaluation": str(evaluation), "plot": str(judgement.plot(plot))}
    judgement.extra["files"] = {**judgement.extra.get("files", {}), **files}
    summary = judgement.summary()
    write_json(evaluation, summary)
    return summary
