"""The tables of the README and the docs, generated from the benchmark rows in ``benchmarks/``.

A generated table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->`` in a
Markdown file; this script rewrites what is between them from the rows, so a number in the
docs is never typed by hand. ``--check`` changes nothing and exits 1 when a committed table
differs from what its rows give (the test suite runs it).

    python -m simulations.tables            # rewrite every generated table
    python -m simulations.tables --check    # exit 1 if any table and its data disagree
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PAGES = ("README.md", "docs/results.md", "docs/continual.md", "docs/budgets.md", "docs/privacy.md")
RECORDED = "recorded"  # tables kept as their columns and rows, with the prose that states their command
REGION = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def rows(folder: str, root: Path = BENCHMARKS) -> list[dict]:
    """Every JSON row in ``benchmarks/FOLDER``, by file name."""
    return [json.loads(path.read_text()) for path in sorted((root / folder).glob("*.json"))]


def markdown_table(columns: list[str], cells: list[list[str]]) -> str:
    """A Markdown table: a line per row of ``cells`` under ``columns`` (an empty cell is one space)."""
    def line(row: list[str]) -> str:
        return "|" + "|".join(f" {cell} " if cell else " " for cell in row) + "|"

    return "\n".join([line(columns), "|" + "---|" * len(columns), *map(line, cells)]) + "\n"


def _over_seeds(values: list[float]) -> str:
    """Mean ± sample standard deviation over seeds, in percent (one seed: its value)."""
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


# condensed memory -> (its mode, the network it matches with, Avalanche's memory of the same bytes)
_CONDENSED = {
    "condensed": ("replay", "ConvNet (the preset's)", "replay"),
    "condensed-strategy": ("replay", "the strategy's model", "replay"),
    "condensed-retrain": ("retrain", "ConvNet (the preset's)", "gdumb"),
    "condensed-strategy-retrain": ("retrain", "the strategy's model", "gdumb"),
}
_AVALANCHE_NAMES = {"replay": "`ReplayPlugin`", "gdumb": "`GDumbPlugin`"}
_STRATEGY_NAMES = {"lwf": "LwF", "naive": "Naive", "ewc": "EWC", "icarl": "iCaRL"}


def _seconds(condensed: list[dict], baseline: list[dict]) -> str:
    """Mean seconds per run of the condensed memory (its condensation's share) and of
    Avalanche's, where every run was measured with no other load and at one commit, so on
    one machine in one sitting (else –)."""
    alone = all(run.get("conditions", "").endswith("no other load") for run in condensed + baseline)
    together = len({str(run.get("commit")).removesuffix("+changes") for run in condensed + baseline}) == 1
    if not (alone and together):
        return "–"
    mean = statistics.fmean
    return (f"{mean(run['seconds'] for run in condensed):.0f} "
            f"({mean(run['condensation_seconds'] for run in condensed):.0f}), "
            f"{mean(run['seconds'] for run in baseline):.0f}")


# the plug-in's DM code before the memory had defaults of its own: rows that do not record theirs used it
_EARLIER_MEMORY_PARAM = "multi:factor=2"


def avalanche_native_defaults(root: Path = BENCHMARKS) -> str:
    """:func:`avalanche_native`'s rows of the memories condensed as the plug-in does by default
    for each model's kind of network, and iCaRL's."""
    return avalanche_native(root, defaults_only=True)


def memory_defaults(root: Path = BENCHMARKS) -> str:
    """How the Avalanche plug-in condenses a memory by default, per kind of strategy network,
    with the measurement that chose it (``ddplug_avalanche.buffer.MEMORY_DEFAULTS``)."""
    from ddplug_avalanche.buffer import MEMORY_DEFAULTS, STRATEGY_MODEL

    matching = {STRATEGY_MODEL: "fresh copies of the strategy's model"}
    return markdown_table(["method", "strategy's network", "matches with", "code", "augmented for training",
                           "chosen by (`python -m simulations.avalanche_native`, final accuracy)"], [
        [f"`{method}`", kind, matching.get(defaults.model, "the preset's ConvNet"), f"`{defaults.settings['param']}`",
         "yes" if defaults.augment else "no", defaults.chosen_by]
        for method, kinds in MEMORY_DEFAULTS.items() for kind, defaults in kinds.items()])


Condensation = tuple[str, str, tuple[tuple[str, str], ...]]  # (method, code, the other settings it changed)


def memory_condensation(run: dict) -> Condensation:
    """How an ``avalanche_native`` row's condensed memory was made and drawn; rows from before
    the method was recorded condensed with DM, those from before the code was, in
    :data:`_EARLIER_MEMORY_PARAM`. A replay memory drawn whole into each minibatch, as
    Avalanche's loader draws, counts as a changed setting (:func:`_drew_whole_memory`), as
    does a memory augmented for training."""
    changed = [(name, str(value)) for name, value in run.get("condensation_settings", {}).items() if name != "param"]
    if _drew_whole_memory(run):
        changed.append(_WHOLE_MEMORY)
    if run.get("augment_memory"):
        changed.append(_AUGMENTED_MEMORY)
    return run.get("condensation_method", "dm"), run.get("condensation_param", _EARLIER_MEMORY_PARAM), tuple(sorted(
        changed))


_WHOLE_MEMORY = ("memory_batches", "whole")
_AUGMENTED_MEMORY = ("augment_memory", "True")


def _drew_whole_memory(run: dict) -> bool:
    """Whether a condensed replay row drew its whole memory into each minibatch rather than
    filling the memory's share (the plug-in's default). Rows from before the plug-in filled it
    record nothing and drew the whole memory; where the memory of the first experience (2
    classes) already filled a minibatch, the two draws make the same run."""
    from simulations.avalanche_native import REPLAYED

    if run["memory"] not in REPLAYED:
        return False
    if "memory_batches" in run:
        return run["memory_batches"] == "whole"
    return 2 * run["memory_images"] // 10 < run.get("batch_size", 128)


@functools.cache
def _default_memory(model: str) -> tuple[str, Condensation]:
    """The benchmark's memory and how the plug-in condenses ``model``'s memory by default."""
    from ddplug_avalanche.buffer import MEMORY_DEFAULTS, STRATEGY_MODEL, network_kind
    from simulations.avalanche_native import make_model

    defaults = MEMORY_DEFAULTS["dm"][network_kind(make_model(model, 0))]
    memory = "condensed-strategy" if defaults.model == STRATEGY_MODEL else "condensed"
    return memory, ("dm", defaults.settings["param"], (_AUGMENTED_MEMORY,) if defaults.augment else ())


@dataclasses.dataclass(frozen=True)
class MemoryComparison:
    """One cell of the Avalanche tables: a condensed memory against Avalanche's of the same K."""

    model: str
    setting: str  # the strategy and its training where not the protocol's ("LwF", "Naive, Adam lr 0.001")
    k: int
    memory_training: str  # the retrain mode's epochs (", 30 epochs on the memory alone"), else empty
    memory: str  # how the condensed memory was made: the network matched and the code
    mode: str  # how the strategy used it: "replay" or "retrain"
    condensed: list[float]
    theirs_name: str
    theirs: list[float]
    seconds: str
    beside: str = ""  # iCaRL's cells: the strategy beside which the condensed memory did best
    drawn_whole: bool = False  # replayed as Avalanche's loader draws, not filling the memory's share
    condensation: Condensation | None = None  # how the condensed memory was made (not for iCaRL's cells)

    @property
    def gain(self) -> float:
        return 100 * (statistics.fmean(self.condensed) - statistics.fmean(self.theirs))

    @property
    def seeds(self) -> int:
        return min(len(self.condensed), len(self.theirs))

    def in_bold(self, ours: str, theirs: str) -> tuple[str, str]:
        """The two accuracies as written, the better one in bold."""
        return (f"**{ours}**", theirs) if self.gain >= 0 else (ours, f"**{theirs}**")


