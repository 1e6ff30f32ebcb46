"""What ``ddplug cl`` reports: final accuracy and forgetting from the accuracy matrices, mean ±
std over seeds, the printed table and the plot of every strategy run on one stream."""

from __future__ import annotations

import statistics
from json import loads
from pathlib import Path
from typing import Any

import torch

from ddplug.evaluation.report import format_table, percent, pyplot, save_figure
from ddplug_avalanche.streams import MEMORY_ONLY, MemoryBudget, StreamSettings, condense_settings


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
        "condense_settings": condense_settings(settings, param) if method else None,
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
