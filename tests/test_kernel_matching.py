import math

import numpy as np
import pytest
import torch
from torch import nn

from ddplug.methods.running import run_distillation
from ddplug.methods.kernel_ridge import (
    FRePo,
    FRePoConfig,
    KIP,
    KIPConfig,
    centred_targets,
    krr_loss,
    krr_predict,
)
from ddplug.methods.kernel_features import (
    FC_BIAS_VARIANCE,
    FC_WEIGHT_VARIANCE,
    nngp_features,
    ntk_features,
    relu_fc_kernel,
)
from ddplug.errors import DdplugError

from helpers import TINY_MODEL


def kip(digits, **overrides):
    settings = {"ipc": 2, "iterations": 20, "model": TINY_MODEL, "batch_real": 10, "num_networks": 1, **overrides}
    return KIP(digits.train, KIPConfig(**settings))


def frepo(digits, **overrides):
    settings = {"ipc": 2, "iterations": 12, "model": TINY_MODEL, "batch_real": 10, "pool_size": 3,
                "max_online_steps": 3, **overrides}
    return FRePo(digits.train, FRePoConfig(**settings))


def gram(features: torch.Tensor) -> torch.Tensor:
    return features @ features.T


# --- kernel ridge regression -------------------------------------------------------------


def test_krr_predictions_equal_an_independent_float64_solve():
    rng = np.random.default_rng(0)
    support, target = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    k_ss, k_ts = support @ support.T, target @ support.T  # rank 4 < 6: only the ridge makes it solvable
    y_s = rng.normal(size=(6, 3))
    ridge = 1e-3
    expected = k_ts @ np.linalg.solve(k_ss + ridge * np.trace(k_ss) / 6 * np.eye(6), y_s)
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    predicted = krr_predict(as_tensor(k_ts), as_tensor(k_ss), as_tensor(y_s), ridge)
    assert predicted.dtype == torch.float32
    np.testing.assert_allclose(predicted.numpy(), expected, rtol=1e-4, atol=1e-5)
    # Leading dimensions batch independent problems.
    stacked = krr_predict(*(torch.stack([as_tensor(a), 2 * as_tensor(a)]) for a in (k_ts, k_ss)),
                          torch.stack([as_tensor(y_s)] * 2), ridge)
    np.testing.assert_allclose(stacked[1].numpy(), expected, rtol=1e-4, atol=1e-5)  # kernel scale cancels
    y_t = rng.normal(size=(5, 3))
    loss = krr_loss(predicted, as_tensor(y_t))
    assert loss.item() == pytest.approx(0.5 * ((expected - y_t) ** 2).sum(1).mean(), rel=1e-4)


def test_targets_are_centred_one_hot_or_centred_probabilities():
    hard = centred_targets(torch.tensor([0, 2]), 4)
    assert torch.allclose(hard, torch.tensor([[0.75, -0.25, -0.25, -0.25], [-0.25, -0.25, 0.75, -0.25]]))
    soft = centred_targets(torch.tensor([[0.7, 0.1, 0.1, 0.1]]), 4)
    assert torch.allclose(soft, torch.tensor([[0.45, -0.15, -0.15, -0.15]]))
    assert torch.allclose(soft.sum(1), torch.zeros(1), atol=1e-6)


# --- empirical kernels ----------------------------------------------------------------------


def test_ntk_of_a_linear_model_is_the_input_gram_matrix():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    linear = nn.Linear(7, 3, bias=False)
    assert torch.allclose(gram(ntk_features(linear, x)), x @ x.T, atol=1e-5)
    with_bias = nn.Linear(7, 3)
    assert torch.allclose(gram(ntk_features(with_bias, x)), x @ x.T + 1, atol=1e-5)


def test_ntk_of_an_mlp_equals_a_per_sample_jacobian_loop():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x1, x2 = torch.randn(4, 6), torch.randn(3, 6)

    def jacobian(x: torch.Tensor) -> torch.Tensor:  # (outputs, parameters), one autograd call per output
        out = mlp(x[None])[0]
        rows = [torch.autograd.grad(out[k], list(mlp.parameters()), retain_graph=True) for k in range(3)]
        return torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])

    j1 = torch.stack([jacobian(x) for x in x1])
    j2 = torch.stack([jacobian(x) for x in x2])
    expected = torch.einsum("akp,bkp->ab", j1, j2) / 3
    assert torch.allclose(ntk_features(mlp, x1) @ ntk_features(mlp, x2).T, expected, atol=1e-5)


