"""Expert trajectories for trajectory matching (MTT): networks trained on the real data with
their parameters recorded at every epoch.

A folder of experts holds ``manifest.json`` (what they were trained on and how) and one file
per expert, ``expert_0000.pt`` ..., each a ``(epochs + 1, num_params)`` float32 tensor: the
flattened parameters at epoch 0 (initialisation) to the last epoch. Every file is written
atomically when its expert is complete, so an interrupted run resumes at the next expert.
Training is plain SGD (no momentum, no weight decay, as MTT's buffer script) with every epoch
seeded by (seed, expert, epoch): the optimiser has no state, so an expert can later be
trained further and ends exactly where a longer run would have.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from ddplug.augment import DSA, DSAConfig
from ddplug.data import ImageDataset
from ddplug.distributed import is_main, my_share, wait_for_all
from ddplug.errors import DdplugError
from ddplug.models import create_model
from ddplug.seeding import derive_seed, make_generator
from ddplug.storage import atomic_write, write_json
from ddplug.version import __version__

MANIFEST = "manifest.json"
_FILE_PATTERN = "expert_*.pt"
# What must agree for experts to share a folder; the epoch count may grow.
_IDENTITY = ("dataset", "model", "image_shape", "num_classes", "num_params", "lr", "batch_size", "augment",
             "dsa_strategy", "seed", "per_class", "zca_epsilon")


@dataclass
class ExpertSet:
    """The usable experts of a folder: ``files[i]`` holds expert i's trajectory."""

    folder: Path
    manifest: dict[str, Any]
    files: list[Path]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_params(self) -> int:
        return int(self.manifest["num_params"])

    def trajectory(self, index: int) -> Tensor:
        """Expert ``index``'s parameters at every epoch, ``(epochs + 1, num_params)``, memory-mapped."""
        return _read_trajectory(self.files[index])

    def stack(self, epochs: int, count: int | None = None) -> Tensor:
        """Epochs ``0..epochs`` of the first ``count`` experts (all by default), ``(count, epochs + 1, P)``."""
        files = self.files if count is None else self.files[:count]
        return torch.stack([_read_trajectory(path)[: epochs + 1] for path in files])


