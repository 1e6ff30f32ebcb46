"""Training a classifier on a (small) labelled tensor set and testing it: the field's protocol.

SGD with momentum and weight decay, one learning-rate decay ×0.1 after half the epochs,
optional DSA with independent parameters per image. Used by the evaluator, by the
herding/k-center feature networks, and by the adapters that retrain on a memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddplug.augment import DSA
from ddplug.errors import DdplugError


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay: bool = True  # the protocol's one ×0.1 decay after half the epochs; False: constant lr

    def __post_init__(self) -> None:
        """Refuse settings that would train nothing or diverge, when they are made (before any work)."""
        at_least_one = {name: getattr(self, name) for name in self.counted_settings()}
        for name, value in at_least_one.items():
            if not isinstance(value, int) or value < 1:
                raise DdplugError(f"{name} must be at least 1, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise DdplugError(f"lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise DdplugError(f"momentum must be within [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise DdplugError(f"weight_decay must be 0 or more, got {self.weight_decay}")

    def counted_settings(self) -> tuple[str, ...]:
        """Settings that count something and must be at least 1 (subclasses add theirs)."""
        return ("epochs", "batch_size")


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: TrainSettings,
    *,
    lr: float | None = None,
    augment: DSA | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` in place on ``images``/``labels`` (hard ids or soft targets).

    ``lr`` overrides the settings' rate (a learned rate from MTT). ``generator`` (a CPU
    generator) drives shuffling and augmentation, so a seeded run is repeatable.
    ``progress`` shows a bar of the epochs, cleared when training ends: one network of a
    large set or architecture can train for an hour.
    """
    device = images.device
    lr = settings.lr if lr is None else lr
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    # The reference code decays once when epoch E//2 is reached, i.e. for the second half
    # (never at epoch 0: a one-epoch run keeps its lr).
    milestones = [max(1, settings.epochs // 2)] if settings.lr_decay else []
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    model.train()
    n = images.shape[0]
    epochs = tqdm(range(settings.epochs), desc="train", unit="epoch", leave=False, mininterval=1.0,
                  disable=not progress)
    for _ in epochs:
        order = torch.randperm(n, generator=generator).to(device, non_blocking=True)
        for batch in order.split(settings.batch_size):
            x = images[batch]
            if augment is not None:
                x = augment(x, generator=generator)
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    return model


@torch.no_grad()
def classification_accuracy(model: nn.Module, images: Tensor, labels: Tensor,
                            batch_size: int = TrainSettings.batch_size) -> float:
    """Top-1 accuracy (a fraction) of ``model`` in eval mode; one host sync at the end.

    Callers after training pass its batch size: no slower on a CPU than 2048, and the
    buffers fit the ones training just freed, so a tuned heap reuses them instead of growing
    (at 2048 a width-32 layer on 28x28 images needs 205 MB)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        correct += (model(x).argmax(dim=1) == y).sum()
    return correct.item() / max(len(labels), 1)
