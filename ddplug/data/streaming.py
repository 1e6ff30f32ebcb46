"""Images that stay on disk: a read-only stand-in for an (N, C, H, W) float tensor that
decodes only the rows it is indexed with, through a bounded cache and decoding threads.

Every consumer of a dataset's images (the class-balanced sampler's draws, DSA, the
evaluator's test pass, herding's features, ZCA) reads them either by index tensors
(``images[index]``) or in order (``images.split(n)``); :class:`StreamedImages` answers
both with ordinary tensors, normalised exactly as the in-memory path normalises (the same
float32 operations in the same order), so a seeded run draws the same batches from either.

Decoding runs on threads rather than processes: Pillow releases the GIL while it decodes,
and threads share the cache and return tensors without pickling them.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

import ddplug.data.formats as formats
from ddplug.errors import DdplugError

# The decoded items one dataset keeps, in bytes: enough for the working set of a
# distillation step at 96x96 and above, a small share of what a 24 000-image folder decodes to.
DEFAULT_CACHE_BYTES = 256 * 2**20
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


class ItemReader(Protocol):
    """Reads item ``index`` of a dataset as a (C, H, W) array of ``dtype``: uint8 pixels, or
    float32 in [0, 1]."""

    shape: tuple[int, int, int]
    dtype: torch.dtype

    def __len__(self) -> int: ...

    def __call__(self, index: int) -> np.ndarray | Tensor: ...


@dataclass(frozen=True)
class ImageFileReader:
    """Image files of one (C, H, W) shape, decoded in ``mode`` ("L" or "RGB").

    Attributes:
        files: the files, in item order.
        mode: the PIL mode every file is converted to.
        shape: the (C, H, W) shape every file decodes to.
    """

    files: tuple[Path, ...]
    mode: str
    shape: tuple[int, int, int]
    dtype = torch.uint8

    def __len__(self) -> int:
        return len(self.files)

    def __call__(self, index: int) -> np.ndarray:
        return formats.read_image_file(self.files[index], self.mode, self.shape)


class _DecodedCache:
    """The last-used decoded items of a reader, at most ``max_bytes`` of them, and the
    threads that decode the ones it misses.

    The items live in one preallocated slab of equal slots: thousands of small tensors
    freed between large decoding buffers would fragment the heap, so that the process
    would hold many times the cache's bytes.
    """

    def __init__(self, reader: ItemReader, max_bytes: int, workers: int) -> None:
        if max_bytes < 0 or workers < 0:
            raise DdplugError(f"cache_bytes ({max_bytes}) and workers ({workers}) must not be negative")
        self.reader = reader
        self.max_bytes = max_bytes
        self.workers = workers
        item_bytes = math.prod(reader.shape) * torch.empty((), dtype=reader.dtype).element_size()
        self.capacity = min(max_bytes // item_bytes, len(reader))
        self.slab: Tensor | None = None  # (capacity, C, H, W), allocated on first use
        self.slots: OrderedDict[int, int] = OrderedDict()  # item -> slot, least recently used first
        self.decoded = 0  # items decoded so far: what the cache saved is visible in tests and benchmarks
        self._pool: ThreadPoolExecutor | None = None

    @property
    def bytes(self) -> int:
        """The bytes of the items kept."""
        return 0 if self.slab is None else len(self.slots) * self.slab[0].numel() * self.slab.element_size()

    def fetch(self, rows: list[int]) -> Tensor:
        """The items at ``rows`` (repeats allowed) as one (len(rows), C, H, W) tensor of the
        reader's dtype, decoding each missing one once."""
        missing = list(dict.fromkeys(row for row in rows if row not in self.slots))
        decoded = dict(zip(missing, self._decode(missing)))
        self.decoded += len(missing)
        batch = torch.empty((len(rows), *self.reader.shape), dtype=self.reader.dtype)
        for position, row in enumerate(rows):
            item = decoded.get(row)
            if item is None:
                slot = self.slots[row]
                self.slots.move_to_end(row)
                item = self.slab[slot]
            batch[position] = item
        for row in missing[-self.capacity:] if self.capacity else ():
            self._keep(row, decoded[row])
        return batch

    def _decode(self, rows: list[int]) -> list[Tensor]:
        if self.workers <= 1 or len(rows) < 2:
            return [self._item(self.reader(row), row) for row in rows]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ddplug-decode")
        return [self._item(item, row) for item, row in zip(self._pool.map(self.reader, rows), rows)]

    def _item(self, item: np.ndarray | Tensor, row: int) -> Tensor:
        item = torch.from_numpy(np.ascontiguousarray(item)) if isinstance(item, np.ndarray) else item
        if item.dtype != self.reader.dtype:
            raise DdplugError(f"item {row} is {item.dtype} but the reader's items are {self.reader.dtype}")
        return item

    def _keep(self, row: int, item: Tensor) -> None:
        if self.slab is None:
            self.slab = torch.empty((self.capacity, *self.reader.shape), dtype=self.reader.dtype)
        if len(self.slots) < self.capacity:
            slot = len(self.slots)
        else:
            _, slot = self.slots.popitem(last=False)
        self.slab[slot] = item
        self.slots[row] = slot