def default_experts_root() -> Path:
    """``$DDPLUG_EXPERTS`` if set, else ``~/.cache/ddplug/experts``."""
    env = os.environ.get("DDPLUG_EXPERTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddplug" / "experts"


@dataclass(frozen=True)
class ExpertTraining:
    """How experts train: SGD at ``lr`` on batches of ``batch_size``, with DSA when
    ``augment``, seeded by ``seed``; on ``per_class`` seeded random images of each class
    (None: all), of data ZCA-whitened with ``zca_epsilon`` (None: not whitened)."""

    lr: float = 0.01
    batch_size: int = 256
    augment: bool = True
    seed: int = 0
    per_class: int | None = None
    zca_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DdplugError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.per_class is not None and self.per_class < 1:
            raise DdplugError(f"per_class must be at least 1 (or None for all images), got {self.per_class}")
        if self.lr <= 0:
            raise DdplugError(f"the experts' lr must be positive, got {self.lr}")


def default_expert_folder(root: str | Path | None, dataset: ImageDataset, model: str,
                          training: ExpertTraining = ExpertTraining()) -> Path:
    """The cache folder of experts of ``model`` on ``dataset`` trained as ``training`` says.

    ``root/<dataset>/<full model spec>/lr<lr>-batch<b>-<dsa|noaug>-seed<s>[-<k>perclass][-zca<eps>]``
    (``root`` defaults to :func:`default_experts_root`); the full spec makes ``convnet`` and
    ``convnet:width=128`` share a folder.
    """
    base = Path(root).expanduser() if root is not None else default_experts_root()
    spec = _canonical_spec(model, dataset.in_channels, dataset.num_classes, dataset.image_size)
    t = training
    settings = f"lr{t.lr:g}-batch{t.batch_size}-{'dsa' if t.augment else 'noaug'}-seed{t.seed}"
    settings += "" if t.per_class is None else f"-{t.per_class}perclass"
    settings += "" if t.zca_epsilon is None else f"-zca{t.zca_epsilon:g}"
    return base / _path_safe(dataset.name) / _path_safe(spec) / settings


def train_experts(
    real: ImageDataset,
    folder: str | Path,
    *,
    model: str,
    num_experts: int,
    epochs: int,
    training: ExpertTraining = ExpertTraining(),
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ExpertSet:
    """Train ``num_experts`` experts for ``epochs`` epochs into ``folder``; returns them.

    Resumable: experts already trained for ``epochs`` are skipped, and shorter ones are
    trained on from their last epoch. Expert ``i`` starts from a network seeded by
    ``(training.seed, i)``, so it is the same whichever run trains it. ``training.per_class``
    trains every expert on the same seeded random images of each class instead of all:
    shorter epochs, for small compute budgets. ``training.zca_epsilon`` records that ``real``
    is ZCA-whitened with that epsilon (see ``ddplug.data.ZCA``), for whitened distillation.
    Under ``torchrun`` each rank trains its share of the experts (every world-size-th one).
    """
    for name, value in (("num_experts", num_experts), ("epochs", epochs)):
        if value < 1:
            raise DdplugError(f"{name} must be at least 1, got {value}")
    folder = Path(folder)
    dsa_config = DSAConfig.for_dataset(real.name)
    manifest = _manifest(real, model, epochs=epochs, **dataclasses.asdict(training),
                         dsa_strategy=dsa_config.strategy if training.augment else None)
    if (folder / MANIFEST).exists():
        existing = _read_manifest(folder)
        _check_same_training(existing, manifest, folder)
        manifest["epochs"] = max(epochs, int(existing["epochs"]))
    if is_main():
        write_json(folder / MANIFEST, manifest)
    todo = {index: _epochs_done(_expert_path(folder, index)) for index in my_share(num_experts)}
    todo = {index: done for index, done in todo.items() if done < epochs}
    if todo:
        _train_missing(real, folder, manifest, todo, epochs, DSA(dsa_config) if training.augment else None,
                       torch.device(device), progress and is_main())
    wait_for_all()
    return load_experts(folder, dataset=real.name, model=model, min_epochs=epochs, zca_epsilon=training.zca_epsilon)


def _train_missing(real: ImageDataset, folder: Path, manifest: dict[str, Any], todo: dict[int, int], epochs: int,
                   dsa: DSA | None, device: torch.device, progress: bool) -> None:
    """Train (or train on) expert ``index`` from its ``todo[index]`` epochs done (-1: none) to ``epochs``."""
    trainer = _ExpertTrainer(real, manifest, dsa, device)
    total = sum(epochs - max(done, 0) for done in todo.values())
    with tqdm(total=total, desc="train experts", unit="epoch", disable=not progress) as bar:
        for index, done in todo.items():
            path = _expert_path(folder, index)
            previous = _read_trajectory(path).clone() if done >= 0 else None
            trajectory = trainer.train(index, previous, epochs, bar)
            atomic_write(path, lambda tmp: torch.save({"trajectory": trajectory}, tmp))


def ensure_experts(
    real: ImageDataset,
    *,
    model: str,
    num_experts: int,
    epochs: int,
    folder: str | Path | None = None,
    root: str | Path | None = None,
    training: ExpertTraining = ExpertTraining(),
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ExpertSet:
    """``num_experts`` experts of at least ``epochs`` epochs, training only what is missing;
    ``folder`` defaults to the cache folder of ``training``, :func:`default_expert_folder`
    (under ``root``)."""
    if folder is None:
        folder = default_expert_folder(root, real, model, training)
    return train_experts(real, folder, model=model, num_experts=num_experts, epochs=epochs, training=training,
                         device=device, progress=progress)


def load_experts(folder: str | Path, *, dataset: str, model: str, min_epochs: int,
                 zca_epsilon: float | None = None) -> ExpertSet:
    """The experts in ``folder`` trained on ``dataset`` (ZCA-whitened with ``zca_epsilon``, if
    given) with ``model`` for ``min_epochs`` or more."""
    folder = Path(folder)
    manifest = _read_manifest(folder, hint=_train_hint(dataset, model, min_epochs))
    if manifest["dataset"] != dataset:
        raise DdplugError(
            f"the experts in {folder} were trained on {manifest['dataset']}, not {dataset}: "
            "use experts of this dataset (another --expert-folder, or train them with `ddplug experts`)"
        )
    if manifest.get("zca_epsilon") != zca_epsilon:
        raise DdplugError(
            f"the experts in {folder} were trained on {_data_space(manifest.get('zca_epsilon'))}, but the "
            f"distillation uses {_data_space(zca_epsilon)}: match --zca/--zca-epsilon to them, or drop "
            "--expert-folder to train matching experts"
        )
    channels, *size = manifest["image_shape"]
    spec = _canonical_spec(model, channels, manifest["num_classes"], tuple(size))
    if spec != manifest["model"]:
        raise DdplugError(
            f"the experts in {folder} are {manifest['model']} networks but the distillation matches with {spec}: "
            f"use the experts' model (--model {manifest['model']}) or experts of this model"
        )
    files = sorted(folder.glob(_FILE_PATTERN))
    lengths = [_epochs_done(path) for path in files]
    usable = [path for path, done in zip(files, lengths) if done >= min_epochs]
    if not usable:
        trained = f"for at most {max(lengths)} epochs" if files else "not at all yet"
        raise DdplugError(
            f"the experts in {folder} are trained {trained}, but {min_epochs} epochs are needed "
            f"(max_start_epoch - 1 + expert_epochs): {_train_hint(dataset, model, min_epochs)}, "
            "or lower --max-start-epoch / --expert-epochs"
        )
    return ExpertSet(folder, manifest, usable)


class _ExpertTrainer:
    """Trains one expert at a time on the real data held on ``device``."""

    def __init__(self, real: ImageDataset, manifest: dict[str, Any], dsa: DSA | None, device: torch.device) -> None:
        self.real = real
        self.manifest = manifest
        self.dsa = dsa
        self.device = device
        data = _training_data(real, manifest["per_class"], int(manifest["seed"]))
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)

    def train(self, index: int, previous: Tensor | None, epochs: int, bar: tqdm) -> Tensor:
        """Expert ``index``'s trajectory to ``epochs``, continuing ``previous`` (its earlier epochs) if given."""
        seed = int(self.manifest["seed"])
        channels, *size = self.manifest["image_shape"]
        network = create_model(self.manifest["model"], in_channels=channels, num_classes=self.real.num_classes,
                               image_size=tuple(size), seed=derive_seed(seed, "expert", index)).to(self.device)
        if previous is not None:
            # A copy: vector_to_parameters makes the parameters views of the vector it is given.
            vector_to_parameters(previous[-1].to(self.device, copy=True), network.parameters())
        rows = list(previous) if previous is not None else [_flat_parameters(network)]
        # Momentum 0 and no weight decay: the optimiser is stateless, so training on later is exact.
        optimizer = torch.optim.SGD(network.parameters(), lr=float(self.manifest["lr"]))
        for epoch in range(len(rows) - 1, epochs):
            loss, accuracy = self._epoch(network, optimizer, make_generator(seed, "expert", index, "epoch", epoch))
            rows.append(_flat_parameters(network))
            bar.update(1)
            bar.set_postfix(expert=index, epoch=epoch + 1, loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")
        return torch.stack(rows)

    def _epoch(self, network: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> tuple[float, float]:
        """One epoch over the shuffled real data; the mean loss and accuracy (one host sync)."""
        network.train()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        order = torch.randperm(len(self.labels), generator=generator).to(self.device)
        for batch in order.split(int(self.manifest["batch_size"])):
            x, y = self.images[batch], self.labels[batch]
            if self.dsa is not None:
                x = self.dsa(x, generator=generator)
            logits = network(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * len(batch)
            correct += (logits.argmax(dim=1) == y).sum()
        return total_loss.item() / len(order), correct.item() / len(order)


def _training_data(real: ImageDataset, per_class: int | None, seed: int) -> ImageDataset:
    """The images the experts train on: all, or ``per_class`` random ones of each class."""
    if per_class is None:
        return real
    generator = make_generator(seed, "expert-subset")
    return real.subset(torch.cat([indices[torch.randperm(len(indices), generator=generator)[:per_class]]
                                  for indices in real.class_indices()]))


def _flat_parameters(network: nn.Module) -> Tensor:
    return parameters_to_vector(network.parameters()).detach().float().cpu()


def _manifest(real: ImageDataset, model: str, **training: Any) -> dict[str, Any]:
    network = create_model(model, in_channels=real.in_channels, num_classes=real.num_classes, image_size=real.image_size)
    return {
        "dataset": real.name,
        "model": network.spec,
        "image_shape": [real.in_channels, *real.image_size],
        "num_classes": real.num_classes,
        "num_params": sum(p.numel() for p in network.parameters()),
        **training,
        "ddplug_version": __version__,
    }


def _check_same_training(existing: dict[str, Any], wanted: dict[str, Any], folder: Path) -> None:
    different = [key for key in _IDENTITY if existing.get(key) != wanted[key]]
    if different:
        detail = ", ".join(f"{key} {existing.get(key)!r} (asked: {wanted[key]!r})" for key in different)
        raise DdplugError(
            f"{folder} holds experts trained differently: {detail}; "
            "train into another folder, or delete this one to start afresh"
        )


def _read_manifest(folder: Path, hint: str | None = None) -> dict[str, Any]:
    how = f": {hint}" if hint else ""
    if not folder.is_dir():
        raise DdplugError(f"expert folder {folder} does not exist{how}")
    path = folder / MANIFEST
    if not path.is_file():
        raise DdplugError(f"{folder} has no {MANIFEST}, so it holds no experts{how}")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DdplugError(f"{path} is unreadable ({error}); delete the folder and train the experts again") from None


def _data_space(zca_epsilon: float | None) -> str:
    return "unwhitened data" if zca_epsilon is None else f"data ZCA-whitened with epsilon {zca_epsilon:g}"


def _train_hint(dataset: str, model: str, epochs: int) -> str:
    return f"train them with `ddplug experts --dataset {dataset} --model {model} --num-experts N --epochs {epochs}`"


def _read_trajectory(path: Path) -> Tensor:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)["trajectory"]
    except Exception as error:  # noqa: BLE001 - any unreadable file means the same to the user
        raise DdplugError(f"expert file {path} is unreadable ({error}); delete it and run the training again") from None


def _epochs_done(path: Path) -> int:
    """Epochs recorded in an expert file; -1 when there is none."""
    return _read_trajectory(path).shape[0] - 1 if path.exists() else -1


def _expert_path(folder: Path, index: int) -> Path:
    return folder / f"expert_{index:04d}.pt"


def _canonical_spec(model: str, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> str:
    return create_model(model, in_channels=in_channels, num_classes=num_classes, image_size=image_size).spec


def _path_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")
