"""A pool of networks that keep training between uses and are reinitialised when old.

FRePo matches with pool networks that train on the synthetic set; pooled DM (IDM-style)
matches with pool networks that train on real batches, so the embeddings come from
partially trained networks of every age rather than from fresh ones only. The pool's
networks may be of several architectures (``pool_models``), taken in turn by slot, so the
set is matched to more than one kind of network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddplug.errors import DdplugError
from ddplug.models import check_model_spec
from ddplug.seeding import derive_seed

POOL_MOMENTUM = 0.9  # the pool trains as the evaluator's networks do (SGD, momentum 0.9)
MAX_POOL_SIZE = 1000  # the papers use 10


@dataclass
class PoolSettings:
    """The pool's settings, shared by the configs of the methods that match with a pool."""

    pool_size: int = 10  # networks in the pool
    max_online_steps: int = 100  # updates a pool network gets before it is reinitialised
    online_steps: int = 1  # updates of the chosen network after each step
    pool_models: str = ""  # the pool's architectures, specs joined by "+", slot i taking the (i mod n)-th; "" = model

    def _named_architectures(self) -> list[str]:
        return [kind.strip() for kind in self.pool_models.split("+")] if self.pool_models else []

    def pool_architectures(self, model: str) -> list[str]:
        """The architecture of each pool slot's network, in slot order (``model`` for all when
        ``pool_models`` is empty)."""
        kinds = self._named_architectures() or [model]
        return [kinds[slot % len(kinds)] for slot in range(self.pool_size)]

    def validate_pool(self, minimum_size: int = 1) -> None:
        for name, minimum in (("pool_size", minimum_size), ("max_online_steps", 1), ("online_steps", 1)):
            if getattr(self, name) < minimum:
                raise DdplugError(f"{name} must be at least {minimum}, got {getattr(self, name)}")
        if self.pool_size > MAX_POOL_SIZE:  # every pool network lives in memory at once
            raise DdplugError(f"pool_size {self.pool_size} is over {MAX_POOL_SIZE} networks: choose a smaller pool")
        kinds = self._named_architectures()
        if kinds:
            if not all(kinds):
                raise DdplugError(f"pool_models {self.pool_models!r} has an empty architecture: join model specs "
                                  "with '+', e.g. pool_models=convnet:width=32+mlp")
            if len(kinds) > self.pool_size:
                raise DdplugError(f"pool_models names {len(kinds)} architectures but pool_size is {self.pool_size}: "
                                  f"raise pool_size to at least {len(kinds)} so that every architecture has a slot")
            for kind in kinds:
                check_model_spec(kind)


class NetworkPool:
    """One network per entry of ``architectures``, slot ``i``'s made by ``build(seed,
    architectures[i])``; each is reinitialised after ``max_steps`` updates, and their ages
    start evenly spread so the pool always holds every age."""

    def __init__(self, build: Callable[[int, str], nn.Module], architectures: Sequence[str], *, seed: int,
                 max_steps: int, lr: float) -> None:
        self.build, self.seed, self.max_steps, self.lr = build, seed, max_steps, lr
        self.architectures = list(architectures)
        self.size = size = len(self.architectures)
        self.steps = [slot * max_steps // size for slot in range(size)]
        self.generations = [0] * size
        self.networks = [self._fresh(slot, 0) for slot in range(size)]
        self.optimizers = [self._optimizer(network) for network in self.networks]

    def _fresh(self, slot: int, generation: int) -> nn.Module:
        return self.build(derive_seed(self.seed, "pool", slot, generation), self.architectures[slot])

    def _optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(network.parameters(), lr=self.lr, momentum=POOL_MOMENTUM)

    def slot(self, iteration: int) -> int:
        """The network used at ``iteration`` (a seeded draw, so a resumed run picks alike)."""
        return derive_seed(self.seed, "pool-slot", iteration) % self.size

    def frozen(self, slot: int) -> nn.Module:
        """Network ``slot`` in eval mode without weight gradients: only the set learns from it."""
        return self.networks[slot].eval().requires_grad_(False)

    def train(self, slot: int, images: Tensor, targets: Tensor, steps: int = 1) -> None:
        """``steps`` SGD steps of network ``slot`` on ``images`` (reinitialised first when old)."""
        if self.steps[slot] >= self.max_steps:
            self.generations[slot] += 1
            self.networks[slot] = self._fresh(slot, self.generations[slot])
            self.optimizers[slot] = self._optimizer(self.networks[slot])
            self.steps[slot] = 0
        network, optimizer = self.networks[slot], self.optimizers[slot]
        network.train().requires_grad_(True)
        for _ in range(steps):
            loss = F.cross_entropy(network(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.steps[slot] += steps

    def state_dict(self) -> dict[str, Any]:
        return {"networks": [copy.deepcopy(network.state_dict()) for network in self.networks],
                "optimizers": [copy.deepcopy(optimizer.state_dict()) for optimizer in self.optimizers],
                "steps": list(self.steps), "generations": list(self.generations)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.generations = list(state["steps"]), list(state["generations"])
        for slot, (weights, optimizer_state) in enumerate(zip(state["networks"], state["optimizers"])):
            self.networks[slot] = self._fresh(slot, self.generations[slot])
            self.networks[slot].load_state_dict(weights)
            self.optimizers[slot] = self._optimizer(self.networks[slot])
            self.optimizers[slot].load_state_dict(optimizer_state)
