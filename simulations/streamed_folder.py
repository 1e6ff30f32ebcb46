"""An image folder streamed from disk against the same folder decoded in memory: DM's
seconds per step and the process's peak memory, and whether both give the same set.

The folder is written once from Fashion-MNIST (Debian's package or the data root):
``--train-per-class`` training and ``--test-per-class`` test images of each class, each
upscaled to ``--side`` pixels a side (bilinear) and tinted by a seeded random colour, saved
as PNG. Each storage is one ``ddplug distill --dataset imagefolder:FOLDER --data-storage S
--method dm --ipc K --iterations N --no-eval`` in its own process, so its peak RSS is its own;
``--embed-chunk`` passes DM's checkpointed chunks to both, so that the step's activations
do not hide what the data takes:

    python -m simulations.streamed_folder --train-per-class 2400 --side 96 --iterations 10 --embed-chunk 64

Rows go to ``benchmarks/streamed-folder/`` with their command, conditions and commit; the
table is printed at the end. Run it with nothing else on the machine: seconds are its point.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ddplug.data import load_dataset
from ddplug.evaluation.report import format_table
from ddplug.sets import SET_FILE, load_set
from ddplug.storage import write_json
from simulations.large_budgets import embed_label
from simulations.provenance import add_rows_option, keep_rows, parse_benchmark_args

STORAGES = ("memory", "disk")


def write_folder(folder: Path, *, train_per_class: int, test_per_class: int, side: int, seed: int = 0) -> Path:
    """The tinted, upscaled Fashion-MNIST folder (kept when one with the same recipe exists)."""
    recipe = {"train_per_class": train_per_class, "test_per_class": test_per_class, "side": side, "seed": seed}
    manifest = folder / "recipe.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == recipe:
        return folder
    data = load_dataset("fashion-mnist")
    rng = np.random.default_rng(seed)
    jobs = []
    for split, real, per_class in (("train", data.train, train_per_class), ("test", data.test, test_per_class)):
        for label, members in enumerate(real.class_indices()):
            if len(members) < per_class:
                raise SystemExit(f"fashion-mnist's {split} split has {len(members)} images of class {label}; "
                                 f"ask for at most that many per class")
            pixels = real.denormalise(real.images[members[:per_class]]).clamp(0, 1).mul(255).round().byte()
            tints = rng.uniform(0.35, 1.0, (per_class, 3))
            for i in range(per_class):
                jobs.append((folder / split / f"{label}" / f"{i:05d}.png", pixels[i, 0].numpy(), tints[i]))

    def save(job: tuple[Path, np.ndarray, np.ndarray]) -> None:
        path, grey, tint = job
        large = np.asarray(Image.fromarray(grey).resize((side, side), Image.BILINEAR), dtype=np.float32)
        Image.fromarray((large[..., None] * tint).round().astype(np.uint8)).save(path, compress_level=1)

    for path, _, _ in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(save, jobs))
    write_json(manifest, recipe)
    return folder


def distill(folder: Path, storage: str, args: argparse.Namespace) -> dict:
    """One ``ddplug distill`` run on the folder without evaluation; its JSON summary."""
    out = args.work / storage
    shutil.rmtree(out, ignore_errors=True)  # a finished run's checkpoint would be resumed, and nothing measured
    argv = [sys.executable, "-m", "ddplug", "distill", "--dataset", f"imagefolder:{folder}", "--data-storage", storage,
            "--method", "dm", "--ipc", str(args.ipc), "--iterations", str(args.iterations), "--no-eval", "--quiet",
            "--json", "--out", str(out), "--embed-chunk", str(args.embed_chunk)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "set": str(out / SET_FILE)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-per-class", type=int, default=2400)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--embed-chunk", type=int, default=0,
                        help="DM's images per forward pass, synthetic ones checkpointed (0: all at once)")
    parser.add_argument("--folder", type=Path, default=Path("runs/streamed-folder/images"))
    parser.add_argument("--work", type=Path, default=Path("runs/streamed-folder/sets"))
    add_rows_option(parser, "streamed-folder")
    args = parse_benchmark_args(parser, argv)
    folder = write_folder(args.folder, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                          side=args.side)
    runs = {}
    for storage in STORAGES:
        runs[storage] = distill(folder, storage, args)
        print(f"{storage}: {runs[storage]['seconds_per_iteration']:.3f} s/step, "
              f"{runs[storage]['peak_memory_mb']:.0f} MB", file=sys.stderr, flush=True)
    sets = {storage: load_set(run["set"]).images for storage, run in runs.items()}
    difference = float((sets["memory"] - sets["disk"]).abs().max())
    first = runs["memory"]
    rows = [{"storage": storage, "train_images": 10 * args.train_per_class, "test_images": 10 * args.test_per_class,
             "image_shape": [3, args.side, args.side], "ipc": args.ipc, "param": run["param"],
             "embed_chunk": args.embed_chunk, "embed": embed_label(args.embed_chunk),
             "iterations": run["iterations"], "seconds_per_iteration": run["seconds_per_iteration"],
             "peak_rss_mb": run["peak_memory_mb"],
             "seconds_ratio": run["seconds_per_iteration"] / first["seconds_per_iteration"],
             "peak_rss_ratio": run["peak_memory_mb"] / first["peak_memory_mb"],
             "max_abs_difference_to_memory": 0.0 if storage == "memory" else difference}
            for storage, run in runs.items()]
    keep_rows(args.rows, "simulations.streamed_folder", argv, rows, conditions=args.conditions)
    print(format_table(("storage", "train images", "s per step", "peak RSS MB", "× memory's s", "× memory's RSS",
                        "max |set − memory's set|"),
                       [(row["storage"], row["train_images"], f"{row['seconds_per_iteration']:.3f}",
                         f"{row['peak_rss_mb']:.0f}", f"{row['seconds_ratio']:.2f}", f"{row['peak_rss_ratio']:.2f}",
                         f"{row['max_abs_difference_to_memory']:.3g}") for row in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
