"""Shared fixtures: a small real dataset (scikit-learn's 8x8 digits) and a tiny preset."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ddplug.allocator import tune_allocator
from ddplug.data import DatasetSplits, from_tensors
from ddplug.presets import PRESETS, EvalProtocol, Preset

TINY_MODEL = "convnet:width=8,depth=2"

# The suite's networks are tiny: one thread is as fast, and it stays fast on a loaded
# machine, where two spinning threads per process slow small ops down by 10x or more.
torch.set_num_threads(1)
tune_allocator()  # like every ddplug entry point (tests of the tuning itself use fresh processes)


@pytest.fixture(scope="session")
def digits() -> DatasetSplits:
    """The 1797 8x8 digits of scikit-learn, split 1400/397: real data with no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return from_tensors(x[:1400, None], y[:1400], x[1400:, None], y[1400:], name="digits", num_classes=10)


@pytest.fixture()
def tiny_preset() -> Preset:
    return dataclasses.replace(
        PRESETS["cpu"],
        name="tiny",
        evaluation=EvalProtocol(model=TINY_MODEL, epochs=20, num_models=2, full_epochs=1, feature_epochs=1),
        methods={"*": {"model": TINY_MODEL}, "dm": {"iterations": 20, "batch_real": 16}},
    )


def idx_bytes(array: np.ndarray) -> bytes:
    """An array in the idx format of (Fashion-)MNIST: magic, sizes, then uint8 data."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_fashion_mnist(root: Path, per_class: int = 6, test_per_class: int = 2) -> Path:
    """Gzipped idx files in ``root/fashion-mnist`` where each class is a brighter band."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), n).astype(np.uint8)
        images = rng.integers(0, 60, (len(labels), 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 4] += 180
        return images.astype(np.uint8), labels

    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        images, labels = split(n)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return root
