"""ZCA whitening (fit, distillation and evaluation in the whitened space) and herding initialisation."""

import dataclasses
import json

import pytest
import torch
from kornia.enhance import ZCAWhitening, zca_whiten

from ddplug.cli import main
from ddplug.data import ZCA, DatasetSplits
from ddplug.methods import create_distiller, make_config, select_subset
from ddplug.methods.experts import load_experts
from ddplug.errors import DdplugError
from ddplug.evaluation.evaluator import Evaluator
from ddplug.models import create_model
from ddplug.pipeline import condense_classes, judge
from ddplug.seeding import derive_seed
from ddplug.sets import load_set, save_grid, save_set
from ddplug.sets.grid import class_grid

from helpers import TINY_MODEL, write_fake_fashion_mnist

EPSILON = 0.1


@pytest.fixture(scope="module")
def zca(digits):
    return ZCA.fit(digits.train, EPSILON)


def distiller(method, digits, **overrides):
    settings = {"ipc": 2, "iterations": 2, "model": TINY_MODEL, "batch_real": 16, "seed": 0, **overrides}
    return create_distiller(method, digits.train, make_config(method, settings))


def whitened_random_subset(digits, zca, ipc=5):
    subset = select_subset("random", zca.whiten_dataset(digits.train), ipc, seed=0)
    subset.meta["zca_epsilon"] = EPSILON
    return subset


def test_whitened_data_has_identity_covariance_where_it_varies_and_unwhitens_back(digits):
    images = digits.train.images
    zca = ZCA(images, 1e-5)
    rows = images.flatten(1)
    variances, directions = torch.linalg.eigh(rows.T.cov().double())
    kept = directions[:, variances > 1e-3].float()  # digits have constant pixels: no variance to whiten there
    whitened = zca.whiten(images).flatten(1)
    assert torch.allclose(kept.T @ whitened.T.cov() @ kept, torch.eye(kept.shape[1]), atol=0.02)
    assert torch.allclose(zca.unwhiten(zca.whiten(images)), images, atol=1e-3)
    assert not torch.allclose(zca.whiten(images), images, atol=0.1)


def test_zca_matches_kornia(digits, zca):
    images, tests = digits.train.images, digits.test.images
    assert torch.allclose(zca.whiten(images), zca_whiten(images, eps=EPSILON), atol=1e-4)
    reference = ZCAWhitening(eps=EPSILON, compute_inv=True).fit(images)
    assert torch.allclose(zca.whiten(tests), reference(tests), atol=1e-4)
    assert torch.allclose(zca.unwhiten(tests), reference.inverse_transform(tests), atol=1e-4)


