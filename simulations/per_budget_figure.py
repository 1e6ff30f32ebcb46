"""The README's accuracy-against-bytes figure, drawn from the rows of ``benchmarks/per-budget``
(the sets of the README's per-budget table), random real images of the same bytes and the
published per-byte numbers (FreD, IDC, DANCE: the papers' protocol).

    python -m simulations.per_budget_figure            # writes docs/condensation-accuracy-vs-bytes.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulations.condensation_benchmark import save_bytes_plot
from simulations.tables import ROOT, per_budget_rows

PUBLISHED_PER_BYTE = ("fred", "idc", "dance")


def figure_rows(runs: list[dict]) -> list[dict]:
    """The sets' rows, then one ``random`` row per budget (its first measurement)."""
    random = {}
    for run in runs:
        random.setdefault(run["ipc"], {**run, "label": "random", "accuracy_mean": run["random_mean"],
                                       "accuracy_std": run["random_std"]})
    return [*runs, *random.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "condensation-accuracy-vs-bytes.png")
    args = parser.parse_args(argv)
    runs = per_budget_rows()
    save_bytes_plot(figure_rows(runs), args.out,
                    f"{runs[0]['dataset']}, cpu evaluation: accuracy per stored byte", PUBLISHED_PER_BYTE)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
