import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ddplug.methods import run_distillation
from ddplug.methods.gradient import (
    DISTANCES,
    DatasetCondensation,
    DatasetCondensationDSA,
    DCConfig,
    DSAMatchingConfig,
    class_gradients,
    cosine_distance,
    default_loops,
    layerwise_distance,
    mse_distance,
)
from ddplug.errors import DdplugError
from ddplug.models import create_model

from helpers import TINY_MODEL


SETTINGS = {"ipc": 2, "iterations": 15, "model": TINY_MODEL, "batch_real": 32, "seed": 0}


def dc(digits, **overrides):
    return DatasetCondensation(digits.train, DCConfig(**{**SETTINGS, **overrides}))


def dsa(digits, **overrides):
    return DatasetCondensationDSA(digits.train, DSAMatchingConfig(**{**SETTINGS, **overrides}))


def random_gradients(seed: int) -> list[torch.Tensor]:
    """Per-class gradients (3 classes) of a conv weight, a linear weight and a bias."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in ((3, 4, 2, 3, 3), (3, 5, 4), (3, 4))]


@pytest.mark.parametrize("name", list(DISTANCES))
def test_distance_is_zero_exactly_for_identical_gradients_and_positive_otherwise(name):
    distance = DISTANCES[name]
    grads, others = random_gradients(0), random_gradients(1)
    assert distance(grads, [g.clone() for g in grads]).item() == 0.0
    assert distance(grads, others).item() > 0.1
    scaled = [2 * g for g in grads]
    if name == "mse":
        assert distance(grads, scaled).item() == pytest.approx(sum(g.square().sum().item() for g in grads), rel=1e-5)
    else:  # cosine distances ignore the gradients' scale
        assert distance(grads, scaled).item() == pytest.approx(0.0, abs=1e-5)


def test_layerwise_distance_by_hand():
    # One class; a 2x2 weight, a 1x1x2x1 "conv" weight and a bias.
    real = [torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[[[[3.0], [4.0]]]]]), torch.tensor([[1.0, 2.0]])]
    syn = [torch.tensor([[[2.0, 0.0], [1.0, 1.0]]]), torch.tensor([[[[[4.0], [-3.0]]]]]), torch.tensor([[5.0, -7.0]])]
    # weight rows: cos 1 and 1/sqrt(2); conv: one output channel, orthogonal (cos 0); bias ignored
    expected = (1 - 1) + (1 - 1 / math.sqrt(2)) + (1 - 0)
    assert layerwise_distance(real, syn).item() == pytest.approx(expected, rel=1e-6)
    # two classes: the per-class distances add up
    doubled_real = [torch.cat([r, r]) for r in real]
    doubled_syn = [torch.cat([s, r]) for s, r in zip(syn, real)]
    assert layerwise_distance(doubled_real, doubled_syn).item() == pytest.approx(expected, rel=1e-6)
    # the flattened cosine and the squared distance over all parameters (bias included)
    real_flat, syn_flat = torch.tensor([1.0, 0, 0, 1, 3, 4, 1, 2]), torch.tensor([2.0, 0, 1, 1, 4, -3, 5, -7])
    cosine = (real_flat @ syn_flat / (real_flat.norm() * syn_flat.norm())).item()
    assert cosine_distance(real, syn).item() == pytest.approx(1 - cosine, rel=1e-6)
    assert mse_distance(real, syn).item() == pytest.approx((real_flat - syn_flat).square().sum().item())


@pytest.mark.parametrize("soft", [False, True])
def test_per_class_gradients_equal_vmap_over_classes(soft):
    network = create_model(TINY_MODEL, in_channels=1, num_classes=3, image_size=(8, 8), seed=0)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3 * 4, 1, 8, 8, generator=generator, requires_grad=True)
    labels = torch.arange(3).repeat_interleave(4)
    targets = torch.softmax(torch.randn(12, 3, generator=generator), dim=1) if soft else labels
    grads = class_gradients(network, images, targets, 3, create_graph=True)

    def class_loss(params, x, y):
        return F.cross_entropy(functional_call(network, params, (x,)), y)

    params = {name: p.detach() for name, p in network.named_parameters()}
    reference = vmap(grad(class_loss), in_dims=(None, 0, 0))(params, images.view(3, 4, 1, 8, 8), targets.view(3, 4, *targets.shape[1:]))
    assert [g.shape for g in grads] == [(3, *p.shape) for p in params.values()]
    for ours, theirs in zip(grads, reference.values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    # the graph reaches the images, and only the class's own images move its gradient
    grads[0][1].sum().backward()
    moved = images.grad.flatten(1).abs().sum(1).view(3, 4).sum(1)
    assert moved[1] > 0 and moved[0] == 0 and moved[2] == 0


def test_loop_settings_follow_the_original():
    assert default_loops(1) == (1, 1) and default_loops(10) == (10, 50) and default_loops(50) == (50, 10)
    assert default_loops(20) == (20, 25)
    assert default_loops(3) == (1, 1) and default_loops(4) == (10, 50) and default_loops(100) == (50, 10)
    config = DCConfig(ipc=10)
    assert config.loops() == (10, 50)
    assert DCConfig(ipc=10, outer_loop=3, inner_loop=0).loops() == (3, 0)
    assert (config.iterations, config.lr_images, config.momentum, config.batch_real) == (1000, 0.1, 0.5, 256)
    assert (config.init_lr, config.batch_train, config.distance) == (0.01, 256, "layerwise")
    assert config.augment is False and DSAMatchingConfig().augment is True


def test_dc_lowers_its_matching_loss_on_probe_networks_and_moves_the_images(digits):
    distiller = dc(digits)
    start = distiller.images.detach().clone()
    probe = range(1000, 1005)  # fresh networks and real batches never seen in training
    before = torch.stack([distiller.loss(i).detach() for i in probe]).mean()
    result = run_distillation(distiller, progress=False)
    after = torch.stack([distiller.loss(i).detach() for i in probe]).mean()
    assert after < 0.85 * before
    assert (distiller.images.detach() - start).abs().max() > 0.1
    assert len(result.losses) == 15 and result.synthetic.images.shape == (20, 1, 8, 8)
    assert result.synthetic.meta["method"] == "dc"


def test_outer_rounds_train_the_network_between_updates(digits):
    distiller = dc(digits, outer_loop=3, inner_loop=5)
    network = distiller.fresh_network(0)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)

    def synthetic_loss():
        with torch.no_grad():
            return F.cross_entropy(network(distiller.images), distiller.labels)

    before = synthetic_loss()
    distiller._train_network(network, optimizer, 0)
    assert synthetic_loss() < before
    loss = distiller.step(0)
    assert loss.dim() == 0 and not loss.requires_grad
    # the second round matches on the trained network, so the inner loop changes the step
    assert not torch.allclose(loss, dc(digits, outer_loop=3, inner_loop=0).step(0))


def test_dsa_augments_and_differs_from_dc(digits):
    plain, augmented = dc(digits, iterations=3), dsa(digits, iterations=3)
    assert plain.dsa is None and augmented.dsa is not None
    assert torch.equal(plain.images, augmented.images)  # same start
    assert not torch.allclose(plain.loss(0), augmented.loss(0))
    a = run_distillation(plain, progress=False).synthetic.images
    b = run_distillation(augmented, progress=False).synthetic.images
    assert not torch.allclose(a, b)


def test_soft_labels_receive_gradients_and_change(digits):
    distiller = dsa(digits, iterations=3, learn_labels=True, lr_labels=10.0, outer_loop=2, inner_loop=1)
    start = distiller.label_logits.detach().clone()
    distiller.step(0)
    assert distiller.label_logits.grad is not None and distiller.label_logits.grad.abs().sum() > 0
    result = run_distillation(distiller, progress=False)
    labels = result.synthetic.labels
    assert labels.shape == (10, 10)  # the bytes of 2 raw images per class: one image and its fp16 labels
    torch.testing.assert_close(labels.sum(1), torch.ones(10))
    assert (distiller.label_logits.detach() - start).abs().max() > 1e-4


def test_same_seed_same_set_different_seed_differs(digits):
    a = run_distillation(dsa(digits, iterations=2, outer_loop=2, inner_loop=2), progress=False).synthetic.images
    b = run_distillation(dsa(digits, iterations=2, outer_loop=2, inner_loop=2), progress=False).synthetic.images
    c = run_distillation(dsa(digits, iterations=2, outer_loop=2, inner_loop=2, seed=1), progress=False).synthetic.images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resume_continues_the_same_trajectory(digits, tmp_path):
    settings = {"outer_loop": 2, "inner_loop": 2, "learn_labels": True}
    uninterrupted = run_distillation(dsa(digits, iterations=5, **settings), progress=False)
    checkpoint = tmp_path / "ckpt.pt"
    first = run_distillation(dsa(digits, iterations=3, **settings), checkpoint=checkpoint, progress=False)
    resumed = run_distillation(dsa(digits, iterations=5, **settings), checkpoint=checkpoint, progress=False)
    assert first.iterations == 3 and resumed.iterations == 5
    torch.testing.assert_close(resumed.synthetic.images, uninterrupted.synthetic.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.synthetic.labels, uninterrupted.synthetic.labels, rtol=0, atol=1e-6)
    assert resumed.losses[:3] == first.losses


def test_batch_norm_statistics_come_from_real_data_and_stay_fixed(digits):
    distiller = dc(digits, model="convnet-bn:width=8,depth=2")
    network = distiller.fresh_network(0)
    distiller._fix_batch_norm(network, 0)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training and m.running_mean.abs().sum() > 0 for m in norms)
    fixed = [m.running_mean.clone() for m in norms]
    class_gradients(network, distiller.images, distiller.labels, 10)  # the synthetic batches leave them as they are
    assert all(torch.equal(m.running_mean, mean) for m, mean in zip(norms, fixed))
    assert torch.isfinite(distiller.step(0))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"distance": "l2"}, "unknown distance"),
        ({"outer_loop": 0}, "outer_loop must be"),
        ({"inner_loop": -1}, "inner_loop must be"),
        ({"batch_train": 0}, "batch_train must be"),
        ({"learn_lr": True}, "learn_lr"),
        ({"ipc": 0}, "ipc must be"),
    ],
)
def test_bad_settings_fail_at_construction(digits, overrides, message):
    with pytest.raises(DdplugError, match=message):
        dc(digits, **overrides)