def test_ntk_gradient_with_respect_to_the_inputs_is_right():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    fixed = torch.randn(2, 3, dtype=torch.float64)
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    # The kernel differentiates the network, so its input gradient is a second derivative.
    assert torch.autograd.gradcheck(lambda x: gram(ntk_features(mlp, torch.cat([fixed, x]))), (x,))


def test_kip_nngp_kernels_are_consistent_symmetric_and_psd(digits):
    distiller = kip(digits, kernel="nngp", num_networks=3)
    images = distiller.images.detach()
    k_ts, k_ss = distiller.kernels(0, images, images)
    assert k_ss.shape == (20, 20)
    assert torch.allclose(k_ss, k_ss.T, atol=1e-6)
    assert torch.allclose(k_ts, k_ss, atol=1e-6)  # same images on both sides: same kernel
    assert torch.linalg.eigvalsh(k_ss.double()).min() > -1e-6 * k_ss.diagonal().mean()
    # It averages the Gram matrices of the step's networks.
    networks = [distiller.kernel_network(0, i) for i in range(3)]
    expected = sum(gram(nngp_features(network, images)) for network in networks) / 3
    assert torch.allclose(k_ss, expected, atol=1e-6)


# --- closed-form infinite-width kernels -----------------------------------------------------


class WideReLUNet(nn.Module):
    """A fully connected ReLU network in NTK parameterisation: N(0, 1) weights, scaled in forward."""

    def __init__(self, dim: int, width: int, depth: int, generator: torch.Generator) -> None:
        super().__init__()
        sizes = [dim] + [width] * depth + [1]
        shapes = list(zip(sizes[1:], sizes))
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.randn(out, generator=generator)) for out, _ in shapes)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # Not self.weights[:-1]: slicing a ParameterList re-wraps the tensors, which would
        # cut them off from torch.func.functional_call.
        return list(zip(self.weights, self.biases))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        for weight, bias in self.layers()[:-1]:
            x = torch.relu(self.linear(x, weight, bias))
        return x

    @staticmethod
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return math.sqrt(FC_WEIGHT_VARIANCE / weight.shape[1]) * x @ weight.T + math.sqrt(FC_BIAS_VARIANCE) * bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.hidden(x), *self.layers()[-1])


def points() -> torch.Tensor:
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    x[1] = 0.8 * x[0] + 0.3 * x[1]  # a strongly correlated pair
    x[2] *= 3  # a larger norm
    return x


def test_closed_form_nngp_matches_wide_random_relu_networks():
    x, generator = points(), torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(16):
        network = WideReLUNet(12, 1024, depth=2, generator=generator)
        with torch.no_grad():
            hidden = network.hidden(x)
        estimates.append(FC_WEIGHT_VARIANCE * gram(hidden) / hidden.shape[1] + FC_BIAS_VARIANCE)
    monte_carlo = torch.stack(estimates).mean(0)
    exact = relu_fc_kernel(x, x, depth=2, kind="nngp")
    assert torch.allclose(exact, monte_carlo, rtol=0.05, atol=0.03 * exact.diagonal().mean().item())


def test_closed_form_ntk_matches_the_empirical_ntk_of_wide_networks():
    x, generator = points(), torch.Generator().manual_seed(0)
    networks = [WideReLUNet(12, 1024, depth=2, generator=generator) for _ in range(3)]
    empirical = torch.stack([gram(ntk_features(network, x)) for network in networks]).mean(0)
    exact = relu_fc_kernel(x, x, depth=2, kind="ntk")
    assert torch.allclose(exact, empirical, rtol=0.1, atol=0.05 * exact.diagonal().mean().item())


def test_closed_form_diagonal_and_gradient_at_identical_inputs():
    x = points().requires_grad_(True)
    kernel = relu_fc_kernel(x, x, depth=3, kind="ntk")
    # On the diagonal (angle 0): q <- w q / 2 + b, and the NTK adds w/2 times the previous NTK.
    q = ntk = FC_WEIGHT_VARIANCE * x.detach().square().sum(1) / 12 + FC_BIAS_VARIANCE
    for _ in range(3):
        q = FC_WEIGHT_VARIANCE * q / 2 + FC_BIAS_VARIANCE
        ntk = q + FC_WEIGHT_VARIANCE / 2 * ntk
    assert torch.allclose(kernel.diagonal(), ntk, rtol=1e-4)
    kernel.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(DdplugError, match="nngp, ntk"):
        relu_fc_kernel(x, x, depth=1, kind="rbf")


