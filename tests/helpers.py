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
