import pickle

import pytest
import torch

from ddplug.errors import DdplugError
from ddplug.sets import SyntheticSet, load_set, save_grid, save_set


class FakeDataset:
    name = "fake"
    num_classes = 3
    mean = (0.5,)
    std = (0.25,)


def make_set(soft: bool = False, lr: float | None = None) -> SyntheticSet:
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.softmax(torch.randn(6, 3), 1) if soft else torch.tensor([0, 0, 1, 1, 2, 2])
    return SyntheticSet(images, labels, 3, (0.5,), (0.25,), lr=None if lr is None else torch.tensor(lr),
                        meta={"method": "dm", "dataset": "fake", "ipc": 2, "config": {"a": 1}})


def test_round_trip_keeps_everything(tmp_path):
    original = make_set(lr=0.02)
    path = save_set(original, tmp_path / "s.safetensors")
    loaded = load_set(path)
    assert torch.equal(loaded.images, original.images)
    assert torch.equal(loaded.labels, original.labels)
    assert loaded.lr.item() == pytest.approx(0.02)
    assert loaded.meta == original.meta
    assert (loaded.num_classes, loaded.mean, loaded.std, loaded.ipc) == (3, (0.5,), (0.25,), 2)


def test_folder_lookup_and_soft_labels(tmp_path):
    save_set(make_set(soft=True), tmp_path / "synthetic.safetensors")
    loaded = load_set(tmp_path)
    assert loaded.soft_labels and loaded.labels.shape == (6, 3)
    assert torch.equal(loaded.hard_labels, loaded.labels.argmax(1))


@pytest.mark.parametrize("encoding,tolerance", [("float16", 1e-2), ("uint8", 0.5 / 255 / 0.25 + 1e-6)])
def test_compact_encodings(tmp_path, encoding, tolerance):
    original = make_set()
    original.images = original.images.clamp(-2, 2)  # pixels (x * 0.25 + 0.5) stay in [0, 1] for uint8
    path = save_set(original, tmp_path / f"{encoding}.safetensors", encoding=encoding)
    loaded = load_set(path)
    assert loaded.images.dtype == torch.float32
    assert (loaded.images - original.images).abs().max() <= tolerance
    assert path.stat().st_size < save_set(original, tmp_path / "f32.safetensors").stat().st_size


def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"data": [[torch.zeros(1, 1, 8, 8), torch.zeros(1)]], "x": Exploit()}, path)
    assert not marker.exists()  # pickling only records the call
    with pytest.raises(DdplugError, match="refused"):
        load_set(path, dataset=FakeDataset())
    assert not marker.exists()  # and loading did not make it


def test_plain_pickle_file_is_not_loaded(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DdplugError):
        load_set(path, dataset=FakeDataset())


def test_dc_format(tmp_path):
    images = torch.randn(6, 1, 8, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    path = tmp_path / "res_DC_fake_ConvNet_2ipc.pt"
    torch.save({"data": [[images, labels], [images + 1, labels]], "accs_all_exps": {}}, path)
    loaded = load_set(path, dataset=FakeDataset(), experiment=1)
    assert torch.equal(loaded.images, images + 1)
    assert loaded.num_classes == 3 and loaded.mean == (0.5,)
    with pytest.raises(DdplugError, match="dataset"):
        load_set(path)
    with pytest.raises(DdplugError, match="experiment 5"):
        load_set(path, dataset=FakeDataset(), experiment=5)


def test_mtt_format_with_learned_lr(tmp_path):
    torch.save(torch.randn(3, 1, 8, 8), tmp_path / "images_best.pt")
    torch.save(torch.tensor([0, 1, 2]), tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.03), tmp_path / "lr_best.pt")
    loaded = load_set(tmp_path, dataset=FakeDataset())
    assert loaded.lr.item() == pytest.approx(0.03)
    assert loaded.labels.tolist() == [0, 1, 2]


def test_mtt_without_labels_and_bad_labels(tmp_path):
    torch.save(torch.randn(3, 1, 8, 8), tmp_path / "images_best.pt")
    with pytest.raises(DdplugError, match="labels"):
        load_set(tmp_path / "images_best.pt", dataset=FakeDataset())
    torch.save(torch.tensor([0, 1, 7]), tmp_path / "labels_best.pt")
    with pytest.raises(DdplugError, match="outside"):
        load_set(tmp_path, dataset=FakeDataset())


def test_not_a_set_and_missing_and_corrupt(tmp_path):
    with pytest.raises(DdplugError, match="does not exist"):
        load_set(tmp_path / "nope.safetensors")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "model.pt")
    with pytest.raises(DdplugError, match="not a synthetic set"):
        load_set(tmp_path / "model.pt", dataset=FakeDataset())
    good = save_set(make_set(), tmp_path / "good.safetensors")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DdplugError, match="truncated or corrupt"):
        load_set(truncated)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DdplugError, match="holds no synthetic set"):
        load_set(tmp_path / "empty")