def avalanche_native(root: Path = BENCHMARKS, defaults_only: bool = False) -> str:
    """Avalanche's ``SplitFMNIST``: each condensed memory against Avalanche's of the same bytes,
    and iCaRL (its own strategy and herded memory) against the best condensed memory."""
    return markdown_table(["model", "strategy, K", "condensed by matching, code", "condensed memory",
                           "Avalanche's memory of the same bytes", "gain (points)", "seeds",
                           "s per run (condensing), Avalanche's"], [
        [f"`{cell.model}`", f"{cell.setting}, K = {cell.k}{cell.memory_training}", cell.memory,
         f"{ours} ({cell.beside}{', ' * bool(cell.beside)}{cell.mode})", f"{cell.theirs_name} {theirs}",
         f"{cell.gain:+.1f}", str(cell.seeds), cell.seconds]
        for cell in memory_comparisons(root, defaults_only)
        for ours, theirs in [cell.in_bold(_over_seeds(cell.condensed), _over_seeds(cell.theirs))]])


def avalanche_augmentation(root: Path = BENCHMARKS) -> str:
    """Each condensed memory measured both ways on a cell: replayed as held and with a DSA
    transform on each sample drawn for training (``augment_memory``)."""
    cells = memory_comparisons(root)
    plain = {(cell.model, cell.setting, cell.k, cell.memory_training, cell.condensation): cell for cell in cells}
    pairs = []
    for cell in cells:
        method, param, changed = cell.condensation or ("", "", ())
        if _AUGMENTED_MEMORY in changed:
            unaugmented = (method, param, tuple(setting for setting in changed if setting != _AUGMENTED_MEMORY))
            without = plain.get((cell.model, cell.setting, cell.k, cell.memory_training, unaugmented))
            if without is not None:
                pairs.append((without, cell))

    def better(cell: MemoryComparison, other: MemoryComparison) -> str:
        bold = "**" * (statistics.fmean(cell.condensed) > statistics.fmean(other.condensed))
        return f"{bold}{_over_seeds(cell.condensed)}{bold}"

    return markdown_table(["model", "strategy, K", "condensed by matching, code", "as held", "augmented", "change",
                           "Avalanche's memory of the same bytes", "seeds"], [
        [f"`{cell.model}`", f"{cell.setting}, K = {cell.k}{cell.memory_training}", without.memory,
         f"{better(without, cell)} ({cell.mode})", better(cell, without),
         f"{100 * (statistics.fmean(cell.condensed) - statistics.fmean(without.condensed)):+.1f}",
         f"{cell.theirs_name} {_over_seeds(cell.theirs)}", str(min(len(cell.condensed), len(without.condensed)))]
        for without, cell in pairs])


