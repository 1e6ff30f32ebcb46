"""Kernel matching: KIP (Nguyen et al., ICLR 2021 and NeurIPS 2021) and FRePo (Zhou et al., NeurIPS 2022).

Both fit kernel ridge regression (KRR) on the synthetic set and move the set so that the
KRR predictions on a real batch match the batch's labels. They differ in the kernel: KIP
uses the kernel of randomly initialised networks (empirical NTK or NNGP, or a closed-form
infinite-width kernel); FRePo the features of a pool of networks that keep training on
the synthetic set. Labels are centred one-hot vectors (or the learned soft labels,
centred alike), as in both papers.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddplug.data import ImageDataset
from ddplug.methods.base import Distiller
from ddplug.methods.config import DistillConfig
from ddplug.methods.running import register_distiller
from ddplug.methods.pool import NetworkPool, PoolSettings
from ddplug.methods.kernel_features import nngp_features, ntk_features, relu_fc_kernel
from ddplug.errors import DdplugError
from ddplug.models import create_model
from ddplug.models.chunks import embed_in_chunks, leaf_output_sizes
from ddplug.seeding import derive_seed

KIP_KERNELS = ("ntk", "nngp", "fc-nngp", "fc-ntk")
_FC_MATRICES_PER_LAYER = 8  # kernel-sized tensors the arc-cosine recursion keeps for backward
_BYTES_PER_FLOAT = 4


def centred_targets(targets: Tensor, num_classes: int) -> Tensor:
    """Class ids ``(N,)`` or probability rows ``(N, K)`` as regression targets minus ``1/K``."""
    if targets.dim() == 1:
        targets = F.one_hot(targets, num_classes).float()
    return targets - 1.0 / num_classes


def krr_predict(k_ts: Tensor, k_ss: Tensor, y_s: Tensor, ridge: float) -> Tensor:
    """KRR predictions ``K_ts (K_ss + ridge * tr(K_ss)/n * I)^-1 y_s``; leading dims batch.

    The ridge is relative to the mean eigenvalue ``tr(K_ss)/n``, so it means the same for
    any kernel scale. The solve runs in float64: at small ridges the system is too
    ill-conditioned for float32. ``solve_ex`` skips the error check, which would sync
    with the host.
    """
    n = k_ss.shape[-1]
    k_ss = k_ss.double()
    jitter = ridge * k_ss.diagonal(dim1=-2, dim2=-1).sum(-1) / n
    system = k_ss + jitter[..., None, None] * torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)
    weights, _ = torch.linalg.solve_ex(system, y_s.double())
    return (k_ts.double() @ weights).to(k_ts.dtype)


def krr_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """``0.5 * ||prediction - target||^2``, averaged over the batch."""
    return 0.5 * (predictions - targets).square().sum(-1).mean()


@dataclass
class KernelConfig(DistillConfig):
    """Settings both kernel methods share."""

    # KRR regulariser relative to tr(K_ss)/n. Both papers use 1e-6 (--ridge 1e-6), with features far
    # wider than the set. Here a set can near the feature count (a width-32 ConvNet embeds 28x28 in
    # 288 features; multi:factor=2 decodes 400 images at the bytes of 10 per class), where
    # near-ridgeless KRR predicts wildly (the interpolation peak) and the set diverges: FRePo's
    # 30.5 % there became 82.0 % at 0.1 (README, "Kernel methods' ridge").
    ridge: float = 0.1
    # Neither paper augments while distilling; FRePo at 10 images per class gains 0.7 points
    # from DSA at 600 steps, 0.2 at 300 (README, "85 % at the bytes of 10").
    augment: bool = False

    def check(self) -> None:
        super().check()
        if self.ridge <= 0:
            raise DdplugError(f"ridge must be positive (KRR needs a regulariser), got {self.ridge}")


class KernelRidgeDistiller(Distiller):
    """Moves the set so KRR fitted on it predicts a real batch; subclasses give the kernels."""

    config: KernelConfig
    # The KRR fit on the set is every rank's; each predicts its share of the real batch.
    shares = "real-rows"

    @abstractmethod
    def kernels(self, iteration: int, real: Tensor, syn: Tensor) -> tuple[Tensor, Tensor]:
        """``(K_ts, K_ss)``: the real-by-synthetic and the synthetic-by-synthetic kernel."""

    def loss(self, iteration: int) -> Tensor:
        # Each rank reads, augments and predicts only its rows of the batch every rank draws:
        # its loss is its rows' share of the batch mean.
        real, real_labels = self.sample_real(iteration, mine=True)
        batch = self.num_classes * self.sampler.drawn(self.config.batch_real)
        real, syn = self.augment_pair(iteration, real, real_labels, self.images, self.labels)
        k_ts, k_ss = self.kernels(iteration, real, syn)
        y_s = centred_targets(self.targets(), self.num_classes)
        predictions = krr_predict(k_ts, k_ss, y_s, self.config.ridge)
        return krr_loss(predictions, centred_targets(real_labels, self.num_classes)) * (len(real) / batch)


@dataclass
class KIPConfig(KernelConfig):
    """KIP. ``model`` is the network of the empirical kernels (unused by the fc kernels).

    The default kernel is the NNGP: on Fashion-MNIST it matched or beat the empirical NTK
    at half the cost per step. The paper runs Adam at lr 0.01-0.04; here the base SGD
    (momentum 0.5) moves the images, at rates measured on Fashion-MNIST at ridge 1e-6: about 100 for
    "nngp" and "ntk", 300 for the smoother "fc-ntk"/"fc-nngp".
    """

    iterations: int = 1000
    kernel: str = "nngp"  # nngp | ntk (of `model`) | fc-nngp | fc-ntk (infinite-width ReLU MLP)
    num_networks: int = 2  # random initialisations averaged per step (empirical kernels)
    fc_depth: int = 3  # hidden layers of the fully connected network of the fc-* kernels
    max_kernel_memory_gb: float = 4.0
    lr_images: float = 100.0
    lr_labels: float = 10.0
    batch_real: int = 10

    def check(self) -> None:
        super().check()
        if self.kernel not in KIP_KERNELS:
            raise DdplugError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KIP_KERNELS)}")
        for name in ("num_networks", "fc_depth"):
            if getattr(self, name) < 1:
                raise DdplugError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_kernel_memory_gb <= 0:
            raise DdplugError(f"max_kernel_memory_gb must be positive, got {self.max_kernel_memory_gb}")


@register_distiller
class KIP(KernelRidgeDistiller):
    """Kernel inducing points: KRR with the NTK/NNGP of random networks or a closed form.

    Each step draws ``num_networks`` fresh scalar-output networks (the infinite-width NTK
    and NNGP are the same for every output, so one output gives the kernel at a fraction
    of the cost) and averages their empirical kernels; the ``fc-*`` kernels need none.
    """

    name = "kip"
    config_class = KIPConfig
    config: KIPConfig

    def __init__(self, real: ImageDataset, config: KIPConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(real, config, device)
        self._check_kernel_memory()

    def kernel_network(self, iteration: int, index: int) -> nn.Module:
        network = create_model(
            self.config.model,
            in_channels=self.real.in_channels,
            num_classes=1,
            image_size=self.real.image_size,
            seed=derive_seed(self.config.seed, "kernel-network", iteration, index),
        ).to(self.device)
        # Eval mode: a sample's kernel row must not depend on the rest of its batch (batch norm).
        return network.eval().requires_grad_(False)

    def feature_map(self) -> Callable[[nn.Module, Tensor], Tensor]:
        return ntk_features if self.config.kernel == "ntk" else nngp_features

    def kernels(self, iteration: int, real: Tensor, syn: Tensor) -> tuple[Tensor, Tensor]:
        if self.config.kernel.startswith("fc-"):
            kind = self.config.kernel.removeprefix("fc-")
            depth = self.config.fc_depth
            return relu_fc_kernel(real, syn, depth, kind), relu_fc_kernel(syn, syn, depth, kind)
        features = self.feature_map()
        k_ts = k_ss = torch.zeros((), device=self.device)
        for index in range(self.config.num_networks):
            network = self.kernel_network(iteration, index)
            with torch.no_grad():
                phi_t = features(network, real)
            phi_s = features(network, syn)
            k_ts = k_ts + phi_t @ phi_s.T
            k_ss = k_ss + phi_s @ phi_s.T
        return k_ts / self.config.num_networks, k_ss / self.config.num_networks

    def kernel_memory_gb(self) -> float:
        """Memory one step's kernels need, estimated up front: the feature rows kept for the
        backward pass and the activations behind them."""
        support = len(self.labels)
        real = self.num_classes * min(self.config.batch_real, self.sampler.min_count)
        if self.config.kernel.startswith("fc-"):
            floats = _FC_MATRICES_PER_LAYER * (self.config.fc_depth + 1) * (real + support) * support
            return floats * _BYTES_PER_FLOAT / 1e9
        network = self.kernel_network(0, 0)
        sample = self.real_images[:1]
        with torch.no_grad():
            # A Jacobian row for the NTK (every parameter, one output), penultimate features for the NNGP.
            row = self.feature_map()(network, sample).shape[1]
        # Backward keeps every layer's output; the NTK differentiates a backward pass, which keeps
        # about three such sets.
        activations = sum(leaf_output_sizes(network, network, sample)) * (3 if self.config.kernel == "ntk" else 1)
        # Every network's rows and synthetic-side activations stay until the backward pass;
        # the real side's activations are freed network by network.
        kept = (real + support) * row + support * activations
        return (self.config.num_networks * kept + real * activations) * _BYTES_PER_FLOAT / 1e9

    def _check_kernel_memory(self) -> None:
        needed = self.kernel_memory_gb()
        if needed > self.config.max_kernel_memory_gb:
            kernel = self.config.kernel
            source = "" if kernel.startswith("fc-") else f" of {self.config.model}"
            raise DdplugError(
                f"the {kernel} kernel{source} needs about {needed:.1f} GB per step, "
                f"more than max_kernel_memory_gb={self.config.max_kernel_memory_gb}: lower batch_real "
                f"(now {self.config.batch_real} real images per class), num_networks (now {self.config.num_networks}) "
                "or the model's width, or raise max_kernel_memory_gb if the device has the memory"
            )


@dataclass
class FRePoConfig(KernelConfig, PoolSettings):
    """FRePo. The paper: 10 networks reset after 100 updates, images by LAMB at lr 3e-4
    (cosine decay). Here the base SGD (momentum 0.5) moves the images (the linear feature
    kernel gives small image gradients, hence the large rate, measured on Fashion-MNIST) at a
    constant rate (``lr_schedule="cosine"`` gives the paper's decay, which measured lower on
    Fashion-MNIST: docs/results.md), and the pool networks train by SGD at ``init_lr`` with
    cross-entropy, as the evaluator's do."""

    iterations: int = 2000
    lr_images: float = 1000.0
    lr_labels: float = 10.0
    batch_real: int = 100

    def check(self) -> None:
        super().check()
        self.validate_pool()


