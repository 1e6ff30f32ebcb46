import dataclasses
import json
import os

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ddplug.augment import DSA
from ddplug.methods import run_distillation
from ddplug.methods.base import MIN_STUDENT_LR
from ddplug.methods.experts import (
    MANIFEST,
    ExpertTraining,
    default_expert_folder,
    ensure_experts,
    load_experts,
    train_experts,
)
from ddplug.sets.param import create_param
from ddplug.methods.trajectory import (
    MTTConfig,
    StudentRun,
    TrajectoryMatching,
    matching_gradients,
)
from ddplug.errors import DdplugError
from ddplug.evaluation.training import classification_accuracy
from ddplug.models import create_model
from ddplug.seeding import derive_seed

from helpers import TINY_MODEL
from simulations.trajectory_memory import memory_rows

EXPERT_TRAINING = {"model": TINY_MODEL, "training": ExpertTraining(lr=0.05, batch_size=128, augment=False),
                   "progress": False}


@pytest.fixture(scope="module")
def expert_folder(digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("experts")
    train_experts(digits.train, folder, num_experts=2, epochs=3, **EXPERT_TRAINING)
    return folder


def tiny_network(dtype=torch.float32):
    return create_model(TINY_MODEL, in_channels=1, num_classes=10, image_size=(8, 8), seed=0).to(dtype)


def mtt(real, folder, **overrides):
    settings = {
        "ipc": 2, "iterations": 4, "model": TINY_MODEL, "expert_folder": None if folder is None else str(folder),
        "num_experts": 2, "syn_steps": 4, "expert_epochs": 1, "max_start_epoch": 2, "batch_syn": 10,
        "lr_images": 10.0, **overrides,
    }
    return TrajectoryMatching(real, MTTConfig(**settings))


def test_experts_round_trip_and_learn(digits, expert_folder):
    experts = load_experts(expert_folder, dataset="digits", model="convnet:depth=2,width=8,norm=instance",
                           min_epochs=3)
    network = tiny_network()
    num_params = sum(p.numel() for p in network.parameters())
    manifest = json.loads((expert_folder / MANIFEST).read_text())
    assert manifest["dataset"] == "digits" and manifest["model"] == network.spec
    assert manifest["epochs"] == 3 and manifest["lr"] == 0.05 and manifest["num_params"] == num_params
    assert manifest["image_shape"] == [1, 8, 8] and manifest["num_classes"] == 10 and manifest["seed"] == 0
    assert len(experts) == 2 and experts.stack(3).shape == (2, 4, num_params)
    for index in range(2):
        trajectory = experts.trajectory(index)
        fresh = create_model(TINY_MODEL, in_channels=1, num_classes=10, image_size=(8, 8),
                             seed=derive_seed(0, "expert", index))
        assert torch.equal(trajectory[0], parameters_to_vector(fresh.parameters()))  # epoch 0 = initialisation
        accuracies = []
        for row in trajectory:
            vector_to_parameters(row, network.parameters())
            accuracies.append(classification_accuracy(network, digits.test.images, digits.test.labels))
        assert accuracies[0] < 0.2 and accuracies[-1] > 0.4
    assert not torch.equal(experts.trajectory(0), experts.trajectory(1))


def test_expert_training_resumes_and_extends_exactly(digits, expert_folder, tmp_path):
    folder = tmp_path / "experts"
    train_experts(digits.train, folder, num_experts=1, epochs=2, **EXPERT_TRAINING)
    first = folder / "expert_0000.pt"
    before = os.stat(first)
    experts = train_experts(digits.train, folder, num_experts=2, epochs=2, **EXPERT_TRAINING)
    after = os.stat(first)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # finished: not retrained
    assert len(experts) == 2
    # Training on to 3 epochs ends where a 3-epoch run from scratch ends.
    extended = train_experts(digits.train, folder, num_experts=2, epochs=3, **EXPERT_TRAINING)
    reference = load_experts(expert_folder, dataset="digits", model=TINY_MODEL, min_epochs=3)
    for index in range(2):
        assert torch.equal(extended.trajectory(index), reference.trajectory(index))
    assert json.loads((folder / MANIFEST).read_text())["epochs"] == 3


def test_expert_errors(digits, expert_folder, tmp_path):
    with pytest.raises(DdplugError, match="does not exist.*ddplug experts --dataset digits"):
        load_experts(tmp_path / "nowhere", dataset="digits", model=TINY_MODEL, min_epochs=2)
    with pytest.raises(DdplugError, match="no manifest.json.*ddplug experts"):
        load_experts(tmp_path, dataset="digits", model=TINY_MODEL, min_epochs=2)
    with pytest.raises(DdplugError, match="trained on digits, not fashion-mnist"):
        load_experts(expert_folder, dataset="fashion-mnist", model=TINY_MODEL, min_epochs=2)
    with pytest.raises(DdplugError, match="networks but the distillation matches with convnet:depth=2,width=16"):
        load_experts(expert_folder, dataset="digits", model="convnet:width=16,depth=2", min_epochs=2)
    with pytest.raises(DdplugError, match="at most 3 epochs, but 10 epochs are needed"):
        load_experts(expert_folder, dataset="digits", model=TINY_MODEL, min_epochs=10)
    with pytest.raises(DdplugError, match="trained differently: lr 0.05"):
        train_experts(digits.train, expert_folder, **{**EXPERT_TRAINING, "training": ExpertTraining(lr=0.01, batch_size=128, augment=False)}, num_experts=1, epochs=1)
    with pytest.raises(DdplugError, match="num_experts must be at least 1"):
        train_experts(digits.train, tmp_path, **EXPERT_TRAINING, num_experts=0, epochs=1)


def test_distiller_errors(digits, expert_folder):
    with pytest.raises(DdplugError, match="syn_steps must be at least 1"):
        mtt(digits.train, expert_folder, syn_steps=0)
    with pytest.raises(DdplugError, match="unknown memory mode"):
        mtt(digits.train, expert_folder, memory="low")
    with pytest.raises(DdplugError, match="4 epochs are needed"):
        mtt(digits.train, expert_folder, max_start_epoch=3, expert_epochs=2)
    with pytest.raises(DdplugError, match="holds 2 experts.*num_experts is 3"):
        mtt(digits.train, expert_folder, num_experts=3)
    with pytest.raises(DdplugError, match="trained on digits, not mnist"):
        mtt(dataclasses.replace(digits.train, name="mnist"), expert_folder)


def student_run(steps, generator, augment=True):
    """A float64 student on 40 digits: 16-image batches, DSA per step, a nearby target."""
    network = tiny_network(torch.float64)
    start = parameters_to_vector(network.parameters()).detach()
    target = start + 0.05 * torch.randn(start.shape, generator=generator, dtype=torch.float64)
    batches = torch.stack([torch.randperm(40, generator=generator)[:16] for _ in range(steps)])
    dsa = DSA()
    replay = (lambda images, step: dsa(images, generator=torch.Generator().manual_seed(step))) if augment else None
    return StudentRun(network, start, target, batches, replay)


def first_order_image_gradient(run, images, targets, lr):
    """TESLA's shortcut: every step's gradient taken against the final λ, as if θ_t did not depend on X."""
    theta, thetas = run.start, []
    for step in range(run.steps):
        thetas.append(theta)
        theta = theta - lr * run.gradient(theta.clone().requires_grad_(True), images, targets, step, create_graph=False)
    adjoint = 2 * (theta - run.target) / (run.start - run.target).square().sum()
    images = images.clone().requires_grad_(True)
    total = sum((run.gradient(t.clone().requires_grad_(True), images, targets, step, create_graph=True) * adjoint).sum()
                for step, t in enumerate(thetas))
    return -lr * torch.autograd.grad(total, images)[0]


@pytest.mark.parametrize("soft", [False, True])
def test_constant_memory_gradient_equals_unrolled(digits, soft):
    generator = torch.Generator().manual_seed(0)
    run = student_run(6, generator)
    images = digits.train.images[:40].double()
    labels = digits.train.labels[:40]
    targets = torch.softmax(torch.randn(40, 10, generator=generator, dtype=torch.float64), 1) if soft else labels
    lr = torch.tensor(0.05, dtype=torch.float64)
    unrolled = matching_gradients(run, images, targets, lr, memory="unrolled")
    # float64: the two orders of summation agree to ~1e-15; 1e-9 leaves room, far below the signal.
    for slots in (0, 2, 8):  # recompute every θ_t, some, or keep them all
        constant = matching_gradients(run, images, targets, lr, memory="constant", memory_slots=slots)
        torch.testing.assert_close(constant.loss, unrolled.loss, rtol=1e-9, atol=0)
        torch.testing.assert_close(constant.images, unrolled.images, rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(constant.lr, unrolled.lr, rtol=1e-9, atol=1e-15)
        if soft:
            torch.testing.assert_close(constant.targets, unrolled.targets, rtol=1e-9, atol=1e-15)
    assert unrolled.images.abs().max() > 1e-5 and unrolled.lr.abs() > 1e-5
    assert (unrolled.targets is not None) == soft
    # The test can tell: dropping the dependence of later steps on earlier ones changes the gradient.
    shortcut = first_order_image_gradient(run, images, targets, lr)
    assert (shortcut - unrolled.images).norm() > 1e-3 * unrolled.images.norm()


def test_peak_memory_is_flat_in_syn_steps_only_for_constant_memory(digits):
    rows = memory_rows(digits.train, model="mlp:width=16", ipc=1, syn_steps=(10, 20, 40))
    peak = {(row["memory"], row["syn_steps"]): row["peak_mb"] for row in rows}
    constant = [peak["constant", steps] for steps in (10, 20, 40)]
    unrolled = [peak["unrolled", steps] for steps in (10, 20, 40)]
    assert max(constant) <= 1.05 * min(constant)
    assert unrolled[0] > 2 * constant[0]
    assert unrolled[1] > 1.8 * unrolled[0] and unrolled[2] > 1.8 * unrolled[1]  # linear in syn_steps


def test_step_gives_the_unrolled_gradient_to_images_labels_and_lr(digits, expert_folder):
    settings = {"learn_labels": True, "syn_steps": 5}
    constant = mtt(digits.train, expert_folder, **settings)
    constant.step(3)
    reference = mtt(digits.train, expert_folder, **settings, memory="unrolled")
    reference.loss(3).backward()
    for name, tensor in constant.learnables().items():
        expected = reference.learnables()[name].grad
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(tensor.grad, expected, rtol=1e-3, atol=1e-7)


def test_distillation_lowers_the_loss_and_learns_lr_and_labels(digits, expert_folder):
    distiller = mtt(digits.train, expert_folder, iterations=30, learn_labels=True, lr_lr=1e-3)
    start = distiller.images.detach().clone()
    start_labels = distiller.targets().detach().clone()
    probe = range(1000, 1008)  # fixed experts, starts and batches, unseen during training
    with torch.no_grad():
        before = torch.stack([distiller.loss(i) for i in probe]).mean()
    result = run_distillation(distiller, progress=False)
    with torch.no_grad():
        after = torch.stack([distiller.loss(i) for i in probe]).mean()
    assert after < before
    assert (distiller.images.detach() - start).abs().max() > 1e-3
    synthetic = result.synthetic
    assert synthetic.soft_labels and synthetic.labels.shape == (10, 10)  # one image and its fp16 labels per class
    assert (synthetic.labels - start_labels).abs().max() > 1e-4
    assert synthetic.lr is not None and synthetic.lr.item() != pytest.approx(0.01, abs=1e-7)
    assert synthetic.meta["method"] == "mtt"


def test_resume_replays_the_same_iterations(digits, expert_folder, tmp_path):
    uninterrupted = run_distillation(mtt(digits.train, expert_folder, iterations=4), progress=False)
    checkpoint = tmp_path / "ckpt.pt"
    run_distillation(mtt(digits.train, expert_folder, iterations=2), checkpoint=checkpoint, progress=False)
    resumed = run_distillation(mtt(digits.train, expert_folder, iterations=4), checkpoint=checkpoint, progress=False)
    assert torch.equal(resumed.synthetic.images, uninterrupted.synthetic.images)
    assert torch.equal(resumed.synthetic.lr, uninterrupted.synthetic.lr)


def test_default_folder_trains_missing_experts(digits, tmp_path, monkeypatch):
    folder = default_expert_folder(tmp_path, digits.train, "convnet:width=8,depth=2,act=relu", ExpertTraining(lr=0.05))
    assert folder.parent.parent == tmp_path / "digits"
    assert folder.parent.name == "convnet_depth_2_width_8_norm_instance_act_relu_pool_avg"
    assert folder.name == "lr0.05-batch256-dsa-seed0"
    monkeypatch.setenv("DDPLUG_EXPERTS", str(tmp_path))
    distiller = mtt(digits.train, None, num_experts=1, max_start_epoch=1, expert_epochs=1, expert_per_class=30)
    cached = default_expert_folder(None, digits.train, TINY_MODEL, ExpertTraining(per_class=30))
    assert cached.name == "lr0.01-batch256-dsa-seed0-30perclass"
    experts = load_experts(cached, dataset="digits", model=TINY_MODEL, min_epochs=1)
    assert len(experts) == 1 and experts.manifest["per_class"] == 30
    assert distiller.trajectories.shape[:2] == (1, 2)
    written = os.stat(experts.files[0]).st_mtime_ns
    again = ensure_experts(digits.train, model=TINY_MODEL, num_experts=1, epochs=1, training=ExpertTraining(per_class=30),
                           progress=False)
    assert again.folder == cached and os.stat(again.files[0]).st_mtime_ns == written


def test_learned_lr_stays_positive_after_a_huge_step(digits, expert_folder):
    distiller = mtt(digits.train, expert_folder)
    distiller.optimizer.zero_grad(set_to_none=True)
    distiller.student_lr.grad = torch.tensor(1e4)  # with lr_lr 1e-5: a step of -0.1 from 0.01
    distiller.update()
    assert distiller.student_lr.item() == pytest.approx(MIN_STUDENT_LR)


@pytest.mark.parametrize("param", ["multi:factor=2", "dct:keep=0.25", "factor:bases=2"])
def test_the_exact_gradient_reaches_every_code_through_its_decoder(digits, expert_folder, param):
    settings = {"syn_steps": 3, "param": param, "batch_syn": None}
    constant = mtt(digits.train, expert_folder, **settings)
    constant.step(1)
    reference = mtt(digits.train, expert_folder, **settings, memory="unrolled")
    reference.loss(1).backward()
    assert set(constant.code) == set(create_param(param).storage)
    for name, tensor in constant.learnables().items():
        expected = reference.learnables()[name].grad
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(tensor.grad, expected, rtol=1e-3, atol=1e-7)
