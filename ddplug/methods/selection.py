"""Coreset baselines that produce synthetic sets the same way distillers do:
a random real subset, herding, k-center, and the whole dataset (the upper bound).

Herding and k-center select in the feature space of a network (``embed``), normally one
briefly trained on the real data, as in the DC paper's baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ddplug.version import __version__
from ddplug.data import ImageDataset
from ddplug.methods.sampling import ClassBalancedSampler
from ddplug.methods.condenser import Condensed, Condenser, register_condenser, timed
from ddplug.errors import DdplugError
from ddplug.evaluation.training import train_classifier
from ddplug.models import create_model
from ddplug.seeding import derive_seed, make_generator
from ddplug.sets import SyntheticSet

if TYPE_CHECKING:
    from ddplug.presets import Preset

SELECTIONS = ("random", "herding", "kcenter", "full")


def herding_indices(features: Tensor, k: int) -> Tensor:
    """Greedy herding: each pick brings the mean of the picks closest to the class mean."""
    target = features.mean(dim=0)
    chosen: list[int] = []
    total = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    for step in range(1, k + 1):
        candidate_means = (total + features) / step
        distance = (candidate_means - target).norm(dim=1).masked_fill(~available, float("inf"))
        pick = int(distance.argmin())
        chosen.append(pick)
        available[pick] = False
        total += features[pick]
    return torch.tensor(chosen, dtype=torch.long)


def kcenter_indices(features: Tensor, k: int) -> Tensor:
    """Greedy k-center: start nearest the class mean, then always take the farthest point."""
    first = int((features - features.mean(dim=0)).norm(dim=1).argmin())
    chosen = [first]
    nearest = (features - features[first]).norm(dim=1)
    for _ in range(k - 1):
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = torch.minimum(nearest, (features - features[pick]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.long)


@torch.no_grad()
def embed_all(network: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    network.eval()
    return torch.cat([network.embed(x) for x in images.split(batch_size)])


def select_subset(
    method: str,
    real: ImageDataset,
    ipc: int,
    *,
    seed: int = 0,
    feature_network: nn.Module | None = None,
    device: torch.device | str = "cpu",
) -> SyntheticSet:
    """A real subset of ``ipc`` images per class chosen by ``method`` (see ``SELECTIONS``).

    Args:
        method: ``random``, ``herding`` or ``kcenter``.
        real: the real images to choose from.
        ipc: images per class.
        seed: the draws' seed.
        feature_network: the network whose ``embed()`` features herding and k-center choose in.
        device: where the features are computed.

    Returns:
        The chosen real images as a :class:`~ddplug.sets.SyntheticSet`, class by class.

    Raises:
        DdplugError: an unknown method, too few images of a class, or no feature network
            where one is needed.

    Examples:
        >>> from ddplug.data import load_dataset
        >>> digits = load_dataset("digits")
        >>> picked = select_subset("random", digits.train, ipc=3, seed=0)
        >>> len(picked), picked.labels[:4].tolist()
        (30, [0, 0, 0, 1])
        >>> select_subset("herding", digits.train, ipc=3)
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: herding selects in a feature space: pass feature_network (a model with embed())
    """
    if method not in SELECTIONS:
        raise DdplugError(f"unknown selection {method!r}; choose one of {', '.join(SELECTIONS)}")
    if method == "full":
        indices = torch.arange(len(real))
    else:
        if ipc < 1:
            raise DdplugError(f"ipc must be at least 1, got {ipc}")
        smallest = int(real.class_counts().min())
        if ipc > smallest:
            raise DdplugError(f"ipc {ipc} is larger than the smallest class of {real.name} ({smallest} images): lower --ipc")
        indices = _choose(method, real, ipc, seed, feature_network, torch.device(device))
    images = real.images[indices].clone()
    return SyntheticSet(
        images=images,
        labels=real.labels[indices].clone(),
        num_classes=real.num_classes,
        mean=real.mean,
        std=real.std,
        meta={"method": method, "dataset": real.name, "ipc": None if method == "full" else ipc,
              "param": "pixels", "decoded_per_class": None if method == "full" else ipc,
              "seed": seed, "ddplug_version": __version__},
        code={"images": images},  # real images: stored as the uint8 pixels they came from
    )


def _choose(method: str, real: ImageDataset, ipc: int, seed: int, network: nn.Module | None, device: torch.device) -> Tensor:
    if method == "random":
        sampler = ClassBalancedSampler(real.labels, real.num_classes)
        return sampler.sample(ipc, make_generator(seed, "random-subset")).flatten()
    if network is None:
        raise DdplugError(f"{method} selects in a feature space: pass feature_network (a model with embed())")
    pick = herding_indices if method == "herding" else kcenter_indices
    chosen = []
    for members in real.class_indices():
        features = embed_all(network.to(device), real.subset(members).images.to(device))
        chosen.append(members[pick(features, ipc).to(members.device)])
    return torch.cat(chosen)


def feature_network(real: ImageDataset, preset: Preset, *, seed: int, device: torch.device | str) -> nn.Module:
    """The network whose features herding and k-center select in: the evaluation model,
    trained briefly on the real data (``preset.evaluation.feature_epochs``)."""
    protocol = preset.evaluation
    network = create_model(protocol.model, in_channels=real.in_channels, num_classes=real.num_classes,
                           image_size=real.image_size, seed=derive_seed(seed, "feature-network")).to(device)
    images, labels = real.images.to(device), real.labels.to(device)
    train_classifier(network, images, labels, protocol.train_settings(protocol.feature_epochs),
                     generator=make_generator(seed, "feature-network-train"))
    return network


class Selection(Condenser):
    """A subset of the real images as a condenser. Selections take no settings: the
    distillation settings a caller passes along (``settings``) do not apply and are ignored."""

    baseline = True
    needs_features: ClassVar[bool] = False  # selects in the feature space of :func:`feature_network`

    def condense(self, real: ImageDataset, *, ipc: int, preset: Preset, seed: int = 0,
                 settings: dict[str, Any] | None = None, device: torch.device | str = "cpu",
                 out_dir: str | Path | None = None, progress: bool = True, snapshots: int = 0) -> Condensed:
        def select() -> SyntheticSet:
            network = feature_network(real, preset, seed=seed, device=device) if self.needs_features else None
            return select_subset(self.name, real, ipc, seed=seed, feature_network=network, device=device)

        return timed(self.name, select)


@register_condenser
class RandomSelection(Selection):
    name = "random"


@register_condenser
class HerdingSelection(Selection):
    name = "herding"
    needs_features = True


@register_condenser
class KCenterSelection(Selection):
    name = "kcenter"
    needs_features = True


@register_condenser
class FullDataset(Selection):
    """The whole training set: the upper bound, not a baseline at equal size."""

    name = "full"
    per_class = False
