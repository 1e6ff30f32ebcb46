"""Coreset baselines that produce synthetic sets the same way distillers do:
a random real subset, herding, k-center, and the whole dataset (the upper bound).

Herding and k-center select in the feature space of a network (``embed``), normally one
briefly trained on the real data, as in the DC paper's baselines.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddplug.version import __version__
from ddplug.data import ImageDataset
from ddplug.distill.sampling import ClassBalancedSampler
from ddplug.errors import DdplugError
from ddplug.seeding import make_generator
from ddplug.sets import SyntheticSet

SELECTIONS = ("random", "herding", "kcenter", "full")
NEEDS_FEATURES = ("herding", "kcenter")


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
    """A real subset of ``ipc`` images per class chosen by ``method`` (see ``SELECTIONS``)."""
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
    return SyntheticSet(
        images=real.images[indices].clone(),
        labels=real.labels[indices].clone(),
        num_classes=real.num_classes,
        mean=real.mean,
        std=real.std,
        meta={"method": method, "dataset": real.name, "ipc": None if method == "full" else ipc,
              "seed": seed, "ddplug_version": __version__},
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
        features = embed_all(network.to(device), real.images[members].to(device))
        chosen.append(members[pick(features, ipc).to(members.device)])
    return torch.cat(chosen)
