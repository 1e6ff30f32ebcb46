"""The Avalanche figure of the README, drawn from the rows of ``benchmarks/avalanche-native``:
on Avalanche's ``SplitFMNIST`` with ``SimpleMLP``, the plug-in's default memory (matching
the strategy's model, in its default code) beside each strategy, against Avalanche's memory
of the same bytes beside the same strategy (``ReplayPlugin``; ``GDumbPlugin`` in retrain
mode) and iCaRL with its herded images; mean and standard deviation over the seeds.

    python -m simulations.avalanche_native_figure      # writes docs/continual-avalanche-native.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from ddplug.evaluation.report import pyplot
from ddplug_avalanche.buffer import MEMORY_DEFAULTS
from simulations.tables import ROOT, memory_condensation, rows

STRATEGY_NAMES = {"lwf": "LwF", "naive": "Naive", "ewc": "EWC", "icarl": "iCaRL"}
# ddplug's memory -> (Avalanche's memory of the same bytes beside the same strategy, the cell's suffix)
PAIRS = {"condensed-strategy": ("replay", ""), "condensed-strategy-retrain": ("gdumb", ", retrain")}


def bars(runs: list[dict], param: str) -> list[tuple[str, list[float], list[float]]]:
    """(cell label, ddplug's accuracies, Avalanche's accuracies) per (strategy, K, mode), SGD
    rows of DM memories in ``param`` at the plug-in's other settings only; iCaRL's cells have no ddplug
    accuracies."""
    def accuracies(strategy: str, memory: str, k: int, code: str | None = None) -> list[float]:
        return [run["final_accuracy"] for run in runs if (run["model"], run["strategy"], run["memory"],
                run["mem_per_class"], run.get("optimizer", "sgd")) == ("mlp", strategy, memory, k, "sgd")
                and (code is None or memory_condensation(run) == ("dm", code, ()))]

    cells = []
    for k in sorted({run["mem_per_class"] for run in runs}, reverse=True):
        for strategy in STRATEGY_NAMES:
            for ours, (theirs, suffix) in PAIRS.items():
                mine, baseline = accuracies(strategy, ours, k, param), accuracies(strategy, theirs, k)
                if mine and baseline:
                    cells.append((f"{STRATEGY_NAMES[strategy]}{suffix}\nK = {k}", mine, baseline))
        icarl = accuracies("icarl", "herding", k)
        if icarl:
            cells.append((f"iCaRL\nK = {k}", [], icarl))
    return cells


def draw(cells: list[tuple[str, list[float], list[float]]], out: Path, param: str) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(1.3 * len(cells) + 2, 4.2))
    width = 0.38
    colours = {"ddplug": "tab:blue", "avalanche": "tab:gray"}
    for index, (_, mine, theirs) in enumerate(cells):
        pair = bool(mine)  # iCaRL's cells: one bar, centred
        for offset, values, colour in ((-width / 2, mine, colours["ddplug"]),
                                       (width / 2 if pair else 0.0, theirs, colours["avalanche"])):
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                axes.bar(index + offset, 100 * statistics.fmean(values), width, yerr=100 * spread, color=colour,
                         capsize=3)
    from matplotlib.patches import Patch  # matplotlib is imported only when a plot is made

    axes.legend(handles=[Patch(color=colours["ddplug"], label=f"ddplug's condensed memory (DM, {param})"),
                         Patch(color=colours["avalanche"],
                                       label="Avalanche's memory of the same bytes (Replay, GDumb, iCaRL)")],
                loc="upper right", fontsize=8)
    axes.set_xticks(range(len(cells)), [label for label, _, _ in cells], fontsize=8)
    axes.set_ylabel("final accuracy on all 10 classes (%)")
    axes.set_ylim(0, 100)
    axes.set_title("Avalanche's SplitFMNIST, SimpleMLP: K raw images' bytes per class")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "continual-avalanche-native.png")
    args = parser.parse_args(argv)
    param = MEMORY_DEFAULTS["dm"]["dense"].settings["param"]  # the figure is of SimpleMLP
    draw(bars(rows("avalanche-native", args.rows), param), args.out, param)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
