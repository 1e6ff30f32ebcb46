"""Distribution matching around given weights (the client step of FedDM; Xiong et al., CVPR 2023).

DM draws a freshly initialised network every iteration. Here each iteration's network is
an anchor model (in federated learning, the current global model) with Gaussian noise
added to its weights, so the set matches the real data as that model and its close
neighbours see it. Matching uses embeddings only, so only the anchor's feature extractor
is loaded: an anchor with more output classes than the data being condensed (a client
that holds a few of the classes) fits as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ddplug.methods.running import register_distiller
from ddplug.data import ImageDataset
from ddplug.methods.dm import DistributionMatching, DMConfig
from ddplug.errors import DdplugError
from ddplug.seeding import derive_seed

FEATURES_PREFIX = "features."


@dataclass
class AnchoredDMConfig(DMConfig):
    anchor: str = ""  # safetensors file holding the anchor model's state_dict (the matching model's)
    anchor_noise: float = 0.01  # std of the Gaussian noise added to every feature weight, per iteration

    def check(self) -> None:
        super().check()
        if not self.anchor:
            raise DdplugError("anchored-dm needs an anchor (--anchor PATH): a safetensors file of the anchor model's state_dict")
        if self.anchor_noise < 0:
            raise DdplugError(f"anchor_noise must be at least 0, got {self.anchor_noise}")
        if self.pool_size:
            raise DdplugError("anchored-dm draws its networks around the anchor, not from a pool: drop pool_size")


@register_distiller
class AnchoredDistributionMatching(DistributionMatching):
    name = "anchored-dm"
    config_class = AnchoredDMConfig

    def __init__(self, real: ImageDataset, config: AnchoredDMConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(real, config, device)
        self.anchor = load_anchor_features(config.anchor, self.build_network(seed=0), self.device)

    def random_network(self, iteration: int) -> torch.nn.Module:
        network = self.build_network(derive_seed(self.config.seed, "network", iteration))
        network.features.load_state_dict(self.anchor)
        generator = self.generator(iteration, "anchor-noise")
        with torch.no_grad():
            for parameter in network.features.parameters():
                noise = torch.randn(parameter.shape, generator=generator, device=self.device)
                parameter.add_(noise, alpha=self.config.anchor_noise)
        network.requires_grad_(False)
        return network


def load_anchor_features(path: str | Path, network: torch.nn.Module, device: torch.device) -> dict[str, Tensor]:
    """The feature-extractor tensors of the state_dict in ``path``, checked against ``network``."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise DdplugError(f"cannot read the anchor weights {path}: {error}") from None
    features = {key.removeprefix(FEATURES_PREFIX): value.to(device) for key, value in state.items()
                if key.startswith(FEATURES_PREFIX)}
    try:
        network.features.load_state_dict(features)
    except RuntimeError as error:
        reason = " ".join(str(error).split())
        raise DdplugError(f"the anchor weights {path} do not fit the matching model {network.spec}: {reason}") from None
    return features