SUMMARY_SEEDS = 3  # the seeds the README's summary states for its means; a cell of other seeds names its own


def avalanche_native_summary(root: Path = BENCHMARKS) -> str:
    """The plug-in's default memories (:func:`avalanche_native_defaults`), a row per model and
    strategy with its K side by side: mean condensed / mean Avalanche's (gain)."""
    cells = memory_comparisons(root, defaults_only=True)
    ks = sorted({cell.k for cell in cells}, reverse=True)
    lines: dict[tuple[str, str, str], dict[int, MemoryComparison]] = {}
    for cell in cells:
        memory = "" if cell.beside else f" (condensed {cell.mode})"
        lines.setdefault((cell.model, f"{cell.setting}{cell.memory_training}{memory}", cell.theirs_name),
                         {})[cell.k] = cell

    def entry(cell: MemoryComparison | None) -> str:
        if cell is None:
            return ""
        seeds = "" if cell.seeds == SUMMARY_SEEDS else f", {cell.seeds} seed{'s' * (cell.seeds > 1)}"
        beside = f" ({cell.beside})" if cell.beside else ""
        whole = ", drawn whole" if cell.drawn_whole else ""
        ours, theirs = cell.in_bold(*(f"{100 * statistics.fmean(accuracies):.2f}"
                                      for accuracies in (cell.condensed, cell.theirs)))
        return f"{ours}{beside} / {theirs} ({cell.gain:+.1f}{seeds}{whole})"

    return markdown_table(["model", "strategy (memory)", "against", *(f"K = {k}" for k in ks)], [
        [f"`{model}`", setting, theirs, *(entry(by_k.get(k)) for k in ks)]
        for (model, setting, theirs), by_k in lines.items()])


