"""How a benchmark starts, and where its rows came from: the commit, the command, the machine.

Every benchmark reads its command line with :func:`parse_benchmark_args`, so its process
runs as every ddplug entry point does (the tuned allocator) and its seconds compare with
the ``ddplug`` command's, and writes each of its rows with :func:`provenance` merged in, so
that a table generated from the rows (``simulations.tables``) can always name its command
and conditions.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ddplug.allocator import tune_allocator
from ddplug.storage import write_json

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str | None:
    """The checkout's short commit, with ``+changes`` when the work tree differs from it
    (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, cwd=ROOT)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    if head is None:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "ddplug", "strategies", "simulations")
    return head + ("+changes" if changed else "")


def cpu_name() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(module: str, argv: list[str] | None = None, *, conditions: str = "no other load") -> dict[str, Any]:
    """The fields every benchmark row carries: the command that made it (``python -m MODULE
    ARGS``), the commit, torch's version, the CPU and its cores, and the conditions of the run."""
    args = sys.argv[1:] if argv is None else argv
    return {"command": " ".join(["python -m", module, *args]), "commit": commit(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "machine": platform.machine(), "cpu": cpu_name(),
            "conditions": f"{os.cpu_count()} CPU cores, {conditions}"}


def parse_benchmark_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """A benchmark's arguments, read after its process is set up as the ``ddplug`` command's:
    the allocator tuned before the first tensor (``ddplug.tune_allocator``)."""
    tune_allocator()
    return parser.parse_args(argv)


def add_rows_option(parser: Any, name: str) -> None:
    """The ``--rows FOLDER`` option of a benchmark: where its rows are kept (``benchmarks/NAME``)."""
    parser.add_argument("--rows", type=Path, default=ROOT / "benchmarks" / name,
                        help=f"where the rows are kept, with their provenance (default benchmarks/{name})")
    parser.add_argument("--conditions", default="no other load", help="what else ran beside the benchmark")


def keep_rows(folder: Path, module: str, argv: list[str] | None, rows: list[dict[str, Any]], *, conditions: str,
              **extra: Any) -> Path:
    """Write one run's ``rows`` with their :func:`provenance` to ``FOLDER/rows-<digest>.json``,
    the digest that of the command, so a rerun of one command replaces its own file."""
    origin = provenance(module, argv, conditions=conditions)
    digest = hashlib.blake2b(origin["command"].encode(), digest_size=5).hexdigest()
    return write_json(Path(folder) / f"rows-{digest}.json", {**origin, **extra, "rows": rows})
