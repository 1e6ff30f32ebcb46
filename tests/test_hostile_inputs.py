"""Data and result files from outside are hostile until checked: each bad one is one clear
line naming it, never a traceback, a hang or a silent substitute."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddplug.data import load_dataset
from ddplug.errors import DdplugError
from ddplug.sets import load_set
from helpers import write_fake_fashion_mnist


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` greyscale pixels, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _image_folder(root: Path, classes: tuple[str, ...] = ("a", "b")) -> Path:
    for split in ("train", "test"):
        for name in classes:
            for index in range(2):
                folder = root / split / name
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8), 40 * index, np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.mark.parametrize(("width", "message"), [(50_000, "decompression bomb"), (5_000, "over the 4096 a side")])
def test_an_image_declaring_too_many_pixels_is_named_before_decoding(tmp_path: Path, width: int, message: str) -> None:
    root = _image_folder(tmp_path / "folder")
    bomb = _png_header(root / "train" / "a" / "huge.png", width, width)
    with pytest.raises(DdplugError, match=message) as refused:
        load_dataset(f"imagefolder:{root}")
    assert str(bomb) in str(refused.value)


def test_a_folder_of_one_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DdplugError, match="holds images of 1 class; classification needs at least 2"):
        load_dataset(f"imagefolder:{_image_folder(tmp_path / 'one', ('only',))}")


def _cifar(root: Path, data: np.ndarray, labels: list) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    return root


@pytest.mark.parametrize(("data", "labels", "message"), [
    (np.full((2, 3072), np.nan), [0, 1], "its images are float64, where CIFAR stores uint8"),
    (np.full((2, 3072), 1e6), [0, 1], "its images are float64"),
    (np.zeros((2, 3072), np.uint8), ["cat", "dog"], "its labels are <U3, not whole class ids"),
])
def test_cifar_batches_of_the_wrong_kind_are_refused(tmp_path: Path, data, labels, message: str) -> None:
    with pytest.raises(DdplugError, match=message):
        load_dataset("cifar10", _cifar(tmp_path, data, labels))


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_data_root_that_is_no_folder_is_refused_not_replaced(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    if kind == "file":
        root.write_text("not a folder")
    with pytest.raises(DdplugError, match=f"data root {root} {'is a file' if kind == 'file' else 'does not exist'}"):
        load_dataset("fashion-mnist", root)
    assert len(load_dataset("fashion-mnist", write_fake_fashion_mnist(tmp_path / "real")).train) == 60


def test_a_fifo_given_as_a_set_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "set.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(DdplugError, match="is not a regular file"):
        load_set(fifo)  # reading it would block until a writer came


def _good_history() -> dict:
    return {"mode": "distill", "partitioner": "iid", "dataset": "fashion-mnist", "alpha": 0.5, "clients": 2,
            "rounds": 1, "accuracy": 0.5, "bytes_up": 10, "bytes_down": 5, "seconds": 3.0,
            "history": [{"round": 1, "accuracy": 0.5, "bytes_up": 10, "bytes_down": 5}], "settings": {}}


@pytest.mark.parametrize(("write", "reason"), [
    (lambda path: path.write_text("{broken"), "JSONDecodeError"),
    (lambda path: path.write_text("[1, 2]"), "it holds a JSON list, not an object"),
    (lambda path: path.write_text(json.dumps({k: v for k, v in _good_history().items() if k != "alpha"})),
     "alpha is None"),
    (lambda path: path.write_text(json.dumps({**_good_history(), "accuracy": None})), "accuracy is None"),
    (lambda path: path.write_text(json.dumps({**_good_history(), "history": [{"accuracy": "x"}]})),
     "round 1: accuracy is 'x'"),
    (lambda path: path.write_text(json.dumps({**_good_history(), "history": 7})), "history is 7"),
    (lambda path: path.write_text(json.dumps({**_good_history(), "seconds": float("nan")})), "seconds is nan"),
    (lambda path: path.write_bytes(bytes(range(256))), "UnicodeDecodeError"),
    (lambda path: path.mkdir(), "IsADirectoryError"),
])
def test_fl_plot_names_a_broken_history_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, write,
                                                    reason: str) -> None:
    from ddplug import cli

    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "history.json").write_text(json.dumps(_good_history()))
    (tmp_path / "bad").mkdir()
    write(tmp_path / "bad" / "history.json")
    assert cli.main(["fl", "--plot", str(tmp_path)]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert reason in err and "bad/history.json is not a ddplug federated history" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
