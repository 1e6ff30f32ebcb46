"""The evaluation protocol: how a synthetic set is judged."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ddplug.evaluation.training import TrainSettings


@dataclass(frozen=True)
class EvalProtocol(TrainSettings):
    """Train ``num_models`` fresh ``model`` networks on the set with these training settings
    (the inherited fields), test them on real data.

    Attributes:
        model: the networks' spec.
        num_models: how many fresh networks are trained.
        epochs: training epochs on the set (``full_epochs`` on the full dataset, ``feature_epochs``
            for a selection's feature network).
        lr, momentum, weight_decay, batch_size, lr_decay: SGD's settings (decay: x0.1 at half).
        augment: DSA while training on the set.
    """

    model: str = "convnet"
    num_models: int = 20
    augment: bool = True  # DSA while training on the set (per-image parameters)
    full_epochs: int = 50  # epochs for the whole-dataset upper bound
    feature_epochs: int = 10  # training of the network whose features herding/k-center use

    def counted_settings(self) -> tuple[str, ...]:
        return (*super().counted_settings(), "num_models", "full_epochs", "feature_epochs")

    def train_settings(self, epochs: int | None = None) -> TrainSettings:
        """The training part alone, optionally for another number of epochs."""
        settings = {field.name: getattr(self, field.name) for field in dataclasses.fields(TrainSettings)}
        return TrainSettings(**{**settings, **({} if epochs is None else {"epochs": epochs})})
