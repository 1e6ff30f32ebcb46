"""Distribution matching (DM; Zhao & Bilen, WACV 2023).

Each step samples a freshly initialised network and moves the synthetic images so that,
class by class, their mean embedding matches the mean embedding of a real batch.
All classes go through the network in one batched forward pass per side. With
``pool_size`` > 0 the network comes instead from a pool of networks that train on real
batches between uses (IDM's partially trained networks), so later layers' features carry
class information that fresh networks lack. With ``moments`` 2 each class also matches
its per-feature variance (a second statistic besides the mean, in the spirit of NCFM).
With ``embed_chunk`` > 0 the images go through the network that many at a time, and the
synthetic chunks are checkpointed (their activations recomputed in the backward pass
instead of kept): memory stays flat in the budget, for one more synthetic forward pass.
Otherwise, on a CPU, they go through in chunks of at most 16 MiB a layer, whose buffers the
heap reuses (all at once on a GPU, and for networks whose samples interact in training mode):
the same embeddings, faster at large budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddplug.data import ImageDataset
from ddplug.methods.base import Distiller
from ddplug.methods.config import DistillConfig
from ddplug.methods.running import register_distiller
from ddplug.methods.pool import NetworkPool, PoolSettings
from ddplug.methods.sampling import by_class
from ddplug.models.chunks import embed_in_chunks
from ddplug.models.template import batch_norm_layers
from ddplug.errors import DdplugError
from ddplug.privacy import clip_rows
from ddplug.seeding import derive_seed


@dataclass
class DMConfig(DistillConfig, PoolSettings):
    iterations: int = 20000
    lr_images: float = 1.0
    pool_size: int = 0  # 0: a fresh random network each iteration (the original DM)
    moments: int = 1  # statistics matched per class: 1 the mean embedding (DM), 2 also each feature's variance
    embed_chunk: int = 0  # images per forward pass, synthetic ones checkpointed; 0: heap-sized chunks on a CPU

    def check(self) -> None:
        super().check()
        self.validate_pool(minimum_size=0)
        if self.dp_epsilon and self.pool_size:
            raise DdplugError("a pool of networks trains on the real data, outside differential privacy: drop "
                              "pool_size or dp_epsilon")
        if self.moments not in (1, 2):
            raise DdplugError(f"moments must be 1 (class means) or 2 (means and variances), got {self.moments}")
        if self.dp_epsilon and self.moments != 1:
            raise DdplugError("only class means are released under differential privacy: use moments=1 with "
                              "dp_epsilon")


@register_distiller
class DistributionMatching(Distiller):
    name = "dm"
    config_class = DMConfig
    uses_labels = False
    private = True  # the real data enters only through class means of embeddings
    shares = "classes"  # a class's term sees only that class's real and synthetic images

    def __init__(self, real: ImageDataset, config: DMConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(real, config, device)
        self.real_labels = self.real.labels.to(self.device)
        if config.embed_chunk and batch_norm_layers(self.build_network(seed=0)):
            raise DdplugError(f"{config.model} normalises over the batch, so embedding it in chunks would change its "
                              "statistics: drop embed_chunk or match with a network without batch norm")
        self.pool = None if not config.pool_size else NetworkPool(
            self.build_network, config.pool_architectures(config.model), seed=config.seed,
            max_steps=config.max_online_steps, lr=config.init_lr)

    def network(self, iteration: int) -> torch.nn.Module:
        """The matching network of ``iteration``: fresh, or the pool's pick."""
        return self.random_network(iteration) if self.pool is None else self.pool.frozen(self.pool.slot(iteration))

    def random_network(self, iteration: int) -> torch.nn.Module:
        network = self.build_network(derive_seed(self.config.seed, "network", iteration))
        network.requires_grad_(False)  # only the images learn; skip weight gradients
        return network

    def loss(self, iteration: int) -> Tensor:
        if self.privacy is not None:
            return self.private_loss(iteration)
        network = self.network(iteration)
        # Each rank reads, augments and embeds only its own classes of the batch every rank draws.
        classes = self.my_classes()
        real, real_labels = self.sample_real(iteration, mine=True)
        syn, syn_labels = (by_class(part, self.num_classes, classes) for part in (self.images, self.labels))
        real, syn = self.augment_pair(iteration, real, real_labels, syn, syn_labels)
        with torch.no_grad():
            real_stats = class_statistics(self.embed(network, real), len(classes), self.config.moments)
        syn_stats = class_statistics(self.embed(network, syn), len(classes), self.config.moments)
        return (real_stats - syn_stats).square().sum()

    def private_loss(self, iteration: int) -> Tensor:
        """The loss with the real class means released by the Gaussian mechanism: a Poisson
        sample, clipped embeddings, noisy sums. The synthetic embeddings are clipped alike,
        so both sides are means of the same statistic."""
        network = self.network(iteration)
        index = self.privacy.sample(len(self.real_labels), self.secret_generator(iteration, "real"), self.device)
        real, real_labels = self.real_images[index], self.real_labels[index]
        real, syn = self.augment_pair(iteration, real, real_labels, self.images, self.labels)
        with torch.no_grad():
            real_mean = self.privacy.class_means(self.embed(network, real), real_labels, self.num_classes,
                                                 self.secret_generator(iteration, "dp-noise"))
        syn_mean = class_means(clip_rows(self.embed(network, syn), self.privacy.clip), self.num_classes)
        return (real_mean - syn_mean).square().sum()

    def embed(self, network: torch.nn.Module, images: Tensor) -> Tensor:
        """``network``'s embeddings of ``images``: ``embed_chunk`` at a time, checkpointed, when set."""
        chunk = self.config.embed_chunk
        return embed_in_chunks(network, images, chunk, checkpointed=bool(chunk))

    def step(self, iteration: int) -> Tensor:
        loss = super().step(iteration)
        if self.pool is not None:  # the network just used trains on the iteration's real batch
            self.pool.train(self.pool.slot(iteration), *self.sample_real(iteration), self.config.online_steps)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        return state if self.pool is None else {**state, "pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.pool is not None:
            self.pool.load_state_dict(state["pool"])



def class_means(features: Tensor, num_classes: int) -> Tensor:
    """Mean feature of each class for class-major batches of equal class sizes."""
    return features.reshape(num_classes, -1, features.shape[-1]).mean(dim=1)


def class_statistics(features: Tensor, num_classes: int, moments: int) -> Tensor:
    """Each class's mean feature, followed (``moments`` 2) by each feature's variance."""
    if moments == 1:
        return class_means(features, num_classes)
    variance, mean = torch.var_mean(features.reshape(num_classes, -1, features.shape[-1]), dim=1, correction=0)
    return torch.cat([mean, variance], dim=1)
