"""What tests import: a tiny model spec and fake dataset files in the real formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

TINY_MODEL = "convnet:width=8,depth=2"


def idx_bytes(array: np.ndarray) -> bytes:
    """An array in the idx format of (Fashion-)MNIST: magic, sizes, then uint8 data."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _banded_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images per class, each class a brighter band."""
    labels = np.repeat(np.arange(10), n).astype(np.uint8)
    images = rng.integers(0, 60, (len(labels), 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 * label : 2 * label + 4] += 180
    return images.astype(np.uint8), labels


def write_fake_fashion_mnist(root: Path, per_class: int = 6, test_per_class: int = 2, *,
                             torchvision_layout: bool = False) -> Path:
    """Idx files of banded classes: gzipped in ``root/fashion-mnist`` (ddplug's layout), or
    uncompressed in ``root/FashionMNIST/raw`` (what torchvision, and so Avalanche's
    ``SplitFMNIST``, reads without downloading)."""
    rng = np.random.default_rng(0)
    folder = root / ("FashionMNIST/raw" if torchvision_layout else "fashion-mnist")
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        images, labels = _banded_split(rng, n)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            if torchvision_layout:
                (folder / name).write_bytes(idx_bytes(array))
            else:
                (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return root
