import dataclasses

import pytest
import torch

from ddplug.methods import select_subset
from ddplug.errors import DdplugError
from ddplug.evaluation.evaluator import Evaluator
from ddplug.evaluation.published import published_result
from ddplug.evaluation.training import TrainSettings, classification_accuracy, train_classifier
from ddplug.models import create_model
from ddplug.methods import get_condenser
from ddplug.pipeline import judge, write_judgement
from ddplug.presets import get_preset
from ddplug.sets import SyntheticSet


def test_evaluator_is_reproducible_with_a_seed(digits, tiny_preset):
    subset = select_subset("random", digits.train, 5, seed=0)
    evaluator = Evaluator(digits, tiny_preset.evaluation, progress=False)
    first = evaluator.evaluate(subset, seed=3)
    second = evaluator.evaluate(subset, seed=3)
    other = evaluator.evaluate(subset, seed=4)
    assert first.accuracies == second.accuracies
    assert first.accuracies != other.accuracies
    assert len(first.accuracies) == 2 and all(0 <= a <= 1 for a in first.accuracies)
    assert first.std == pytest.approx(abs(first.accuracies[0] - first.accuracies[1]) / 2)


def test_training_learns_the_digits(digits):
    network = create_model("convnet:width=8,depth=2", in_channels=1, num_classes=10, image_size=(8, 8), seed=0)
    untrained = classification_accuracy(network, digits.test.images, digits.test.labels)
    train_classifier(network, digits.train.images, digits.train.labels, TrainSettings(epochs=20, batch_size=64),
                     generator=torch.Generator().manual_seed(0))
    trained = classification_accuracy(network, digits.test.images, digits.test.labels)
    assert untrained < 0.3 and trained > 0.85
    assert classification_accuracy(network, digits.test.images, digits.test.labels, batch_size=7) == trained


def test_the_evaluator_shows_each_networks_epochs_only_with_progress(digits, tiny_preset, capsys):
    subset = select_subset("random", digits.train, 2, seed=0)
    Evaluator(digits, tiny_preset.evaluation, progress=False).evaluate(subset)
    assert capsys.readouterr().err == ""
    Evaluator(digits, tiny_preset.evaluation, progress=True).evaluate(subset)
    shown = capsys.readouterr().err
    assert "train:" in shown and f"/{tiny_preset.evaluation.epochs} [" in shown and "epoch/s" in shown


def test_the_evaluator_tests_in_its_protocols_batch_size(digits, tiny_preset, monkeypatch):
    import ddplug.evaluation.evaluator as evaluator_module

    sizes = []
    monkeypatch.setattr(evaluator_module, "classification_accuracy",
                        lambda model, images, labels, batch_size: sizes.append(batch_size) or 0.5)
    protocol = dataclasses.replace(tiny_preset.evaluation, batch_size=48)
    Evaluator(digits, protocol, progress=False).evaluate(select_subset("random", digits.train, 2, seed=0))
    assert sizes == [48] * protocol.num_models


def test_soft_labels_and_learned_lr_are_used(digits, tiny_preset):
    subset = select_subset("random", digits.train, 5, seed=0)
    evaluator = Evaluator(digits, tiny_preset.evaluation, progress=False)
    hard = evaluator.evaluate(subset, seed=0).accuracies
    soft = dataclasses.replace(subset, labels=torch.nn.functional.one_hot(subset.labels, 10).float())
    assert evaluator.evaluate(soft, seed=0).accuracies == pytest.approx(hard, abs=1e-9)  # one-hot == hard
    frozen = dataclasses.replace(subset, lr=torch.tensor(0.0))
    result = evaluator.evaluate(frozen, seed=0)
    assert max(result.accuracies) < 0.3  # lr 0 leaves the networks untrained


def test_incompatible_set_is_rejected(digits, tiny_preset):
    wrong = SyntheticSet(torch.zeros(10, 3, 8, 8), torch.arange(10), 10, (0, 0, 0), (1, 1, 1))
    with pytest.raises(DdplugError, match="--dataset"):
        Evaluator(digits, tiny_preset.evaluation, progress=False).evaluate(wrong)


