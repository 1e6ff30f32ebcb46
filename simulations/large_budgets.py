"""Large budgets: DM (the recipe of every budget above 10 images per class) at 10 to 500
images per class on Fashion-MNIST, the set in memory: seconds per step and peak memory.

Each row is one ``ddplug distill --ipc K --iterations N --no-eval`` in its own process (so
its peak RSS is its own), the preset's DM (``multi:factor=2``: 4 decoded images in each raw
image's bytes), every class embedded in chunks of at most 16 MiB a layer per step
(activations kept for one backward pass), or with ``--embed-chunk C`` C images at a time, the synthetic chunks
checkpointed:

    python -m simulations.large_budgets --ipc 10 50 100 200 500 --iterations 20 [--embed-chunk 256]

Rows go to ``benchmarks/large-budgets/`` with their command, conditions and commit; the
table is printed at the end. Run it with nothing else on the machine: seconds are its point.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from ddplug.evaluation.report import format_table
from ddplug.storage import write_json
from simulations.provenance import ROOT, parse_benchmark_args, provenance


def embed_label(embed_chunk: int) -> str:
    """How DM embedded the images of a row's step, for its table."""
    return f"{embed_chunk}, checkpointed" if embed_chunk else "16 MiB chunks"


def distill(ipc: int, iterations: int, work: Path, method: str, embed_chunk: int) -> dict:
    """One ``ddplug distill`` run without evaluation; its JSON summary."""
    out = work / f"{method}-ipc{ipc}-chunk{embed_chunk}"
    shutil.rmtree(out, ignore_errors=True)  # a finished run's checkpoint would be resumed, and nothing measured
    argv = [sys.executable, "-m", "ddplug", "distill", "--method", method, "--ipc", str(ipc), "--iterations",
            str(iterations), "--no-eval", "--quiet", "--json", "--out", str(out)]
    if embed_chunk:
        argv += ["--embed-chunk", str(embed_chunk)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50, 100, 200, 500])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--method", default="dm")
    parser.add_argument("--embed-chunk", type=int, default=0,
                        help="DM's images per forward pass, synthetic ones checkpointed "
                             "(0: chunks of at most 16 MiB a layer)")
    parser.add_argument("--work", type=Path, default=Path("runs/large-budgets"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "large-budgets")
    parser.add_argument("--conditions", default="no other load")
    args = parse_benchmark_args(parser, argv)
    rows = []
    for ipc in args.ipc:
        summary = distill(ipc, args.iterations, args.work, args.method, args.embed_chunk)
        decoded = summary["decoded_per_class"] or ipc
        row = {"method": args.method, "ipc": ipc, "param": summary["param"], "decoded_per_class": decoded,
               "iterations": summary["iterations"], "seconds_per_iteration": summary["seconds_per_iteration"],
               "ms_per_step_per_decoded_image": 1000 * summary["seconds_per_iteration"] / (10 * decoded),
               "peak_rss_mb": summary["peak_memory_mb"], "bytes": summary["bytes"], "embed_chunk": args.embed_chunk,
               "embed": embed_label(args.embed_chunk),
               **provenance("simulations.large_budgets", argv, conditions=args.conditions)}
        chunked = f"-chunk{args.embed_chunk}" if args.embed_chunk else ""
        write_json(args.out / f"{args.method}-ipc{ipc}{chunked}.json", row)
        rows.append(row)
        print(f"ipc {ipc}: {row['seconds_per_iteration']:.3f} s/step, {row['peak_rss_mb']:.0f} MB", file=sys.stderr,
              flush=True)
    print(format_table(("ipc", "decoded/class", "s per step", "ms per step per decoded image", "peak RSS MB"),
                       [(r["ipc"], r["decoded_per_class"], f"{r['seconds_per_iteration']:.3f}",
                         f"{r['ms_per_step_per_decoded_image']:.3f}", f"{r['peak_rss_mb']:.0f}") for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
