"""Dataset loading from small files written in each format's real layout, and the in-memory API."""

from __future__ import annotations

import gzip
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from ddplug.data import (
    NORMALISATION,
    available_datasets,
    default_data_root,
    download_dataset,
    from_tensors,
    from_torch_dataset,
    load_dataset,
)
from ddplug.data import datasets as datasets_module
from ddplug.errors import DdplugError

from helpers import idx_bytes

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _no_system_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's Debian copy and the user's DDPLUG_DATA out of the tests."""
    monkeypatch.setattr(datasets_module, "_DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.delenv("DDPLUG_DATA", raising=False)


# --- writers for each format -----------------------------------------------------------------


def write_idx_set(folder: Path, gz: bool) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([3, 0, 9, 3, 1], dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2, 0], dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content))


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# --- MNIST-style idx files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder", "gz"), [("fashion-mnist", "fashion-mnist", True), ("mnist", "mnist", False)]
)
def test_idx_files_give_exact_normalised_pixels(tmp_path: Path, name: str, folder: str, gz: bool) -> None:
    arrays = write_idx_set(tmp_path / folder, gz)
    splits = load_dataset(name, tmp_path)
    (mean,), (std,) = NORMALISATION[name]
    for split, prefix in ((splits.train, "train"), (splits.test, "t10k")):
        raw = arrays[f"{prefix}-images-idx3-ubyte"]
        assert split.images.shape == (len(raw), 1, 28, 28)
        assert split.images.dtype == torch.float32
        expected = (torch.from_numpy(raw).float()[:, None] / 255 - mean) / std
        torch.testing.assert_close(split.images, expected, rtol=0, atol=1e-6)
        assert split.labels.dtype == torch.int64
        assert split.labels.tolist() == arrays[f"{prefix}-labels-idx1-ubyte"].tolist()
        assert split.num_classes == 10
        assert split.mean == (mean,) and split.std == (std,)
        assert split.name == name
        assert split.in_channels == 1 and split.image_size == (28, 28)
    assert splits.train.class_counts().tolist() == [1, 1, 0, 2, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize(("name", "folder"), [("fashion-mnist", "FashionMNIST/raw"), ("mnist", "MNIST/raw")])
def test_torchvision_layout_is_found(tmp_path: Path, name: str, folder: str) -> None:
    arrays = write_idx_set(tmp_path / folder, gz=False)
    splits = load_dataset(name, tmp_path)
    assert splits.train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert len(splits.test) == 3


def test_own_folder_is_searched_before_torchvision_layout(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    own = write_idx_set(tmp_path / "mnist", gz=True)
    images = load_dataset("mnist", tmp_path).train.images
    expected = (torch.from_numpy(own["train-images-idx3-ubyte"]).float()[:, None] / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)


def test_truncated_idx_file_names_the_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "mnist", gz=False)
    broken = tmp_path / "mnist" / "train-images-idx3-ubyte"
    broken.write_bytes(broken.read_bytes()[:-100])
    with pytest.raises(DdplugError, match=r"train-images-idx3-ubyte.*corrupt.*found 3820"):
        load_dataset("mnist", tmp_path)


def test_truncated_gzip_and_bad_magic_name_the_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "mnist", gz=True)
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:15])
    with pytest.raises(DdplugError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_dataset("mnist", tmp_path)
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    with pytest.raises(DdplugError, match="t10k-labels-idx1-ubyte.gz .*bad magic number"):
        load_dataset("mnist", tmp_path)


def test_label_count_mismatch_is_reported(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2], dtype=np.uint8)))
    with pytest.raises(DdplugError, match="train-labels-idx1-ubyte.*2 labels for the 5 images"):
        load_dataset("mnist", tmp_path)


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_is_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets_module, "_DEBIAN_FASHION_MNIST", DEBIAN)
    (tmp_path / "empty").mkdir()  # a data root without the files: the system's copy is among the places looked
    splits = load_dataset("FashionMNIST", tmp_path / "empty")
    assert splits.train.images.shape == (60000, 1, 28, 28)
    assert len(splits.test) == 10000
    assert splits.train.class_counts().tolist() == [6000] * 10
    assert splits.train.class_names[0] == "T-shirt/top"
    # The published constants are this set's statistics, so normalised pixels are ~N(0, 1).
    assert abs(float(splits.train.images.mean())) < 1e-3
    assert abs(float(splits.train.images.std()) - 1) < 1e-3
    assert list((tmp_path / "empty").iterdir()) == []  # read in place: nothing copied


# --- CIFAR -----------------------------------------------------------------------------------


def test_cifar10_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    rows = RNG.integers(0, 256, (12, 3072), dtype=np.uint8)
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    for i in range(5):
        batch = {"data": rows[2 * i : 2 * i + 2], "labels": labels[2 * i : 2 * i + 2]}
        write_pickle(folder / f"data_batch_{i + 1}", batch)
    # Byte keys, as the real Python 2 pickles decode.
    write_pickle(folder / "test_batch", {b"data": rows[10:], b"labels": [9, 4], b"batch_label": b"test"})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(folder / "batches.meta", {"label_names": names})
    splits = load_dataset("CIFAR-10", tmp_path)
    assert splits.train.images.shape == (10, 3, 32, 32)
    assert splits.test.images.shape == (2, 3, 32, 32)
    assert splits.train.labels.tolist() == labels
    assert splits.test.labels.tolist() == [9, 4]
    assert splits.train.class_names == names
    assert splits.train.num_classes == 10
    mean, std = NORMALISATION["cifar10"]
    # Row layout: the red plane, the green plane, then the blue plane, each row-major.
    for channel, (row, col) in [(0, (0, 0)), (1, (5, 7)), (2, (31, 31))]:
        raw = rows[3, channel * 1024 + row * 32 + col]
        expected = (raw / 255 - mean[channel]) / std[channel]
        assert float(splits.train.images[3, channel, row, col]) == pytest.approx(expected, abs=1e-6)


def test_cifar100_fine_labels_and_names(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    rows = RNG.integers(0, 256, (5, 3072), dtype=np.uint8)
    write_pickle(folder / "train", {"data": rows[:3], "fine_labels": [99, 0, 42], "coarse_labels": [1, 2, 3]})
    write_pickle(folder / "test", {"data": rows[3:], "fine_labels": [5, 6], "coarse_labels": [0, 0]})
    names = [f"class{i}" for i in range(100)]
    write_pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20})
    splits = load_dataset("cifar100", tmp_path)
    assert splits.train.images.shape == (3, 3, 32, 32)
    assert splits.train.labels.tolist() == [99, 0, 42]
    assert splits.test.labels.tolist() == [5, 6]
    assert splits.train.num_classes == 100
    assert splits.train.class_names == names
    assert splits.train.mean == NORMALISATION["cifar100"][0]


def test_corrupt_cifar_pickle_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_pickle(folder / "train", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]})
    (folder / "test").write_bytes(b"not a pickle at all")
    with pytest.raises(DdplugError, match="cifar-100-python/test is corrupt"):
        load_dataset("cifar100", tmp_path)


class _RunsCode:
    """Unpickles by calling os.system: what a crafted dataset file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_crafted_cifar_batch_is_refused_without_running_its_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "pwned"
    rows = np.zeros((2, 3072), np.uint8)
    for i in range(2, 6):
        write_pickle(folder / f"data_batch_{i}", {"data": rows, "labels": [0, 1]})
    write_pickle(folder / "test_batch", {"data": rows, "labels": [0, 1]})
    write_pickle(folder / "data_batch_1", {"data": rows, "labels": [0, 1], "extra": _RunsCode(marker)})
    with pytest.raises(DdplugError, match=r"refused to read .*data_batch_1: it asks for posix\.system, which is not data"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


# --- SVHN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", ["svhn", ""])
def test_svhn_mat_files(tmp_path: Path, subfolder: str) -> None:
    folder = tmp_path / subfolder
    folder.mkdir(exist_ok=True)
    train_x = RNG.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    scipy.io.savemat(folder / "train_32x32.mat", {"X": train_x, "y": np.array([[10], [1], [9], [10]], np.uint8)})
    test_x = RNG.integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)
    scipy.io.savemat(folder / "test_32x32.mat", {"X": test_x, "y": np.array([[3], [10]], np.uint8)})
    splits = load_dataset("SVHN", tmp_path)
    assert splits.train.images.shape == (4, 3, 32, 32)
    assert splits.train.labels.tolist() == [0, 1, 9, 0]
    assert splits.test.labels.tolist() == [3, 0]
    mean, std = NORMALISATION["svhn"]
    # X is (H, W, C, N): image 2, row 4, column 6, green.
    expected = (train_x[4, 6, 1, 2] / 255 - mean[1]) / std[1]
    assert float(splits.train.images[2, 1, 4, 6]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_corrupt_svhn_mat_names_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "train_32x32.mat").write_bytes(content)
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": [[1]]})
    with pytest.raises(DdplugError, match="train_32x32.mat is corrupt"):
        load_dataset("svhn", tmp_path)


