"""How close a synthetic set lies to the real images it was made from.

Three numbers, all on images compared as flattened vectors by *centred* cosine
similarity (each image minus its own mean pixel value: two images with the same pattern
and a different brightness score 1, a copy scores 1):

- ``upload_similarity``: for each synthetic image, its similarity to the nearest real image;
- ``real_similarity``: the scale to read it against, for real images probed at random,
  the similarity to their nearest *other* real image (a synthetic image closer to a real
  one than real images are to each other is suspiciously close);
- ``membership_advantage``: a simple membership-inference attack that scores a candidate
  image by its similarity to the nearest synthetic image, run on probed members (the
  real images) against as many non-members (held-out images of the same classes):
  the best TPR - FPR over all thresholds (0: no better than a coin; 1: tells them apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ddplug.data import ImageDataset
from ddplug.errors import DdplugError
from ddplug.seeding import make_generator

NEAR_COPY = 0.99  # a synthetic image at least this similar to a real one is counted as a near copy
_CHUNK = 1024  # rows of the reference compared at a time: memory stays flat in the data's size


def centred(images: Tensor) -> Tensor:
    """Flattened images minus their own mean, scaled to unit length (a constant image stays 0)."""
    flat = images.flatten(1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)


def nearest_similarity(queries: Tensor, references: Tensor, exclude: Tensor | None = None) -> Tensor:
    """For each query image, the largest centred cosine similarity to any reference image;
    ``exclude[i]``, when given, is a reference index query ``i`` is not compared with (itself)."""
    q, best = centred(queries), torch.full((len(queries),), -1.0, dtype=torch.float64)
    for start in range(0, len(references), _CHUNK):
        similarity = q @ centred(references[start:start + _CHUNK]).T
        if exclude is not None:
            own = exclude - start
            inside = (own >= 0) & (own < similarity.shape[1])
            similarity[inside.nonzero().flatten(), own[inside]] = -1.0
        best = torch.maximum(best, similarity.max(dim=1).values)
    return best


def membership_advantage(member_scores: Tensor, non_member_scores: Tensor) -> float:
    """max over thresholds t of P(member score >= t) - P(non-member score >= t), at least 0."""
    scores = torch.cat([member_scores, non_member_scores])
    is_member = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(non_member_scores))]).double()
    order = torch.argsort(scores, descending=True, stable=True)
    scores, is_member = scores[order], is_member[order]
    tpr = torch.cumsum(is_member, 0) / len(member_scores)
    fpr = torch.cumsum(1 - is_member, 0) / len(non_member_scores)
    last_of_tie = torch.cat([scores[1:] != scores[:-1], torch.tensor([True])])  # a threshold takes whole ties
    return max(0.0, float((tpr - fpr)[last_of_tie].max()))


@dataclass
class LeakageReport:
    KEYS: ClassVar[tuple[str, ...]] = ("upload_nn_similarity_median", "real_nn_similarity_median",
                                       "membership_advantage", "near_copies")  # what summary() reports

    upload_similarity: Tensor  # (synthetic images,)
    real_similarity: Tensor  # (probed real images,)
    membership_advantage: float

    @property
    def near_copies(self) -> int:
        """Synthetic images within ``NEAR_COPY`` of a real image."""
        return int((self.upload_similarity >= NEAR_COPY).sum())

    def summary(self) -> dict[str, Any]:
        """Medians (None over no images), the attack's advantage and the near copies."""
        def median(values: Tensor) -> float | None:
            return float(values.median()) if len(values) else None

        return {"upload_nn_similarity_median": median(self.upload_similarity),
                "real_nn_similarity_median": median(self.real_similarity),
                "membership_advantage": self.membership_advantage, "near_copies": self.near_copies}

    @classmethod
    def combine(cls, reports: list[LeakageReport]) -> LeakageReport:
        """One report over several sets (clients, rounds): all their images, the largest advantage."""
        return cls(torch.cat([r.upload_similarity for r in reports] or [torch.zeros(0, dtype=torch.float64)]),
                   torch.cat([r.real_similarity for r in reports] or [torch.zeros(0, dtype=torch.float64)]),
                   max((r.membership_advantage for r in reports), default=0.0))


def leakage_report(synthetic_images: Tensor, members: ImageDataset, holdout: ImageDataset, *, probes: int = 100,
                   attack_probes: int = 1000, seed: int = 0) -> LeakageReport:
    """How close ``synthetic_images`` lie to ``members`` (the data they were made from).

    ``probes`` random members give the real-to-real scale; the attack runs on
    ``attack_probes`` random members (they include the scale's) against as many non-members
    from ``holdout`` (images never used, e.g. the test split), one of the same class for each:
    with n of each, two samples of one distribution already differ by about 1.2 / sqrt(n)
    (0.04 at 1000), the attack's noise floor."""
    if probes < 1 or attack_probes < 1 or len(members) == 0:
        raise DdplugError(f"a leakage report needs probes >= 1 and real images, got {probes}, {attack_probes} "
                          f"and {len(members)}")
    generator = make_generator(seed, "leakage")
    chosen = torch.randperm(len(members), generator=generator)[:max(probes, attack_probes)]
    non_members = _same_classes(holdout, members.labels[chosen[:attack_probes]], generator)
    synthetic = synthetic_images.detach().cpu()
    member_scores = nearest_similarity(members.images[chosen[:attack_probes]], synthetic)
    non_member_scores = nearest_similarity(holdout.images[non_members], synthetic)
    scale = chosen[:probes]
    # A lone real image has no other to be near: no scale then.
    real_similarity = nearest_similarity(members.images[scale], members.images, exclude=scale) if len(members) > 1 \
        else torch.zeros(0, dtype=torch.float64)
    return LeakageReport(upload_similarity=nearest_similarity(synthetic, members.images),
                         real_similarity=real_similarity,
                         membership_advantage=membership_advantage(member_scores, non_member_scores))


def _same_classes(holdout: ImageDataset, labels: Tensor, generator: torch.Generator) -> Tensor:
    """For each label, a random held-out image of that class (with replacement)."""
    counts = torch.bincount(holdout.labels, minlength=int(labels.max()) + 1)
    if (counts[labels] == 0).any():
        missing = sorted(set(labels[counts[labels] == 0].tolist()))
        raise DdplugError(f"the held-out images have no image of classes {missing}: the attack needs non-members "
                          "of every class it probes")
    order = torch.argsort(holdout.labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    offsets = (torch.rand(len(labels), generator=generator) * counts[labels]).long()
    return order[starts[labels] + offsets]