def test_failed_save_keeps_previous_file(tmp_path):
    path = save_set(make_set(), tmp_path / "s.safetensors")
    before = path.read_bytes()
    with pytest.raises(DdplugError):
        save_set(make_set(), path, encoding="int4")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temp files left


def test_grid_has_one_row_per_class(tmp_path):
    from PIL import Image

    path = save_grid(make_set(), tmp_path / "grid.png")
    width, height = Image.open(path).size
    # 3 rows and 2 columns of 8-px tiles with 1-px padding
    assert (width, height) == (2 * 9 + 1, 3 * 9 + 1)


def test_invalid_sets_are_rejected():
    with pytest.raises(DdplugError, match="labels"):
        SyntheticSet(torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.long), 2, (0.0,), (1.0,))
    with pytest.raises(DdplugError, match="mean/std"):
        SyntheticSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), 2, (0.0,), (1.0,))


# --- sets that would train to nothing are refused on load ----------------------------------


def _rewritten(tmp_path, tensors=None, metadata=None, drop=(), name="bad.safetensors"):
    """A copy of a good ddplug set file with some tensors or header entries replaced or dropped."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = save_set(make_set(lr=0.02), tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as handle:
        header = dict(handle.metadata())
    content = {**load_file(str(good)), **(tensors or {})}
    header.update(metadata or {})
    for key in drop:
        content.pop(key, None)
        header.pop(key, None)
    save_file(content, str(tmp_path / name), metadata=header)
    return tmp_path / name


@pytest.mark.parametrize(("change", "reason"), [
    ({"tensors": {"images": torch.full((6, 1, 8, 8), float("nan"))}}, "384 of its 384 image values are NaN or infinite"),
    ({"tensors": {"images": torch.zeros(6, 1, 8, 8).index_fill_(0, torch.tensor([3]), float("inf"))}},
     "64 of its 384 image values are NaN or infinite"),
    ({"tensors": {"labels": -torch.softmax(torch.randn(6, 3), 1)}}, "soft labels hold negative"),
    ({"tensors": {"labels": 5 * torch.softmax(torch.randn(6, 3), 1)}}, "soft labels do not sum to 1"),
    ({"tensors": {"lr": torch.tensor([float("nan")])}}, "learned lr nan is not within"),
    ({"tensors": {"lr": torch.tensor([-0.01])}}, "learned lr -0.01 is not within"),
    ({"tensors": {"labels": torch.tensor([0, 0, 1, 1, 2, 7])}}, r"labels range over 0\.\.7, outside the classes 0\.\.2"),
    ({"tensors": {"labels": torch.tensor([0, 0, 1, 1, 2, -1])}}, r"labels range over -1\.\.2"),
    ({"tensors": {"labels": torch.tensor([0.0, 0, 1, 1, 2, 2])}}, "labels are torch.float32 class ids"),
    ({"drop": ["images"]}, "a set needs images and labels"),
    ({"drop": ["mean"]}, "metadata is missing or broken .*KeyError: 'mean'"),
    ({"metadata": {"meta": "{broken"}}, "metadata is missing or broken .*JSONDecodeError"),
    ({"metadata": {"std": "[0.0]"}}, "metadata is missing or broken .*std positive"),
    ({"metadata": {"num_classes": "three"}}, "metadata is missing or broken .*ValueError"),
    ({"metadata": {"meta": '{"dataset": ["fake"]}'}}, r"its metadata dataset is \['fake'\], not a str"),
    ({"metadata": {"meta": '{"method": ["dm"]}'}}, r"its metadata method is \['dm'\], not a str"),
    ({"metadata": {"meta": '{"ipc": "ten"}'}}, "its metadata ipc is 'ten', not a int"),
    ({"metadata": {"meta": '{"ipc": 0}'}}, "its metadata ipc is 0, out of range"),
    ({"metadata": {"meta": '{"zca_epsilon": "abc"}'}}, "its metadata zca_epsilon is 'abc', not a int or float"),
    ({"metadata": {"meta": '{"zca_epsilon": -1}'}}, "its metadata zca_epsilon is -1, out of range"),
    ({"tensors": {"images": torch.full((6, 1, 8, 8), 1e30)}}, r"pixels range over 2\.5e\+29\.\.2\.5e\+29"),
    ({"tensors": {"images": torch.full((6, 1, 8, 8), 65504.0, dtype=torch.float16)},
      "metadata": {"image_encoding": "float16"}}, "pixels range over 1\\.638e\\+04"),
    ({"tensors": {"lr": torch.tensor([1e30])}}, r"learned lr 1e\+30 is not within \(0, 1\]"),
])
def test_sets_that_cannot_be_trained_on_are_refused_on_load(tmp_path, change, reason):
    path = _rewritten(tmp_path, **change)
    with pytest.raises(DdplugError, match=reason) as refused:
        load_set(path)
    assert str(refused.value).startswith(str(path))
    assert len(str(refused.value).splitlines()) == 1


def test_labels_of_another_integer_width_load_as_class_ids(tmp_path):
    path = _rewritten(tmp_path, tensors={"labels": torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.int32)})
    assert load_set(path).labels.dtype == torch.int64
    with pytest.raises(DdplugError, match="hard labels must be int64"):
        SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1], dtype=torch.int32), 3, (0.5,), (0.25,)).check()


def test_a_set_that_claims_to_be_the_whole_dataset_is_not_judged_as_one(tmp_path, capsys):
    from ddplug import cli

    path = _rewritten(tmp_path, metadata={"meta": '{"method": "full", "dataset": "fashion-mnist"}'})
    assert cli.main(["evaluate", str(path), "--quiet"]) == cli.EXIT_USER_ERROR
    assert "says it is method 'full', the whole dataset" in capsys.readouterr().err


def test_an_mtt_lr_file_of_two_values_is_refused(tmp_path):
    torch.save(torch.randn(4, 1, 8, 8), tmp_path / "images_best.pt")
    torch.save(torch.tensor([0, 1, 2, 0]), tmp_path / "labels_best.pt")
    torch.save(torch.tensor([0.01, 0.02]), tmp_path / "lr_best.pt")
    with pytest.raises(DdplugError, match=r"lr_best.pt should hold one learned learning rate, got \(2,\)"):
        load_set(tmp_path / "images_best.pt", dataset=FakeDataset)


def test_evaluate_refuses_a_nan_set_before_training(tmp_path, capsys):
    from ddplug import cli

    path = _rewritten(tmp_path, tensors={"images": torch.full((6, 1, 8, 8), float("nan"))})
    assert cli.main(["evaluate", str(path), "--quiet"]) == cli.EXIT_USER_ERROR
    assert "cannot be trained on: 384 of its 384 image values are NaN" in capsys.readouterr().err


def test_set_limits_bound_pixels_and_lr():
    from ddplug.sets import SetLimits

    limits = SetLimits(pixel_range=(-1.0, 2.0), lr_range=(1e-5, 1.0))
    make_set(lr=0.02).check()
    small = make_set(lr=0.02)
    small.images = small.images.clamp(-2, 2)  # pixels 0..1
    small.check(limits)
    for images, lr, reason in [(small.images * 1e30, 0.02, "pixels range over"),
                               (small.images, 1e6, "learned lr 1e\\+06 is not within \\(1e-05, 1\\]"),
                               (small.images, 1e-30, "learned lr 1e-30 is not within")]:
        bad = SyntheticSet(images, small.labels, 3, (0.5,), (0.25,), lr=torch.tensor(lr))
        with pytest.raises(DdplugError, match=reason):
            bad.check(limits)


# --- files of the original code ------------------------------------------------------------


def _dc_result(path, numpy_core="numpy._core"):
    """A result file as the original DC/DSA/DM code writes it: the sets and its recorded
    accuracies as numpy float64 (``numpy_core``: the module name the numpy of its day used)."""
    import io
    import zipfile

    import numpy as np

    buffer = io.BytesIO()
    torch.save({"data": [[torch.zeros(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2])]],
                "accs_all_exps": {"DM": [np.float64(0.51), np.float64(0.49)]}, "curve": np.arange(3.0)}, buffer)
    if numpy_core != "numpy._core":  # rename the module in the pickle's GLOBAL opcodes (protocol 2: text)
        with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as target:
            for item in source.infolist():
                data = source.read(item)
                if item.filename.endswith("data.pkl"):
                    data = data.replace(b"numpy._core.multiarray", numpy_core.encode() + b".multiarray")
                target.writestr(item, data)
    else:
        path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("numpy_core", ["numpy._core", "numpy.core"])
def test_result_files_of_the_original_code_load_with_their_numpy_accuracies(tmp_path, numpy_core):
    loaded = load_set(_dc_result(tmp_path / "res_DM_fake_ConvNet_2ipc.pt", numpy_core), dataset=FakeDataset())
    assert loaded.images.shape == (6, 1, 8, 8) and loaded.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_random_bytes_are_called_unreadable_not_code(tmp_path):
    import random

    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(0).randbytes(2000))
    with pytest.raises(DdplugError, match="cannot read .*not a torch file") as refused:
        load_set(path, dataset=FakeDataset())
    assert "\x1b" not in str(refused.value) and "code" not in str(refused.value)
