"""The federated run's real workload at 50 and 100 clients: measured on a sample, extrapolated.

A whole simulated one-shot run at 50 or 100 clients with the ``cpu`` preset's condensation
on every client does not fit the 2 cores in reasonable time, so this measures its parts,
one at a time (clients on one thread, as Ray's workers run them; the server on all): for each client count, the partitions are drawn as the run draws them, the
first ``--sample`` clients condense theirs exactly as the ClientApp does (the run's method,
parameterisation and init; the leakage report included), timed one by one; the union the
server would train on is counted exactly from the partitions (every class with more than
``ipc`` images contributes its decoded images); the server's training is timed for one
epoch on a union of that size. The estimate is then

    wall ~ (mean client seconds x clients) / workers + server epochs x seconds per epoch + overhead

with ``overhead`` the Flower/Ray cost of a run of that many clients measured with trivial
clients (``ddplug fl --benchmark``). Each part is printed with the estimate, so the
extrapolation can be checked.

    python -m simulations.federated_scale --clients 50 100 --sample 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from ddplug.evaluation.report import format_table
from ddplug.evaluation.training import train_classifier
from ddplug.pipeline import condense_classes
from ddplug.privacy import leakage_report
from ddplug.seeding import derive_seed, make_generator
from ddplug.sets import create_param
from ddplug.storage import atomic_write, write_json
from ddplug_flower import FederatedSettings, partition_indices
from ddplug_flower.settings import cached_dataset
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args


def measure(settings: FederatedSettings, sample: int, workers: int, overhead: float) -> dict:
    data = cached_dataset(settings.dataset, settings.data_root)
    preset = settings.resolved_preset()
    parts = partition_indices(data.train.labels, settings.clients, scheme=settings.partitioner, alpha=settings.alpha,
                              classes_per_partition=settings.classes_per_client, seed=settings.seed)
    counts = [torch.bincount(data.train.labels[part], minlength=data.train.num_classes) for part in parts]
    seconds, images = [], []  # per sampled client: condensation + leakage report, and images uploaded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a simulated client runs: Ray gives each worker one core
    for partition_id in range(min(sample, settings.clients)):
        real = data.train.subset(parts[partition_id])
        began = time.perf_counter()
        synthetic = condense_classes(real, settings.method, ipc=settings.ipc, preset=preset, copy_small_classes=False,
                                     seed=derive_seed(settings.seed, "client", partition_id, 1),
                                     settings={"param": settings.param, "init": settings.init})
        leakage_report(synthetic.images, real, data.test, probes=settings.leakage_probes)
        seconds.append(time.perf_counter() - began)
        images.append(len(synthetic))
    torch.set_num_threads(threads)  # the server trains in the driver, on every core
    shape = (data.train.in_channels, *data.train.image_size)
    decoded = create_param(settings.param).layout(1, shape, settings.ipc * math.prod(shape)).decoded_per_class
    union = sum(int((count > settings.ipc).sum()) for count in counts) * decoded
    model = settings.global_model(data.train)
    protocol = preset.evaluation
    began = time.perf_counter()  # an epoch's time depends on the union's size, not on what the images are
    train_classifier(model, data.train.images[:union], data.train.labels[:union], protocol.train_settings(1),
                     generator=make_generator(0, "scale-server"))
    epoch_seconds = time.perf_counter() - began
    client_total = statistics.fmean(seconds) * settings.clients
    server = epoch_seconds * protocol.epochs
    return {"clients": settings.clients, "sampled": len(seconds), "client_seconds_mean": statistics.fmean(seconds),
            "client_seconds": seconds, "client_images": images, "union_images": union, "server_epoch_seconds": epoch_seconds,
            "server_epochs": protocol.epochs, "overhead_seconds": overhead,
            "estimated_wall_seconds": client_total / workers + server + overhead}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--sample", type=int, default=3, help="clients per count whose condensation is timed")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=2, help="simulated clients running at once (one per core)")
    parser.add_argument("--overhead", type=float, nargs="+", default=[30.0, 32.8],
                        help="Flower/Ray seconds of a trivial run per client count (ddplug fl --benchmark)")
    parser.add_argument("--overrides", default="", help="preset overrides, e.g. 'eval.epochs=100'")
    parser.add_argument("--out", default="results/federated-scale")
    add_rows_option(parser, "federated-scale")
    args = parse_benchmark_args(parser, argv)
    if len(args.overhead) != len(args.clients):
        parser.error("give one --overhead per --clients value")
    rows = [measure(FederatedSettings(clients=count, alpha=args.alpha, init="noise", overrides=args.overrides),
                    args.sample, args.workers, overhead) for count, overhead in zip(args.clients, args.overhead)]
    command = "python -m simulations.federated_scale " + " ".join(sys.argv[1:] if argv is None else argv)
    table = format_table(("clients", "sampled", "client s (mean)", "union images", "server s/epoch", "server epochs",
                          "overhead s", "estimated wall s"),
                         [(r["clients"], r["sampled"], f"{r['client_seconds_mean']:.1f}", r["union_images"],
                           f"{r['server_epoch_seconds']:.2f}", r["server_epochs"], f"{r['overhead_seconds']:.0f}",
                           f"{r['estimated_wall_seconds']:.0f}") for r in rows])
    text = f"one-shot DM uploads, cpu preset, alpha {args.alpha}, {args.workers} workers\ncommand: {command}\n\n{table}"
    print(text)
    out = Path(args.out)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(text + "\n"))
    write_json(out / "rows.json", {"command": command, "rows": rows})
    keep_rows(args.rows, "simulations.federated_scale", argv, rows, conditions=args.conditions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