def memory_comparisons(root: Path = BENCHMARKS, defaults_only: bool = False) -> list[MemoryComparison]:
    """Every (model, strategy, K) cell of ``benchmarks/avalanche-native``: each condensed memory
    against Avalanche's of the same bytes, and iCaRL against the best condensed memory;
    ``defaults_only`` keeps the memories condensed as the plug-in does by default for the model."""
    from simulations.avalanche_native import MEMORY_EPOCHS, MODELS, RETRAIN, recorded_training

    runs = rows("avalanche-native", root)
    for run in runs:
        run["training"] = "".join(f", {phrase}" for phrase in recorded_training(run))
        # rows from before the epochs were recorded used the default
        epochs = run.get("epochs", MEMORY_EPOCHS)
        run["memory_training"] = f", {epochs} epochs on the memory alone" if run["memory"] in RETRAIN else ""
        if run["memory"] in _CONDENSED:
            run["condensation"] = memory_condensation(run)
    order = list(_STRATEGY_NAMES)
    cells = sorted({(run["model"], run["strategy"], run["training"], run["mem_per_class"], run["memory_training"])
                    for run in runs},
                   # a strategy's replay cells before its retrain cells, whatever training each names
                   key=lambda cell: (MODELS.index(cell[0]), order.index(cell[1]), len(cell[4]), cell[4], cell[2],
                                     -cell[3]))
    found: list[MemoryComparison] = []
    for model, strategy, training, k, memory_training in cells:
        def of(memory: str, condensation: Condensation | None = None, strategy: str = strategy) -> list[dict]:
            return [run for run in runs if (run["model"], run["strategy"], run["training"], run["memory"],
                                            run["mem_per_class"], run["memory_training"])
                    == (model, strategy, training, memory, k, memory_training)
                    and run.get("condensation") == condensation]

        if strategy == "icarl":
            memory, default = _default_memory(model)

            def condensed_as(condensation: Condensation) -> list[dict]:
                return [run for run in runs if (run["model"], run["training"], run["mem_per_class"], run["memory"],
                                                run.get("condensation")) == (model, training, k, memory, condensation)]

            condensed = condensed_as(default) or condensed_as(_drawn_whole(default))
            found.append(_icarl_comparison(of("herding"), condensed, _CONDENSED[memory][1]))
            continue
        for memory, (mode, matching, theirs) in _CONDENSED.items():
            for condensation in sorted({run["condensation"] for run in runs if run["memory"] == memory}):
                if defaults_only and not _stands_for_default(model, memory, condensation, of):
                    continue
                condensed, baseline = of(memory, condensation), of(theirs)
                if not condensed or not baseline:
                    continue
                found.append(MemoryComparison(
                    model, f"{_STRATEGY_NAMES[strategy]}{training}", k, memory_training,
                    f"{_matched_by(matching, condensation)}, {_code(condensation)}", mode,
                    [run["final_accuracy"] for run in condensed],
                    _AVALANCHE_NAMES[theirs], [run["final_accuracy"] for run in baseline],
                    _seconds(condensed, baseline), drawn_whole=_WHOLE_MEMORY in condensation[2],
                    condensation=condensation))
    return found


def _stands_for_default(model: str, memory: str, condensation: Condensation,
                        of: Callable[[str, Condensation], list[dict]]) -> bool:
    """Whether a cell's rows of ``memory`` made as ``condensation`` show the plug-in's default
    for ``model``: they are the default, or the default drawn whole where the cell has no rows
    of the default itself (``of(memory, condensation)``: the cell's rows)."""
    memory = memory.removesuffix("-retrain")
    default_memory, default = _default_memory(model)
    if (memory, condensation) == (default_memory, default):
        return True
    return (memory, condensation) == (default_memory, _drawn_whole(default)) and not of(memory, default)


def _drawn_whole(condensation: Condensation) -> Condensation:
    """``condensation``'s memory drawn whole into each minibatch."""
    method, param, changed = condensation
    return method, param, tuple(sorted((*changed, _WHOLE_MEMORY)))


def _matched_by(matching: str, condensation: Condensation) -> str:
    """The network a memory was matched with: ``matching``, or none for a selection of real images."""
    from ddplug.methods import CONDENSERS

    return matching if CONDENSERS[condensation[0]].learns else "none (real images)"


