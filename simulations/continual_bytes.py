"""Continual learning at equal bytes: every strategy's final accuracy against its memory's bytes.

For each memory budget K (the bytes of K raw uint8 images per class seen) and each strategy,
runs ``ddplug cl`` (``ddplug_avalanche.runner.run_benchmark``, seeds 0..N-1, results cached
in ``OUT/memK/`` so a re-run resumes), then prints and saves a table (final accuracy,
forgetting, memory bytes, seconds, condensation seconds) and a plot of final accuracy
against memory bytes. Avalanche's buffers hold K raw images per class; the condensed memory
holds its parameterisation's codes in the same bytes (the ``cpu`` stream's DM:
``multi:factor=2,bits=4``, eight 4-bit half-resolution images in each raw image's bytes).

    python -m simulations.continual_bytes --mem-per-class 1 10 20 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddplug.evaluation.report import format_table, percent, pyplot, save_figure
from ddplug.storage import atomic_write, write_json
from ddplug_avalanche.runner import STRATEGIES, ContinualRun, run_benchmark
from ddplug_avalanche.streams import MemoryBudget
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args

GAPS = (("condensed", "replay"), ("condensed-retrain", "gdumb"))  # (condensed strategy, its raw-memory twin)


def build_table(rows: list[dict]) -> str:
    lines = [(row["strategy"], row["mem_per_class"], row["memory_bytes"],
              percent(row["final_accuracy"], row["final_accuracy_std"]), percent(row["forgetting"], row["forgetting_std"]),
              f"{row['seconds']:.0f}", "-" if row["condensation_seconds"] is None else f"{row['condensation_seconds']:.0f}")
             for row in rows]
    headers = ("strategy", "K", "memory bytes", "final accuracy %", "forgetting %", "s per run", "condensation s")
    return format_table(headers, lines)


def gaps(rows: list[dict]) -> list[str]:
    """``condensed - replay`` and ``condensed-retrain - gdumb`` in points, per K."""
    found = {(row["strategy"], row["mem_per_class"]): row["final_accuracy"] for row in rows}
    return [f"K={k}: {ours} - {theirs} = {100 * (found[ours, k] - found[theirs, k]):+.2f} points"
            for k in sorted({row["mem_per_class"] for row in rows}) for ours, theirs in GAPS
            if (ours, k) in found and (theirs, k) in found]


def plot(rows: list[dict], path: Path, title: str) -> Path:
    figure, axis = pyplot().subplots(figsize=(6.5, 4.2))
    for strategy in dict.fromkeys(row["strategy"] for row in rows):
        mine = sorted((row for row in rows if row["strategy"] == strategy), key=lambda row: row["memory_bytes"])
        if not any(row["memory_bytes"] for row in mine):  # no memory (naive): a level, not a curve
            axis.axhline(100 * mine[0]["final_accuracy"], color="gray", linestyle="--", label=f"{strategy} (no memory)")
            continue
        axis.errorbar([row["memory_bytes"] for row in mine], [100 * row["final_accuracy"] for row in mine],
                      yerr=[100 * row["final_accuracy_std"] for row in mine], marker="o", capsize=3, label=strategy)
    axis.set_xscale("log")
    axis.set(xlabel="memory bytes at the end (log)", ylabel="final average accuracy (%)", title=title)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mem-per-class", type=int, nargs="+", default=[1, 10, 20], metavar="K")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES, metavar="STRATEGY")
    parser.add_argument("--experiences", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/continual-bytes")
    add_rows_option(parser, "continual-bytes")
    args = parse_benchmark_args(parser, argv)
    out = Path(args.out)
    rows = []
    for k in args.mem_per_class:
        for strategy in args.strategies:
            run = ContinualRun(strategy=strategy, experiences=args.experiences, memory=MemoryBudget(per_class=k),
                               preset=args.preset)
            summary = run_benchmark("split-fmnist", run, seeds=args.seeds, device=args.device, out=out / f"mem{k}")
            rows.append({key: summary[key] for key in ("strategy", "mem_per_class", "final_accuracy",
                                                       "final_accuracy_std", "forgetting", "forgetting_std", "seconds")}
                        | {"memory_bytes": summary["memory_bytes"][0][-1],
                           "condensation_seconds": summary.get("condensation_seconds")})
    command = "python -m simulations.continual_bytes " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Split Fashion-MNIST, {args.experiences} experiences, preset {args.preset}, seeds 0..{args.seeds - 1}; "
              f"mean ± std over seeds\ncommand: {command}")
    text = header + "\n\n" + build_table(rows) + "\n\n" + "\n".join(gaps(rows))
    print(text)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(text + "\n"))
    write_json(out / "rows.json", {"command": command, "rows": rows})
    keep_rows(args.rows, "simulations.continual_bytes", argv, rows, conditions=args.conditions)
    plot(rows, out / "accuracy-vs-bytes.png", f"Split Fashion-MNIST, {args.experiences} experiences: accuracy per byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