class StreamedImages:
    """Normalised images read from disk per batch, indexed like an (N, C, H, W) float32 tensor.

    ``images[index]`` (an int, a slice, a boolean mask or an integer tensor of any shape) and
    ``images.split(n)`` return tensors on :attr:`device`; :meth:`subset`, :meth:`to` and
    :meth:`mapped` return further views that share the cache. Nothing is decoded until a
    row is asked for.

    Args:
        reader: what decodes one item.
        mean: the per-channel mean to normalise with.
        std: the per-channel standard deviation.
        rows: which of the reader's items this view holds, in order (default: all).
        cache_bytes: the most decoded bytes kept between reads.
        workers: decoding threads (0 or 1: decode in the calling thread).

    Examples:
        >>> import numpy as np
        >>> class Ramp:
        ...     shape, dtype = (1, 2, 2), torch.uint8
        ...     def __len__(self): return 6
        ...     def __call__(self, i): return np.full((1, 2, 2), 10 * i, dtype=np.uint8)
        >>> images = StreamedImages(Ramp(), mean=(0.0,), std=(1.0,))
        >>> images.shape, images[torch.tensor([5, 0])][:, 0, 0, 0].mul(255).round().tolist()
        (torch.Size([6, 1, 2, 2]), [50.0, 0.0])
        >>> [len(batch) for batch in images.subset(torch.arange(1, 6)).split(2)]
        [2, 2, 1]
    """

    dtype = torch.float32

    def __init__(self, reader: ItemReader, mean: Sequence[float], std: Sequence[float], *,
                 rows: Tensor | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 workers: int = DEFAULT_WORKERS) -> None:
        self._cache = _DecodedCache(reader, cache_bytes, workers)
        self._rows = torch.arange(len(reader)) if rows is None else rows.to("cpu", torch.int64)
        self._mean, self._std = tuple(mean), tuple(std)
        self._device = torch.device("cpu")
        self._transforms: tuple[Callable[[Tensor], Tensor], ...] = ()

    def _view(self, **changes: object) -> StreamedImages:
        view = object.__new__(StreamedImages)
        view.__dict__.update(self.__dict__)
        view.__dict__.update({f"_{name}": value for name, value in changes.items()})
        return view

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._rows), *self._cache.reader.shape))

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def cache(self) -> _DecodedCache:
        """The decoded items kept, shared by every view of the same reader."""
        return self._cache

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"StreamedImages(shape={tuple(self.shape)}, device={self.device}, cache={self._cache.max_bytes} bytes)"

    def dim(self) -> int:
        return 4

    def detach(self) -> StreamedImages:
        return self

    def to(self, device: torch.device | str | None = None, *args: object, **kwargs: object) -> StreamedImages:
        """The same images delivered on ``device`` (the batches move; nothing is read now)."""
        return self if device is None else self._view(device=torch.device(device))

    def subset(self, indices: Tensor) -> StreamedImages:
        """The images at ``indices`` (positions in this view), still on disk."""
        return self._view(rows=self._rows[torch.as_tensor(indices).cpu()])

    def normalised(self, mean: Sequence[float], std: Sequence[float]) -> StreamedImages:
        """The same images normalised with ``mean`` and ``std`` instead."""
        return self._view(mean=tuple(mean), std=tuple(std))

    def mapped(self, transform: Callable[[Tensor], Tensor]) -> StreamedImages:
        """The images with ``transform`` applied to every batch read (e.g. a ZCA whitening)."""
        return self._view(transforms=(*self._transforms, transform))

    def __getitem__(self, index: int | slice | Tensor) -> Tensor:
        if isinstance(index, int):
            return self._read(self._rows[index].view(1))[0]
        if isinstance(index, slice):
            return self._read(self._rows[index])
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            return self._read(self._rows[index.cpu()])
        if index.is_floating_point():
            raise IndexError("tensors used as indices must be integer or boolean")
        flat = index.cpu().flatten()
        return self._read(self._rows[flat]).view(*index.shape, *self.shape[1:])

    def split(self, size: int) -> Iterator[Tensor]:
        """The images in order, ``size`` at a time (the last batch may be smaller)."""
        for start in range(0, len(self._rows), size):
            yield self._read(self._rows[start:start + size])

    def _read(self, rows: Tensor) -> Tensor:
        raw = self._cache.fetch(rows.tolist())
        # As the in-memory path builds its tensors: to float32, onto [0, 1], then normalised.
        images = raw.to(torch.float32, copy=True)
        if raw.dtype == torch.uint8:
            images.div_(255)
        images.sub_(torch.tensor(self._mean).view(1, -1, 1, 1)).div_(torch.tensor(self._std).view(1, -1, 1, 1))
        images = images.to(self._device)
        for transform in self._transforms:
            images = transform(images)
        return images


def stream_image_files(files: Sequence[Path], mode: str, shape: tuple[int, int, int], *,
                       cache_bytes: int = DEFAULT_CACHE_BYTES, workers: int = DEFAULT_WORKERS) -> StreamedImages:
    """Image files of one shape as unnormalised [0, 1] images on disk (normalise with
    :meth:`StreamedImages.normalised`)."""
    reader = ImageFileReader(tuple(files), mode, shape)
    channels = shape[0]
    return StreamedImages(reader, (0.0,) * channels, (1.0,) * channels, cache_bytes=cache_bytes, workers=workers)
