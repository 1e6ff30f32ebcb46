"""Class-balanced sampling of real images, for all classes in one tensor op."""

from __future__ import annotations

import torch
from torch import Tensor

from ddplug.errors import DdplugError


class ClassBalancedSampler:
    """Draws ``k`` distinct indices of each class at once, without a Python loop over classes.

    The indices of class ``c`` sit in row ``c`` of a padded matrix; a draw scores every
    real slot with a uniform random number (padding scores -inf) and keeps the top ``k``
    per row: a uniform sample without replacement, as the reference code takes.
    """

    def __init__(self, labels: Tensor, num_classes: int) -> None:
        counts = torch.bincount(labels.cpu(), minlength=num_classes)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise DdplugError(f"classes {missing} have no real images: every class needs at least one")
        order = torch.argsort(labels.cpu(), stable=True)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts.max())
        slot = torch.arange(width)
        valid = slot[None, :] < counts[:, None]
        self.index = torch.where(valid, order[(starts[:, None] + slot[None, :]).clamp(max=len(order) - 1)], 0)
        self.valid = valid
        self.counts = counts
        self.num_classes = num_classes

    @property
    def min_count(self) -> int:
        return int(self.counts.min())

    def to(self, device: torch.device | str) -> ClassBalancedSampler:
        self.index, self.valid = self.index.to(device), self.valid.to(device)
        return self

    def drawn(self, per_class: int) -> int:
        """How many images of each class :meth:`sample` draws: ``per_class``, or the smallest class's count."""
        return min(per_class, self.min_count)

    def sample(self, per_class: int, generator: torch.Generator | None = None) -> Tensor:
        """Indices of shape ``(num_classes, k)``, ``k =`` :meth:`drawn` ``(per_class)``."""
        return self.sample_padded(self.drawn(per_class), generator)[0]

    def sample_with_replacement(self, per_class: int, draws: int, generator: torch.Generator | None = None) -> Tensor:
        """Indices of shape ``(num_classes, per_class, draws)``, each uniform over its class with
        replacement: any class size gives every slot its ``draws`` images."""
        offsets = torch.rand((self.num_classes, per_class * draws), generator=generator, device=self.index.device)
        counts = self.counts.to(self.index.device)[:, None]
        offsets = torch.minimum((offsets * counts).long(), counts - 1)  # float rounding may reach the count
        return self.index.gather(1, offsets).view(self.num_classes, per_class, draws)

    def sample_padded(self, per_class: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Indices of shape ``(num_classes, per_class)`` and which of them are real: a class with
        fewer images gives all of them (in random order) and padding slots marked False."""
        scores = torch.rand(self.index.shape, generator=generator, device=self.index.device)
        scores = scores.masked_fill(~self.valid, -1.0)
        positions = scores.topk(min(per_class, self.index.shape[1]), dim=1).indices
        index, valid = self.index.gather(1, positions), self.valid.gather(1, positions)
        missing = per_class - index.shape[1]
        if missing > 0:
            index = torch.nn.functional.pad(index, (0, missing))
            valid = torch.nn.functional.pad(valid, (0, missing), value=False)
        return index, valid


def by_class(images: Tensor, num_classes: int, classes: Tensor) -> Tensor:
    """The images of ``classes`` from a class-major batch of equal class sizes."""
    if len(classes) == num_classes:
        return images
    return images.reshape(num_classes, -1, *images.shape[1:])[classes].flatten(0, 1)
