"""The benchmark evaluator: judge a synthetic set by training fresh networks on it."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddplug.augment import DSA, DSAConfig
from ddplug.data import ZCA, DatasetSplits
from ddplug.errors import DdplugError
from ddplug.evaluation.training import train_classifier, classification_accuracy
from ddplug.models import create_model
from ddplug.evaluation.protocol import EvalProtocol
from ddplug.seeding import derive_seed, make_generator
from ddplug.distributed import gather, is_main, my_share
from ddplug.sets import SyntheticSet


@dataclass
class EvalResult:
    """Test accuracies (fractions) of the networks trained on one set.

    Examples:
        >>> result = EvalResult([0.80, 0.84], model="convnet:width=32", epochs=300, seconds_per_model=20.0)
        >>> round(result.mean, 4), round(result.std, 4)
        (0.82, 0.02)

    Attributes:
        accuracies: one per network.
        model: the networks' spec.
        epochs: their training epochs.
        seconds_per_model: the mean wall time of one.
        extra: anything else recorded (the ranks that trained them).
    """

    accuracies: list[float]
    model: str
    epochs: int
    seconds_per_model: float
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        # Population std, as the reference code's np.std reports it.
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "mean": self.mean, "std": self.std}


class Evaluator:
    """Trains ``protocol.num_models`` freshly initialised networks on a set, tests them on
    ``data.test``; model ``i`` of a seeded run is always initialised and shuffled alike.

    A ZCA-whitened set (``synthetic.zca_epsilon``) is tested on test images whitened by the
    ZCA of ``data.train``: ``zca`` when it is that fit (saves refitting), else fitted here once.

    Args:
        data: the real splits (the test split judges; the train split fits a ZCA).
        protocol: how the networks are trained.
        device: where they train.
        progress: show a progress bar.
        zca: the whitening of whitened sets, when already fitted.
    """

    def __init__(self, data: DatasetSplits, protocol: EvalProtocol, *, device: torch.device | str = "cpu",
                 progress: bool = True, zca: ZCA | None = None) -> None:
        self.data = data
        self.protocol = protocol
        self.device = torch.device(device)
        self.progress = progress
        self.test_images = data.test.images.to(self.device)
        self.test_labels = data.test.labels.to(self.device)
        self.augment = DSA(DSAConfig.for_dataset(data.train.name)) if protocol.augment else None
        self._zca = zca
        self._whitened_test_images: Tensor | None = None

    def zca(self, epsilon: float) -> ZCA:
        """The ZCA whitening of ``data.train`` with ``epsilon`` (fitted on first use)."""
        if self._zca is None or self._zca.epsilon != epsilon:
            self._zca = ZCA.fit(self.data.train, epsilon, self.device)
            self._whitened_test_images = None
        return self._zca

    def test_images_for(self, synthetic: SyntheticSet) -> Tensor:
        """The test images in the space of ``synthetic``: whitened when the set is."""
        if synthetic.zca_epsilon is None:
            return self.test_images
        zca = self.zca(synthetic.zca_epsilon)
        if self._whitened_test_images is None:
            self._whitened_test_images = zca.whiten(self.test_images)
        return self._whitened_test_images

    def check_compatible(self, synthetic: SyntheticSet) -> None:
        train = self.data.train
        expected = (train.in_channels, *train.image_size)
        if tuple(synthetic.images.shape[1:]) != expected:
            raise DdplugError(
                f"the set's images are {tuple(synthetic.images.shape[1:])} but {train.name} images are {expected}: "
                "is --dataset right?"
            )
        if synthetic.num_classes != train.num_classes:
            raise DdplugError(f"the set has {synthetic.num_classes} classes but {train.name} has {train.num_classes}")

    def evaluate(self, synthetic: SyntheticSet, *, seed: int = 0, epochs: int | None = None, label: str = "") -> EvalResult:
        """Mean ± std test accuracy of networks trained on ``synthetic`` under the protocol."""
        self.check_compatible(synthetic)
        settings = self.protocol.train_settings(epochs)
        images = synthetic.images.detach().to(self.device)
        labels = synthetic.labels.detach().to(self.device)
        test_images = self.test_images_for(synthetic)
        lr = None if synthetic.lr is None else float(synthetic.lr)
        mine: dict[int, float] = {}  # under torchrun each rank trains its share of the networks
        began = time.perf_counter()
        progress = self.progress and is_main()
        models = tqdm(my_share(self.protocol.num_models), desc=f"evaluate {label}".strip(), disable=not progress,
                      unit="model")
        for index in models:
            network = create_model(
                self.protocol.model,
                in_channels=self.data.train.in_channels,
                num_classes=self.data.train.num_classes,
                image_size=self.data.train.image_size,
                seed=derive_seed(seed, "eval-model", index),
            ).to(self.device)
            generator = make_generator(seed, "eval-train", index)
            train_classifier(network, images, labels, settings, lr=lr, augment=self.augment, generator=generator,
                             progress=progress)
            mine[index] = classification_accuracy(network, test_images, self.test_labels, settings.batch_size)
            models.set_postfix(acc=f"{100 * statistics.fmean(mine.values()):.2f}%")
        seconds = (time.perf_counter() - began) / max(len(mine), 1)
        return EvalResult(list(gather(mine).values()), self.protocol.model, settings.epochs, seconds)
