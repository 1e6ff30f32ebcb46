"""ddplug under torchrun (Gloo on the CPU): the same results as one process, with the work shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddplug.distributed import gather, is_main, my_share, rank, world_size

from helpers import write_fake_fashion_mnist

SMALL = "convnet:width=4,depth=1"
EVALUATION = ["--eval-model", SMALL, "--eval-epochs", "2", "--eval-models", "3", "--quiet", "--device", "cpu", "--json"]


def test_a_single_process_is_a_world_of_one():
    assert (world_size(), rank(), is_main()) == (1, 0, True)
    assert list(my_share(4)) == [0, 1, 2, 3]
    assert list(gather({2: "c", 0: "a", 1: "b"}).items()) == [(0, "a"), (1, "b"), (2, "c")]


def _ddplug(argv: list[str], data: Path, ranks: int) -> subprocess.CompletedProcess:
    # One thread per process in both runs: float sums then agree to the last bit.
    env = {**os.environ, "DDPLUG_DATA": str(data), "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    done = subprocess.run([*launcher, "-m", "ddplug", *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _summary(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.subprocess
def test_two_ranks_distil_and_judge_what_one_process_does(tmp_path):
    data = write_fake_fashion_mnist(tmp_path / "data")
    distill = ["distill", "--method", "dm", "--ipc", "1", "--iterations", "3", "--model", SMALL, *EVALUATION]
    one = _summary(_ddplug([*distill, "--out", str(tmp_path / "one")], data, 1))
    two_run = _ddplug([*distill, "--out", str(tmp_path / "two")], data, 2)
    two = _summary(two_run)
    assert len(two_run.stdout.strip().splitlines()) == len(_ddplug([*distill, "--out", str(tmp_path / "again")], data,
                                                                   1).stdout.strip().splitlines())  # rank 0 alone prints
    assert two["accuracies"] == one["accuracies"] and len(two["accuracies"]) == 3  # 2 networks on rank 0, 1 on rank 1
    assert two["random_baseline_mean"] == one["random_baseline_mean"]
    first, second = (load_file(str(tmp_path / name / "synthetic.safetensors")) for name in ("one", "two"))
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    # evaluate shares its networks the same way
    evaluate = ["evaluate", str(tmp_path / "one"), *EVALUATION]
    again = _summary(_ddplug([*evaluate, "--out", str(tmp_path / "judged")], data, 2))
    assert again["accuracies"] == one["accuracies"]


@pytest.mark.subprocess
def test_two_ranks_train_the_experts_one_process_trains(tmp_path):
    data = write_fake_fashion_mnist(tmp_path / "data")
    experts = ["experts", "--model", SMALL, "--num-experts", "3", "--epochs", "2", "--batch-size", "16", "--quiet",
               "--device", "cpu"]
    _ddplug([*experts, "--out", str(tmp_path / "one")], data, 1)
    _ddplug([*experts, "--out", str(tmp_path / "two")], data, 2)
    one, two = (sorted((tmp_path / name).glob("*.pt")) for name in ("one", "two"))
    assert [path.name for path in one] == [path.name for path in two] and len(one) == 3
    for first, second in zip(one, two):
        assert torch.equal(torch.load(first)["trajectory"], torch.load(second)["trajectory"])


MTT_FLAGS = ["--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "1", "--num-experts", "2",
             "--batch-syn", "6"]


@pytest.mark.subprocess
@pytest.mark.parametrize("method, share", [("dc", "classes"), ("dsa", "classes"), ("kip", "real-rows"),
                                           ("frepo", "real-rows"), ("mtt", "student-batches")])
def test_two_ranks_share_the_matching_and_learn_the_one_process_set(tmp_path, monkeypatch, method, share):
    """Gradient matching shares its classes, kernel matching its real batch's rows, trajectory
    matching each student batch's images: the set is the one-process set up to the float
    sums' order (one grey level of the stored code)."""
    from ddplug.methods import get_condenser

    assert get_condenser(method).distiller_class.shares == share
    data = write_fake_fashion_mnist(tmp_path / "data")
    monkeypatch.setenv("DDPLUG_EXPERTS", str(tmp_path / "experts"))  # MTT's, trained by the first run
    distill = ["distill", "--method", method, "--ipc", "1", "--iterations", "2", "--model", SMALL, "--no-eval",
               "--quiet", "--device", "cpu", "--json", *(MTT_FLAGS if method == "mtt" else [])]
    for name, ranks in (("one", 1), ("two", 2)):
        _ddplug([*distill, "--out", str(tmp_path / name)], data, ranks)
    first, second = (load_file(str(tmp_path / name / "synthetic.safetensors")) for name in ("one", "two"))
    assert first.keys() == second.keys()
    for key in first:
        a, b = first[key].double(), second[key].double()
        assert a.shape == b.shape
        level = 1.0 if first[key].dtype == torch.uint8 else 1e-3 * a.abs().max().item()
        assert (a - b).abs().max() <= level, key
        assert (a != b).double().mean() < 0.01, key  # only values at a rounding boundary may differ


