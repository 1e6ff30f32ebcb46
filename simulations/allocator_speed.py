"""What the allocator tuning (``ddplug.tune_allocator``) buys: each workload with and without it.

Every workload is one ``ddplug`` command in its own process, run once with the tuning
(the default) and once with ``DDPLUG_MALLOC_TUNING=0``, in turns; the table gives the
seconds per step the command reports, the process's system time and its peak RSS (from
``wait4``), and checks that both runs wrote the same synthetic set. Run it alone on the
machine: seconds measured beside another job are not results.

    python -m simulations.allocator_speed                 # DM, MTT, KIP steps and one evaluation network
    python -m simulations.allocator_speed --dm-iterations 20 --workloads dm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import load_file

from ddplug.allocator import ENV_VAR, tune_allocator
from ddplug.evaluate.report import format_table
from ddplug.storage import atomic_write, write_json

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
    tune_allocator()  # this driver's own process; each measured command sets its own
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--dm-iterations", type=int, default=100)
    parser.add_argument("--mtt-iterations", type=int, default=3)
    parser.add_argument("--kip-iterations", type=int, default=20)
    parser.add_argument("--eval-models", type=int, default=1)
    parser.add_argument("--out", default="results/allocator-speed")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if "evaluate" in args.workloads and "dm" not in args.workloads:
        parser.error("the evaluate workload trains on the dm workload's set: keep dm in --workloads")
    rows, lines = [], []
    for workload, (command, key) in commands(args, out).items():
        if workload not in args.workloads:
            continue
        runs = {}
        for tuned in (True, False):
            folder = out / f"{workload}-{'tuned' if tuned else 'default'}"
            runs[tuned] = run_measured([*command, "--out", str(folder)], tuned)
            runs[tuned]["folder"] = folder
        identical = (same_set(runs[True]["folder"], runs[False]["folder"]) if workload != "evaluate"
                     else runs[True]["accuracies"] == runs[False]["accuracies"])
        for tuned, run in runs.items():
            rows.append({"workload": workload, "tuned": tuned, "seconds_per_step": run[key],
                         "user_seconds": run["user_seconds"], "system_seconds": run["system_seconds"],
                         "peak_rss_mb": run["peak_rss_mb"], "identical": identical})
            lines.append((workload, "on" if tuned else f"off ({ENV_VAR}=0)", f"{run[key]:.3f}",
                          f"{run['system_seconds']:.1f}", f"{run['user_seconds']:.1f}", f"{run['peak_rss_mb']:.0f}",
                          "yes" if identical else "NO"))
    table = format_table(("workload", "tuning", "s per step (eval: per network)", "system s", "user s", "peak RSS MB",
                          "same result"), lines)
    print(table)
    header = f"{platform.machine()}, {os.cpu_count()} cores, `python -m simulations.allocator_speed`"
    atomic_write(out / "table.md", lambda path: path.write_text(f"{header}\n\n{table}\n"))
    write_json(out / "results.json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
