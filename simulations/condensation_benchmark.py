"""Condensation benchmark: methods vs random/herding subsets on one evaluation protocol.

Each (method, ipc) row is one ``ddplug distill ... --json`` run in its own process, so its
peak memory is its own; finished rows are kept in the output folder and skipped on a
re-run (resume after a crash or Ctrl-C). Prints and saves a markdown table and JSON.

    python -m simulations.condensation_benchmark --preset cpu --ipc 1 10 --methods dm random herding
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from ddplug.evaluate.report import format_table, percent
from ddplug.storage import atomic_write, write_json


def run_row(method: str, ipc: int, args: argparse.Namespace) -> dict:
    out = Path(args.out) / f"{args.dataset}-{method}-ipc{ipc}"
    summary_file = out / "evaluation.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    command = [sys.executable, "-m", "ddplug.cli", "distill", "--dataset", args.dataset, "--method", method,
               "--ipc", str(ipc), "--preset", args.preset, "--seed", str(args.seed), "--baselines", "",
               "--out", str(out), "--json", "--device", args.device, *sum((["--set", s] for s in args.set), [])]
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"row {method} ipc {ipc} failed (exit {completed.returncode}); rerun to resume")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def build_table(rows: list[dict]) -> str:
    random = {row["ipc"]: row for row in rows if row["method"] == "random"}
    lines = []
    for row in rows:
        baseline = random.get(row["ipc"])
        published = row.get("published_accuracy")
        lines.append((
            row["method"], row["ipc"],
            percent(row["accuracy_mean"], row["accuracy_std"]),
            "-" if baseline is None else percent(baseline["accuracy_mean"], baseline["accuracy_std"]),
            "-" if published is None else f"{100 * published:.1f}",
            "-" if not row.get("seconds_per_iteration") else f"{row['seconds_per_iteration']:.3f}",
            f"{row['distill_seconds']:.0f}",
            f"{row['eval_seconds_per_model']:.1f}",
            f"{row['peak_memory_mb']:.0f}",
        ))
    headers = ("method", "ipc", "accuracy %", "random %", "published %", "distill s/it", "distill s",
               "eval s/model", "peak MB")
    return format_table(headers, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--methods", nargs="+", default=["dm", "random", "herding"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override, as for ddplug")
    parser.add_argument("--out", default=None, help="default: results/condensation-<dataset>-<preset>")
    args = parser.parse_args(argv)
    args.out = args.out or f"results/condensation-{args.dataset}-{args.preset}"
    rows = [run_row(method, ipc, args) for ipc in args.ipc for method in args.methods]
    device = rows[0]["device"] if rows else "cpu"
    hardware = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    command = "python -m simulations.condensation_benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
    table = build_table(rows)
    header = (f"{args.dataset}, preset {args.preset}, eval {rows[0]['eval_model']} x {rows[0]['eval_models']} models, "
              f"{rows[0]['eval_epochs']} epochs; device {device} ({hardware})\ncommand: {command}")
    print(header + "\n" + table)
    out = Path(args.out)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(header + "\n\n" + table + "\n"))
    write_json(out / "rows.json", {"command": command, "hardware": hardware, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
