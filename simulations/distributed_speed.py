"""One process against N ranks under torchrun (Gloo on the CPU): seconds per distillation
step, the evaluation's wall time, rank 0's peak memory, and whether the sets are identical.

Each row is one ``ddplug distill`` run (``--no-eval``) and one ``ddplug evaluate`` of the set
it made, at one thread per process (what torchrun gives each rank), on Fashion-MNIST:

    python -m simulations.distributed_speed --methods dm frepo --ranks 1 2

Rows go to ``benchmarks/distributed/`` (with the command, the conditions and the commit);
the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ddplug.evaluation.report import format_table
from ddplug.storage import write_json
from simulations.provenance import ROOT, commit, parse_benchmark_args


def _ddplug(argv: list[str], ranks: int) -> tuple[dict, float]:
    """Run ``ddplug ARGV`` on ``ranks`` processes; its JSON summary and wall seconds."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    began = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "ddplug", *argv, "--json", "--quiet"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["dm", "frepo"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--eval-models", type=int, default=4)
    parser.add_argument("--eval-epochs", type=int, default=50)
    parser.add_argument("--work", type=Path, default=Path("runs/distributed-speed"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "distributed")
    args = parse_benchmark_args(parser, argv)
    rows = []
    for method in args.methods:
        reference = None
        for ranks in args.ranks:
            folder = args.work / f"{method}-ranks{ranks}"
            summary, wall = _ddplug(["distill", "--method", method, "--ipc", str(args.ipc), "--iterations",
                                     str(args.iterations), "--no-eval", "--out", str(folder)], ranks)
            judged, eval_wall = _ddplug(["evaluate", str(folder), "--eval-models", str(args.eval_models),
                                         "--eval-epochs", str(args.eval_epochs), "--baselines", "",
                                         "--out", str(folder / "evaluation")], ranks)
            code = load_file(str(folder / "synthetic.safetensors"))
            reference = reference or code
            row = {"method": method, "ranks": ranks, "ipc": args.ipc, "iterations": summary["iterations"],
                   "seconds_per_iteration": summary["seconds_per_iteration"], "distill_wall_seconds": wall,
                   "evaluate_wall_seconds": eval_wall, "eval_models": args.eval_models,
                   "eval_epochs": args.eval_epochs, "accuracies": judged["accuracies"],
                   "distill_rank0_peak_rss_mb": summary["peak_memory_mb"],
                   "evaluate_rank0_peak_rss_mb": judged["peak_memory_mb"],
                   "same_set_as_first": all(torch.equal(code[key], reference[key]) for key in reference),
                   "commit": commit(), "torch": torch.__version__, "cpus": os.cpu_count(),
                   "command": "python -m simulations.distributed_speed " + " ".join(sys.argv[1:]),
                   "conditions": f"{os.cpu_count()} CPU cores, one thread per process, Gloo, no other load"}
            write_json(args.out / f"{method}-ipc{args.ipc}-ranks{ranks}.json", row)
            rows.append(row)
            print(f"{method}, {ranks} rank(s): {row['seconds_per_iteration']:.3f} s/step, evaluation "
                  f"{eval_wall:.0f} s", file=sys.stderr, flush=True)
    print(format_table(("method", "ranks", "s per step", "distill wall s", "evaluate wall s", "same set"),
                       [(r["method"], r["ranks"], f"{r['seconds_per_iteration']:.3f}", f"{r['distill_wall_seconds']:.0f}",
                         f"{r['evaluate_wall_seconds']:.0f}", r["same_set_as_first"]) for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
