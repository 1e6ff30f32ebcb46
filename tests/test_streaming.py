"""Datasets that stay on disk: the same batches, sets and accuracies as in memory, a bounded
cache, the automatic choice, and bad files named before (or as) they are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

import ddplug
from ddplug.data import ZCA, StreamedImages, from_torch_dataset, load_dataset
from ddplug.data import datasets as datasets_module
from ddplug.data import zca as zca_module
from ddplug.errors import DdplugError
from ddplug.methods.sampling import ClassBalancedSampler
from ddplug.methods.selection import select_subset

from helpers import TINY_MODEL

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, SIDE = 3, 12, 4, 8


def write_folder(root: Path, *, grey: bool = False) -> Path:
    """A folder of small PNGs whose classes are brighter bands, so that a set can learn them."""
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (SIDE, SIDE) if grey else (SIDE, SIDE, 3), dtype=np.uint8)
                pixels[2 * label:2 * label + 2] += 150
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "bands")


def both(folder: Path) -> tuple[ddplug.DatasetSplits, ddplug.DatasetSplits]:
    return (load_dataset(f"imagefolder:{folder}", storage="memory"),
            load_dataset(f"imagefolder:{folder}", storage="disk"))


def test_a_streamed_folder_gives_the_batches_of_the_in_memory_one(folder: Path) -> None:
    memory, disk = both(folder)
    assert not memory.train.streamed and disk.train.streamed and disk.test.streamed
    assert isinstance(disk.train.images, StreamedImages)
    assert disk.train.mean == memory.train.mean and disk.train.std == memory.train.std
    assert disk.train.images.shape == memory.train.images.shape == (CLASSES * TRAIN_PER_CLASS, 3, SIDE, SIDE)
    assert torch.equal(disk.train.labels, memory.train.labels) and torch.equal(disk.test.labels, memory.test.labels)
    draws = [ClassBalancedSampler(split.train.labels, CLASSES).sample(5, torch.Generator().manual_seed(3))
             for split in (memory, disk)]
    assert torch.equal(*draws)
    index = draws[0]  # (classes, 5): the shape DM indexes with
    assert torch.equal(disk.train.images[index], memory.train.images[index])
    assert torch.equal(disk.train.images[7], memory.train.images[7])
    assert torch.equal(disk.train.images[2:9], memory.train.images[2:9])
    mask = memory.train.labels == 1
    assert torch.equal(disk.train.images[mask], memory.train.images[mask])
    assert torch.equal(torch.cat(list(disk.test.images.split(5))), memory.test.images)


def test_distillation_evaluation_and_selection_on_disk_equal_those_in_memory(folder: Path,
                                                                             tiny_preset: ddplug.Preset) -> None:
    memory, disk = both(folder)
    runs = [ddplug.distill(splits, "dm", ipc=2, preset=tiny_preset, iterations=4, baselines=("random",),
                           progress=False) for splits in (memory, disk)]
    assert torch.equal(runs[0].synthetic.images, runs[1].synthetic.images)
    assert runs[0].judgement.accuracies == runs[1].judgement.accuracies
    assert runs[0].judgement.baselines["random"].accuracies == runs[1].judgement.baselines["random"].accuracies
    network = ddplug.create_model(TINY_MODEL, in_channels=3, num_classes=CLASSES, image_size=(SIDE, SIDE), seed=0)
    picks = [select_subset("herding", splits.train, 3, feature_network=network) for splits in (memory, disk)]
    assert torch.equal(picks[0].images, picks[1].images)


def test_a_zca_of_streamed_images_is_fitted_on_a_sample_and_whitens_as_they_are_read(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory, disk = both(folder)
    whitened = ZCA.fit(disk.train, 0.1).whiten_dataset(disk.train)
    assert isinstance(whitened.images, StreamedImages)
    expected = ZCA.fit(memory.train, 0.1).whiten_dataset(memory.train).images
    torch.testing.assert_close(torch.cat(list(whitened.images.split(10))), expected, rtol=0, atol=1e-4)
    monkeypatch.setattr(zca_module, "STREAMED_FIT_IMAGES", 4)
    sample = memory.train.images[torch.linspace(0, len(memory.train) - 1, 4).long()]
    torch.testing.assert_close(ZCA.fit(disk.train, 0.1).whiten(memory.test.images),
                               ZCA(sample, 0.1).whiten(memory.test.images), rtol=0, atol=1e-5)


def test_the_cache_keeps_at_most_its_bytes_and_saves_rereading(folder: Path) -> None:
    disk = load_dataset(f"imagefolder:{folder}", storage="disk").train.images
    image_bytes = 3 * SIDE * SIDE  # uint8 pixels
    small = StreamedImages(disk.cache.reader, (0.0,) * 3, (1.0,) * 3, cache_bytes=5 * image_bytes, workers=2)
    small[torch.arange(20)]
    assert small.cache.decoded == 20 and len(small.cache.slots) == 5 and small.cache.bytes == 5 * image_bytes
    small[torch.arange(15, 20)]  # the last five read are kept
    assert small.cache.decoded == 20
    small[torch.tensor([0, 0, 1])]
    assert small.cache.decoded == 22  # each missing image once, however often it is asked for


def test_a_negative_cache_or_worker_count_is_refused_in_one_line(folder: Path) -> None:
    reader = load_dataset(f"imagefolder:{folder}", storage="disk").train.images.cache.reader
    for sizes in ({"cache_bytes": -1}, {"workers": -1}):
        with pytest.raises(DdplugError, match=r"must not be negative") as error:
            StreamedImages(reader, (0.0,) * 3, (1.0,) * 3, **sizes)
        assert "\n" not in str(error.value)


def test_storage_auto_streams_only_what_would_not_fit(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = CLASSES * (TRAIN_PER_CLASS + TEST_PER_CLASS) * 3 * SIDE * SIDE * 4
    monkeypatch.setattr(datasets_module, "available_bytes", lambda: 100 * decoded)
    assert not load_dataset(f"imagefolder:{folder}").train.streamed
    monkeypatch.setattr(datasets_module, "available_bytes", lambda: 2 * decoded)
    assert load_dataset(f"imagefolder:{folder}").train.streamed


def test_storages_that_cannot_be_are_refused_in_one_line(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DdplugError, match="unknown storage 'ssd'"):
        load_dataset(f"imagefolder:{folder}", storage="ssd")
    with pytest.raises(DdplugError, match="digits ships as packed arrays"):
        load_dataset("digits", storage="disk")
    monkeypatch.setattr("ddplug.memory.available_bytes", lambda: 1000)
    with pytest.raises(DdplugError, match="keep them on disk") as error:
        load_dataset(f"imagefolder:{folder}", storage="memory")
    assert "\n" not in str(error.value)


def test_an_unreadable_image_is_named_before_any_decoding(folder: Path) -> None:
    broken = folder / "train" / "class1" / "5.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DdplugError, match=r"class1/5\.png is corrupt") as error:
        load_dataset(f"imagefolder:{folder}", storage="disk")
    assert "\n" not in str(error.value)


def test_an_image_that_breaks_after_loading_is_named_when_read(folder: Path) -> None:
    reader = load_dataset(f"imagefolder:{folder}", storage="disk").train.images.cache.reader
    uncached = StreamedImages(reader, (0.0,) * 3, (1.0,) * 3, cache_bytes=0)
    damaged = reader.files[4]
    damaged.write_bytes(damaged.read_bytes()[:40])  # header intact, pixels cut off
    with pytest.raises(DdplugError, match=rf"{damaged.name} is corrupt") as error:
        uncached[torch.arange(10)]
    assert "\n" not in str(error.value)
    Image.fromarray(np.zeros((SIDE + 1, SIDE, 3), np.uint8)).save(damaged)
    with pytest.raises(DdplugError, match=r"is 8x9, not the 8x8"):
        uncached[torch.tensor([4])]


def test_a_greyscale_folder_streams_one_channel(tmp_path: Path) -> None:
    memory, disk = both(write_folder(tmp_path / "grey", grey=True))
    assert disk.train.images.shape == (CLASSES * TRAIN_PER_CLASS, 1, SIDE, SIDE)
    assert torch.equal(disk.train.images[torch.arange(6)], memory.train.images[:6])


class Items(Dataset):
    """A map-style dataset that counts its reads and has no ``targets``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels, self.reads = images, labels, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return self.images[index], int(self.labels[index])


