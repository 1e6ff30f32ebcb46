"""Condensation benchmark: every method vs random/herding subsets on one evaluation protocol.

Each (method, ipc) row is one ``ddplug distill ... --json`` run in its own process, so its
peak memory is its own. Distillers also save ``--snapshots`` intermediate sets, which are
evaluated on the first ``--snapshot-models`` evaluation networks: the time to reach the
final accuracy is the distillation time of the first snapshot within ``--tolerance``
points of the final set's accuracy on those same networks. Finished rows and snapshot
evaluations are kept in the output folder and skipped on a re-run (resume after a crash
or Ctrl-C). Prints and saves a markdown table, JSON, a plot of accuracy over time and one
of accuracy against the sets' bytes (with the published DM, IDC and DANCE numbers).

    python -m simulations.condensation_benchmark --preset cpu --ipc 1 10
    python -m simulations.condensation_benchmark --methods dm random --ipc 1
    python -m simulations.condensation_benchmark --methods dm kip random --params pixels multi:factor=2 --ipc 1 10
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from ddplug.methods import available_methods, get_condenser
from ddplug.methods.condenser import SNAPSHOT_FOLDER
from ddplug.evaluation.published import PUBLISHED_IPCS, published_result
from ddplug.evaluation.report import format_table, percent, pyplot, save_figure
from ddplug.storage import atomic_write, path_part, write_json
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args

METHODS = ("dm", "dc", "dsa", "mtt", "kip", "frepo", "random", "herding")


def _ddplug_json(command: list[str], what: str) -> dict:
    """Run ``python -m ddplug.cli COMMAND --json`` and return its summary."""
    command = [sys.executable, "-m", "ddplug.cli", *command, "--json"]
    print("$ ddplug", " ".join(command[3:]), file=sys.stderr, flush=True)
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{what} failed (exit {completed.returncode}); rerun to resume")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_row(method: str, ipc: int, param: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / f"{args.dataset}-{method}-ipc{ipc}{'' if param == 'pixels' else '-' + path_part(param)}"
    summary_file = out / "evaluation.json"
    learns = get_condenser(method).learns
    if summary_file.is_file():
        row = json.loads(summary_file.read_text())
    else:
        snapshots = ["--snapshots", str(args.snapshots)] if learns else []
        coded = ["--param", param] if learns else []
        row = _ddplug_json(["distill", "--dataset", args.dataset, "--method", method, "--ipc", str(ipc),
                            "--preset", args.preset, "--seed", str(args.seed), "--baselines", "", "--out", str(out),
                            "--device", args.device, *snapshots, *coded, *sum((["--set", s] for s in args.set), [])],
                           f"row {method} {param} ipc {ipc}")
    row["label"] = method if param == "pixels" else f"{method} {param}"
    if learns:
        row["curve"] = accuracy_curve(row, out, args)
        reached = first_at_final(row["curve"], args.tolerance)
        row["iterations_to_final"], row["seconds_to_final"] = reached["iterations"], reached["seconds"]
    return row


def accuracy_curve(row: dict, out: Path, args: argparse.Namespace) -> list[dict]:
    """``{"iterations", "seconds", "accuracy"}`` of every snapshot and the final set, the
    accuracy being the mean over the first ``args.snapshot_models`` evaluation networks."""
    curve = []
    for snapshot in sorted((out / SNAPSHOT_FOLDER).glob("iter-*.safetensors")):
        evaluated = out / SNAPSHOT_FOLDER / f"eval-{snapshot.stem}"
        if (evaluated / "evaluation.json").is_file():
            summary = json.loads((evaluated / "evaluation.json").read_text())
        else:
            summary = _ddplug_json(["evaluate", str(snapshot), "--preset", args.preset, "--seed", str(args.seed),
                                    "--eval-models", str(args.snapshot_models), "--baselines", "", "--out",
                                    str(evaluated), "--device", args.device, "--quiet",
                                    *sum((["--set", s] for s in args.set), [])], f"snapshot {snapshot}")
        curve.append({"iterations": summary["iterations"], "seconds": summary["distill_seconds"],
                      "accuracy": statistics.fmean(summary["accuracies"])})
    final = statistics.fmean(row["accuracies"][: args.snapshot_models])
    curve.append({"iterations": row["iterations"], "seconds": row["distill_seconds"], "accuracy": final})
    return curve


def first_at_final(curve: list[dict], tolerance: float) -> dict:
    """The first point of ``curve`` within ``tolerance`` (points) of the last one's accuracy."""
    final = curve[-1]["accuracy"]
    return next(point for point in curve if point["accuracy"] >= final - tolerance / 100)


def build_table(rows: list[dict]) -> str:
    random = {row["ipc"]: row for row in rows if row["method"] == "random"}
    lines = []
    for row in rows:
        baseline = random.get(row["ipc"])
        published = row.get("published_accuracy")
        lines.append((
            row["label"], row["ipc"], row.get("bytes", "-"), row.get("decoded_per_class") or "-",
            percent(row["accuracy_mean"], row["accuracy_std"]),
            "-" if baseline is None else percent(baseline["accuracy_mean"], baseline["accuracy_std"]),
            "-" if published is None else f"{100 * published:.1f}",
            "-" if not row.get("seconds_per_iteration") else f"{row['seconds_per_iteration']:.3f}",
            f"{row['distill_seconds']:.0f}",
            "-" if row.get("seconds_to_final") is None
            else f"{row['iterations_to_final']} its, {row['seconds_to_final']:.0f} s",
            f"{row['eval_seconds_per_model']:.1f}",
            f"{row['peak_memory_mb']:.0f}",
        ))
    headers = ("method", "ipc", "bytes", "images/class", "accuracy %", "random %", "published %", "distill s/it", "distill s",
               "to final acc", "eval s/model", "peak MB")
    return format_table(headers, lines)


