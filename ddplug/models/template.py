"""A user's own network as a ddplug model: every build is a freshly initialised copy of it.

Distillers draw fresh networks by spec; :func:`register_template` gives a network object a
spec, so a set can be condensed by matching the very architecture that will train on it
(the Avalanche plug-in's ``Condensation(model="strategy")``). Its embedding, which
distribution matching compares, is the input of its last linear layer.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from ddplug.errors import DdplugError
from ddplug.models.registry import register_model, unregister_model

# The registered networks, held weakly: a template's spec lives as long as its network.
_TEMPLATES: weakref.WeakValueDictionary[str, nn.Module] = weakref.WeakValueDictionary()


class TemplateCopy(nn.Module):
    """A fresh copy of a template network, with the ``embed`` every ddplug model has."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.head = last_linear(network)
        self.spec = ""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened input of the network's last linear layer."""
        seen: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0]))
        try:
            self.network(x)
        finally:
            hook.remove()
        return seen[-1].flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def linear_layers(network: nn.Module) -> list[nn.Linear]:
    """``network``'s ``nn.Linear`` layers in registration order: a template needs one."""
    return [module for module in network.modules() if isinstance(module, nn.Linear)]


def batch_norm_layers(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """``network``'s layers that normalise over the batch."""
    return [module for module in network.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def last_linear(network: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``network`` (its classifier, in every common layout)."""
    linears = linear_layers(network)
    if not linears:
        raise DdplugError(f"{type(network).__name__} has no nn.Linear layer, so it has no embedding to match: "
                          "condense with a ddplug model spec instead")
    return linears[-1]


def register_template(network: nn.Module) -> str:
    """The model spec whose every :func:`~ddplug.models.create_model` is a freshly
    initialised copy of ``network`` (its own layers' ``reset_parameters``, seeded as
    ``create_model`` seeds); registering the same object again returns the same spec.

    The copy ignores ``create_model``'s shape arguments: the network is the user's, built
    for their data. The template itself is never changed, nor kept alive: when it is
    garbage-collected, its spec is forgotten.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from ddplug.models import create_model
        >>> mine = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> spec = register_template(mine)
        >>> fresh = create_model(spec, in_channels=1, num_classes=10, image_size=(8, 8), seed=0)
        >>> fresh.embed(torch.zeros(2, 1, 8, 8)).shape, fresh(torch.zeros(2, 1, 8, 8)).shape
        (torch.Size([2, 32]), torch.Size([2, 10]))
        >>> torch.equal(fresh.network[1].weight, mine[1].weight)
        False
        >>> register_template(mine) == spec
        True
    """
    last_linear(network)
    name = f"template-{id(network):x}"
    if _TEMPLATES.get(name) is network:
        return name
    _TEMPLATES[name] = network
    template = weakref.ref(network)

    @register_model(name)
    def fresh_copy(in_channels: int, num_classes: int, image_size: tuple[int, int]) -> TemplateCopy:
        copied = copy.deepcopy(template()).cpu()  # alive: its finalizer forgets this spec with it
        for module in copied.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return TemplateCopy(copied)

    weakref.finalize(network, unregister_model, name)
    return name
