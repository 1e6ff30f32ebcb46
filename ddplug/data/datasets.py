"""Image datasets as normalised tensors, in memory or streamed from disk, and the loaders that build them."""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

import ddplug.data.formats as formats
from ddplug.data.streaming import StreamedImages, stream_image_files
from ddplug.errors import DdplugError
from ddplug.memory import DECODED_SHARE, available_bytes
from ddplug.storage import atomic_write

NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

_FOLDER_PREFIX = "imagefolder:"
# Where a dataset's images live: decoded in memory, or read from disk per batch; "auto"
# streams when decoding all of them would take more than DECODED_SHARE of the free memory.
STORAGES = ("auto", "memory", "disk")
_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "svhn": "svhn",
    "digits": "digits",
}
_DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FASHION_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_DIGITS = [str(digit) for digit in range(10)]


@dataclass
class ImageDataset:
    """A labelled image dataset, normalised with ``mean`` and ``std``.

    Attributes:
        images: (N, C, H, W) float32, normalised: a tensor in memory, or :class:`StreamedImages`
            read from disk per batch (indexed and split like the tensor).
        labels: (N,) int64 class ids.
        num_classes: the class count (classes may be absent from a split).
        mean: the per-channel mean the images were normalised with.
        std: the per-channel standard deviation, likewise.
        name: the dataset's name.
        class_names: the classes' names, when known.
    """

    images: Tensor | StreamedImages  # float32 (N, C, H, W)
    labels: Tensor  # int64 (N,)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.dim() != 1 or len(self.images) != len(self.labels):
            raise ValueError(
                f"images must be (N, C, H, W) and labels (N,), got {tuple(self.images.shape)} and "
                f"{tuple(self.labels.shape)}"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel ({self.in_channels})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def streamed(self) -> bool:
        """Whether the images stay on disk."""
        return isinstance(self.images, StreamedImages)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    def class_counts(self) -> Tensor:
        """Number of images of each class, int64 (num_classes,)."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def class_indices(self) -> list[Tensor]:
        """For each class in order, the ascending indices of its images."""
        order = torch.argsort(self.labels, stable=True)
        return list(order.split(self.class_counts().tolist()))

    def subset(self, indices: Tensor) -> ImageDataset:
        """The images and labels at ``indices``, with the same metadata (streamed images stay on disk)."""
        if isinstance(self.images, StreamedImages):
            return dataclasses.replace(self, images=self.images.subset(indices), labels=self.labels[indices.cpu()])
        indices = indices.to(self.images.device)
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def denormalise(self, x: Tensor) -> Tensor:
        """``x`` (C, H, W) or (N, C, H, W) back on the [0, 1] scale, unclamped."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean


@dataclass
class DatasetSplits:
    """A dataset's train and test splits.

    Attributes:
        train: the training images, what sets are distilled from.
        test: the test images, what sets are judged on.
    """

    train: ImageDataset
    test: ImageDataset


@dataclass(frozen=True)
class _Source:
    """Where a built-in dataset's files live under a data root and how to read them."""

    files: tuple[str, ...]
    folders: Callable[[Path], list[Path]]
    download_folder: str  # where torchvision's download puts the files, under the root
    read: Callable[[Path], formats.RawSplits]
    num_classes: int
    class_names: list[str] | None = None  # used when the files do not name the classes
    gzip_ok: bool = False
    debian_package: str | None = None  # installs the files in ``system_copy``
    system_copy: Callable[[], Path] | None = None  # where the OS package puts the files, read in place

    def package_hint(self) -> str:
        return f" (or, on Debian, `apt-get install {self.debian_package}`)" if self.debian_package else ""

    def places(self, root: Path) -> list[Path]:
        """Where the files are looked for: the folders under ``root``, then the system's copy."""
        return [*self.folders(root), *([self.system_copy()] if self.system_copy else [])]

    def complete(self, folder: Path) -> bool:
        """Whether ``folder`` holds every one of the files (gzipped where that is allowed)."""
        return folder.is_dir() and all(formats.locate(folder, file, self.gzip_ok) for file in self.files)


_SOURCES = {
    "fashion-mnist": _Source(
        formats.IDX_FILES,
        lambda root: [root / "fashion-mnist", root / "FashionMNIST" / "raw"],
        "FashionMNIST/raw",
        formats.read_idx_dir,
        10,
        _FASHION_NAMES,
        gzip_ok=True,
        debian_package="dataset-fashion-mnist",
        system_copy=lambda: _DEBIAN_FASHION_MNIST,
    ),
    "mnist": _Source(
        formats.IDX_FILES,
        lambda root: [root / "mnist", root / "MNIST" / "raw"],
        "MNIST/raw",
        formats.read_idx_dir,
        10,
        _DIGITS,
        gzip_ok=True,
    ),
    "cifar10": _Source(
        formats.CIFAR10_FILES,
        lambda root: [root / "cifar-10-batches-py"],
        "cifar-10-batches-py",
        formats.read_cifar10_dir,
        10,
    ),
    "cifar100": _Source(
        formats.CIFAR100_FILES,
        lambda root: [root / "cifar-100-python"],
        "cifar-100-python",
        formats.read_cifar100_dir,
        100,
    ),
    "svhn": _Source(
        formats.SVHN_FILES, lambda root: [root / "svhn", root], "svhn", formats.read_svhn_dir, 10, _DIGITS
    ),
}


def available_datasets() -> list[str]:
    """The names ``load_dataset`` accepts."""
    return [*_SOURCES, "digits", f"{_FOLDER_PREFIX}PATH"]


def default_data_root() -> Path:
    """``$DDPLUG_DATA`` if set, else ``~/.cache/ddplug/data``."""
    env = os.environ.get("DDPLUG_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddplug" / "data"


def load_dataset(name: str, root: str | Path | None = None, *, storage: str = "auto") -> DatasetSplits:
    """A built-in dataset read from ``root`` (default: ``default_data_root()``), or ``imagefolder:PATH``.

    ``digits`` is scikit-learn's 1 797 8x8 digits, which ship with scikit-learn (no files,
    no download): 1 400 training and 397 test images in a seeded order. An image folder's
    images are decoded into memory, or stay on disk and are read per batch
    (:class:`StreamedImages`): by default when decoding them all would take more than a
    quarter of the memory free now. The built-in datasets are packed arrays, read whole.

    Args:
        name: ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``digits`` or
            ``imagefolder:PATH`` (a folder per class).
        root: where the files are.
        storage: ``auto``, ``memory`` or ``disk`` (image folders only): where the images live.

    Returns:
        The normalised train and test splits (:class:`DatasetSplits`).

    Raises:
        DdplugError: an unknown name, or missing or malformed files (with where they were looked for).

    Examples:
        >>> from ddplug.data import load_dataset
        >>> data = load_dataset("digits")
        >>> len(data.train), len(data.test), data.train.num_classes, data.train.image_size
        (1400, 397, 10, (8, 8))
        >>> load_dataset("imagenet")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: unknown dataset 'imagenet'; available: fashion-mnist, mnist, cifar10, cifar100, svhn, digits, imagefolder:PATH
    """
    if storage not in STORAGES:
        raise DdplugError(f"unknown storage {storage!r}: use one of {', '.join(STORAGES)}")
    folder = _folder_path(name)
    if folder is not None:
        return _image_folder(folder, storage)
    canonical = _canonical_name(name)
    if storage == "disk":
        raise DdplugError(f"{canonical} ships as packed arrays, read whole: only image folders (imagefolder:PATH) and "
                          "from_torch_dataset stay on disk; keep it in memory (--data-storage auto or memory, storage= in Python)")
    if canonical == "digits":
        return _digits()
    source = _SOURCES[canonical]
    raw = source.read(_find(canonical, source, _resolve_root(root)))
    mean, std = NORMALISATION[canonical]
    return _build_splits(
        canonical, *raw[:4],
        num_classes=source.num_classes, mean=mean, std=std, class_names=raw.class_names or source.class_names,
    )


def download_dataset(name: str, root: str | Path | None = None) -> Path:
    """Put a built-in dataset's files in torchvision's layout under ``root`` and return their folder.

    They are unpacked from the system's copy when there is one (Debian's
    ``dataset-fashion-mnist``), with no network, else downloaded with torchvision. So a
    torchvision or Avalanche dataset given ``root`` (Avalanche's default for Fashion-MNIST is
    ``~/.avalanche/data/fashionmnist``) finds them offline.
    """
    if _folder_path(name) is not None:
        raise DdplugError("image folders cannot be downloaded: put the images on disk and load imagefolder:PATH")
    canonical = _canonical_name(name)
    if canonical not in _SOURCES:
        raise DdplugError(f"{canonical} ships with scikit-learn: there is nothing to download")
    source = _SOURCES[canonical]
    data_root = _resolve_root(root, must_exist=False)
    target = data_root / source.download_folder
    system = source.system_copy() if source.system_copy else None
    if system is not None and source.complete(system):
        try:
            source.read(system)  # every file whole and the size its header declares, before one is copied
        except DdplugError as err:
            reinstall = f" (`apt-get install --reinstall {source.debian_package}`)" if source.debian_package else ""
            raise DdplugError(f"{err}{reinstall}") from err
        try:
            _unpack(source, system, target)
        except OSError as err:  # a full disk, a folder not ours
            raise DdplugError(f"could not unpack {canonical} from {system} into {target}: {err}. Check that "
                              f"{target} can be written, or pass another --data-root") from err
        return target
    try:
        data_root.mkdir(parents=True, exist_ok=True)
        _torchvision_download(canonical, data_root)
    except (OSError, RuntimeError) as err:  # torchvision reports failed downloads as URLError or RuntimeError
        reason = " ".join(str(err).split())  # torchvision's messages span lines; ours print on one
        raise DdplugError(
            f"could not download {canonical} into {target}: {reason}. Check the network connection; without "
            f"one, get {', '.join(source.files)} on a machine that has one and copy them into {target}"
            f"{source.package_hint()}, "
            "or pass --data-root DIR / set DDPLUG_DATA to where the files are"
        ) from err
    return target


def _image_folder(folder: Path, storage: str) -> DatasetSplits:
    listing = formats.list_image_folder(folder)
    files = listing.train_files + listing.test_files
    mode, shape = formats.image_files_layout(files)  # headers only: bad files are named before any decoding
    name = f"{_FOLDER_PREFIX}{folder}"
    common = dict(num_classes=len(listing.class_names), mean=None, std=None, class_names=listing.class_names)
    n = len(listing.train_files)
    if _streams(storage, len(files), shape):
        pixels = stream_image_files(files, mode, shape)
        train, test = pixels.subset(torch.arange(n)), pixels.subset(torch.arange(n, len(files)))
    else:
        pixels = formats.read_image_files(files, mode, shape)
        train, test = pixels[:n], pixels[n:]
    return _build_splits(name, train, np.array(listing.train_labels), test, np.array(listing.test_labels), **common)


def _streams(storage: str, images: int, shape: tuple[int, ...]) -> bool:
    """Whether ``images`` of ``shape`` stay on disk under ``storage``."""
    if storage != "auto":
        return storage == "disk"
    return images * math.prod(shape) * 4 > available_bytes() * DECODED_SHARE


def _digits() -> DatasetSplits:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DdplugError("the digits dataset comes with scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # 17 grey levels, 0..16
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order, None], labels[order]
    return from_tensors(images[:1400], labels[:1400], images[1400:], labels[1400:], name="digits", num_classes=10)


def from_tensors(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    name: str = "tensors",
    num_classes: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> DatasetSplits:
    """Splits from images (uint8, or float in [0, 1]; (N, H, W), (N, H, W, C) or (N, C, H, W)) and labels.

    Four-dimensional images are taken as (N, H, W, C) when the last dimension is 1 or 3 and the
    second is not. ``mean``/``std`` (one value, or one per channel) default to the per-channel
    statistics of the train images; ``num_classes`` to the largest label plus one.

    Args:
        train_x: the training images.
        train_y: their labels.
        test_x: the test images, the same shape.
        test_y: their labels.
        name: the dataset's name, recorded in the sets made from it.
        num_classes: the class count.
        mean: the normalisation's mean.
        std: its standard deviation.

    Returns:
        The normalised train and test splits (:class:`DatasetSplits`).

    Raises:
        DdplugError: shapes, lengths or labels that do not fit together.

    Examples:
        >>> import torch
        >>> images = torch.randint(0, 256, (20, 8, 8, 3), dtype=torch.uint8)   # (N, H, W, C)
        >>> labels = torch.arange(20) % 4
        >>> data = from_tensors(images[:16], labels[:16], images[16:], labels[16:], name="toy")
        >>> data.train.images.shape, data.train.num_classes, len(data.test)
        (torch.Size([16, 3, 8, 8]), 4, 4)
    """
    return _build_splits(
        name, _to_nchw(train_x, "train"), train_y, _to_nchw(test_x, "test"), test_y,
        num_classes=num_classes, mean=mean, std=std,
    )


def from_torch_dataset(
    train: Dataset,
    test: Dataset,
    *,
    name: str,
    num_classes: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    storage: str = "auto",
) -> DatasetSplits:
    """Splits from map-style datasets yielding ``(image, label, ...)``, image a (C, H, W) tensor or PIL image.

    With ``storage="disk"`` (or ``auto`` when the first image times the item count would
    take more than a quarter of the free memory) the items are read from the datasets per
    batch, through a bounded cache; their labels come from a ``targets`` attribute when the
    dataset has one, else from one pass over the items.

    Args:
        train: the training dataset (e.g. a torchvision dataset with ``ToTensor()``).
        test: the test dataset, the same kind of images.
        name: the dataset's name, recorded in the sets made from it.
        num_classes: the class count; default the largest label plus one.
        mean: the normalisation's mean (one value or one per channel); default the train images'.
        std: its standard deviation, likewise.
        storage: ``auto``, ``memory`` or ``disk``: whether the images are collected into memory.

    Returns:
        The train and test splits, normalised (:class:`DatasetSplits`).

    Raises:
        DdplugError: an empty dataset, images of different shapes, or labels that are not integers.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> images, labels = torch.rand(12, 1, 6, 6), torch.arange(12) % 3
        >>> data = from_torch_dataset(TensorDataset(images[:9], labels[:9]), TensorDataset(images[9:], labels[9:]),
        ...                           name="toy")
        >>> data.train.images.shape, data.train.num_classes
        (torch.Size([9, 1, 6, 6]), 3)
    """
    if storage not in STORAGES:
        raise DdplugError(f"unknown storage {storage!r}: use one of {', '.join(STORAGES)}")
    for dataset, what in ((train, "train"), (test, "test")):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise DdplugError(f"the {what} dataset is empty")
    first = _item_image(train[0][0], "train", 0)
    shape = tuple(first.shape)
    if _streams(storage, len(train) + len(test), shape):  # type: ignore[arg-type]
        dtype = torch.uint8 if first.dtype == torch.uint8 else torch.float32
        reader = _TorchItemReader(ConcatDataset([train, test]), shape, dtype)
        pixels = StreamedImages(reader, (0.0,) * shape[0], (1.0,) * shape[0])
        n = len(train)  # type: ignore[arg-type]
        train_x, test_x = pixels.subset(torch.arange(n)), pixels.subset(torch.arange(n, len(pixels)))
        train_y, test_y = _item_labels(train), _item_labels(test)
    else:
        train_x, train_y = _collect(train, "train")
        test_x, test_y = _collect(test, "test")
    return _build_splits(name, train_x, train_y, test_x, test_y, num_classes=num_classes, mean=mean, std=std)


class _TorchItemReader:
    """The images of a map-style dataset, one item at a time, checked against the first's
    shape and kind (uint8 pixels, or floats in [0, 1])."""

    def __init__(self, dataset: Dataset, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.dataset = dataset
        self.shape = shape
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __call__(self, index: int) -> Tensor:
        image = _item_image(self.dataset[index][0], "dataset", index)
        if image.shape[0] == 1 and self.shape[0] == 3:
            image = image.expand(3, -1, -1)
        if tuple(image.shape) != self.shape:
            raise DdplugError(f"dataset item {index} is {tuple(image.shape)} (C, H, W) but the first is {self.shape}; "
                              "add a Resize transform so that all have one size and channel count")
        if image.dtype == torch.uint8:
            return image if self.dtype == torch.uint8 else image.float().div_(255)
        if self.dtype == torch.uint8:
            raise DdplugError(f"dataset item {index} is {image.dtype} but the first item is uint8 pixels: give every "
                              "item one kind (e.g. a ToTensor() transform for all)")
        return _unit_float(image, f"dataset item {index}")


def _item_labels(dataset: Dataset) -> Tensor:
    """A map-style dataset's labels: its ``targets`` when it has them, else read item by item."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):  # type: ignore[arg-type]
        return _as_tensor(targets)
    return torch.tensor([int(dataset[index][1]) for index in range(len(dataset))],  # type: ignore[arg-type]
                        dtype=torch.int64)


# --- names and files -------------------------------------------------------------------------


def _folder_path(name: str) -> Path | None:
    """The path of an ``imagefolder:PATH`` name, or None for other names."""
    stripped = name.strip()
    if not stripped.lower().startswith(_FOLDER_PREFIX):
        return None
    path = stripped[len(_FOLDER_PREFIX):]
    if not path:
        raise DdplugError("imagefolder: needs a path, e.g. imagefolder:/data/tiny-imagenet-200")
    return Path(path).expanduser()


def _canonical_name(name: str) -> str:
    key = "".join(char for char in name.lower() if char not in "-_ ")
    if key not in _ALIASES:
        raise DdplugError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return _ALIASES[key]


def _resolve_root(root: str | Path | None, *, must_exist: bool = True) -> Path:
    """The data root; one given explicitly to read from must be a folder (else the system's
    copies would be read in its place without a word)."""
    if root is None:
        return default_data_root()
    path = Path(root).expanduser()
    if must_exist and not path.is_dir():
        raise DdplugError(f"data root {path} {'is a file' if path.exists() else 'does not exist'}: give the folder "
                          f"holding the datasets (--data-root DIR), or fetch one into it with `ddplug download NAME "
                          f"--data-root {path}`")
    return path


def _find(name: str, source: _Source, root: Path) -> Path:
    """The first folder that holds all of ``source``'s files, or DdplugError saying where it looked."""
    looked = []
    for folder in source.places(root):
        if not folder.is_dir():
            looked.append(f"{folder} (no such folder)")
            continue
        missing = [file for file in source.files if formats.locate(folder, file, source.gzip_ok) is None]
        if not missing:
            return folder
        suffix = "[.gz]" if source.gzip_ok else ""
        looked.append(f"{folder} (missing {', '.join(file + suffix for file in missing)})")
    raise DdplugError(
        f"{name} not found; looked in: {'; '.join(looked)}. Get it with "
        f"`ddplug download {name} --data-root {root}`{source.package_hint()}, or point to where it is with "
        "--data-root DIR or the DDPLUG_DATA environment variable"
    )


def _unpack(source: _Source, folder: Path, target: Path) -> None:
    """``source``'s files from ``folder`` into ``target``, unzipped as torchvision expects them;
    each file appears whole or not at all, and a file already there is kept."""
    for name in source.files:
        if (target / name).is_file():
            continue
        packed = formats.locate(folder, name, source.gzip_ok)
        assert packed is not None  # source.complete(folder) holds
        opener = gzip.open if packed.suffix == ".gz" else open
        with opener(packed, "rb") as reader:
            atomic_write(target / name, lambda tmp: _copy(reader, tmp))


def _copy(reader: BinaryIO, path: Path) -> None:
    with path.open("wb") as writer:
        shutil.copyfileobj(reader, writer)


def _torchvision_download(name: str, root: Path) -> None:
    """Have torchvision fetch (and check) a built-in dataset into its layout under ``root``."""
    # Imported here: torchvision is slow to import and only downloads need it.
    from torchvision import datasets

    match name:
        case "fashion-mnist":
            datasets.FashionMNIST(str(root), download=True)
        case "mnist":
            datasets.MNIST(str(root), download=True)
        case "cifar10":
            datasets.CIFAR10(str(root), download=True)
        case "cifar100":
            datasets.CIFAR100(str(root), download=True)
        case "svhn":
            for split in ("train", "test"):
                datasets.SVHN(str(root / "svhn"), split=split, download=True)
        case _:
            raise ValueError(f"no download for {name}")


# --- building the tensors --------------------------------------------------------------------


def _build_splits(
    name: str,
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    num_classes: int | None,
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
    class_names: list[str] | None = None,
) -> DatasetSplits:
    """Normalised splits from (N, C, H, W) images: uint8 or floats in [0, 1] in memory, or
    :class:`StreamedImages` on the [0, 1] scale, which stay on disk and are normalised as read."""
    streamed = isinstance(train_x, StreamedImages)
    train_images, test_images = ((train_x, test_x) if streamed
                                 else (_unit_float(train_x, "train"), _unit_float(test_x, "test")))
    if len(train_images) and len(test_images) and train_images.shape[1:] != test_images.shape[1:]:
        raise DdplugError(
            f"{name}: train images are {tuple(train_images.shape[1:])} (C, H, W) but test images are "
            f"{tuple(test_images.shape[1:])}; give both splits the same channels and size"
        )
    train_labels, test_labels, num_classes = _checked_labels(
        name, train_y, len(train_images), test_y, len(test_images), num_classes)
    mean, std = _normalisation(train_images, mean, std)  # a pass over the train images when not given
    splits = []
    for images, labels in ((train_images, train_labels), (test_images, test_labels)):
        if streamed:
            images = images.normalised(mean, std)
        else:
            _normalise_(images, mean, std)
        splits.append(ImageDataset(images, labels, num_classes, mean, std, name, class_names))
    return DatasetSplits(*splits)


def _checked_labels(name: str, train_y: Any, train_count: int, test_y: Any, test_count: int,
                    num_classes: int | None) -> tuple[Tensor, Tensor, int]:
    """Both splits' labels as int64, and the class count, once they fit the images and each other."""
    train_labels = _labels(train_y, train_count, "train")
    test_labels = _labels(test_y, test_count, "test")
    if train_count == 0 or test_count == 0:
        raise DdplugError(f"{name}: the train and the test split each need at least one image")
    all_labels = torch.cat([train_labels, test_labels])
    if num_classes is None:
        num_classes = int(all_labels.max()) + 1
    if len(train_labels.unique()) < 2:  # a classifier of one class is right on every image: it measures nothing
        raise DdplugError(f"{name}: the train split holds images of {len(train_labels.unique())} class; "
                          "classification needs at least 2")
    if int(all_labels.min()) < 0 or int(all_labels.max()) >= num_classes:
        raise DdplugError(
            f"{name}: labels must lie in [0, {num_classes}), found {int(all_labels.min())}..{int(all_labels.max())}"
        )
    return train_labels, test_labels, num_classes


def _normalisation(unit_images: Tensor | StreamedImages, mean: float | Sequence[float] | None,
                   std: float | Sequence[float] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``mean`` and ``std``, each taken from the [0, 1] train images when not given."""
    if mean is None or std is None:
        train_mean, train_std = _channel_stats(unit_images)
        mean = train_mean if mean is None else mean
        std = train_std if std is None else std
    channels = unit_images.shape[1]
    return _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, np.ndarray):
        # torch.from_numpy warns on read-only arrays (such as np.frombuffer's), so those are copied.
        return torch.from_numpy(np.require(x, requirements="W"))
    return torch.as_tensor(x)


def _to_nchw(x: Any, what: str) -> Tensor:
    x = _as_tensor(x)
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        channels_last = x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3)
        return x.permute(0, 3, 1, 2) if channels_last else x
    raise DdplugError(
        f"{what} images have shape {tuple(x.shape)}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)"
    )


def _unit_float(x: Any, what: str) -> Tensor:
    """A float32 contiguous copy of ``x`` on the [0, 1] scale."""
    x = _as_tensor(x)
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise DdplugError(f"{what} images are {x.dtype}; pass uint8 pixels or floats in [0, 1]")
    unit = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if x.dtype == torch.uint8:
        return unit.div_(255)
    if unit.numel() and (unit.min() < 0 or unit.max() > 1):
        raise DdplugError(
            f"{what} images range over [{float(unit.min()):.3g}, {float(unit.max()):.3g}]; float images must lie "
            "in [0, 1] (pass raw pixels, not normalised ones; divide uint8-scale floats by 255)"
        )
    return unit


def _labels(y: Any, count: int, what: str) -> Tensor:
    y = _as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DdplugError(f"{what} labels are {y.dtype}; pass integer class ids")
    y = y.to(torch.int64, copy=True).reshape(-1)
    if len(y) != count:
        raise DdplugError(f"{what} split has {count} images but {len(y)} labels")
    return y


def _per_channel(value: float | Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    values = tuple(array.repeat(channels).tolist() if array.size == 1 else array.tolist())
    if len(values) != channels:
        raise DdplugError(f"{what} has {len(values)} values but the images have {channels} channels")
    if what == "std" and min(values) <= 0:
        raise DdplugError(f"std must be positive, got {values}")
    return values


def _stats_chunk(images: Tensor | StreamedImages) -> int:
    """Images per pass of a statistic: 4 096, or fewer so that a pass holds at most 2^22 values
    (its float64 copies then take 32 MiB, whatever the image size)."""
    return max(1, min(4096, 2**22 // max(1, math.prod(images.shape[1:]))))


def _channel_stats(images: Tensor | StreamedImages) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std, summed in float64 chunk by chunk to bound memory."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for part in images.split(_stats_chunk(images)):
        part = part.double()
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = math.prod(images.shape) // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    # A constant channel would divide by zero; leave it unscaled instead.
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def pixel_scale(images: Tensor | StreamedImages) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation ``(mean, std)`` under which ``images`` (already normalised by
    someone else, e.g. a benchmark's transforms) are pixels: each channel's darkest value
    maps to 0 and its brightest to 1 (``pixel = x * std + mean``).

    Exact for data whose darkest and brightest pixels occur (Fashion-MNIST normalised with
    (0.2860, 0.3530) gives back those constants); for data that never reaches a pixel's
    extremes, the codes are stored on the narrower range the data does span, which loses
    nothing of it. A constant channel is left unscaled.

    Examples:
        >>> x = (torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1) - 0.25) / 0.5
        >>> mean, std = pixel_scale(x)
        >>> round(mean[0], 4), round(std[0], 4)
        (0.25, 0.5)
    """
    low = torch.full((images.shape[1],), math.inf, dtype=torch.float64)
    high = torch.full_like(low, -math.inf)
    for part in images.split(_stats_chunk(images)):
        part = part.detach().to("cpu", torch.float64).transpose(0, 1).flatten(1)
        low = torch.minimum(low, part.min(dim=1).values)
        high = torch.maximum(high, part.max(dim=1).values)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise DdplugError("the images hold NaN or infinite values (or none at all): there is no pixel scale to store them on")
    span = high - low
    std = torch.where(span > 0, 1 / span.clamp_min(1e-30), torch.ones_like(span))
    mean = torch.where(span > 0, -low * std, -low)
    return tuple(mean.tolist()), tuple(std.tolist())


def check_pixel_scale(images: Tensor, mean: Sequence[float], std: Sequence[float], what: str = "the images") -> None:
    """Raise :class:`DdplugError` unless ``mean``/``std`` map ``images`` into the [0, 1] pixel
    scale on which codes are stored (up to half a uint8 level): a normalisation that does
    not fit the data would clip it when stored."""
    found_mean, found_std = pixel_scale(images)
    # x = (pixel - found_mean) / found_std spans pixels 0..1; under (mean, std) those are:
    for channel, (m, s, fm, fs) in enumerate(zip(mean, std, found_mean, found_std)):
        low, high = (0 - fm) / fs * s + m, (1 - fm) / fs * s + m
        if low < -0.5 / 255 or high > 1 + 0.5 / 255:
            raise DdplugError(
                f"{what} do not fit the normalisation mean={tuple(mean)}, std={tuple(std)}: channel {channel} "
                f"spans pixels [{low:.3g}, {high:.3g}] under it, outside [0, 1], so storing would clip it; "
                "give the normalisation the data was made with, or none to take it from the data's range"
            )


def _normalise_(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    images.sub_(torch.tensor(mean, device=images.device).view(1, -1, 1, 1))
    images.div_(torch.tensor(std, device=images.device).view(1, -1, 1, 1))


def _collect(dataset: Dataset, what: str) -> tuple[Tensor, Tensor]:
    """All images, as one (N, C, H, W) tensor, and labels of a map-style dataset."""
    images, labels = [], []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[index]
        images.append(_item_image(item[0], what, index))
        labels.append(int(item[1]))
    if not images:
        raise DdplugError(f"the {what} dataset is empty")
    return _stack(images, what), torch.tensor(labels, dtype=torch.int64)


def _item_image(image: Any, what: str, index: int) -> Tensor:
    if isinstance(image, Image.Image):
        return torch.from_numpy(formats.pil_to_chw(image, "L" if image.mode == "L" else "RGB"))
    if isinstance(image, Tensor) and image.dim() in (2, 3):
        return image if image.dim() == 3 else image.unsqueeze(0)
    raise DdplugError(
        f"{what} item {index} has a {type(image).__name__} image; expected a (C, H, W) tensor in [0, 1] "
        "or a PIL image (a transforms.ToTensor() fixes most other cases)"
    )


def _stack(images: list[Tensor], what: str) -> Tensor:
    """One tensor from per-item images: greyscale widened to RGB when mixed, uint8 scaled when mixed."""
    channels = max(image.shape[0] for image in images)
    images = [image.expand(channels, -1, -1) if image.shape[0] == 1 else image for image in images]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise DdplugError(
            f"{what} images differ in shape ({', '.join(map(str, sorted(shapes)[:3]))}); "
            "add a Resize transform so that all have one size and channel count"
        )
    if len({image.dtype for image in images}) > 1:
        images = [image.float() / 255 if image.dtype == torch.uint8 else image for image in images]
    return torch.stack(images)