def save_curves(rows: list[dict], path: Path, title: str) -> Path:
    """Accuracy against distillation seconds, one panel per ipc, one line per method."""
    ipcs = sorted({row["ipc"] for row in rows if "curve" in row})
    figure, panels = pyplot().subplots(1, max(1, len(ipcs)), figsize=(5.5 * max(1, len(ipcs)), 4), squeeze=False)
    for panel, ipc in zip(panels[0], ipcs):
        for row in rows:
            if row["ipc"] == ipc and "curve" in row:
                curve = row["curve"]
                panel.plot([p["seconds"] for p in curve], [100 * p["accuracy"] for p in curve], marker="o",
                           label=row["label"])
            elif row["ipc"] == ipc and row["method"] == "random":
                panel.axhline(100 * row["accuracy_mean"], color="gray", linestyle="--", label="random subset")
        panel.set_xscale("log")
        panel.set(title=f"ipc {ipc}", xlabel="distillation seconds (log)", ylabel="test accuracy (%)")
        panel.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


PUBLISHED_BY_BYTES = ("dm", "idc", "dance")  # reference points of the bytes plot (paper protocol, GPU)


def save_bytes_plot(rows: list[dict], path: Path, title: str, published: tuple[str, ...] = PUBLISHED_BY_BYTES) -> Path:
    """Accuracy against the set's stored bytes (log), one line per row label over the budgets,
    with the ``published`` methods' numbers at their budgets' bytes."""
    figure, axis = pyplot().subplots(figsize=(6.5, 4.2))
    for label in dict.fromkeys(row["label"] for row in rows):
        mine = sorted((row for row in rows if row["label"] == label and row.get("bytes")), key=lambda row: row["bytes"])
        if mine:
            axis.errorbar([row["bytes"] for row in mine], [100 * row["accuracy_mean"] for row in mine],
                          yerr=[100 * row["accuracy_std"] for row in mine], marker="o", capsize=3, label=label)
    dataset, per_image = rows[0]["dataset"], _raw_image_bytes(rows)
    for method in published:
        results = [result for ipc in PUBLISHED_IPCS if (result := published_result(method, dataset, ipc))]
        if results and per_image:
            axis.plot([result.ipc * per_image for result in results], [result.accuracy for result in results],
                      linestyle=":", marker="x", label=f"{results[0].name} (published, paper protocol)")
    axis.set_xscale("log")
    axis.set(xlabel="stored bytes of the set (log)", ylabel="test accuracy (%)", title=title)
    axis.legend(fontsize=7)
    return save_figure(figure, path)


def _raw_image_bytes(rows: list[dict]) -> int:
    """Bytes of one raw uint8 image per class (a pixels row's bytes over its ipc), 0 if no row says."""
    return next((row["bytes"] // row["ipc"] for row in rows if row.get("bytes") and row["label"] in METHODS), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=available_methods(), metavar="METHOD")
    parser.add_argument("--params", nargs="+", default=["pixels"], metavar="SPEC",
                        help="parameterisations of the distillers (selections are always raw pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshots", type=int, default=3, help="intermediate sets per distillation, for the curve")
    parser.add_argument("--snapshot-models", type=int, default=2, help="evaluation networks per snapshot")
    parser.add_argument("--tolerance", type=float, default=0.5, help="points below the final accuracy that count as reached")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override, as for ddplug")
    parser.add_argument("--out", default=None, help="default: results/condensation-<dataset>-<preset>")
    add_rows_option(parser, "condensation-benchmark")
    args = parse_benchmark_args(parser, argv)
    args.out = args.out or f"results/condensation-{args.dataset}-{args.preset}"
    rows = [run_row(method, ipc, param, args) for ipc in args.ipc for method in args.methods
            for param in (args.params if get_condenser(method).learns else ["pixels"])]
    device = rows[0]["device"]
    hardware = (torch.cuda.get_device_name(0) if device.startswith("cuda")
                else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    command = "python -m simulations.condensation_benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
    table = build_table(rows)
    header = (f"{args.dataset}, preset {args.preset}, eval {rows[0]['eval_model']} x {rows[0]['eval_models']} models, "
              f"{rows[0]['eval_epochs']} epochs; device {device} ({hardware}); 'to final acc': first of "
              f"{args.snapshots} snapshots (or the end) within {args.tolerance} points of the final set on "
              f"{args.snapshot_models} eval networks\ncommand: {command}")
    print(header + "\n" + table)
    out = Path(args.out)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(header + "\n\n" + table + "\n"))
    write_json(out / "rows.json", {"command": command, "hardware": hardware, "rows": rows})
    keep_rows(args.rows, "simulations.condensation_benchmark", argv, rows, conditions=args.conditions,
              hardware=hardware)
    save_curves(rows, out / "curves.png", f"{args.dataset}, preset {args.preset}: accuracy over distillation time")
    save_bytes_plot(rows, out / "accuracy-vs-bytes.png", f"{args.dataset}, preset {args.preset}: accuracy per byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
