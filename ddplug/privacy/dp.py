"""Differential privacy for what a distiller reads from its real data.

Distribution matching reads the real data only through class means of per-sample
embeddings. :class:`PrivateClassMeans` makes those means a Gaussian mechanism: each step
takes a Poisson sample of the real images (each image in with probability ``sample_rate``),
clips every embedding to norm ``clip`` (so adding or removing one image moves the class sums
by at most ``clip``), adds Gaussian noise of std ``noise_multiplier * clip`` to every class
sum and divides by the class's expected sample size. The steps compose as Poisson-subsampled
Gaussian mechanisms in Google's dp-accounting RDP accountant, which both calibrates the noise
for a target (epsilon, delta) and reports what a run has spent.

Class counts (the label histogram) are treated as public, as DP-SGD treats its expected
batch size: in the federated app each client tells the server its class counts anyway.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddplug.errors import DdplugError

# Integer orders: at fractional orders below 2 the accountant's series may not converge for
# small noise (it warns and drops them). Every order up to 64 and a few beyond give the same
# noise as all of 2..256 for the budgets here, 14x faster.
ORDERS = (*range(2, 65), 80, 96, 128, 192, 256)


def _event(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent, SelfComposedDpEvent

    return SelfComposedDpEvent(PoissonSampledDpEvent(sample_rate, GaussianDpEvent(noise_multiplier)), steps)


def _accountant() -> Any:
    from dp_accounting.rdp import RdpAccountant

    return RdpAccountant(orders=list(ORDERS))


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon (at ``delta``) of ``steps`` Poisson-subsampled Gaussian mechanisms."""
    if steps == 0:
        return 0.0
    accountant = _accountant()
    accountant.compose(_event(noise_multiplier, sample_rate, steps))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=64)  # a federated run checks the same budget for every client message
def calibrate_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose ``steps`` steps at ``sample_rate`` spend at most
    (``epsilon``, ``delta``)."""
    from dp_accounting import calibrate_dp_mechanism
    from dp_accounting.mechanism_calibration import NoBracketIntervalFoundError

    if not epsilon > 0 or not 0 < delta < 1:
        raise DdplugError(f"differential privacy needs epsilon > 0 and 0 < delta < 1, got {epsilon} and {delta}")
    try:
        return float(calibrate_dp_mechanism(_accountant, lambda sigma: _event(sigma, sample_rate, steps), epsilon,
                                            delta))
    except (NoBracketIntervalFoundError, ValueError, ArithmeticError) as error:
        raise DdplugError(f"no noise level spends at most epsilon {epsilon:g} at delta {delta:g} over {steps} steps "
                          f"({type(error).__name__}): raise the delta (1e-5 is usual) or the epsilon") from None


def clip_rows(features: Tensor, bound: float) -> Tensor:
    """Each row scaled down, if needed, to L2 norm at most ``bound``."""
    norms = features.norm(dim=1, keepdim=True)
    return features * (bound / norms.clamp(min=bound))


@dataclass(frozen=True)
class PrivateClassMeans:
    """The calibrated mechanism of one distillation: see the module's docstring."""

    epsilon: float  # the target, for all ``steps``
    delta: float
    clip: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    expected_counts: Tensor  # per class: sample_rate * class count (the public denominators)

    @classmethod
    def calibrate(cls, class_counts: Tensor, *, batch_per_class: int, steps: int, epsilon: float, delta: float,
                  clip: float) -> PrivateClassMeans:
        """One sampling rate for every image, so that a step samples ``batch_per_class``
        images per class on average over the classes."""
        if not clip > 0:
            raise DdplugError(f"dp_clip must be positive, got {clip}")
        total = int(class_counts.sum())
        sample_rate = min(1.0, batch_per_class * len(class_counts) / total)
        sigma = calibrate_noise(epsilon, delta, sample_rate, steps)
        return cls(epsilon, delta, clip, sample_rate, steps, sigma, class_counts.double() * sample_rate)

    def sample(self, num_examples: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        """Indices of one Poisson sample: each of ``num_examples`` images in with probability ``sample_rate``."""
        keep = torch.rand(num_examples, generator=generator, device=device) < self.sample_rate
        return torch.nonzero(keep).flatten()

    def class_sums(self, features: Tensor, labels: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
        """Clipped per-class sums of ``features`` plus the Gaussian noise."""
        sums = torch.zeros(num_classes, features.shape[1], device=features.device, dtype=features.dtype)
        sums.index_add_(0, labels, clip_rows(features, self.clip))
        noise = torch.randn(sums.shape, generator=generator, device=features.device, dtype=features.dtype)
        return sums + noise * (self.noise_multiplier * self.clip)

    def class_means(self, features: Tensor, labels: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
        """The released statistic: noisy class sums over the expected sample sizes."""
        counts = self.expected_counts.to(device=features.device, dtype=features.dtype)
        return self.class_sums(features, labels, num_classes, generator) / counts[:, None]

    def report(self, steps: int) -> dict[str, float]:
        """What ``steps`` steps spent, and the mechanism's settings (a set's ``meta["privacy"]``)."""
        return {"epsilon": epsilon_spent(self.noise_multiplier, self.sample_rate, steps, self.delta),
                "delta": self.delta, "target_epsilon": self.epsilon, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "clip": self.clip, "steps": steps}