def test_a_share_needs_a_term_for_every_rank_and_no_secret_noise(monkeypatch, digits):
    import ddplug.methods.base as base
    from ddplug.errors import DdplugError
    from ddplug.methods import create_distiller, make_config

    monkeypatch.setattr(base, "world_size", lambda: 11)
    with pytest.raises(DdplugError, match="11 ranks share 10 classes: use at most 10 processes"):
        create_distiller("dc", digits.train, make_config("dc", {"ipc": 1, "model": SMALL}))
    monkeypatch.setattr(base, "world_size", lambda: 2)
    with pytest.raises(DdplugError, match="which a private run cannot"):
        create_distiller("dm", digits.train, make_config("dm", {"ipc": 1, "model": SMALL, "init": "noise",
                                                                "dp_epsilon": 1.0}))
    monkeypatch.setattr(base, "my_share", lambda count: range(1, count, 2))  # rank 1 of 2
    kip = create_distiller("kip", digits.train, make_config("kip", {"ipc": 1, "model": SMALL}))
    assert kip.my_real_rows(5).tolist() == [1, 3] and kip.my_classes().tolist() == list(range(10))
    dc = create_distiller("dc", digits.train, make_config("dc", {"ipc": 1, "model": SMALL}))
    assert dc.my_classes().tolist() == [1, 3, 5, 7, 9] and dc.my_real_rows(5).tolist() == list(range(5))


class _CountedReads:
    """Real images that record which rows a distiller reads (as streamed data would read them from disk)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.rows = images, []

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        self.rows.append(index.flatten().clone())
        return self.images[index]


@pytest.mark.parametrize("method, settings", [("dm", {}), ("dsa", {}), ("kip", {"batch_real": 6})])
def test_each_rank_reads_only_its_share_and_the_shares_sum_to_the_whole_loss(monkeypatch, digits, method, settings):
    import ddplug.methods.base as base
    from ddplug.methods import create_distiller, make_config

    config = make_config(method, {"ipc": 2, "model": SMALL, "seed": 3, **settings})
    whole = create_distiller(method, digits.train, config)
    whole.real_images = _CountedReads(whole.real_images)
    losses, reads = [], []
    for me in (0, 1):
        monkeypatch.setattr(base, "my_share", lambda count, me=me: range(me, count, 2))
        part = create_distiller(method, digits.train, config)
        part.real_images = _CountedReads(part.real_images)
        losses.append(part.loss(0) if method != "dsa" else part.matching_loss(part.fresh_network(0), 0))
        reads.append(torch.cat(part.real_images.rows))
    monkeypatch.setattr(base, "my_share", lambda count: range(count))
    loss = whole.loss(0) if method != "dsa" else whole.matching_loss(whole.fresh_network(0), 0)
    read = torch.cat(whole.real_images.rows)
    # The two ranks read the one-process batch between them, each row once
    assert sorted(torch.cat(reads).tolist()) == sorted(read.tolist())
    assert len(reads[0]) + len(reads[1]) == len(read) and min(len(reads[0]), len(reads[1])) > 0
    if method != "kip":  # classes are shared: rank 0 reads only even classes
        assert set(digits.train.labels[reads[0]].tolist()) == {0, 2, 4, 6, 8}
    torch.testing.assert_close(losses[0] + losses[1], loss, rtol=1e-5, atol=1e-6)


def _worker_of_rank(launcher: subprocess.Popen, wanted: int) -> int:
    """The pid of torchrun's worker of rank ``wanted`` (read from /proc)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={wanted}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker of rank {wanted} among {children}")


@pytest.mark.subprocess
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_and_the_run_resumes(tmp_path):
    """SIGTERM reaches one worker only: the ranks agree to stop at the next log point (a rank
    stopping alone would leave the other waiting for its sums), rank 0 saves that step, and
    the resumed run ends with the set one process makes."""
    import signal
    import time

    data = write_fake_fashion_mnist(tmp_path / "data")
    env = {**os.environ, "DDPLUG_DATA": str(data), "OMP_NUM_THREADS": "1"}
    distill = ["-m", "ddplug", "distill", "--method", "dm", "--ipc", "1", "--model", SMALL, "--no-eval", "--quiet",
               "--device", "cpu"]
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                 *distill, "--iterations", "100000", "--out", str(tmp_path / "two")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "two" / "checkpoint.pt"
    began = time.monotonic()
    while not checkpoint.exists():  # the first checkpoint: step 100
        assert launcher.poll() is None and time.monotonic() - began < 300, launcher.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(_worker_of_rank(launcher, 1), signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)  # no rank is left waiting for the other
    assert "interrupted after" in err, err[-3000:]
    stopped = torch.load(checkpoint, weights_only=True)["iteration"]
    assert stopped % 10 == 0 and stopped > 100, stopped
    total = stopped + 20
    _ddplug(["distill", *distill[3:], "--iterations", str(total), "--out", str(tmp_path / "two")], data, 2)
    _ddplug(["distill", *distill[3:], "--iterations", str(total), "--out", str(tmp_path / "one")], data, 1)
    first, second = (load_file(str(tmp_path / name / "synthetic.safetensors")) for name in ("one", "two"))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert torch.load(checkpoint, weights_only=True)["iteration"] == total