@register_distiller
class FRePo(KernelRidgeDistiller):
    """Feature regression with a model pool: KRR on the penultimate features of one pool
    network per step (a linear kernel), after which that network trains on the set.

    A pool network is reinitialised after ``max_online_steps`` updates; the pool starts
    with staggered ages (as in the paper) so that resets spread out over time.
    """

    name = "frepo"
    config_class = FRePoConfig
    config: FRePoConfig

    def __init__(self, real: ImageDataset, config: FRePoConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(real, config, device)
        self.pool = NetworkPool(self.build_network, config.pool_architectures(config.model), seed=config.seed,
                                max_steps=config.max_online_steps, lr=config.init_lr)

    def kernels(self, iteration: int, real: Tensor, syn: Tensor) -> tuple[Tensor, Tensor]:
        network = self.pool.frozen(self.pool.slot(iteration))
        with torch.no_grad():
            phi_t = embed_in_chunks(network, real)
        phi_s = embed_in_chunks(network, syn)
        return phi_t @ phi_s.T, phi_s @ phi_s.T

    def step(self, iteration: int) -> Tensor:
        loss = super().step(iteration)
        # The chosen network then trains on the set, as in FRePo.
        self.pool.train(self.pool.slot(iteration), self.images.detach(), self.targets().detach(),
                        self.config.online_steps)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pool.load_state_dict(state["pool"])
