"""Shared fixtures: a small real dataset (scikit-learn's 8x8 digits) and a tiny preset.
Helpers that tests import are in ``helpers.py``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddplug.allocator import tune_allocator
from ddplug.data import DatasetSplits, load_dataset
from ddplug.evaluation import EvalProtocol
from ddplug.presets import PRESETS, Preset

from helpers import TINY_MODEL

# The suite's networks are tiny: one thread is as fast, and it stays fast on a loaded
# machine, where two spinning threads per process slow small ops down by 10x or more.
torch.set_num_threads(1)
tune_allocator()  # like every ddplug entry point (tests of the tuning itself use fresh processes)


@pytest.fixture(scope="session")
def digits() -> DatasetSplits:
    """The 1797 8x8 digits of scikit-learn, split 1400/397: real data with no download."""
    return load_dataset("digits")


@pytest.fixture()
def tiny_preset() -> Preset:
    return dataclasses.replace(
        PRESETS["cpu"],
        name="tiny",
        evaluation=EvalProtocol(model=TINY_MODEL, epochs=20, num_models=2, full_epochs=1, feature_epochs=1),
        methods={"*": {"model": TINY_MODEL}, "dm": {"iterations": 20, "batch_real": 16}},
    )