# --- image folders ---------------------------------------------------------------------------


def test_image_folder_with_val_classes(tmp_path: Path) -> None:
    root = tmp_path / "flowers"
    pictures = {path: RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8) for path in [
        "train/rose/a.png", "train/rose/nested/b.png", "train/daisy/c.png", "val/daisy/d.png", "val/rose/e.png",
    ]}
    for path, pixels in pictures.items():
        write_png(root / path, pixels)
    (root / "train" / "rose" / "notes.txt").write_text("not an image")
    splits = load_dataset(f"imagefolder:{root}")
    assert splits.train.class_names == ["daisy", "rose"]
    assert splits.train.num_classes == 2
    assert splits.train.images.shape == (3, 3, 6, 5)
    assert splits.train.labels.tolist() == [0, 1, 1]
    assert splits.test.labels.tolist() == [0, 1]
    assert splits.train.name == f"imagefolder:{root}"
    train_order = ["train/daisy/c.png", "train/rose/a.png", "train/rose/nested/b.png"]
    raw = torch.stack([torch.from_numpy(pictures[p]).permute(2, 0, 1).float() / 255 for p in train_order])
    expected_mean = raw.mean(dim=(0, 2, 3))
    expected_std = raw.std(dim=(0, 2, 3), unbiased=False)
    assert splits.train.mean == pytest.approx(expected_mean.tolist(), abs=1e-6)
    assert splits.test.std == pytest.approx(expected_std.tolist(), abs=1e-6)
    torch.testing.assert_close(splits.train.denormalise(splits.train.images), raw, rtol=0, atol=1e-6)


