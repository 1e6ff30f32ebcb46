"""Reading and writing synthetic sets: ddplug's own safetensors files and the .pt files
of the original DC/DSA/DM and MTT code.

Nothing here unpickles arbitrary objects: ddplug files are safetensors, and foreign
``.pt`` files go through ``torch.load(weights_only=True)``, which refuses any pickle
that would construct something other than tensors, plain containers and the numpy
scalars, dtypes and arrays the original code records its accuracies in. Every loaded set
is checked (:meth:`SyntheticSet.check`) before anyone trains on it.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddplug.errors import DdplugError
from ddplug.memory import check_decoded_size, check_image_shape
from ddplug.sets.param import SOFT_LABEL_DTYPE, create_param, normalise_levels
from ddplug.sets.synthetic import SetLimits, SyntheticSet
from ddplug.storage import atomic_write

FORMAT = "ddplug.synthetic-set"
FORMAT_VERSION = "1"  # decoded images
CODED_FORMAT_VERSION = "2"  # a parameterisation's code, decoded on load
IMAGE_ENCODINGS = ("float32", "float16", "uint8")
SET_FILE = "synthetic.safetensors"
# What a set file may hold: learned codes leave [0, 1] (dct and factor codes by several
# times its width, more as they diverge) but a value a thousand widths out is no image;
# learned lrs of SGD here are far below 1.
FILE_LIMITS = SetLimits(pixel_range=(-1000.0, 1001.0), lr_range=(0.0, 1.0))


class DatasetInfo(Protocol):
    """What a foreign set needs from its dataset (``ddplug.data.ImageDataset`` has it)."""

    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def save_set(synthetic: SyntheticSet, path: str | Path, *, encoding: str = "float32") -> Path:
    """Write ``synthetic`` to ``path`` (atomically) as safetensors.

    A set with a code (made through a parameterisation) stores the code at the
    parameterisation's storage dtypes (uint8 pixel-scale images, fp16 coefficients; float32
    for a ZCA-whitened set, whose values are not pixels) and the decoder's spec; hard labels
    that follow the class-ordered layout are implied and cost no bytes. Otherwise
    ``encoding`` stores the images as float32, float16 (half the bytes) or uint8 pixels (a
    quarter; quantised to 1/255 on the [0, 1] pixel scale, as images are shipped). A
    whitened set refuses uint8 either way.

    Args:
        synthetic: the set to write.
        path: the ``.safetensors`` file.
        encoding: for a set without a code: ``float32``, ``float16`` or ``uint8``.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        DdplugError: an unknown encoding, or uint8 for a whitened set.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> synthetic = SyntheticSet(torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), num_classes=2,
        ...                          mean=(0.5,), std=(0.25,))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     again = load_set(save_set(synthetic, Path(folder) / "set.safetensors", encoding="uint8"))
        >>> again.images.shape, again.mean, again.std
        (torch.Size([4, 1, 8, 8]), (0.5,), (0.25,))
    """
    if encoding not in IMAGE_ENCODINGS:
        raise DdplugError(f"unknown image encoding {encoding!r}; choose one of {', '.join(IMAGE_ENCODINGS)}")
    if encoding == "uint8" and synthetic.zca_epsilon is not None:
        raise DdplugError("the set is ZCA-whitened, so its images are not pixels and uint8 would clip them: "
                          "save it as float16 or float32")
    synthetic = synthetic.detach().to("cpu")
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_classes": str(synthetic.num_classes),
        "mean": json.dumps(list(synthetic.mean)),
        "std": json.dumps(list(synthetic.std)),
        "meta": json.dumps(synthetic.meta, default=str),
    }
    if synthetic.code is None:
        tensors = {"images": encode_images(synthetic, encoding), "labels": synthetic.labels.contiguous()}
        metadata["image_encoding"] = encoding
    else:
        tensors = {f"{CODE_PREFIX}{name}": tensor for name, tensor in stored_code(synthetic).items()}
        metadata.update(format_version=CODED_FORMAT_VERSION, param=synthetic.param,
                        image_shape=json.dumps(list(synthetic.images.shape[1:])))
        if _implied_labels(synthetic.labels, synthetic.num_classes) is None:
            tensors["labels"] = stored_labels(synthetic.labels).contiguous()
    if synthetic.lr is not None:
        tensors["lr"] = synthetic.lr.reshape(1).float()
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


CODE_PREFIX = "code."


def stored_code(synthetic: SyntheticSet) -> dict[str, Tensor]:
    """The code as stored (:meth:`Parameterisation.store`: pixels as uint8 levels on the
    [0, 1] scale of the set's normalisation, packed below 8 bits; masks packed to bits)."""
    return create_param(synthetic.param).store(synthetic.code, synthetic.mean, synthetic.std,
                                               whitened=synthetic.zca_epsilon is not None)


def stored_labels(labels: Tensor) -> Tensor:
    """A coded set's labels as its file holds them: soft labels in float16, inside the budget."""
    return labels.to(SOFT_LABEL_DTYPE) if labels.ndim == 2 else labels


def restored_labels(labels: Tensor) -> Tensor:
    """Labels read from a file: float16 soft labels back in float32, each row that float16's
    rounding took off 1 summing to 1 again (any other row stays as it is, for the set's checks
    to refuse)."""
    if labels.dtype != SOFT_LABEL_DTYPE or labels.ndim != 2:
        return labels
    labels = labels.float()
    total = labels.sum(dim=1, keepdim=True)
    rounded = (total - 1).abs() <= _FLOAT16_SUM_TOLERANCE
    return torch.where(rounded, labels / torch.where(rounded, total, 1.0), labels)


# how far float16 rounding can take a probability vector's sum from 1 (2**-11 of each value), with room
_FLOAT16_SUM_TOLERANCE = 5e-3


def _implied_labels(labels: Tensor, num_classes: int) -> int | None:
    """Images per class when ``labels`` are hard and class-ordered with equal counts (the
    layout every distiller makes), else None."""
    if labels.ndim != 1 or len(labels) % num_classes:
        return None
    per_class = len(labels) // num_classes
    return per_class if torch.equal(labels, torch.arange(num_classes).repeat_interleave(per_class)) else None


def as_stored(synthetic: SyntheticSet) -> SyntheticSet:
    """The set exactly as :func:`save_set` stores it and :func:`load_set` returns it (the
    code quantised to its storage dtypes and decoded again); a set without a code as it is."""
    if synthetic.code is None:
        return synthetic
    synthetic = synthetic.detach().to("cpu")
    code, images = decode_code(stored_code(synthetic), synthetic.param, synthetic.mean, synthetic.std,
                           tuple(synthetic.images.shape[1:]))
    return replace(synthetic, images=images, code=code, labels=restored_labels(stored_labels(synthetic.labels)))


def decode_code(stored: dict[str, Tensor], spec: str, mean: Sequence[float], std: Sequence[float],
                image_shape: tuple[int, ...]) -> tuple[dict[str, Tensor], Tensor]:
    """The float code of a stored one (packed values unpacked, pixels back on the normalised
    scale) and the images ``spec`` decodes it to, every declared size bounded first."""
    param = create_param(spec)
    check_image_shape(image_shape)
    shapes = param.stored_shapes(stored, image_shape)
    try:
        count = param.decoded_count(shapes)
    except (KeyError, IndexError):
        raise DdplugError(f"its code holds {', '.join(sorted(stored)) or 'nothing'}, not a {spec} code") from None
    check_decoded_size(count, image_shape, f"a {spec} code of {', '.join(f'{n} {tuple(s)}' for n, s in shapes.items())}",
                       "it is not a set this machine can train on; refuse the file or use one of fewer images")
    code = param.restore(stored, shapes, mean, std)
    param.check_code(code, image_shape)
    with torch.no_grad():
        return code, param.decode(code, image_shape)


def payload_bytes(path: str | Path) -> int:
    """The bytes of every tensor in a safetensors file (its header aside)."""
    with safe_open(str(path), framework="pt") as handle:
        total = 0
        for key in handle.keys():
            piece = handle.get_slice(key)
            itemsize = torch.empty((), dtype=_SAFETENSORS_DTYPES[piece.get_dtype()]).element_size()
            total += math.prod(piece.get_shape()) * itemsize
    return total


_SAFETENSORS_DTYPES = {"U8": torch.uint8, "I64": torch.int64, "F16": torch.float16, "F32": torch.float32,
                       "BF16": torch.bfloat16, "F64": torch.float64, "I32": torch.int32}


def load_set(path: str | Path, *, dataset: DatasetInfo | None = None, experiment: int = 0) -> SyntheticSet:
    """Load a synthetic set from a ddplug file, a DC/DSA/DM ``.pt`` result, or MTT output.

    ``path`` may be a file or a folder holding ``synthetic.safetensors`` or MTT's
    ``images_best.pt``. Foreign files don't say which dataset they distil, so they need
    ``dataset`` (for the class count and normalisation). ``experiment`` picks one of the
    several sets a DC-style file holds.

    Every file is read as data (safetensors, or ``torch.load`` with ``weights_only=True``),
    never run as code.

    Args:
        path: the file, or the folder holding it.
        dataset: the dataset a foreign file distils; ddplug files record theirs.
        experiment: which of a DC-style file's sets.

    Returns:
        The :class:`SyntheticSet`, its images decoded from the code when the file holds one.

    Raises:
        DdplugError: a missing or malformed file, or a foreign one without ``dataset``.

    Examples:
        >>> load_set("no/such/set.safetensors")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: no/such/set.safetensors does not exist: give the path of a synthetic set file or of the folder holding it
    """
    path = Path(path)
    if not path.exists():
        raise DdplugError(f"{path} does not exist: give the path of a synthetic set file or of the folder holding it")
    if path.is_dir():
        path = _set_file_in(path)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise DdplugError(f"{path} is not a regular file: give the path of a synthetic set file")
    if path.suffix == ".safetensors":
        synthetic = _load_ddplug(path)
    else:
        payload = _load_weights_only(path)
        if isinstance(payload, dict) and "data" in payload:
            synthetic = _from_dc(payload, path, _require(dataset, path), experiment)
        elif isinstance(payload, Tensor) and payload.ndim == 4:
            synthetic = _from_mtt(payload, path, _require(dataset, path))
        else:
            raise DdplugError(
                f"{path} is a torch file but not a synthetic set: expected a DC/DSA/DM result "
                "(a dict with 'data': [[images, labels], ...]) or MTT's images_best.pt (an (N, C, H, W) tensor)"
            )
    try:
        synthetic.check(FILE_LIMITS)
    except DdplugError as error:
        raise DdplugError(f"{path} cannot be trained on: {error}") from None
    return synthetic


def _set_file_in(folder: Path) -> Path:
    for name in (SET_FILE, "images_best.pt"):
        if (folder / name).is_file():
            return folder / name
    raise DdplugError(f"{folder} holds no synthetic set: expected {SET_FILE} (ddplug) or images_best.pt (MTT)")


def encode_images(synthetic: SyntheticSet, encoding: str) -> Tensor:
    """The set's images as stored or shipped: float32, float16, or uint8 pixels (see :func:`decode_images`)."""
    if encoding == "uint8":
        if synthetic.zca_epsilon is not None:
            raise DdplugError("the set is ZCA-whitened, so its images are not pixels and uint8 would clip them: "
                              "ship it as float16 or float32")
        return (synthetic.denormalised().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return synthetic.images.to(getattr(torch, encoding)).contiguous()


def decode_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised float32 images from :func:`encode_images`'s output (uint8 pixels are normalised)."""
    return normalise_levels(images, mean, std) if images.dtype == torch.uint8 else images.float()


def _load_ddplug(path: Path) -> SyntheticSet:
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise DdplugError(f"{path} is not a readable safetensors file ({error}); it may be truncated or corrupt") from None
    if metadata.get("format") != FORMAT:
        raise DdplugError(f"{path} is a safetensors file but not a ddplug synthetic set (no '{FORMAT}' header)")
    if metadata.get("format_version") not in (FORMAT_VERSION, CODED_FORMAT_VERSION):
        raise DdplugError(f"{path} has format version {metadata.get('format_version')}; this ddplug reads "
                          f"{FORMAT_VERSION} and {CODED_FORMAT_VERSION}")
    try:
        header = _parsed_metadata(metadata)
    except (KeyError, ValueError, TypeError) as error:
        raise DdplugError(f"{path}: its metadata is missing or broken ({type(error).__name__}: {error}); "
                          "it is not a complete ddplug set file") from None
    mean, std, num_classes, meta = header["mean"], header["std"], header["num_classes"], header["meta"]
    if "labels" in tensors and tensors["labels"].dtype in (torch.int32, torch.int16, torch.uint8, torch.int8):
        tensors["labels"] = tensors["labels"].long()  # class ids of any integer width: no value changes
    lr = tensors["lr"].reshape(-1) if "lr" in tensors else None
    lr = lr.reshape(()) if lr is not None and lr.numel() == 1 else lr  # check() names any other size
    try:
        if metadata["format_version"] == FORMAT_VERSION:
            if "images" not in tensors or "labels" not in tensors:
                raise DdplugError(f"it holds {', '.join(sorted(tensors)) or 'no tensors'}; a set needs images and labels")
            return SyntheticSet(decode_images(tensors["images"], mean, std), tensors["labels"], num_classes, mean, std,
                                lr=lr, meta=meta)
        stored = {key[len(CODE_PREFIX):]: tensor for key, tensor in tensors.items() if key.startswith(CODE_PREFIX)}
        try:
            code, images = decode_code(stored, header["param"], mean, std, header["image_shape"])
        except (RuntimeError, ValueError, KeyError, IndexError) as error:
            raise DdplugError(f"its code does not decode as {header['param']} ({error})") from None
        labels = tensors.get("labels")
        labels = None if labels is None else restored_labels(labels)
        if labels is None:
            labels = torch.arange(num_classes).repeat_interleave(len(images) // num_classes)
        return SyntheticSet(images, labels, num_classes, mean, std, lr=lr, meta=meta, code=code, param=header["param"])
    except DdplugError as error:
        raise DdplugError(f"{path}: {error}") from None


def _parsed_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """The header's values, type- and range-checked (KeyError, ValueError or TypeError if not)."""
    mean, std = json.loads(metadata["mean"]), json.loads(metadata["std"])
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) and 0 < len(mean) <= 16
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean + std) and min(std) > 0):
        raise ValueError(f"mean and std ({metadata['mean'][:80]}, {metadata['std'][:80]}) should be equal-length "
                         "lists of at most 16 finite numbers, std positive")
    num_classes = int(metadata["num_classes"])
    if not 1 <= num_classes <= 100_000:
        raise ValueError(f"num_classes {num_classes} is not within 1..100000")
    meta = json.loads(metadata["meta"])
    if not isinstance(meta, dict):
        raise TypeError(f"meta should be a JSON object, got {type(meta).__name__}")
    header = {"mean": tuple(mean), "std": tuple(std), "num_classes": num_classes, "meta": meta}
    if metadata["format_version"] == CODED_FORMAT_VERSION:
        image_shape = tuple(json.loads(metadata["image_shape"]))
        try:
            check_image_shape(image_shape, "image_shape")
        except DdplugError as error:
            raise ValueError(str(error)) from None
        header.update(param=metadata["param"], image_shape=image_shape)
    return header


