"""What the allocator tuning (``ddplug.tune_allocator``) buys: each workload with and without it.

Every workload is one ``ddplug`` command in its own process, run once with the tuning
(the default) and once with ``DDPLUG_MALLOC_TUNING=0``, in turns; the table gives the
seconds per step the command reports, the process's system time and its peak RSS (from
``wait4``), and checks that both runs wrote the same synthetic set. With ``--repeats N``
each workload runs N times each way, in turns, and the table gives the medians (peak RSS
also its range: it varies from run to run with the order of allocations). Run it alone on
the machine: seconds measured beside another job are not results.

    python -m simulations.allocator_speed                 # DM, MTT, KIP steps and one evaluation network
    python -m simulations.allocator_speed --dm-iterations 20 --workloads dm
    python -m simulations.allocator_speed --workloads dm --dm-iterations 60 --repeats 5   # peak RSS over 5 runs each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import load_file

from ddplug.allocator import ENV_VAR
from ddplug.evaluation.report import format_table
from ddplug.storage import atomic_write, write_json
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args

WORKLOADS = ("dm", "mtt", "kip", "evaluate")


def run_measured(command: list[str], tuned: bool) -> dict:
    """Run ``python -m ddplug.cli COMMAND --json``; its summary plus the process's
    system seconds and peak RSS."""
    env = {**os.environ, ENV_VAR: "1" if tuned else "0"}
    argv = [sys.executable, "-m", "ddplug.cli", *command, "--json", "--quiet"]
    print("$", f"{ENV_VAR}={env[ENV_VAR]}", "ddplug", " ".join(command), file=sys.stderr, flush=True)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own usage, unlike getrusage
    process.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"ddplug {' '.join(command)} failed (exit {code})")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {**summary, "user_seconds": usage.ru_utime, "system_seconds": usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def commands(args: argparse.Namespace, out: Path) -> dict[str, tuple[list[str], str]]:
    """Workload -> (command without ``--out``, the summary key holding its seconds per step)."""
    distill = ["distill", "--dataset", args.dataset, "--ipc", str(args.ipc), "--preset", "cpu", "--no-eval",
               "--device", "cpu"]
    return {
        "dm": ([*distill, "--method", "dm", "--iterations", str(args.dm_iterations)], "seconds_per_iteration"),
        "mtt": ([*distill, "--method", "mtt", "--iterations", str(args.mtt_iterations)], "seconds_per_iteration"),
        "kip": ([*distill, "--method", "kip", "--iterations", str(args.kip_iterations)], "seconds_per_iteration"),
        "evaluate": (["evaluate", str(out / "dm-tuned" / "synthetic.safetensors"), "--preset", "cpu",
                      "--eval-models", str(args.eval_models), "--baselines", "", "--device", "cpu"],
                     "eval_seconds_per_model"),
    }


def same_set(first: Path, second: Path) -> bool:
    """Whether two runs wrote identical tensors (meta such as seconds may differ)."""
    a, b = load_file(first / "synthetic.safetensors"), load_file(second / "synthetic.safetensors")
    return a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--dm-iterations", type=int, default=100)
    parser.add_argument("--mtt-iterations", type=int, default=3)
    parser.add_argument("--kip-iterations", type=int, default=20)
    parser.add_argument("--eval-models", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each workload each way, in turns (medians)")
    parser.add_argument("--out", default="results/allocator-speed")
    add_rows_option(parser, "allocator-speed")
    args = parse_benchmark_args(parser, argv)
    out = Path(args.out)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if "evaluate" in args.workloads and "dm" not in args.workloads:
        parser.error("the evaluate workload trains on the dm workload's set: keep dm in --workloads")
    rows, lines = [], []
    for workload, (command, key) in commands(args, out).items():
        if workload not in args.workloads:
            continue
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for repeat in range(args.repeats):
            for tuned in (True, False):
                folder = out / f"{workload}-{'tuned' if tuned else 'default'}{f'-{repeat}' if repeat else ''}"
                runs[tuned].append({**run_measured([*command, "--out", str(folder)], tuned), "folder": folder})
        identical = all(
            same_set(on["folder"], off["folder"]) if workload != "evaluate" else on["accuracies"] == off["accuracies"]
            for on, off in zip(runs[True], runs[False]))
        for tuned, measured in runs.items():
            median = {name: statistics.median(run[name] for run in measured)
                      for name in (key, "user_seconds", "system_seconds", "peak_rss_mb")}
            peaks = [run["peak_rss_mb"] for run in measured]
            rows.append({"workload": workload, "tuned": tuned, "repeats": args.repeats,
                         "seconds_per_step": median[key], "user_seconds": median["user_seconds"],
                         "system_seconds": median["system_seconds"], "peak_rss_mb": median["peak_rss_mb"],
                         "peak_rss_mb_runs": peaks, "identical": identical})
            peak = f"{median['peak_rss_mb']:.0f}" + ("" if len(peaks) == 1 else f" ({min(peaks):.0f}-{max(peaks):.0f})")
            lines.append((workload, "on" if tuned else f"off ({ENV_VAR}=0)", f"{median[key]:.3f}",
                          f"{median['system_seconds']:.1f}", f"{median['user_seconds']:.1f}", peak,
                          "yes" if identical else "NO"))
    table = format_table(("workload", "tuning", "s per step (eval: per network)", "system s", "user s", "peak RSS MB",
                          "same result"), lines)
    print(table)
    command = " ".join(["python -m simulations.allocator_speed", *(sys.argv[1:] if argv is None else argv)])
    header = f"{platform.machine()}, {os.cpu_count()} cores, medians of {args.repeats} run(s) each way; `{command}`"
    atomic_write(out / "table.md", lambda path: path.write_text(f"{header}\n\n{table}\n"))
    write_json(out / "results.json", rows)
    keep_rows(args.rows, "simulations.allocator_speed", argv, rows, conditions=args.conditions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
