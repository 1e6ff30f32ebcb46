"""Readers for the raw files of the supported datasets, in the layouts their publishers ship.

Every reader returns numpy arrays: uint8 images in (N, C, H, W) order and int64 labels.
A file that cannot be read raises DdplugError naming the file.
"""

from __future__ import annotations

import codecs
import gzip
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from ddplug.errors import DdplugError
from ddplug.memory import MAX_SIDE, check_decoded_size, check_image_shape

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR100_FILES = ("train", "test")
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_FOLDER_LAYOUT = (
    "an image folder holds train/<class>/**/*.png|jpg|jpeg and val/<class>/** or test/<class>/** "
    "(or Tiny-ImageNet's val/images/* with val/val_annotations.txt)"
)


class RawSplits(NamedTuple):
    """A dataset's train and test splits as read from disk."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str] | None = None


def locate(directory: Path, name: str, gzip_ok: bool = False) -> Path | None:
    """``directory/name``, or ``directory/name.gz`` when ``gzip_ok``, whichever exists first."""
    suffixes = ("", ".gz") if gzip_ok else ("",)
    return next((path for s in suffixes if (path := directory / f"{name}{s}").is_file()), None)


def _corrupt(path: Path, problem: str) -> DdplugError:
    return DdplugError(f"{path} is corrupt or unreadable ({problem}); delete it and get the dataset again")


# --- idx (MNIST, Fashion-MNIST) ------------------------------------------------------------


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions, gzipped or not."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupt(path, str(err) or type(err).__name__) from err
    # Magic number: two zero bytes, type 0x08 (unsigned byte), number of dimensions.
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise _corrupt(path, f"bad magic number for an idx file of {ndim}-dimensional unsigned bytes")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, "truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected, found = math.prod(shape), len(data) - header
    if found != expected:
        raise _corrupt(path, f"shape {shape} needs {expected} data bytes, found {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_dir(directory: Path) -> RawSplits:
    """The four MNIST-style idx files in ``directory`` (plain or ``.gz``)."""
    splits = []
    for images_name, labels_name in (IDX_FILES[:2], IDX_FILES[2:]):
        images_path = locate(directory, images_name, gzip_ok=True)
        labels_path = locate(directory, labels_name, gzip_ok=True)
        if images_path is None or labels_path is None:
            raise DdplugError(f"{directory} lacks {images_name} or {labels_name} (plain or .gz)")
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise _corrupt(labels_path, f"{len(labels)} labels for the {len(images)} images of {images_path}")
        splits += [images[:, None], labels.astype(np.int64)]
    return RawSplits(*splits)


# --- CIFAR python pickles --------------------------------------------------------------------


class _DataUnpickler(pickle.Unpickler):
    """Rebuilds only what CIFAR's batches hold (numpy arrays, and the builtin containers,
    numbers and strings pickle makes without naming a global); any other global, which a
    crafted file would use to run code, is refused before it is called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # numpy 1.x, as CIFAR ships
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise _RefusedGlobal(f"{module}.{name}")
        return self.ALLOWED[(module, name)]


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            # latin1 is how Python 3 reads the Python 2 pickles CIFAR ships.
            content = _DataUnpickler(file, encoding="latin1").load()
    except _RefusedGlobal as refused:
        raise DdplugError(f"refused to read {path}: it asks for {refused}, which is not data (a CIFAR batch holds "
                          "only numpy arrays, lists and strings), so unpickling it could run code. "
                          "Replace it with the dataset's original file") from None
    except Exception as err:  # unpickling a damaged file can raise almost any exception type
        raise _corrupt(path, f"{type(err).__name__}: {err}") from err
    if not isinstance(content, dict):
        raise _corrupt(path, f"expected a pickled dict, found {type(content).__name__}")
    return {_text(key): value for key, value in content.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if "data" not in batch or label_key not in batch:
        raise _corrupt(path, f"no 'data' or '{label_key}' entry")
    images, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
    if images.dtype != np.uint8:  # a cast would wrap NaN, negative or large values into pixels without a word
        raise _corrupt(path, f"its images are {images.dtype}, where CIFAR stores uint8 pixels")
    if labels.dtype.kind not in "iu":
        raise _corrupt(path, f"its labels are {labels.dtype}, not whole class ids")
    labels = labels.astype(np.int64).reshape(-1)
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
        raise _corrupt(path, f"expected N rows of 3072 bytes and N labels, found {images.shape} and {labels.shape}")
    # Each row is the red, then green, then blue 32x32 plane.
    return images.reshape(-1, 3, 32, 32), labels


def _cifar_names(path: Path, key: str) -> list[str] | None:
    if not path.is_file():
        return None
    names = _unpickle(path).get(key)
    return None if names is None else [_text(name) for name in names]


def _read_cifar(directory: Path, files: tuple[str, ...], label_key: str, meta: str, names_key: str) -> RawSplits:
    train = [_cifar_batch(directory / name, label_key) for name in files[:-1]]
    test_images, test_labels = _cifar_batch(directory / files[-1], label_key)
    return RawSplits(
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
        _cifar_names(directory / meta, names_key),
    )


def read_cifar10_dir(directory: Path) -> RawSplits:
    """CIFAR-10's ``cifar-10-batches-py`` folder."""
    return _read_cifar(directory, CIFAR10_FILES, "labels", "batches.meta", "label_names")


def read_cifar100_dir(directory: Path) -> RawSplits:
    """CIFAR-100's ``cifar-100-python`` folder, with the 100 fine labels."""
    return _read_cifar(directory, CIFAR100_FILES, "fine_labels", "meta", "fine_label_names")


# --- SVHN .mat -------------------------------------------------------------------------------


def _svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scipy.io is slow to import and only SVHN needs it.
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as err:  # like unpickling, parsing a damaged .mat can raise almost any exception type
        raise _corrupt(path, f"{type(err).__name__}: {err}") from err
    images, labels = mat.get("X"), mat.get("y")
    if images is None or labels is None or images.ndim != 4 or images.shape[2] != 3 or labels.size != images.shape[3]:
        raise _corrupt(path, "expected X of shape (H, W, 3, N) and N labels y")
    labels = labels.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1), dtype=np.uint8), labels