def test_image_folder_keeps_greyscale_and_uses_test(tmp_path: Path) -> None:
    for path in ["train/a/1.png", "train/b/2.png", "test/b/3.png"]:
        write_png(tmp_path / path, RNG.integers(0, 256, (4, 4), dtype=np.uint8))
    splits = load_dataset(f"ImageFolder:{tmp_path}")
    assert splits.train.images.shape == (2, 1, 4, 4)
    assert splits.test.labels.tolist() == [1]


def test_image_folder_mixed_modes_become_rgb(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    write_png(tmp_path / "train/a/1.png", grey)
    write_png(tmp_path / "train/b/2.png", RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    write_png(tmp_path / "val/a/3.png", grey)
    splits = load_dataset(f"imagefolder:{tmp_path}")
    assert splits.train.in_channels == 3
    pixels = splits.test.denormalise(splits.test.images[0]) * 255
    for channel in range(3):
        torch.testing.assert_close(pixels[channel], torch.from_numpy(grey).float(), rtol=0, atol=1e-3)


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    for wnid in ["n02", "n01"]:
        for i in range(2):
            path = tmp_path / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, format="JPEG")
        (tmp_path / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    images = tmp_path / "val" / "images"
    images.mkdir(parents=True)
    annotations = []
    for i, wnid in enumerate(["n02", "n01", "n02"]):
        Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"val_{i}.JPEG", format="JPEG")
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t7\t7")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    splits = load_dataset(f"imagefolder:{tmp_path}")
    assert splits.train.class_names == ["n01", "n02"]
    assert splits.train.images.shape == (4, 3, 8, 8)
    assert splits.train.labels.tolist() == [0, 0, 1, 1]
    assert splits.test.labels.tolist() == [1, 0, 1]


def test_image_folder_sizes_must_match(tmp_path: Path) -> None:
    write_png(tmp_path / "train/a/1.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "train/b/2.png", np.zeros((4, 6), np.uint8))
    write_png(tmp_path / "val/a/3.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DdplugError, match=r"differ in size.*2\.png is 6x4.*resize"):
        load_dataset(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ([], "does not exist"),
        (["val/a/1.png"], "no train/ folder"),
        (["train/a/1.png"], "neither val/ nor test/"),
        (["train/a/1.png", "train/b/x.txt", "val/a/2.png"], "without images: b"),
        (["train/a/1.png", "val/zebra/2.png"], "zebra is a class that train/ does not have"),
    ],
)
def test_image_folder_layout_errors(tmp_path: Path, layout: list[str], message: str) -> None:
    root = tmp_path / "folder"
    for path in layout:
        if path.endswith(".png"):
            write_png(root / path, np.zeros((2, 2), np.uint8))
        else:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text("x")
    with pytest.raises(DdplugError, match=message):
        load_dataset(f"imagefolder:{root}")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    write_png(tmp_path / "train/a/1.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "val/a").mkdir(parents=True)
    (tmp_path / "val/a/broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DdplugError, match="broken.png is corrupt"):
        load_dataset(f"imagefolder:{tmp_path}")


# --- in-memory sources -----------------------------------------------------------------------


def test_from_tensors_uint8_nhwc() -> None:
    train_x = RNG.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    test_x = RNG.integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    splits = from_tensors(torch.from_numpy(train_x), torch.tensor([0, 1, 2, 0, 1, 2]), test_x, [2, 0])
    assert splits.train.images.shape == (6, 3, 5, 4)
    assert splits.train.images.is_contiguous()
    assert splits.train.num_classes == 3
    assert splits.train.name == "tensors"
    assert splits.train.class_names is None
    unit = torch.from_numpy(train_x).permute(0, 3, 1, 2).double() / 255
    mean, std = unit.mean(dim=(0, 2, 3)), unit.std(dim=(0, 2, 3), unbiased=False)
    assert splits.train.mean == pytest.approx(mean.tolist(), abs=1e-6)
    assert splits.train.std == pytest.approx(std.tolist(), abs=1e-6)
    expected = (unit - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(splits.train.images, expected.float(), rtol=0, atol=1e-5)
    # Normalised train images have zero mean and unit std per channel.
    torch.testing.assert_close(splits.train.images.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)


def test_from_tensors_float_nchw_with_given_stats() -> None:
    train_x = torch.rand(4, 1, 3, 3)
    original = train_x.clone()
    splits = from_tensors(train_x, [0, 1, 0, 1], torch.rand(2, 1, 3, 3), [1, 1], num_classes=5, mean=0.5, std=[0.25])
    torch.testing.assert_close(splits.train.images, (original - 0.5) / 0.25)
    torch.testing.assert_close(train_x, original)  # the caller's tensor is not normalised in place
    assert splits.test.num_classes == 5
    assert splits.train.class_counts().tolist() == [2, 2, 0, 0, 0]
    assert splits.train.mean == (0.5,) and splits.train.std == (0.25,)


def test_from_tensors_constant_images_do_not_divide_by_zero() -> None:
    splits = from_tensors(torch.zeros(2, 4, 4, dtype=torch.uint8), [0, 1], torch.zeros(1, 4, 4, dtype=torch.uint8), [0])
    assert splits.train.std == (1.0,)
    assert torch.equal(splits.train.images, torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_x": torch.rand(3, 1, 4, 4) * 2}, r"float images must lie in \[0, 1\]"),
        ({"train_y": [0, 1]}, "3 images but 2 labels"),
        ({"train_y": [0.0, 1.0, 2.0]}, "pass integer class ids"),
        ({"test_x": torch.rand(2, 1, 5, 5)}, "same channels and size"),
        ({"num_classes": 2}, r"labels must lie in \[0, 2\)"),
        ({"std": [0.1, 0.2]}, "std has 2 values but the images have 1 channels"),
        ({"train_x": torch.rand(3, 16)}, "expected \\(N, H, W\\)"),
        ({"train_x": torch.zeros(3, 1, 4, 4, dtype=torch.int32)}, "pass uint8 pixels or floats"),
    ],
)
def test_from_tensors_rejects_bad_input(kwargs: dict, message: str) -> None:
    args = {"train_x": torch.rand(3, 1, 4, 4), "train_y": [0, 1, 2], "test_x": torch.rand(2, 1, 4, 4), "test_y": [0, 1]}
    with pytest.raises(DdplugError, match=message):
        from_tensors(**{**args, **kwargs})


def test_from_torch_dataset_matches_from_tensors() -> None:
    train_x, test_x = torch.rand(5, 3, 4, 4), torch.rand(2, 3, 4, 4)
    train_y, test_y = torch.tensor([1, 0, 1, 2, 2]), torch.tensor([0, 2])
    splits = from_torch_dataset(TensorDataset(train_x, train_y), TensorDataset(test_x, test_y), name="toy")
    reference = from_tensors(train_x, train_y, test_x, test_y, name="toy")
    torch.testing.assert_close(splits.train.images, reference.train.images)
    torch.testing.assert_close(splits.test.images, reference.test.images)
    assert splits.train.labels.tolist() == [1, 0, 1, 2, 2]
    assert splits.train.num_classes == 3 and splits.train.name == "toy"


class PilDataset(Dataset):
    def __init__(self, images: list[Image.Image], labels: list[int]) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.images[index], self.labels[index]


def test_from_torch_dataset_with_pil_images() -> None:
    pixels = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    train = PilDataset([Image.fromarray(p) for p in pixels[:2]], [0, 1])
    test = PilDataset([Image.fromarray(pixels[2])], [1])
    splits = from_torch_dataset(train, test, name="pil", mean=0.0, std=1.0)
    assert splits.train.images.shape == (2, 1, 4, 4)
    torch.testing.assert_close(splits.test.images[0, 0], torch.from_numpy(pixels[2]).float() / 255)


def test_from_torch_dataset_rejects_mixed_sizes() -> None:
    train = TensorDataset(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    test = PilDataset([Image.new("L", (4, 4)), Image.new("L", (5, 4))], [0, 1])
    with pytest.raises(DdplugError, match="test images differ in shape.*Resize"):
        from_torch_dataset(train, test, name="bad")


def test_class_indices_subset_and_denormalise() -> None:
    x = torch.rand(7, 2, 4, 4)
    splits = from_tensors(x, [2, 0, 2, 1, 0, 2, 0], x[:1], [0], num_classes=4, mean=[0.5, 0.25], std=[0.5, 2.0])
    train = splits.train
    indices = train.class_indices()
    assert [i.tolist() for i in indices] == [[1, 4, 6], [3], [0, 2, 5], []]
    assert train.class_counts().tolist() == [3, 1, 3, 0]
    assert train.class_counts().dtype == torch.int64
    part = train.subset(indices[2])
    assert len(part) == 3 and part.labels.tolist() == [2, 2, 2]
    torch.testing.assert_close(part.images, train.images[[0, 2, 5]])
    assert part.num_classes == 4 and part.mean == train.mean and part.name == train.name
    torch.testing.assert_close(train.denormalise(train.images), x)
    torch.testing.assert_close(train.denormalise(train.images[3]), x[3])
    assert train.denormalise(train.images.double()).dtype == torch.float64


# --- names, roots, errors --------------------------------------------------------------------


def test_missing_dataset_lists_every_place_looked(tmp_path: Path) -> None:
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DdplugError) as info:
        load_dataset("fmnist", tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'fashion-mnist'} (missing train-labels-idx1-ubyte[.gz]" in message
    assert f"{tmp_path / 'FashionMNIST' / 'raw'} (no such folder)" in message
    assert str(tmp_path / "no-debian") in message
    assert f"ddplug download fashion-mnist --data-root {tmp_path}" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "DDPLUG_DATA" in message


def test_missing_cifar_points_to_download(tmp_path: Path) -> None:
    with pytest.raises(DdplugError, match=f"cifar10 not found; looked in: {tmp_path / 'cifar-10-batches-py'}"):
        load_dataset("cifar10", tmp_path)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DdplugError, match="unknown dataset 'imagenet-1k'; available: fashion-mnist, mnist, cifar10"):
        load_dataset("imagenet-1k")
    assert available_datasets() == ["fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "digits", "imagefolder:PATH"]


@pytest.mark.parametrize("alias", ["FashionMNIST", "fmnist", "Fashion_MNIST", "fashion-mnist"])
def test_aliases_resolve(tmp_path: Path, alias: str) -> None:
    write_idx_set(tmp_path / "fashion-mnist", gz=True)
    assert load_dataset(alias, tmp_path).train.name == "fashion-mnist"


def test_ddplug_data_env_var_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_data_root() == Path.home() / ".cache" / "ddplug" / "data"
    monkeypatch.setenv("DDPLUG_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    write_idx_set(tmp_path / "mnist", gz=False)
    assert len(load_dataset("mnist").train) == 5


def test_download_without_network_gives_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DdplugError, match="could not download fashion-mnist.*name resolution.*network") as info:
        download_dataset("fmnist", tmp_path / "data")
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


def test_download_returns_the_folder_load_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def fake_mnist(root: str, download: bool) -> None:
        assert download
        write_idx_set(Path(root) / "MNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    assert download_dataset("MNIST", tmp_path) == tmp_path / "MNIST" / "raw"
    assert len(load_dataset("mnist", tmp_path).test) == 3


def test_download_unpacks_the_system_copy_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    arrays = write_idx_set(tmp_path / "debian", gz=True)
    monkeypatch.setattr(datasets_module, "_DEBIAN_FASHION_MNIST", tmp_path / "debian")
    real_fashion_mnist = torchvision.datasets.FashionMNIST

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded although the system's copy was there")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    root = tmp_path / "avalanche" / "fashionmnist"
    assert download_dataset("fashion-mnist", root) == root / "FashionMNIST" / "raw"
    # torchvision's own reader (what Avalanche's SplitFMNIST uses) finds the files, unzipped, with no download
    train = real_fashion_mnist(str(root), train=True, download=False)
    assert np.array_equal(train.data.numpy(), arrays["train-images-idx3-ubyte"])
    assert train.targets.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert real_fashion_mnist(str(root), train=False).targets.tolist() == [7, 2, 0]
    assert download_dataset("fashion-mnist", root) == root / "FashionMNIST" / "raw"  # a second call keeps them


@pytest.mark.parametrize("damage", ["not gzip", "gzip cut short", "fewer bytes than its header declares"])
def test_a_damaged_system_copy_is_one_error_before_anything_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    arrays = write_idx_set(tmp_path / "debian", gz=True)
    damaged = tmp_path / "debian" / "t10k-images-idx3-ubyte.gz"
    whole = idx_bytes(arrays["t10k-images-idx3-ubyte"])
    damaged.write_bytes({"not gzip": b"not gzip at all",
                         "gzip cut short": gzip.compress(whole)[:-40],
                         "fewer bytes than its header declares": gzip.compress(whole[:-28])}[damage])
    monkeypatch.setattr(datasets_module, "_DEBIAN_FASHION_MNIST", tmp_path / "debian")
    with pytest.raises(DdplugError, match=r"t10k-images-idx3-ubyte.gz is corrupt .*apt-get install --reinstall"):
        download_dataset("fashion-mnist", tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_an_unwritable_data_root_is_one_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "debian", gz=True)
    monkeypatch.setattr(datasets_module, "_DEBIAN_FASHION_MNIST", tmp_path / "debian")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(DdplugError, match=r"into .*a-file.*FashionMNIST.*can be written, or pass another --data-root"):
        download_dataset("fashion-mnist", tmp_path / "a-file")


def test_image_folders_cannot_be_downloaded(tmp_path: Path) -> None:
    with pytest.raises(DdplugError, match="image folders cannot be downloaded"):
        download_dataset(f"imagefolder:{tmp_path}")