def _numpy_data_globals() -> list[Any]:
    """What a pickle needs to rebuild numpy scalars, dtypes and arrays, under the names numpy
    1.x (``numpy.core``, the original code's era) and 2.x (``numpy._core``) pickle them as."""
    core = np._core.multiarray
    dtype_classes = [type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"]
    return [np.dtype, np.ndarray, *dtype_classes,
            *((function, f"{module}.multiarray.{function.__name__}")
              for function in (core.scalar, core._reconstruct) for module in ("numpy.core", "numpy._core"))]


def _load_weights_only(path: Path) -> object:
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.findall(r"GLOBAL ([\w.]+)", str(error))
        if not blocked:  # not a pickle that asks for code: random or damaged bytes
            raise DdplugError(f"cannot read {path}: not a torch file, or truncated or corrupt "
                              f"({unpickling_cause(error)})") from None
        raise DdplugError(
            f"refused to load {path}: it holds Python objects ({', '.join(dict.fromkeys(blocked))}) other than "
            "tensors, plain containers and numpy data, and unpickling them could run code. "
            "Re-save the set with only tensors, lists and dicts."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise DdplugError(f"cannot read {path}: not a torch file, or truncated or corrupt ({unpickling_cause(error)})") from None


def unpickling_cause(error: Exception) -> str:
    """The line of torch's error text that says what went wrong, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return found.group(1).strip() if found else (text.splitlines()[0] if text else type(error).__name__)


def _require(dataset: DatasetInfo | None, path: Path) -> DatasetInfo:
    if dataset is None:
        raise DdplugError(f"{path} was not made by ddplug and does not say which dataset it distils: name it (--dataset NAME)")
    return dataset


def _foreign_set(images: Tensor, labels: Tensor, dataset: DatasetInfo, lr: Tensor | None, source: str, path: Path) -> SyntheticSet:
    labels = labels.long() if not labels.is_floating_point() or labels.ndim == 1 else labels.float()
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    if hard.numel() and (hard.min() < 0 or hard.max() >= dataset.num_classes):
        raise DdplugError(f"{path} has labels outside 0..{dataset.num_classes - 1}: is it really a {dataset.name} set?")
    if images.shape[1] != len(dataset.mean):
        raise DdplugError(f"{path} has {images.shape[1]}-channel images but {dataset.name} has {len(dataset.mean)} channels")
    return SyntheticSet(
        images=images.float(),
        labels=labels,
        num_classes=dataset.num_classes,
        mean=dataset.mean,
        std=dataset.std,
        lr=lr,
        meta={"method": source, "dataset": dataset.name, "source_file": str(path)},
    )


def _from_dc(payload: dict, path: Path, dataset: DatasetInfo, experiment: int) -> SyntheticSet:
    sets = payload["data"]
    if not isinstance(sets, list) or not sets:
        raise DdplugError(f"{path}: 'data' should be a non-empty list of [images, labels] pairs")
    if not -len(sets) <= experiment < len(sets):
        raise DdplugError(f"{path} holds {len(sets)} experiments; experiment {experiment} does not exist")
    pair = sets[experiment]
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, Tensor) for t in pair)):
        raise DdplugError(f"{path}: experiment {experiment} is not an [images, labels] pair of tensors")
    return _foreign_set(pair[0], pair[1], dataset, None, "dc-format", path)


def _from_mtt(images: Tensor, path: Path, dataset: DatasetInfo) -> SyntheticSet:
    labels_path = path.with_name(path.name.replace("images", "labels", 1))
    if labels_path == path or not labels_path.is_file():
        raise DdplugError(f"MTT images {path} need their labels file next to them ({labels_path.name})")
    labels = _load_weights_only(labels_path)
    lr_path = path.with_name(path.name.replace("images", "lr", 1))
    lr = None
    if lr_path.is_file():
        lr = _load_weights_only(lr_path)
        if not isinstance(lr, (Tensor, float, int)) or isinstance(lr, bool) or torch.as_tensor(lr).numel() != 1:
            raise DdplugError(f"{lr_path} should hold one learned learning rate, got "
                              f"{tuple(lr.shape) if isinstance(lr, Tensor) else type(lr).__name__}")
        lr = torch.as_tensor(lr, dtype=torch.float32).reshape(())
    if not isinstance(labels, Tensor):
        raise DdplugError(f"{labels_path} should hold a label tensor")
    return _foreign_set(images, labels, dataset, lr, "mtt-format", path)
