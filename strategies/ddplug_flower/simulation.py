"""Federated learning with distilled data on Flower's Simulation Engine (Ray backend).

Clients condense their partition and upload the synthetic set, once (one-shot) or every
round around the global model (multi-round, FedDM); or, for comparison, run FedAvg on the
same model and partitions. The server's history goes to ``OUT/history.json``.

    ddplug fl --dataset fashion-mnist --clients 10 --alpha 0.1 --mode distill --rounds 1
    ddplug fl --mode fedavg --rounds 20 --json
    ddplug fl --benchmark 10 50 100      # wall time and peak memory by client count
    ddplug fl --plot results/federated   # accuracy against cumulative bytes of the runs there

This command runs the apps in-process with ``flwr.simulation.run_simulation`` (deprecated in
flwr 1.41 in favour of ``flwr run``): it hands the server its settings as a Python object,
returns when the run ends, and measures the memory of exactly the processes it started,
with no SuperLink left running and no run config to round-trip through TOML. The same
apps run with ``flwr run .``, which reads ``[tool.flwr.app.config]`` in pyproject.toml
(start it with ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` so that its SuperLink
uses this environment instead of installing torch for every run).

Flower and Ray load only when a run starts, so building this parser is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from ddplug.commands import Command
from ddplug.errors import DdplugError
from ddplug.evaluation.report import format_table
from ddplug.storage import atomic_write

from ddplug_flower.server import check_before_start
from ddplug_flower.settings import FederatedSettings, add_setting_flags, settings_from_flags

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

PLOT_FILE = "accuracy-vs-bytes.png"
BENCHMARK_OVERRIDES = "eval.epochs=1 eval.model=convnet:width=8,depth=2 dm.iterations=2 dm.model=convnet:width=8,depth=2"


def simulate(settings: FederatedSettings, *, client_cpus: float = 1.0, client_app: ClientApp | None = None
             ) -> dict[str, Any]:
    """Run ``settings`` with one simulated node per client (``client_app``, default ddplug's);
    returns the history summary and the peak memory of this process and its Ray processes together."""
    from flwr.simulation import run_simulation

    from ddplug_flower import HISTORY_FILE, make_server_app
    from ddplug_flower import client_app as default_client_app

    if not (math.isfinite(client_cpus) and client_cpus > 0):
        raise DdplugError(f"--client-cpus must be a positive number, got {client_cpus}")
    check_before_start(settings)
    history = Path(settings.out) / HISTORY_FILE
    history.unlink(missing_ok=True)  # never report an earlier run's results as this one's
    with _ProcessWatch() as watch:
        run_simulation(
            server_app=make_server_app(settings),
            client_app=client_app or default_client_app,
            num_supernodes=settings.clients,
            backend_config={"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0}},
        )
    if not history.is_file():
        raise DdplugError(f"the simulation ended without writing {history}; see the log above")
    return {**json.loads(history.read_text()), "peak_memory_mb": watch.peak_mb}


def benchmark(client_counts: Sequence[int], settings: FederatedSettings, *, client_cpus: float = 1.0) -> list[dict[str, Any]]:
    """Wall time and peak resident memory of one-round runs for each number of clients."""
    rows = []
    for count in client_counts:
        began = time.perf_counter()
        run = dataclasses.replace(settings, clients=count, out=str(Path(settings.out) / f"benchmark-{count}"))
        summary = simulate(run, client_cpus=client_cpus)
        rows.append({"clients": count, "wall_seconds": round(time.perf_counter() - began, 1),
                     "peak_memory_mb": round(summary["peak_memory_mb"]), "accuracy": summary["accuracy"],
                     "participants": len(summary["history"][-1]["participants"]), "bytes_up": summary["bytes_up"]})
    return rows


class _ProcessWatch:
    """Samples this process and its descendants (Ray's) every half second for their summed
    resident memory. On exit it ends the descendants still alive: Ray workers can outlive
    ``ray.shutdown`` by a minute, holding their memory."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._seen: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.5):
            total = 0
            for process in [me, *me.children(recursive=True)]:
                self._seen.setdefault(process.pid, process)
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # it just exited
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def __enter__(self) -> _ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        me = os.getpid()
        leftovers = [process for pid, process in self._seen.items() if pid != me and process.is_running()]
        for process in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ddplug fl``: one flag per run setting, and this command's own."""
    add_setting_flags(parser, skip=("overrides",))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset field (the overrides setting): eval.epochs=50, dm.iterations=200, ...")
    parser.add_argument("--client-cpus", type=float, default=1.0, help="CPU cores Ray reserves per simulated client")
    parser.add_argument("--benchmark", type=int, nargs="+", metavar="CLIENTS",
                        help="time one tiny round for each number of clients instead of running")
    parser.add_argument("--plot", metavar="FOLDER",
                        help="instead of running: plot accuracy against cumulative bytes for FOLDER/*/history.json")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")


def settings_from_args(args: argparse.Namespace) -> FederatedSettings:
    """The run's settings; without ``--out`` the history goes to runs/federated-MODE-Nc-PARTITIONER."""
    overrides = [item.strip() for item in args.set]
    spaced = [item for item in overrides if " " in item]
    if spaced:  # the settings keep the overrides as one space-separated string
        raise DdplugError(f"--set takes KEY=VALUE without spaces, got {spaced[0]!r}")
    if args.benchmark:
        overrides.insert(0, BENCHMARK_OVERRIDES)
    settings = settings_from_flags(args, overrides=" ".join(overrides), **({"ipc": 1} if args.benchmark else {}))
    if args.out is None:
        settings = dataclasses.replace(settings, out=f"runs/federated-{settings.mode}-{settings.clients}c-"
                                                     f"{settings.partitioner}")
    return settings


def history_table(summary: dict[str, Any]) -> str:
    rows = [(entry["round"], f"{100 * entry['accuracy']:.2f}", f"{entry['bytes_up'] / 1e6:.3f}",
             f"{entry['bytes_down'] / 1e6:.3f}", f"{entry['seconds']:.1f}", len(entry["participants"]),
             ", ".join(entry["missing"]) or "-")
            for entry in summary["history"]]
    title = (f"{summary['dataset']}, {summary['clients']} clients ({summary['partitioner']}, alpha {summary['alpha']}), "
             f"{run_label(summary)}: final accuracy {100 * summary['accuracy']:.2f}% in {summary['seconds']:.0f} s")
    table = format_table(("round", "accuracy %", "MB up", "MB down", "seconds", "clients", "missing"), rows)
    if summary["mode"] == "fedavg":
        return title + "\n" + table
    leakage = (f"leakage over every upload: nearest-real similarity median {_number(summary, 'upload_nn_similarity_median')}"
               f" (real images to each other: {_number(summary, 'real_nn_similarity_median')}), near copies "
               f"{summary.get('near_copies', '-')}, membership-inference advantage "
               f"{_number(summary, 'membership_advantage')}, epsilon {_number(summary, 'epsilon', 2)}")
    return title + "\n" + table + "\n" + leakage


def _number(summary: dict[str, Any], key: str, digits: int = 3) -> str:
    """A summary's number for a table: '-' where it is absent (older histories, no DP)."""
    value = summary.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def run_label(summary: dict[str, Any]) -> str:
    if summary["mode"] == "fedavg":
        return f"FedAvg ({summary['rounds']} rounds)"
    settings = summary.get("settings", {})
    details = [settings.get("param", "pixels"), f"{settings.get('init', 'real')} init"]
    if settings.get("dp-epsilon"):
        details.append(f"DP eps {settings['dp-epsilon']:g}")
    mode = "distilled one-shot" if summary["rounds"] == 1 else f"distilled multi-round ({summary['rounds']} rounds)"
    return f"{mode} ({', '.join(details)})"


def compare_runs(folder: Path) -> tuple[str, Path]:
    """A table of the runs in ``folder/*/history.json`` and a plot of their accuracy against
    cumulative bytes (up + down), one panel per partitioning; returns the table and the plot's path."""
    from ddplug_flower import HISTORY_FILE

    runs = [read_history(path) for path in sorted(folder.glob(f"*/{HISTORY_FILE}"))]
    runs = [run for run in runs if run["history"]]
    if not runs:
        raise DdplugError(f"{folder} holds no finished run (no */{HISTORY_FILE} with a round in it)")
    runs.sort(key=lambda run: (run["partitioner"], run["alpha"], run["mode"] == "fedavg", run["rounds"]))
    rows = [(run["partitioner"], run["alpha"], run_label(run), f"{100 * run['accuracy']:.2f}",
             f"{run['bytes_up'] / 1e6:.3f}", f"{run['bytes_down'] / 1e6:.3f}", f"{run['seconds']:.0f}",
             _number(run, "upload_nn_similarity_median"), _number(run, "membership_advantage"),
             _number(run, "epsilon", 2)) for run in runs]
    table = format_table(("partitions", "alpha", "mode", "accuracy %", "MB up", "MB down", "seconds",
                          "upload NN sim", "MIA advantage", "epsilon"), rows)
    return table, _plot_accuracy_by_bytes(runs, folder / PLOT_FILE)


_NUMBER = (int, float)
# What the table and the plot read of a history, and of each of its rounds.
_HISTORY_KEYS = {"mode": (str,), "partitioner": (str,), "dataset": (str,), "alpha": _NUMBER, "clients": (int,),
                 "rounds": (int,), "accuracy": _NUMBER, "bytes_up": _NUMBER, "bytes_down": _NUMBER,
                 "seconds": _NUMBER, "history": (list,)}
_ROUND_KEYS = {"accuracy": _NUMBER, "bytes_up": _NUMBER, "bytes_down": _NUMBER}
_OPTIONAL_NUMBERS = ("upload_nn_similarity_median", "membership_advantage", "epsilon")


def read_history(path: Path) -> dict[str, Any]:
    """A run's ``history.json``, checked for what the table and the plot read: one clear
    error naming the file if it is not a finished ddplug history."""
    def refuse(why: str) -> DdplugError:
        return DdplugError(f"{path} is not a ddplug federated history ({why}): move it out of {path.parent.parent}")

    try:
        run = json.loads(path.read_text(), parse_constant=lambda constant: float("nan"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise refuse(f"{type(error).__name__}: {str(error)[:120]}") from None
    if not isinstance(run, dict):
        raise refuse(f"it holds a JSON {type(run).__name__}, not an object")
    rounds = run["history"] if isinstance(run.get("history"), list) else []
    for entries, keys, where in ((run, _HISTORY_KEYS, ""),
                                 *((entry, _ROUND_KEYS, f"round {i + 1}: ") for i, entry in enumerate(rounds))):
        if not isinstance(entries, dict):
            raise refuse(f"{where}not an object")
        for key, kinds in keys.items():
            value = entries.get(key)
            if isinstance(value, bool) or not isinstance(value, kinds) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise refuse(f"{where}{key} is {value!r}")
    for key in _OPTIONAL_NUMBERS:
        value = run.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMBER)):
            raise refuse(f"{key} is {value!r}")
    return run


def _plot_accuracy_by_bytes(runs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    panels = sorted({(run["partitioner"], run["alpha"]) for run in runs})
    # One colour per run label, the same in every panel.
    colours = {label: f"C{index}" for index, label in enumerate(dict.fromkeys(map(run_label, runs)))}
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False, sharey=True)
    for axis, (partitioner, alpha) in zip(axes[0], panels):
        for run in runs:
            if (run["partitioner"], run["alpha"]) != (partitioner, alpha):
                continue
            traffic = np.cumsum([entry["bytes_up"] + entry["bytes_down"] for entry in run["history"]]) / 1e6
            accuracy = [100 * entry["accuracy"] for entry in run["history"]]
            # A one-shot run is one point, which the first round of a multi-round run would hide.
            style = {"marker": "*", "markersize": 14, "zorder": 3} if len(traffic) == 1 else {"marker": "o", "markersize": 3}
            axis.plot(traffic, accuracy, label=run_label(run), color=colours[run_label(run)], **style)
        axis.set_xscale("log")
        axis.set_xlabel("cumulative MB (up + down)")
        axis.set_title(f"{runs[0]['dataset']}, {runs[0]['clients']} clients, {partitioner} alpha={alpha}", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)  # each panel its own: the runs differ from panel to panel
    axes[0][0].set_ylabel("test accuracy (%)")
    figure.tight_layout()

    def write(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=110)
        plt.close(figure)

    return atomic_write(path, write)


def run_from_args(args: argparse.Namespace) -> int:
    if args.plot:
        table, plot = compare_runs(Path(args.plot))
        print(f"{table}\nplot: {plot}")
        result: dict[str, Any] = {"table": table, "plot": str(plot)}
    elif args.benchmark:
        settings = settings_from_args(args)
        rows = benchmark(args.benchmark, settings, client_cpus=args.client_cpus)
        print(format_table(tuple(rows[0]), [tuple(row.values()) for row in rows]))
        result = {"benchmark": rows}
    else:
        result = simulate(settings_from_args(args), client_cpus=args.client_cpus)
        print(history_table(result))
    if args.json:
        print(json.dumps(result))
    return 0


COMMAND = Command(name="fl", help="federated learning with distilled uploads, or FedAvg (Flower)", extra="flower",
                  requires=("flwr", "ray", "flwr_datasets"), add_arguments=add_arguments, run=run_from_args)
