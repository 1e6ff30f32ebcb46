"""Do ``channels_last`` and ``torch.compile`` speed up the two loops users wait on?

Times (1) the evaluation's training loop (``train_classifier`` on an ipc-sized set with
DSA, the protocol's optimiser) and (2) a DM distillation step, each in its default form,
with the network and images in ``channels_last`` memory format, and (for training) with
the network compiled by ``torch.compile``. Variants are timed in turns, ``--repeats`` times,
so a machine whose load changes affects them alike; the median is reported. Compilation
time is reported apart from the steady-state time.

    python -m simulations.speed_options --ipc 10 --model convnet:width=32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ddplug.augment import DSA, DSAConfig
from ddplug.data import load_dataset
from ddplug.devices import resolve_device
from ddplug.methods import create_distiller, make_config
from ddplug.evaluation.report import format_table
from ddplug.evaluation.training import TrainSettings, train_classifier
from ddplug.models import create_model
from ddplug.storage import atomic_write, write_json
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args


def _seconds(work: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="convnet:width=32")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per timed run")
    parser.add_argument("--steps", type=int, default=5, help="DM steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/speed-options")
    add_rows_option(parser, "speed-options")
    args = parse_benchmark_args(parser, argv)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_root)
    real = data.train
    chosen = torch.cat([indices[: args.ipc] for indices in real.class_indices()])
    images, labels = real.images[chosen].to(device), real.labels[chosen].to(device)
    dsa = DSA(DSAConfig.for_dataset(real.name))
    settings = TrainSettings(epochs=args.epochs)

    def network(channels_last: bool) -> torch.nn.Module:
        made = create_model(args.model, in_channels=real.in_channels, num_classes=real.num_classes,
                            image_size=real.image_size, seed=0).to(device)
        return made.to(memory_format=torch.channels_last) if channels_last else made

    compiled = torch.compile(network(False))
    compile_seconds = _seconds(lambda: train_classifier(compiled, images, labels, TrainSettings(epochs=1),
                                                        augment=dsa, generator=torch.Generator().manual_seed(0)), device)
    last = images.contiguous(memory_format=torch.channels_last)
    training = {
        "default": lambda: train_classifier(network(False), images, labels, settings, augment=dsa,
                                            generator=torch.Generator().manual_seed(0)),
        "channels_last": lambda: train_classifier(network(True), last, labels, settings, augment=dsa,
                                                  generator=torch.Generator().manual_seed(0)),
        "torch.compile": lambda: train_classifier(compiled, images, labels, settings, augment=dsa,
                                                  generator=torch.Generator().manual_seed(0)),
    }
    config = make_config("dm", {"ipc": args.ipc, "model": args.model, "batch_real": 64, "iterations": 1})
    distillers = {"default": create_distiller("dm", real, config, device)}
    distillers["channels_last"] = create_distiller("dm", real, config, device)
    converted = distillers["channels_last"]  # its data, set and every network it builds in channels_last
    converted.real_images = converted.real_images.contiguous(memory_format=torch.channels_last)
    converted.images.data = converted.images.data.contiguous(memory_format=torch.channels_last)
    build = converted.build_network
    converted.build_network = lambda seed: build(seed).to(memory_format=torch.channels_last)
    stepping = {name: (lambda d=d: [d.step(i).item() for i in range(args.steps)]) for name, d in distillers.items()}
    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for loop, variants, per in (("evaluation training", training, args.epochs), ("DM step", stepping, args.steps)):
            for name, work in variants.items():
                timings.setdefault((loop, name), []).append(_seconds(work, device) / per)
    rows = [{"loop": loop, "variant": name, "seconds": statistics.median(values)} for (loop, name), values in timings.items()]
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    command = "python -m simulations.speed_options " + " ".join(sys.argv[1:] if argv is None else argv)
    table = format_table(("loop", "variant", "median s per epoch / step"),
                         [(r["loop"], r["variant"], f"{r['seconds']:.4f}") for r in rows])
    header = (f"{args.dataset}, {args.model}, ipc {args.ipc}, {args.repeats} repeats; torch.compile's first epoch "
              f"(compilation included): {compile_seconds:.1f} s; {hardware}\ncommand: {command}")
    print(header + "\n" + table)
    out = Path(args.out)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(header + "\n\n" + table + "\n"))
    write_json(out / "rows.json", {"command": command, "hardware": hardware, "compile_seconds": compile_seconds,
                                   "rows": rows})
    keep_rows(args.rows, "simulations.speed_options", argv, rows, conditions=args.conditions, hardware=hardware,
              compile_seconds=compile_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