@pytest.mark.parametrize("method", ["dm", "dc", "dsa", "kip", "frepo"])
def test_distillers_match_against_whitened_images_and_say_so(digits, zca, method):
    whitened = distiller(method, digits, zca=True)
    assert whitened.zca.epsilon == EPSILON
    assert torch.allclose(whitened.real_images, zca.whiten(digits.train.images), atol=1e-5)
    # init "real" starts from whitened real images
    start = whitened.images.detach().flatten(1)
    distances = torch.cdist(start, whitened.real_images.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    assert (distances.min(dim=1).values == 0).all()
    synthetic = whitened.synthetic_set()
    assert synthetic.zca_epsilon == EPSILON and synthetic.meta["config"]["zca"] is True
    assert distiller(method, digits).synthetic_set().zca_epsilon is None


def test_mtt_trains_and_loads_whitened_experts_apart(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPLUG_EXPERTS", str(tmp_path))
    whitened = distiller("mtt", digits, zca=True, num_experts=1, max_start_epoch=1, expert_epochs=1,
                         expert_per_class=10, syn_steps=2, augment=False)
    folder = next(tmp_path.rglob("manifest.json")).parent
    assert folder.name.endswith("-zca0.1") and json.loads((folder / "manifest.json").read_text())["zca_epsilon"] == 0.1
    assert whitened.synthetic_set().zca_epsilon == EPSILON
    with pytest.raises(DdplugError, match="trained on data ZCA-whitened with epsilon 0.1, but the distillation uses "
                                          "unwhitened data"):
        load_experts(folder, dataset="digits", model=TINY_MODEL, min_epochs=1)


def test_evaluating_a_whitened_set_whitens_the_test_images(digits, zca, tiny_preset):
    subset = whitened_random_subset(digits, zca)
    evaluator = Evaluator(digits, tiny_preset.evaluation, progress=False)
    assert torch.allclose(evaluator.test_images_for(subset), zca.whiten(digits.test.images), atol=1e-5)
    by_meta = evaluator.evaluate(subset, seed=0)
    whitened_splits = DatasetSplits(zca.whiten_dataset(digits.train), zca.whiten_dataset(digits.test))
    plain = dataclasses.replace(subset, meta={})
    by_hand = Evaluator(whitened_splits, tiny_preset.evaluation, progress=False).evaluate(plain, seed=0)
    assert by_meta.accuracies == pytest.approx(by_hand.accuracies)


def test_judge_compares_a_whitened_set_with_whitened_baselines(digits, zca, tiny_preset):
    subset = whitened_random_subset(digits, zca)
    # the random baseline, picked from the whitened images with the same seed, is the same set
    judgement = judge(subset, digits, tiny_preset, method="dm", baselines=("random",), progress=False, zca=zca)
    assert judgement.baselines["random"].accuracies == judgement.result.accuracies
    assert judgement.summary()["zca_epsilon"] == EPSILON


def test_whitened_set_pictures_unwhitened_and_refuses_uint8(digits, zca, tmp_path):
    raw = select_subset("random", digits.train, 2, seed=0)
    whitened = whitened_random_subset(digits, zca, ipc=2)
    tiles, _ = class_grid(whitened, zca=zca)
    assert torch.allclose(tiles, class_grid(raw)[0], atol=1e-3)
    with pytest.raises(DdplugError, match="ZCA-whitened: pass zca"):
        save_grid(whitened, tmp_path / "grid.png")
    with pytest.raises(DdplugError, match="save it as float16 or float32"):
        save_set(whitened, tmp_path / "set.safetensors", encoding="uint8")
    assert load_set(save_set(whitened, tmp_path / "set.safetensors", encoding="float16")).zca_epsilon == EPSILON


def test_herding_init_is_the_herding_selection_in_random_features(digits):
    herded = distiller("dm", digits, init="herding").images.detach()
    network = create_model(TINY_MODEL, in_channels=1, num_classes=10, image_size=(8, 8),
                           seed=derive_seed(0, "herding-init"))
    expected = select_subset("herding", digits.train, 2, feature_network=network).images
    assert torch.equal(herded, expected)
    assert torch.equal(distiller("dm", digits, init="herding").images.detach(), herded)
    assert not torch.equal(distiller("dm", digits, init="herding", seed=1).images.detach(), herded)
    assert not torch.equal(distiller("dm", digits, init="real").images.detach(), herded)


def test_bad_init_and_epsilon_are_clear_errors(digits, tiny_preset):
    with pytest.raises(DdplugError, match="unknown init 'kmeans'; choose one of real, noise, herding"):
        distiller("dm", digits, init="kmeans")
    with pytest.raises(DdplugError, match="zca_epsilon must be positive, got 0.0: use e.g. --zca-epsilon 0.1"):
        distiller("dm", digits, zca=True, zca_epsilon=0.0)
    with pytest.raises(DdplugError, match="zca_epsilon must be positive"):
        ZCA(digits.train.images, -1.0)
    with pytest.raises(DdplugError, match="lower --ipc"):
        distiller("dm", digits, init="herding", ipc=1000)
    with pytest.raises(DdplugError, match="drop zca"):
        condense_classes(digits.train, "dm", ipc=2, preset=tiny_preset, settings={"zca": "true"})


def test_cli_distills_whitened_from_herding_and_evaluates_alike(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / "data")))
    small = "convnet:width=4,depth=1"
    out = tmp_path / "run"
    evaluation = ["--eval-model", small, "--eval-epochs", "2", "--eval-models", "2", "--quiet", "--device", "cpu",
                  "--json"]
    code = main(["distill", "--method", "dm", "--ipc", "1", "--iterations", "2", "--model", small, "--zca", "true",
                 "--init", "herding",
                 "--out", str(out), *evaluation])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["zca_epsilon"] == EPSILON and summary["random_baseline_mean"] is not None
    synthetic = load_set(out)
    assert synthetic.zca_epsilon == EPSILON and synthetic.meta["config"]["init"] == "herding"
    assert (out / "synthetic.png").is_file()
    # evaluate refits the same ZCA on the training images, so it judges the set alike
    assert main(["evaluate", str(out), *evaluation]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["accuracies"] == summary["accuracies"] and again["zca_epsilon"] == EPSILON
