"""Presenting evaluations: a terminal table and a bar plot, next to baselines and published numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ddplug.storage import atomic_write


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (markdown-compatible)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def percent(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def save_accuracy_plot(path: str | Path, bars: Sequence[tuple[str, float, float, str]], title: str) -> Path:
    """Horizontal bars ``(label, mean %, std %, kind)``; kind 'measured' or 'published'."""
    figure, axes = pyplot().subplots(figsize=(7, 0.5 * len(bars) + 1.2))
    colours = {"measured": "tab:blue", "published": "tab:gray"}
    labels = [bar[0] for bar in bars]
    axes.barh(labels, [bar[1] for bar in bars], xerr=[bar[2] for bar in bars],
              color=[colours[bar[3]] for bar in bars], capsize=3)
    for y, bar in enumerate(bars):
        axes.text(bar[1] + bar[2] + 0.5, y, f"{bar[1]:.1f}", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("test accuracy (%)  — blue: measured here, grey: published")
    axes.set_title(title, fontsize=10)
    return save_figure(figure, path)


def pyplot():  # noqa: ANN201 - matplotlib.pyplot, imported only when a plot is made
    """``matplotlib.pyplot`` on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    """Write ``figure`` as a PNG (atomically) and close it."""
    figure.tight_layout()

    def write(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=110)
        pyplot().close(figure)

    return atomic_write(path, write)
