"""Shared fixtures: a small real dataset (scikit-learn's 8x8 digits) and a tiny preset.
Helpers that tests import are in ``helpers.py``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddplug.allocator import tune_allocator
from ddplug.data import DatasetSplits, from_tensors
from ddplug.evaluate import EvalProtocol
from ddplug.presets import PRESETS, Preset

from helpers import TINY_MODEL

# The suite's networks are tiny: one thread is as fast, and it stays fast on a loaded
# machine, where two spinning threads per process slow small ops down by 10x or more.
torch.set_num_threads(1)
tune_allocator()  # like every ddplug entry point (tests of the tuning itself use fresh processes)


@pytest.fixture(scope="session")
def digits() -> DatasetSplits:
    """The 1797 8x8 digits of scikit-learn, split 1400/397: real data with no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return from_tensors(x[:1400, None], y[:1400], x[1400:, None], y[1400:], name="digits", num_classes=10)


@pytest.fixture()
def tiny_preset() -> Preset:
    return dataclasses.replace(
        PRESETS["cpu"],
        name="tiny",
        evaluation=EvalProtocol(model=TINY_MODEL, epochs=20, num_models=2, full_epochs=1, feature_epochs=1),
        methods={"*": {"model": TINY_MODEL}, "dm": {"iterations": 20, "batch_real": 16}},
    )
