"""A checkpoint is read as hostile: every crafted one is one "delete it" line, never a
traceback, never resumed from absurd values or another copy of the data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ddplug.data import DatasetSplits
from ddplug.methods import DMConfig, create_distiller, run_distillation
from ddplug.errors import DdplugError

from helpers import TINY_MODEL


def _dm(real, iterations: int = 3):
    config = DMConfig(ipc=2, iterations=iterations, model=TINY_MODEL, batch_real=16, seed=0)
    return create_distiller("dm", real, config)


@pytest.fixture()
def saved(digits, tmp_path):
    """A genuine checkpoint of a 3-step run, loaded for editing, and where to write the edit."""
    path = tmp_path / "checkpoint.pt"
    run_distillation(_dm(digits.train), checkpoint=path, progress=False)
    return torch.load(path, weights_only=True), path


def _edit(state: dict, case: str) -> object:
    learned = next(iter(k for k in state["state"] if k != "optimizer"))
    edits = {
        "a list": lambda: [1, 2, 3],
        "a tensor": lambda: torch.zeros(3),
        "no state": lambda: {k: v for k, v in state.items() if k != "state"},
        "iteration 'abc'": lambda: {**state, "iteration": "abc"},
        "iteration 10^12": lambda: {**state, "iteration": 10**12},
        "iteration -5": lambda: {**state, "iteration": -5},
        "losses of NaN": lambda: {**state, "losses": [float("nan")] * 3},
        "wrong shapes": lambda: {**state, "state": {**state["state"], learned: torch.zeros(1, 2)}},
        "a NaN code": lambda: {**state, "state": {**state["state"], learned: torch.full_like(state["state"][learned],
                                                                                               float("nan"))}},
        "a bad optimizer state": lambda: {**state, "state": {**state["state"], "optimizer": {"state": {}, "x": 1}}},
    }
    return edits[case]()


@pytest.mark.parametrize(("case", "reason"), [
    ("a list", "holds a list, not a ddplug checkpoint"),
    ("a tensor", "holds a Tensor, not a ddplug checkpoint"),
    ("no state", "holds no state"),
    ("iteration 'abc'", "records iteration 'abc', not a whole number"),
    ("iteration 10^12", "records iteration 1000000000000"),
    ("iteration -5", "records iteration -5"),
    ("losses of NaN", "finite losses"),
    ("wrong shapes", r"as \(1, 2\), where this run's is"),
    ("a NaN code", "NaN or infinite values"),
    ("a bad optimizer state", "cannot take up"),
])
def test_a_crafted_checkpoint_is_one_delete_it_line(digits, saved, case, reason):
    state, path = saved
    torch.save(_edit(state, case), path)
    with pytest.raises(DdplugError, match=reason) as refused:
        run_distillation(_dm(digits.train), checkpoint=path, progress=False)
    assert str(refused.value).endswith("delete it to start afresh")


def test_a_pickled_checkpoint_is_refused_without_advising_to_unpickle_it(digits, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"state": Path("/etc")}, path)  # pickles a pathlib object, which weights_only refuses
    with pytest.raises(DdplugError, match="is unreadable") as refused:
        run_distillation(_dm(digits.train), checkpoint=path, progress=False)
    assert "weights_only" not in str(refused.value)


def test_a_checkpoint_of_another_copy_of_the_data_is_not_resumed(digits, saved):
    _, path = saved
    other = dataclasses.replace(digits.train, images=digits.train.images * 0.5)  # same name, counts, shape
    with pytest.raises(DdplugError, match="made by a different run .*data"):
        run_distillation(_dm(DatasetSplits(other, digits.test).train), checkpoint=path, progress=False)
    resumed = run_distillation(_dm(digits.train, iterations=5), checkpoint=path, progress=False)
    assert resumed.iterations == 5