def _code(condensation: Condensation) -> str:
    """A memory's code, its method where that is not the plug-in's DM, and the settings it changed."""
    method, param, changed = condensation
    return "".join((f"{method}, " if method != "dm" else "", f"`{param}`",
                    *(f", {name}={value}" for name, value in changed)))


def _icarl_comparison(icarl: list[dict], condensed: list[dict], matching: str) -> MemoryComparison:
    """iCaRL's cell: the plug-in's default condensed replay memory for the model (matched by
    the network ``matching`` names) of the same K, beside the strategy that gets the most
    from it (by mean over its seeds), against iCaRL."""
    groups: dict[tuple, list[dict]] = {}
    for run in condensed:
        groups.setdefault((run["strategy"], run["condensation"]), []).append(run)
    (strategy, condensation), best = max(groups.items(), key=lambda item: statistics.fmean(
        run["final_accuracy"] for run in item[1]))
    first = icarl[0]
    return MemoryComparison(first["model"], f"iCaRL (its own strategy){first['training']}", first["mem_per_class"], "",
                            f"{matching}, {_code(condensation)}", "replay", [run["final_accuracy"] for run in best],
                            "iCaRL's herded images", [run["final_accuracy"] for run in icarl], _seconds(best, icarl),
                            beside=_STRATEGY_NAMES[strategy], drawn_whole=_WHOLE_MEMORY in condensation[2])


def main_job(root: Path = BENCHMARKS) -> str:
    """``./dev.sh run`` from a fresh clone: the set against random real images, and its time."""
    def cells(run: dict) -> list[str]:
        summary = run["summary"]
        published = "" if summary["published_accuracy"] is None else f"{100 * summary['published_accuracy']:.1f}"
        minutes, seconds = divmod(round(run["wall_seconds"]), 60)
        return [run["cpu"], f"{summary['method']} `{summary['param']}`, {summary['iterations']} steps",
                f"**{100 * summary['accuracy_mean']:.2f} ± {100 * summary['accuracy_std']:.2f}**",
                f"{100 * summary['random_baseline_mean']:.2f} ± {100 * summary['random_baseline_std']:.2f}",
                published, f"{summary['distill_seconds']:.0f}", f"{minutes} min {seconds:02d} s"]

    return markdown_table(["CPU", "set", "accuracy %", "random real images %", "published %", "distill s", "wall time"],
                          [cells(run) for run in rows("main-job", root)])


def distributed(root: Path = BENCHMARKS) -> str:
    """One process against N Gloo ranks: seconds per step, the evaluation's wall time, the same set."""
    runs = sorted(rows("distributed", root), key=lambda run: (run["method"] != "dm", run["method"], run["ranks"]))
    return markdown_table(
        ["method", "ranks", "s per step", "evaluation wall s", "rank 0 peak RSS MB (distill, evaluate)",
         "set equal to 1 rank's"],
        [[run["method"], str(run["ranks"]), f"{run['seconds_per_iteration']:.3f}", f"{run['evaluate_wall_seconds']:.0f}",
          f"{run['distill_rank0_peak_rss_mb']:.0f}, {run['evaluate_rank0_peak_rss_mb']:.0f}",
          "yes" if run["same_set_as_first"] else "no"] for run in runs])


def federated_privacy(root: Path = BENCHMARKS) -> str:
    """Federated uploads by initialisation and code (one round unless ``--rounds`` says):
    accuracy against what they leak."""
    def cells(run: dict) -> list[str]:
        flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in run["settings"].items())
        below = run["upload_nn_similarity_median"] < run["real_nn_similarity_median"]
        return [f"{run['alpha']:g}", f"`{flags}`", f"{100 * run['accuracy']:.2f}",
                f"{run['upload_nn_similarity_median']:.3f}", f"{run['real_nn_similarity_median']:.3f}",
                "yes" if below else "no", str(run["near_copies"]), f"{run['membership_advantage']:.3f}",
                f"{run['bytes_up'] / 1e6:.3f}"]

    runs = sorted(rows("federated-privacy", root), key=lambda run: (run["alpha"], -run["accuracy"]))
    return markdown_table(["α", "uploads", "accuracy %", "upload NN sim", "real NN sim", "upload below real",
                           "near copies", "MIA advantage", "MB up"], [cells(run) for run in runs])


