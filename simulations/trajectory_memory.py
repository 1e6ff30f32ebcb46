"""Trajectory matching's memory: peak memory and time of one MTT gradient by syn_steps.

Compares the exact constant-memory gradient (``memory="constant"``) with the original
unrolled one (``memory="unrolled"``) for 10, 20 and 40 student steps. Needs no experts:
the student starts at a fresh network and is matched to a nearby point, with ``ipc`` real
images per class as the synthetic set (the whole set every step, no augmentation). On the
CPU the peak counts the tensor storage the gradient allocates (see ``peak_memory_bytes``).

    python -m simulations.trajectory_memory --model convnet --ipc 10
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ddplug.data import ImageDataset, load_dataset
from ddplug.devices import resolve_device
from ddplug.memory import peak_memory_bytes
from ddplug.methods.trajectory import MEMORY_MODES, StudentRun, matching_gradients
from ddplug.evaluation.report import format_table
from ddplug.models import create_model
from ddplug.storage import atomic_write, write_json
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args


def memory_rows(
    real: ImageDataset,
    *,
    model: str = "convnet",
    ipc: int = 10,
    syn_steps: Sequence[int] = (10, 20, 40),
    memory_slots: int = 8,
    device: torch.device | str = "cpu",
) -> list[dict[str, float | int | str]]:
    """Peak memory (MB) and seconds of one MTT gradient for each memory mode and syn_steps."""
    device = torch.device(device)
    network = create_model(model, in_channels=real.in_channels, num_classes=real.num_classes,
                           image_size=real.image_size, seed=0).to(device)
    start = torch.nn.utils.parameters_to_vector(network.parameters()).detach()
    target = start + 0.01 * torch.randn(start.shape, generator=torch.Generator().manual_seed(0)).to(device)
    chosen = torch.cat([indices[:ipc] for indices in real.class_indices()])
    images, labels = real.images[chosen].to(device), real.labels[chosen].to(device)
    lr = torch.tensor(0.01, device=device)
    rows: list[dict[str, float | int | str]] = []
    for steps in syn_steps:
        run = StudentRun(network, start, target, torch.arange(len(labels), device=device).expand(steps, -1))
        for memory in MEMORY_MODES:
            gradients = functools.partial(matching_gradients, run, images, labels, lr, memory=memory,
                                          memory_slots=memory_slots)
            peak = peak_memory_bytes(gradients, device)
            began = time.perf_counter()  # timed apart: the CPU counter slows every op
            gradients().loss.cpu()
            rows.append({"memory": memory, "syn_steps": steps, "peak_mb": peak / 2**20,
                         "seconds": time.perf_counter() - began})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="convnet", help="network spec (default: the paper's ConvNet-3, width 128)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--syn-steps", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--memory-slots", type=int, default=8)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/trajectory-memory")
    add_rows_option(parser, "trajectory-memory")
    args = parse_benchmark_args(parser, argv)
    device = resolve_device(args.device)
    real = load_dataset(args.dataset, args.data_root).train
    rows = memory_rows(real, model=args.model, ipc=args.ipc, syn_steps=args.syn_steps,
                       memory_slots=args.memory_slots, device=device)
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    command = "python -m simulations.trajectory_memory " + " ".join(sys.argv[1:] if argv is None else argv)
    table = format_table(("memory", "syn_steps", "peak MB", "seconds"),
                         [(r["memory"], r["syn_steps"], f"{r['peak_mb']:.1f}", f"{r['seconds']:.2f}") for r in rows])
    header = f"{args.dataset}, {args.model}, ipc {args.ipc}, memory_slots {args.memory_slots}; {hardware}\ncommand: {command}"
    print(header + "\n" + table)
    out = Path(args.out)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(header + "\n\n" + table + "\n"))
    write_json(out / "rows.json", {"command": command, "hardware": hardware, "rows": rows})
    keep_rows(args.rows, "simulations.trajectory_memory", argv, rows, conditions=args.conditions,
              hardware=hardware)
    return 0


if __name__ == "__main__":
    sys.exit(main())
