"""Federated uploads: what each initialisation and privacy budget leaks, and what it costs.

Distilled federated runs (``ddplug_flower.simulation.simulate``; one round, or FedDM's
``--rounds N``, each client re-distilling around the global model) on the same
partitions: DM sets started from real images, from noise, and from noise under
differential privacy at each epsilon (per client, delta 1e-5). For each: the global
model's test accuracy, the leakage report over every upload (median centred cosine
similarity of the uploaded images to their nearest real image of the client, the same for
real images to each other as the scale, the largest membership-inference advantage, near
copies), the largest epsilon a client spent, bytes up and wall time. Runs already in
``OUT/NAME/history.json`` are reused, so a re-run resumes. Each run's row, with its command
and conditions, goes to ``benchmarks/federated-privacy/``.

    python -m simulations.federated_privacy --alpha 0.5 --epsilons 1 4 10
    python -m simulations.federated_privacy --alpha 0.5 --runs blend3-init-bits4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ddplug.evaluation.report import format_table
from ddplug.storage import atomic_write, write_json
from ddplug_flower import HISTORY_FILE, FederatedSettings
from ddplug_flower.simulation import simulate
from simulations.provenance import ROOT, parse_benchmark_args, provenance

# what a row keeps of a run's summary
ROW_KEYS = ("accuracy", "epsilon", "upload_nn_similarity_median", "real_nn_similarity_median",
            "membership_advantage", "near_copies", "bytes_up", "bytes_down", "wall_seconds", "seconds")


def settings_grid(epsilons: list[float]) -> dict[str, dict[str, Any]]:
    """Run name -> its code and initialisation (and DP budget), every one stated."""
    pixels = {"param": "pixels"}
    runs = {"real-init": {"init": "real", **pixels}, "blend-init": {"init": "blend", **pixels},
            "blend2-init": {"init": "blend:images=2", **pixels},
            "blend-init-bits4": {"init": "blend", "param": "pixels:bits=4"},
            "blend3-init-bits4": {"init": "blend:images=3", "param": "pixels:bits=4"},  # the default
            "noise-init": {"init": "noise", **pixels}}
    runs |= {f"noise-dp-eps{epsilon:g}": {"init": "noise", "dp_epsilon": epsilon, **pixels} for epsilon in epsilons}
    return runs


def run(name: str, settings: FederatedSettings) -> dict[str, Any]:
    history = Path(settings.out) / HISTORY_FILE
    if history.is_file():
        summary = json.loads(history.read_text())
        if summary["settings"] == settings.to_config():
            print(f"{name}: reusing {history}", flush=True)
            return summary
    began = time.perf_counter()
    summary = simulate(settings)
    return {**summary, "wall_seconds": time.perf_counter() - began}


def row(name: str, summary: dict[str, Any]) -> tuple[str, ...]:
    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (name, number(summary["epsilon"], 2), f"{100 * summary['accuracy']:.2f}",
            number(summary["upload_nn_similarity_median"]), number(summary["real_nn_similarity_median"]),
            number(summary["membership_advantage"]), str(summary["near_copies"]),
            f"{summary['bytes_up'] / 1e6:.3f}", f"{summary.get('wall_seconds', summary['seconds']):.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="federated rounds (FedDM past 1)")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 4.0, 10.0])
    parser.add_argument("--runs", nargs="*", default=None, metavar="NAME", help="only these runs of the grid")
    parser.add_argument("--overrides", default="", help="preset overrides, e.g. 'eval.epochs=100'")
    parser.add_argument("--out", default="results/federated-privacy")
    parser.add_argument("--rows", type=Path, default=ROOT / "benchmarks" / "federated-privacy")
    parser.add_argument("--conditions", default="no other load", help="what else ran beside the runs")
    args = parse_benchmark_args(parser, argv)
    out = Path(args.out)
    grid = settings_grid(args.epsilons)
    unknown = set(args.runs or ()) - set(grid)
    if unknown:
        parser.error(f"unknown runs {', '.join(sorted(unknown))}; the grid: {', '.join(grid)}")
    summaries = {}
    for name, extra in grid.items():
        if args.runs is None or name in args.runs:
            if args.rounds != 1:
                extra, name = {**extra, "rounds": args.rounds}, f"{name}-rounds{args.rounds}"
            settings = FederatedSettings(clients=args.clients, alpha=args.alpha, ipc=args.ipc, overrides=args.overrides,
                                         out=str(out / name), **extra)
            summaries[name] = run(name, settings)
            write_json(args.rows / f"alpha{args.alpha:g}-{name}.json",
                       {"run": name, "alpha": args.alpha, "clients": args.clients, "ipc": args.ipc,
                        "settings": extra, **{key: summaries[name].get(key) for key in ROW_KEYS},
                        **provenance("simulations.federated_privacy", argv, conditions=args.conditions)})
    command = "python -m simulations.federated_privacy " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Fashion-MNIST, {args.clients} clients, Dirichlet alpha {args.alpha}, {args.rounds} round(s) of DM "
              f"uploads of ipc {args.ipc}; delta 1e-5 under DP\ncommand: {command}")
    headers = ("run", "epsilon", "accuracy %", "upload NN sim", "real NN sim", "MIA advantage", "near copies",
               "MB up", "wall s")
    text = header + "\n\n" + format_table(headers, [row(name, s) for name, s in summaries.items()])
    print(text)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(text + "\n"))
    write_json(out / "runs.json", {"command": command, "runs": summaries})
    return 0


if __name__ == "__main__":
    sys.exit(main())
