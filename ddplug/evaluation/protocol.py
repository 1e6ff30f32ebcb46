"""The evaluation protocol: how a synthetic set is judged."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ddplug.evaluation.training import TrainSettings


@dataclass(frozen=True)
class EvalProtocol(TrainSettings):
    """Train ``num_models`` fresh ``model`` networks on the set with these training settings
    (the inherited fields), test them on real data."""

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
