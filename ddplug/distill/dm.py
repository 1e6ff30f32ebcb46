"""Distribution matching (DM; Zhao & Bilen, WACV 2023).

Each step samples a freshly initialised network and moves the synthetic images so that,
class by class, their mean embedding matches the mean embedding of a real batch.
All classes go through the network in one batched forward pass per side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddplug.distill.base import DistillConfig, Distiller
from ddplug.distill.condenser import register_distiller
from ddplug.seeding import derive_seed


@dataclass
class DMConfig(DistillConfig):
    iterations: int = 20000
    lr_images: float = 1.0


@register_distiller
class DistributionMatching(Distiller):
    name = "dm"
    config_class = DMConfig
    uses_labels = False

    def random_network(self, iteration: int) -> torch.nn.Module:
        network = self.build_network(derive_seed(self.config.seed, "network", iteration))
        network.requires_grad_(False)  # only the images learn; skip weight gradients
        return network

    def loss(self, iteration: int) -> Tensor:
        network = self.random_network(iteration)
        real, real_labels = self.sample_real(iteration)
        real, syn = self.augment_pair(iteration, real, real_labels, self.images, self.labels)
        with torch.no_grad():
            real_mean = class_means(network.embed(real), self.num_classes)
        syn_mean = class_means(network.embed(syn), self.num_classes)
        return (real_mean - syn_mean).square().sum()


def class_means(features: Tensor, num_classes: int) -> Tensor:
    """Mean feature of each class for class-major batches of equal class sizes."""
    return features.reshape(num_classes, -1, features.shape[-1]).mean(dim=1)
