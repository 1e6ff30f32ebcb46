"""Reading and writing synthetic sets: ddplug's own safetensors files and the .pt files
of the original DC/DSA/DM and MTT code.

Nothing here unpickles arbitrary objects: ddplug files are safetensors, and foreign
``.pt`` files go through ``torch.load(weights_only=True)``, which refuses any pickle
that would construct something other than tensors and plain containers.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddplug.errors import DdplugError
from ddplug.sets.synthetic import SyntheticSet
from ddplug.storage import atomic_write

FORMAT = "ddplug.synthetic-set"
FORMAT_VERSION = "1"
IMAGE_ENCODINGS = ("float32", "float16", "uint8")
SET_FILE = "synthetic.safetensors"


class DatasetInfo(Protocol):
    """What a foreign set needs from its dataset (``ddplug.data.ImageDataset`` has it)."""

    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def save_set(synthetic: SyntheticSet, path: str | Path, *, encoding: str = "float32") -> Path:
    """Write ``synthetic`` to ``path`` (atomically) as safetensors.

    ``encoding`` stores the images as float32, float16 (half the bytes) or uint8 pixels
    (a quarter; quantised to 1/255 on the [0, 1] pixel scale, as images are shipped).
    """
    if encoding not in IMAGE_ENCODINGS:
        raise DdplugError(f"unknown image encoding {encoding!r}; choose one of {', '.join(IMAGE_ENCODINGS)}")
    synthetic = synthetic.detach().to("cpu")
    tensors = {"images": encode_images(synthetic, encoding), "labels": synthetic.labels.contiguous()}
    if synthetic.lr is not None:
        tensors["lr"] = synthetic.lr.reshape(1).float()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_classes": str(synthetic.num_classes),
        "mean": json.dumps(list(synthetic.mean)),
        "std": json.dumps(list(synthetic.std)),
        "image_encoding": encoding,
        "meta": json.dumps(synthetic.meta, default=str),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_set(path: str | Path, *, dataset: DatasetInfo | None = None, experiment: int = 0) -> SyntheticSet:
    """Load a synthetic set from a ddplug file, a DC/DSA/DM ``.pt`` result, or MTT output.

    ``path`` may be a file or a folder holding ``synthetic.safetensors`` or MTT's
    ``images_best.pt``. Foreign files don't say which dataset they distil, so they need
    ``dataset`` (for the class count and normalisation). ``experiment`` picks one of the
    several sets a DC-style file holds.
    """
    path = Path(path)
    if not path.exists():
        raise DdplugError(f"{path} does not exist: give the path of a synthetic set file or of the folder holding it")
    if path.is_dir():
        path = _set_file_in(path)
    if path.suffix == ".safetensors":
        return _load_ddplug(path)
    payload = _load_weights_only(path)
    if isinstance(payload, dict) and "data" in payload:
        return _from_dc(payload, path, _require(dataset, path), experiment)
    if isinstance(payload, Tensor) and payload.ndim == 4:
        return _from_mtt(payload, path, _require(dataset, path))
    raise DdplugError(
        f"{path} is a torch file but not a synthetic set: expected a DC/DSA/DM result "
        "(a dict with 'data': [[images, labels], ...]) or MTT's images_best.pt (an (N, C, H, W) tensor)"
    )


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
                              "save it as float16 or float32")
        return (synthetic.denormalised().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return synthetic.images.to(getattr(torch, encoding)).contiguous()


def decode_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised float32 images from :func:`encode_images`'s output (uint8 pixels are normalised)."""
    if images.dtype != torch.uint8:
        return images.float()
    return (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _load_ddplug(path: Path) -> SyntheticSet:
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise DdplugError(f"{path} is not a readable safetensors file ({error}); it may be truncated or corrupt") from None
    if metadata.get("format") != FORMAT:
        raise DdplugError(f"{path} is a safetensors file but not a ddplug synthetic set (no '{FORMAT}' header)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DdplugError(f"{path} has format version {metadata.get('format_version')}; this ddplug reads {FORMAT_VERSION}")
    mean = tuple(json.loads(metadata["mean"]))
    std = tuple(json.loads(metadata["std"]))
    images = decode_images(tensors["images"], mean, std)
    lr = tensors["lr"].reshape(()) if "lr" in tensors else None
    return SyntheticSet(
        images=images,
        labels=tensors["labels"],
        num_classes=int(metadata["num_classes"]),
        mean=mean,
        std=std,
        lr=lr,
        meta=json.loads(metadata["meta"]),
    )


def _load_weights_only(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DdplugError(
            f"refused to load {path}: it holds Python objects other than tensors and plain containers, "
            f"and unpickling them could run code ({str(error).splitlines()[0]}). "
            "Re-save the set with only tensors, lists and dicts."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise DdplugError(f"cannot read {path}: not a torch file or truncated ({error})") from None


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
        lr = torch.as_tensor(_load_weights_only(lr_path), dtype=torch.float32).reshape(())
    if not isinstance(labels, Tensor):
        raise DdplugError(f"{labels_path} should hold a label tensor")
    return _foreign_set(images, labels, dataset, lr, "mtt-format", path)