# --- KIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["ntk", "nngp", "fc-nngp", "fc-ntk"])
def test_kip_lowers_its_loss_on_probe_batches_and_moves_the_images(digits, kernel):
    distiller = kip(digits, kernel=kernel, lr_images={"ntk": 100.0, "nngp": 30.0}.get(kernel, 100.0))
    start = distiller.images.detach().clone()
    probe = range(1000, 1004)  # fixed networks and real batches, unseen during training
    with torch.no_grad():
        before = torch.stack([distiller.loss(i) for i in probe]).mean()
    result = run_distillation(distiller, progress=False)
    with torch.no_grad():
        after = torch.stack([distiller.loss(i) for i in probe]).mean()
    assert after < 0.9 * before
    assert (distiller.images.detach() - start).abs().max() > 1e-3
    assert len(result.losses) == 20 and result.synthetic.meta["method"] == "kip"


def test_learned_labels_get_gradients_and_stay_probability_vectors(digits):
    distiller = kip(digits, kernel="fc-ntk", learn_labels=True, lr_labels=50.0, iterations=10)
    start = distiller.label_logits.detach().clone()
    distiller.step(0)
    assert distiller.label_logits.grad is not None and distiller.label_logits.grad.abs().sum() > 0
    labels = run_distillation(distiller, progress=False).synthetic.labels
    assert not torch.allclose(distiller.label_logits.detach(), start)
    # the bytes of 2 raw images per class hold one image and its 10 fp16 label values
    assert labels.shape == (10, 10) and (labels >= 0).all()
    assert torch.allclose(labels.sum(1), torch.ones(10), atol=1e-5)
    assert (labels.argmax(1) == distiller.labels).all()  # still near their classes after a few steps


def test_kernel_memory_guard_fails_before_any_work(digits, monkeypatch):
    monkeypatch.setattr(KIP, "kernels", lambda *args: pytest.fail("a kernel was computed"))
    with pytest.raises(DdplugError, match="max_kernel_memory_gb=0.01.*lower batch_real"):
        kip(digits, kernel="ntk", model="convnet:width=64,depth=2", batch_real=100, max_kernel_memory_gb=0.01)
    kip(digits, kernel="ntk", max_kernel_memory_gb=0.01)  # the tiny default fits
    small, large = (kip(digits, kernel="ntk", num_networks=n, max_kernel_memory_gb=9).kernel_memory_gb()
                    for n in (1, 4))
    assert large > 1.5 * small  # every network's Jacobian rows are kept until the backward pass


def test_kernel_memory_counts_each_real_image_activations(digits):
    """Each more real image costs its feature row and every layer's output behind it (three
    sets of them for the NTK's differentiated backward pass), not the row alone."""
    def per_real_image(kernel):
        small, large = (kip(digits, kernel=kernel, batch_real=b, max_kernel_memory_gb=9) for b in (10, 20))
        extra_images = 10 * (20 - 10)
        floats = (large.kernel_memory_gb() - small.kernel_memory_gb()) * 1e9 / 4 / extra_images
        network = small.kernel_network(0, 0)
        with torch.no_grad():
            row = small.feature_map()(network, small.real_images[:1]).shape[1]
        return floats - row  # one network: what is left is the image's activations

    nngp, ntk = per_real_image("nngp"), per_real_image("ntk")
    first_convolution = 8 * 8 * 8  # TINY_MODEL: width 8 on 8x8 digits, one of the outputs kept
    assert nngp >= first_convolution
    assert ntk == pytest.approx(3 * nngp, rel=1e-6)


def test_bad_kernel_settings_fail_early(digits):
    with pytest.raises(DdplugError, match="unknown kernel 'rbf'"):
        kip(digits, kernel="rbf")
    with pytest.raises(DdplugError, match="ridge must be positive"):
        kip(digits, ridge=0.0)
    with pytest.raises(DdplugError, match="num_networks must be"):
        kip(digits, num_networks=0)
    with pytest.raises(DdplugError, match="pool_size must be"):
        frepo(digits, pool_size=0)
    with pytest.raises(DdplugError, match="learn_lr"):
        kip(digits, learn_lr=True)