def test_a_torch_dataset_streams_through_its_items(digits: ddplug.DatasetSplits) -> None:
    pixels = digits.train.denormalise(digits.train.images[:60]).clamp(0, 1)
    labels = digits.train.labels[:60]
    train, test = Items(pixels[:45], labels[:45]), TensorDataset(pixels[45:], labels[45:])
    memory = from_torch_dataset(train, test, name="toy", storage="memory")
    train.reads = 0
    disk = from_torch_dataset(train, test, name="toy", storage="disk")
    assert disk.train.streamed and disk.train.mean == memory.train.mean
    assert torch.equal(disk.train.labels, memory.train.labels) and torch.equal(disk.test.labels, memory.test.labels)
    index = torch.tensor([[3, 0], [44, 9]])
    assert torch.equal(disk.train.images[index], memory.train.images[index])
    assert torch.equal(torch.cat(list(disk.test.images.split(4))), memory.test.images)
    assert train.reads <= 2 * 45 + 4  # labels and statistics: one pass each, then only what was indexed


def test_a_torch_dataset_item_of_another_shape_is_named(digits: ddplug.DatasetSplits) -> None:
    images = [torch.rand(1, 8, 8) for _ in range(5)] + [torch.rand(1, 6, 6)]
    train = Items(images, torch.tensor([0, 1, 0, 1, 0, 1]))  # type: ignore[arg-type]
    with pytest.raises(DdplugError, match=r"dataset item 5 is \(1, 6, 6\).*Resize"):
        from_torch_dataset(train, TensorDataset(torch.rand(2, 1, 8, 8), torch.tensor([0, 1])), name="toy",
                           storage="disk")


def test_a_streamed_subset_of_classes_stays_on_disk(folder: Path) -> None:
    _, disk = both(folder)
    members = torch.nonzero(disk.train.labels != 0).flatten()
    local = disk.train.subset(members)
    assert local.streamed and len(local) == 2 * TRAIN_PER_CLASS
    assert torch.equal(local.images[torch.tensor([0])], disk.train.images[members[:1]])


def test_a_torch_dataset_that_mixes_pixels_and_floats_is_named_at_the_item() -> None:
    images = [torch.randint(0, 256, (1, 4, 4), dtype=torch.uint8) for _ in range(3)] + [torch.rand(1, 4, 4)]
    train = Items(images, torch.tensor([0, 1, 0, 1]))  # type: ignore[arg-type]
    with pytest.raises(DdplugError, match=r"dataset item 3 is torch.float32 but the first item is uint8"):
        from_torch_dataset(train, TensorDataset(torch.rand(2, 1, 4, 4), torch.tensor([0, 1])), name="toy",
                           storage="disk")