def avalanche_leakage(root: Path = BENCHMARKS) -> str:
    """Avalanche memories by code and initialisation: final accuracy against what the memory
    would reveal if it were shared (per seed's leakage report, averaged over the seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for run in rows("avalanche-leakage", root):
        settings = run.get("condensation_settings", {})
        memory = (f"{_CONDENSED[run['memory']][1]}, `{run['condensation_param']}`, init "
                  f"`{settings.get('init', 'real')}`" if run["memory"] in _CONDENSED
                  else f"{_AVALANCHE_NAMES[run['memory']]}, raw images")
        groups.setdefault((run["model"], run["strategy"], run["mem_per_class"], memory), []).append(run)

    def cells(key: tuple, runs: list[dict]) -> list[str]:
        model, strategy, k, memory = key
        mean = {name: statistics.fmean(run["leakage"][name] for run in runs) for name in
                ("upload_nn_similarity_median", "real_nn_similarity_median", "membership_advantage", "near_copies")}
        return [f"`{model}`", f"{_STRATEGY_NAMES[strategy]}, K = {k}", memory,
                _over_seeds([run["final_accuracy"] for run in runs]), str(runs[0]["leakage"]["memory_images"]),
                f"{mean['upload_nn_similarity_median']:.3f}", f"{mean['real_nn_similarity_median']:.3f}",
                "yes" if mean["upload_nn_similarity_median"] < mean["real_nn_similarity_median"] else "no",
                f"{mean['near_copies']:g}", f"{mean['membership_advantage']:.3f}", str(len(runs))]

    ordered = sorted(groups.items(), key=lambda item: (item[0][:3], -statistics.fmean(
        run["final_accuracy"] for run in item[1])))
    return markdown_table(["model", "strategy, K", "memory", "final accuracy %", "images held", "memory NN sim",
                           "real NN sim", "memory below real", "near copies", "MIA advantage", "seeds"],
                          [cells(key, runs) for key, runs in ordered])


def large_budgets(root: Path = BENCHMARKS) -> str:
    """DM at large budgets, the set in memory: seconds per step, per decoded image, peak RSS."""
    runs = sorted(rows("large-budgets", root),
                  key=lambda run: (run["method"], run["embed_chunk"], run["embed"], run["ipc"]))
    return markdown_table(
        ["images per class (bytes)", "DM embed chunk", "decoded images per class", "s per step",
         "ms per step per decoded image", "peak RSS MB"],
        [[f"{run['ipc']} ({run['bytes']:,})".replace(",", " "), run["embed"], str(run["decoded_per_class"]),
          f"{run['seconds_per_iteration']:.3f}", f"{run['ms_per_step_per_decoded_image']:.3f}",
          f"{run['peak_rss_mb']:.0f}"] for run in runs])


def streamed_folder(root: Path = BENCHMARKS) -> str:
    """An image folder streamed from disk against decoded in memory: seconds per step, peak RSS, the same set."""
    runs = sorted((row for kept in rows("streamed-folder", root) for row in kept["rows"]),
                  key=lambda run: (run["embed_chunk"], run["storage"] != "memory"))
    return markdown_table(
        ["storage", "images (train + test)", "DM embed chunk", "s per step", "peak RSS MB", "× in-memory s per step",
         "× in-memory peak RSS", "max abs difference to the in-memory set"],
        [[run["storage"], f"{run['train_images']} + {run['test_images']} of {'x'.join(map(str, run['image_shape']))}",
          run["embed"], f"{run['seconds_per_iteration']:.3f}", f"{run['peak_rss_mb']:.0f}",
          f"{run['seconds_ratio']:.2f}", f"{run['peak_rss_ratio']:.2f}",
          f"{run['max_abs_difference_to_memory']:g}"] for run in runs])


def _pooled_over_seeds(kept_files: list[dict]) -> list[dict]:
    """One row per set and model: the networks of runs with different ``--seed`` pooled (a long
    network can be run one seed at a time); of runs with the same seed, the one with more networks
    (its networks include the other's)."""
    by_seed: dict[tuple[str, str], dict[int, dict]] = {}
    for kept in kept_files:
        seed = int(kept["command"].split("--seed ")[1].split()[0])
        for row in kept["rows"]:
            seeds = by_seed.setdefault((row["set"], row["model"]), {})
            if seed not in seeds or len(row["accuracies"]) > len(seeds[seed]["accuracies"]):
                seeds[seed] = row
    pooled = []
    for seeds in by_seed.values():
        parts = [seeds[seed] for seed in sorted(seeds)]
        accuracies = [value for part in parts for value in part["accuracies"]]
        seconds = sum(part["seconds_per_network"] * len(part["accuracies"]) for part in parts) / len(accuracies)
        pooled.append({"set": parts[0]["set"], "model": parts[0]["model"], "accuracies": accuracies,
                       "accuracy_mean": statistics.fmean(accuracies),
                       "random_accuracies": [value for part in parts for value in part["random_accuracies"]],
                       "seconds_per_network": seconds})
    return pooled


def transfer(root: Path = BENCHMARKS) -> str:
    """Each set on every architecture measured, beside random real images of its bytes there,
    and the points it gives up against its own first model (the one it was judged on)."""
    from simulations.transfer import DEFAULT_MODELS

    runs = _pooled_over_seeds(rows("transfer", root))
    order = {model: index for index, model in enumerate(DEFAULT_MODELS)}
    runs.sort(key=lambda run: (run["set"], order.get(run["model"], len(order)), run["model"]))
    reference = {run["set"]: run["accuracy_mean"] for run in runs if run["model"] == DEFAULT_MODELS[0]}
    cells = []
    for run in runs:
        own = reference.get(run["set"])
        cells.append([run["set"], f"`{run['model']}`", _over_seeds(run["accuracies"]), _over_seeds(run["random_accuracies"]),
                      "" if own is None or run["model"] == DEFAULT_MODELS[0] else f"{100 * (run['accuracy_mean'] - own):+.2f}",
                      f"{run['seconds_per_network']:.0f}"])
    return markdown_table(["set", "evaluation network", "accuracy %", "random real images %",
                           f"points against `{DEFAULT_MODELS[0]}`", "s per network"], cells)


def paper_protocol(root: Path = BENCHMARKS) -> str:
    """The best sets under the ``paper`` preset's evaluation (the field's protocol), run on a
    CPU by the transfer benchmark (``--preset paper``), beside random real images of their bytes."""
    runs = _pooled_over_seeds(rows("paper-protocol", root))
    return markdown_table(["set", "evaluation network", "accuracy %", "random real images %", "hours per network"],
                          [[run["set"], f"`{run['model']}`, {len(run['accuracies'])} network"
                            f"{'s' * (len(run['accuracies']) > 1)}",
                            _over_seeds(run["accuracies"]), _over_seeds(run["random_accuracies"]),
                            f"{run['seconds_per_network'] / 3600:.2f}"] for run in runs])


def _mean_std(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def per_budget_rows(root: Path = BENCHMARKS) -> list[dict]:
    """The sets measured per byte budget, by budget and then best first."""
    return sorted(rows("per-budget", root), key=lambda run: (run["ipc"], -run["accuracy_mean"]))


def per_budget(root: Path = BENCHMARKS) -> str:
    """ddplug's sets per byte budget beside random real images of the same bytes and the
    published numbers of those bytes (``ddplug.evaluation.published``)."""
    from ddplug.evaluation.published import published_result

    def cells(run: dict) -> list[str]:
        published = (published_result(method, run["dataset"], run["ipc"]) for method in run["compare_with"])
        plural = "s" if run["ipc"] > 1 else ""
        return [f"{run['ipc']} image{plural} per class ({run['budget_bytes']:,})".replace(",", " "), run["set"],
                _mean_std(run["accuracy_mean"], run["accuracy_std"]), _mean_std(run["random_mean"], run["random_std"]),
                ", ".join(f"{result.name} {result.accuracy:.1f}" for result in published if result is not None)]

    return markdown_table(["budget (bytes)", "ddplug's set", "accuracy %", "random real images %",
                           "published, same bytes %"], [cells(run) for run in per_budget_rows(root)])


IMAGENET_TRAIN_IMAGES, IMAGENET_CLASSES = 1_281_167, 1000


def imagenet_projection(root: Path = BENCHMARKS) -> str:
    """ImageNet-1K on paper: its decoded size, and DM's step extrapolated from the streamed
    folder's chunked step by pixel values (the recipe's 64 real and 40 or 200 decoded images
    per class in a step)."""
    measured = [row for kept in rows("streamed-folder", root) for row in kept["rows"]
                if row["storage"] == "disk" and row["embed_chunk"]]
    if not measured:
        raise SystemExit("streamed-folder has no chunked disk row to extrapolate from")
    row = measured[-1]
    real, decoded = 64 * 10, 4 * row["ipc"] * 10  # the cpu preset's batch_real and multi:factor=2
    per_value = row["seconds_per_iteration"] / ((real + decoded) * math.prod(row["image_shape"]))
    cells = []
    for side in (64, 224):
        values = 3 * side * side
        steps = [IMAGENET_CLASSES * (64 + 4 * ipc) for ipc in (10, 50)]
        cells.append([f"{side}x{side}", f"{IMAGENET_TRAIN_IMAGES * values * 4 / 1e9:.0f} GB",
                      " / ".join(f"{n:,}".replace(",", " ") for n in steps),
                      " / ".join(f"{n * values * per_value:,.0f}".replace(",", " ") for n in steps) + " (projected)"])
    return markdown_table(["resolution", "decoded in memory (float32)", "images in one DM step, 10 / 50 per class",
                           "2-core CPU seconds per step, 10 / 50 per class"], cells)


def recorded(name: str, root: Path = BENCHMARKS) -> str:
    """A table kept as data in ``benchmarks/recorded/NAME.json``: its columns and rows as the
    page shows them, with the command and conditions the page states for it."""
    table = json.loads((root / RECORDED / f"{name}.json").read_text())
    columns = table["columns"]
    for number, row in enumerate(table["rows"], 1):
        if len(row) != len(columns):
            raise SystemExit(f"{RECORDED}/{name}.json: row {number} has {len(row)} cells for {len(columns)} columns")
    return markdown_table(columns, table["rows"])


TABLES: dict[str, Callable[[Path], str]] = {"avalanche-native": avalanche_native,
                                            "avalanche-leakage": avalanche_leakage,
                                            "avalanche-native-defaults": avalanche_native_defaults,
                                            "avalanche-native-summary": avalanche_native_summary,
                                            "avalanche-augmentation": avalanche_augmentation,
                                            "memory-defaults": memory_defaults, "main-job": main_job,
                                            "distributed": distributed, "large-budgets": large_budgets,
                                            "federated-privacy": federated_privacy, "streamed-folder": streamed_folder,
                                            "imagenet-projection": imagenet_projection, "transfer": transfer,
                                            "paper-protocol": paper_protocol,
                                            "per-budget": per_budget}


def table(name: str, root: Path = BENCHMARKS) -> str:
    """The Markdown of the table called ``name``: generated from its rows, or recorded."""
    if name in TABLES:
        return TABLES[name](root)
    if (root / RECORDED / f"{name}.json").is_file():
        return recorded(name, root)
    raise SystemExit(f"unknown table {name!r}: neither a generated table ({', '.join(TABLES)}) nor "
                     f"benchmarks/{RECORDED}/{name}.json")


def render(text: str, root: Path = BENCHMARKS) -> str:
    """``text`` with every generated table rewritten from its rows."""
    def fill(match: re.Match) -> str:
        return match[1] + table(match["name"], root) + match[4]

    return REGION.sub(fill, text)


def stale_pages(root: Path = ROOT) -> list[str]:
    """The pages whose generated tables differ from their rows."""
    texts = {page: (root / page).read_text() for page in PAGES}
    return [page for page, text in texts.items() if render(text, root / "benchmarks") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    stale = stale_pages()
    if args.check:
        for page in stale:
            print(f"{page}: a generated table differs from its rows in benchmarks/; run python -m simulations.tables")
        return 1 if stale else 0
    for page in stale:
        path = ROOT / page
        path.write_text(render(path.read_text()))
        print(f"rewrote the tables of {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