@pytest.mark.parametrize("build", [kip, frepo], ids=["kip", "frepo"])
def test_default_ridge_keeps_krr_sane_when_the_set_nears_the_feature_count(digits, build):
    # TINY_MODEL embeds 8x8 digits in 32 features; 3 images per class make 30 support rows.
    # Near-ridgeless KRR then sits at the interpolation peak and predicts far worse than
    # zero (0.5 * 0.9 = 0.45 for centred one-hot targets); the default ridge must not.
    def probe_loss(distiller):
        with torch.no_grad():
            return torch.stack([distiller.loss(i) for i in range(1000, 1004)]).mean().item()

    distiller = build(digits, ipc=3)
    assert len(distiller.images) == 30
    assert probe_loss(distiller) < 0.35
    assert probe_loss(build(digits, ipc=3, ridge=1e-6)) > 1.0


# --- FRePo ----------------------------------------------------------------------------------


def test_frepo_trains_its_pool_and_reinitialises_old_networks(digits):
    distiller = frepo(digits, iterations=9)
    assert distiller.pool.steps == [0, 1, 2]  # staggered ages
    first = [network.classifier.weight.detach().clone() for network in distiller.pool.networks]
    images = distiller.images.detach().clone()
    slots = [distiller.pool.slot(i) for i in range(9)]
    run_distillation(distiller, progress=False)
    for slot in range(3):
        uses = slots.count(slot)
        # Each use trains once; a network that has had max_online_steps (3) updates is replaced first.
        assert distiller.pool.generations[slot] == max(0, (slot + uses - 1) // 3)
        if uses:
            assert not torch.equal(distiller.pool.networks[slot].classifier.weight, first[slot])
    assert (distiller.images.detach() - images).abs().max() > 1e-3


def test_a_pool_of_architectures_takes_them_in_turn_by_slot_and_every_one_moves_the_set(digits):
    def convolutional(network: nn.Module) -> bool:
        return any(isinstance(module, nn.Conv2d) for module in network.modules())

    distiller = frepo(digits, iterations=9, pool_models=f"{TINY_MODEL} + mlp:width=16")
    assert [convolutional(network) for network in distiller.pool.networks] == [True, False, True]
    first = [network.classifier.weight.detach().clone() for network in distiller.pool.networks]
    used = {distiller.pool.slot(i) for i in range(9)}
    assert {0, 1} <= used or {1, 2} <= used  # both architectures match the set in these 9 steps
    run_distillation(distiller, progress=False)
    for slot in used:  # a reinitialised network is of its slot's architecture again
        assert convolutional(distiller.pool.networks[slot]) == (slot != 1)
        assert not torch.equal(distiller.pool.networks[slot].classifier.weight, first[slot])
    # One architecture named alone is the plain pool, to the last digit.
    alone = run_distillation(frepo(digits, iterations=4, pool_models=TINY_MODEL), progress=False)
    plain = run_distillation(frepo(digits, iterations=4), progress=False)
    assert torch.equal(alone.synthetic.images, plain.synthetic.images)


@pytest.mark.parametrize(("pool_models", "error"), [
    ("convnet+", "pool_models 'convnet\\+' has an empty architecture: join model specs with '\\+'"),
    ("convnet+mlp+lenet+mlp", "pool_models names 4 architectures but pool_size is 3: raise pool_size to at least 4"),
    ("convnet+transformer", "unknown model 'transformer'"),
    ("convnet+mlp:depth=9", "model 'mlp' has no option"),
])
def test_a_bad_pool_of_architectures_fails_when_configured(digits, pool_models, error):
    with pytest.raises(DdplugError, match=error):
        FRePoConfig(ipc=1, model=TINY_MODEL, pool_size=3, pool_models=pool_models).check()


def test_frepo_resume_continues_exactly(digits, tmp_path):
    settings = {"learn_labels": True, "iterations": 12}
    uninterrupted = frepo(digits, **settings)
    expected = run_distillation(uninterrupted, progress=False)
    checkpoint = tmp_path / "ckpt.pt"
    first = run_distillation(frepo(digits, **{**settings, "iterations": 7}), checkpoint=checkpoint, progress=False)
    resumed_distiller = frepo(digits, **settings)
    resumed = run_distillation(resumed_distiller, checkpoint=checkpoint, progress=False)
    assert resumed.losses[:7] == first.losses
    assert resumed.losses == pytest.approx(expected.losses, rel=1e-5)
    assert torch.allclose(resumed.synthetic.images, expected.synthetic.images, atol=1e-6)
    assert torch.allclose(resumed.synthetic.labels, expected.synthetic.labels, atol=1e-6)
    assert resumed_distiller.pool.steps == uninterrupted.pool.steps
    assert resumed_distiller.pool.generations == uninterrupted.pool.generations
    for mine, theirs in zip(resumed_distiller.pool.networks, uninterrupted.pool.networks):
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6)