def read_svhn_dir(directory: Path) -> RawSplits:
    """SVHN's ``train_32x32.mat`` and ``test_32x32.mat`` in ``directory``."""
    train_images, train_labels = _svhn_mat(directory / SVHN_FILES[0])
    test_images, test_labels = _svhn_mat(directory / SVHN_FILES[1])
    return RawSplits(train_images, train_labels, test_images, test_labels)


# --- image folders ---------------------------------------------------------------------------


class ImageFolderListing(NamedTuple):
    """An image folder's files and labels, split as its layout says, before any pixel is read."""

    train_files: list[Path]
    train_labels: list[int]
    test_files: list[Path]
    test_labels: list[int]
    class_names: list[str]


def list_image_folder(root: Path) -> ImageFolderListing:
    """The files of an image folder: ``train/<class>/`` plus ``val/<class>/``, ``test/<class>/``
    or Tiny-ImageNet's val."""
    if not root.is_dir():
        raise DdplugError(f"image folder {root} does not exist; {_FOLDER_LAYOUT}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DdplugError(f"{root} has no train/ folder; {_FOLDER_LAYOUT}")
    classes = [folder.name for folder in _subfolders(train_dir)]
    class_ids = {name: i for i, name in enumerate(classes)}
    train_files, train_labels = _labelled_files(train_dir, class_ids)
    present = set(train_labels)
    empty = [name for name, i in class_ids.items() if i not in present]
    if not classes or empty:
        found = f"class folders without images: {', '.join(empty)}" if empty else "no class folders"
        raise DdplugError(f"{train_dir} has {found}; {_FOLDER_LAYOUT}")
    test_files, test_labels = _test_files(root, class_ids)
    if not test_files:
        raise DdplugError(f"{root} has no test images; {_FOLDER_LAYOUT}")
    return ImageFolderListing(train_files, train_labels, test_files, test_labels, classes)


def read_image_files(paths: list[Path], mode: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Image files of one ``shape`` (see :func:`image_files_layout`) decoded into memory as uint8
    (N, C, H, W), once their decoded size is known to fit."""
    check_decoded_size(len(paths), shape, f"{len(paths)} image files",
                       "use fewer or smaller images, or keep them on disk (storage disk, --data-storage disk)")
    pixels = np.empty((len(paths), *shape), dtype=np.uint8)
    for i, path in enumerate(paths):
        pixels[i] = read_image_file(path, mode, shape)
    return pixels


def _subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir())


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _labelled_files(folder: Path, class_ids: dict[str, int]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in _subfolders(folder):
        if class_dir.name not in class_ids:
            raise DdplugError(f"{class_dir} is a class that train/ does not have; {_FOLDER_LAYOUT}")
        found = _image_files(class_dir)
        files += found
        labels += [class_ids[class_dir.name]] * len(found)
    return files, labels


def _test_files(root: Path, class_ids: dict[str, int]) -> tuple[list[Path], list[int]]:
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        return _tiny_imagenet_val(annotations, class_ids)
    for split in ("val", "test"):
        if (root / split).is_dir():
            return _labelled_files(root / split, class_ids)
    raise DdplugError(f"{root} has neither val/ nor test/; {_FOLDER_LAYOUT}")


def _tiny_imagenet_val(annotations: Path, class_ids: dict[str, int]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_ids:
            raise DdplugError(
                f"{annotations} line {number}: expected 'file<TAB>class' with a class of train/, found {line!r}"
            )
        path = annotations.parent / "images" / fields[0]
        if not path.is_file():
            raise DdplugError(f"{annotations} line {number} names {path}, which does not exist")
        files.append(path)
        labels.append(class_ids[fields[1]])
    return files, labels


def image_files_layout(paths: list[Path]) -> tuple[str, tuple[int, int, int]]:
    """The PIL mode ("L" if every image is greyscale, else "RGB") and the (C, H, W) shape that
    every one of ``paths`` has, from their headers alone: a size mismatch (or a size no
    machine holds) is reported before any slow decoding."""
    headers = [_header(path) for path in paths]
    width, height = headers[0][1]
    mode = "L" if all(image_mode == "L" for image_mode, _ in headers) else "RGB"
    shape = (1 if mode == "L" else 3, height, width)
    check_image_shape(shape, f"the images of {paths[0].parent.parent}")
    for path, (_, size) in zip(paths, headers):
        if size != (width, height):
            raise DdplugError(
                f"images differ in size: {paths[0]} is {width}x{height} but {path} is {size[0]}x{size[1]}; "
                "resize them all to one size first (e.g. ImageMagick: mogrify -resize 64x64! FILES)"
            )
    return mode, shape


def read_image_file(path: Path, mode: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as uint8 (C, H, W) in ``mode``; DdplugError naming the file if it cannot
    be decoded or is not ``shape``."""
    try:
        with Image.open(path) as image:
            if image.size != (shape[2], shape[1]):  # checked before decoding: the file may have changed
                raise _corrupt(path, f"it is {image.size[0]}x{image.size[1]}, not the {shape[2]}x{shape[1]} of "
                                     "the other images")
            return pil_to_chw(image, mode)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise _corrupt(path, str(err)) from None


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise _corrupt(path, str(err)) from None
    if max(size) > MAX_SIDE:  # before any pixel is decoded
        raise _corrupt(path, f"it is {size[0]}x{size[1]} pixels, over the {MAX_SIDE} a side ddplug reads")
    return mode, size


def pil_to_chw(image: Image.Image, mode: str) -> np.ndarray:
    """A PIL image converted to ``mode`` ("L" or "RGB") as uint8 (C, H, W)."""
    pixels = np.array(image.convert(mode), dtype=np.uint8)
    return pixels.reshape(pixels.shape[0], pixels.shape[1], -1).transpose(2, 0, 1)
