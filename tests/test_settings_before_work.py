"""Settings that could only fail after the work fail before it: `ddplug fl` on the server
before Ray or any node starts, `ddplug cl` and `ddplug distill` before the first step, and
output paths that cannot take the files a run writes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ddplug import cli
from ddplug.errors import DdplugError
from ddplug.storage import writable_folder
from helpers import write_fake_fashion_mnist

pytest.importorskip("flwr")

from ddplug_flower import FederatedSettings  # noqa: E402


@pytest.fixture()
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = write_fake_fashion_mnist(tmp_path / "data", per_class=20)
    monkeypatch.setenv("DDPLUG_DATA", str(root))
    return root


@pytest.mark.parametrize(("settings", "message"), [
    ({"overrides": "dm.iterations=0"}, "iterations must be at least 1, got 0"),
    ({"overrides": "dm.pool_size=-1"}, "pool_size must be a finite number, 0 or more, got -1"),
    ({"overrides": "dm.moments=3"}, "moments must be 1 (class means) or 2"),
    ({"overrides": "dm.dp_clip=0"}, "dp_clip must be positive"),
    ({"overrides": "dm.model=nonet"}, "unknown model 'nonet'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"dp_epsilon": 1.0, "dp_delta": 1e-300, "init": "noise"}, "no noise level spends at most epsilon 1"),
])
def test_a_client_setting_no_client_can_run_fails_on_the_server(settings: dict, message: str) -> None:
    with pytest.raises(DdplugError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FederatedSettings(**settings)


@pytest.mark.parametrize(("argv", "message"), [
    (["--dataset", "bogus"], "unknown dataset 'bogus'"),
    (["--param", "multi:factor=3"], "factor 3 does not divide the image size 28x28"),
    (["--client-cpus", "-1"], "--client-cpus must be a positive number, got -1"),
    (["--out", "FILE"], "is an existing file: choose another --out"),
    (["--out", "FILE/below"], "is a file): choose another --out"),
])
def test_fl_refuses_before_ray_starts(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list,
                                     message: str) -> None:
    (tmp_path / "FILE").write_text("not a folder")
    argv = [str(tmp_path / arg) if arg.startswith("FILE") else arg for arg in argv]
    began = time.perf_counter()
    assert cli.main(["fl", "--clients", "2", *argv]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - began < 30  # no Ray start-up, no round


def test_cl_refuses_an_output_file_before_training(data_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "FILE").write_text("results?")
    assert cli.main(["cl", "--strategy", "naive", "--seeds", "1", "--out", str(tmp_path / "FILE")]) == \
        cli.EXIT_USER_ERROR
    assert "is an existing file: choose another --out" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["set file is a folder", "evaluation is a folder", "dangling symlink", "proc"])
def test_output_paths_that_cannot_take_the_files_are_refused_before_work(data_root: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture,
                                                                         case: str) -> None:
    out = tmp_path / "out"
    if case == "set file is a folder":
        (out / "synthetic.safetensors").mkdir(parents=True)
        message = "synthetic.safetensors is a folder where the run writes a file"
    elif case == "evaluation is a folder":
        (out / "evaluation.json").mkdir(parents=True)
        message = "evaluation.json is a folder where the run writes a file"
    elif case == "dangling symlink":
        os.symlink(tmp_path / "gone", out)
        message = "is a symlink to nothing"
    else:
        out = Path("/proc/ddplug-out")
        message = "cannot write in output folder /proc/ddplug-out"
    code = cli.main(["distill", "--ipc", "1", "--iterations", "2", "--model", "convnet:width=4,depth=1", "--quiet",
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR and message in err and len(err.strip().splitlines()) == 1, err


def test_a_writable_folder_is_left_as_it_was(tmp_path: Path) -> None:
    assert writable_folder(tmp_path / "new" / "deeper", files=("a.json",)) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