def test_published_numbers():
    dm = published_result("dm", "cifar10", 10)
    assert dm.accuracy == 48.9 and dm.confirmed and "Distribution Matching" in dm.source
    assert published_result("dm", "fashion-mnist", 1).confirmed is False
    assert published_result("dc", "cifar100", 50) is None
    assert published_result("dm", "digits", 10) is None
    assert published_result("full", "fashion-mnist", None).accuracy == 93.5


def test_preset_overrides():
    preset = get_preset("cpu").override({"eval.epochs": "7", "eval.augment": "false", "dm.iterations": "9"})
    assert preset.evaluation.epochs == 7 and preset.evaluation.augment is False
    assert preset.method_settings("dm")["iterations"] == "9"
    assert preset.method_settings("dm")["model"] == "convnet:width=32"
    with pytest.raises(DdplugError, match="no setting"):
        get_preset("cpu").override({"eval.epoch": "7"})
    with pytest.raises(DdplugError, match="expects int"):
        get_preset("cpu").override({"eval.epochs": "many"})
    with pytest.raises(DdplugError, match="unknown preset"):
        get_preset("gpu")


def test_dm_beats_random_on_digits_at_one_image_per_class(digits, tiny_preset, tmp_path):
    preset = dataclasses.replace(
        tiny_preset,
        evaluation=dataclasses.replace(tiny_preset.evaluation, num_models=3, epochs=100),
        methods={"*": {"model": "convnet:width=16,depth=2"}, "dm": {"iterations": 150, "batch_real": 64}},
    )
    condensed = get_condenser("dm").condense(digits.train, ipc=1, preset=preset, seed=0, out_dir=tmp_path,
                                             progress=False)
    judgement = judge(condensed.synthetic, digits, preset, method="dm", seed=0, progress=False)
    judgement.extra["iterations"] = condensed.iterations
    summary = write_judgement(judgement, tmp_path)
    assert summary["iterations"] == condensed.iterations
    assert summary["accuracy_mean"] > summary["random_baseline_mean"]
    assert (tmp_path / "evaluation.json").is_file() and (tmp_path / "accuracy.png").is_file()
    assert (tmp_path / "checkpoint.pt").is_file()


def test_condense_classes_handles_partial_and_tiny_classes(digits, tiny_preset):
    from ddplug.pipeline import condense_classes

    train = digits.train
    # classes 2 and 7 only, and class 7 with a single image
    keep = torch.cat([torch.nonzero(train.labels == 2).flatten(), torch.nonzero(train.labels == 7).flatten()[:1]])
    part = train.subset(keep)
    synthetic = condense_classes(part, "dm", ipc=3, preset=tiny_preset, settings={"iterations": 2})
    assert synthetic.num_classes == 10
    assert torch.bincount(synthetic.labels, minlength=10).tolist() == [0, 0, 3, 0, 0, 0, 0, 1, 0, 0]
    lone = synthetic.images[synthetic.labels == 7]
    assert torch.equal(lone[0], part.images[part.labels == 7][0])  # kept as it was
    assert synthetic.meta["kept_real_classes"] == [7]


def test_a_set_that_leaves_its_owner_holds_no_real_image(digits, tiny_preset):
    from ddplug.pipeline import condense_classes

    train = digits.train
    keep = torch.cat([torch.nonzero(train.labels == 2).flatten(), torch.nonzero(train.labels == 7).flatten()[:1]])
    part = train.subset(keep)
    synthetic = condense_classes(part, "dm", ipc=3, preset=tiny_preset, settings={"iterations": 2},
                                 copy_small_classes=False)
    assert torch.bincount(synthetic.labels, minlength=10).tolist() == [0, 0, 3, 0, 0, 0, 0, 0, 0, 0]
    assert synthetic.meta["left_out_classes"] == [7] and synthetic.meta["kept_real_classes"] == []
    distances = torch.cdist(synthetic.images.flatten(1), part.images.flatten(1))
    assert distances.min() > 1e-3  # condensed (moved away from its real init), not copied
