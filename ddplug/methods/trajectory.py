"""Matching training trajectories (MTT; Cazenavette et al., CVPR 2022), with an exact gradient
whose memory does not grow with the number of student steps.

Each iteration starts a student at an expert's parameters of a random epoch, trains it for
``syn_steps`` SGD steps on synthetic minibatches with the (learnable) student lr, and
measures how far it ends from where the expert was ``expert_epochs`` later:
``||θ_N - θ*||² / ||θ_0 - θ*||²``.

The gradient of that loss needs the whole student run. ``memory="unrolled"`` keeps the
graph of every step, as the original code does: memory grows linearly with ``syn_steps``.
``memory="constant"`` computes the same gradient by reverse-mode recursion over the steps
``θ_{t+1} = θ_t - α g_t``: with ``λ_t = dℓ/dθ_t``,

    dℓ/dX += -α (∂g_t/∂X)ᵀ λ_{t+1},   dℓ/dα += -g_t · λ_{t+1},   λ_t = λ_{t+1} - α H_t λ_{t+1},

one step at a time, each from a graph of that step only (``H_t λ`` is a Hessian-vector
product). Going backwards needs ``θ_t``; instead of storing all of them, at most
``memory_slots`` parameter vectors are kept and the others are recomputed from the nearest
stored one (binomial checkpointing, placed by dynamic programming to recompute least). The
synthetic batches and augmentations of each step are drawn from per-step seeds, so a
recomputed step is the same step. Memory: one step's graph plus ``memory_slots + 3``
parameter vectors, whatever ``syn_steps``.

Under torchrun (``memory="constant"``, a network without batch norm) each student step's
gradient is a mean over its batch, so every rank computes the terms of its share of the
batch's images: the step's gradient and each Hessian-vector product are summed over the
ranks as they are needed, and every rank's gradients in the set are its images' shares, summed
before the update. A batch-normalised student couples its batch, and the unrolled graph would
need its sums differentiated, so those run the whole step on every rank.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ddplug.data import ImageDataset
from ddplug.distributed import my_share, sum_over_ranks, world_size
from ddplug.methods.base import Distiller
from ddplug.methods.config import DistillConfig
from ddplug.methods.running import register_distiller
from ddplug.models.template import batch_norm_layers
from ddplug.methods.experts import ExpertSet, ExpertTraining, ensure_experts, load_experts
from ddplug.errors import DdplugError
from ddplug.seeding import make_generator

MEMORY_MODES = ("constant", "unrolled")


@dataclasses.dataclass
class MTTConfig(DistillConfig):
    """MTT's settings; defaults follow the paper's ConvNet runs (F-MNIST/CIFAR-10 without ZCA)."""

    iterations: int = 5000
    lr_images: float = 100.0
    learn_lr: bool = True
    syn_steps: int = 20  # student SGD steps per iteration
    expert_epochs: int = 2  # expert epochs the student's steps should cover
    max_start_epoch: int = 20  # the student starts at an expert epoch in [0, max_start_epoch)
    num_experts: int = 100
    expert_folder: str | None = None  # None: the cache folder, trained there if missing
    expert_train_epochs: int | None = None  # for missing experts; None: just the epochs needed
    expert_per_class: int | None = None  # missing experts train on this many images per class; None: all
    batch_syn: int | None = None  # synthetic images per student step; None: the whole set
    memory: str = "constant"  # "constant" (exact, flat in syn_steps) or "unrolled" (the original)
    memory_slots: int = 8  # parameter vectors memory="constant" keeps; more: less recomputation

    @property
    def needed_expert_epochs(self) -> int:
        """The last expert epoch a student can be matched to."""
        return self.max_start_epoch - 1 + self.expert_epochs

    def check(self) -> None:
        super().check()
        for name in ("syn_steps", "expert_epochs", "max_start_epoch", "num_experts"):
            if getattr(self, name) < 1:
                raise DdplugError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.memory_slots < 0:
            raise DdplugError(f"memory_slots must be 0 or more, got {self.memory_slots}")
        if self.batch_syn is not None and self.batch_syn < 1:
            raise DdplugError(f"batch_syn must be at least 1 (or None for the whole set), got {self.batch_syn}")
        if self.memory not in MEMORY_MODES:
            raise DdplugError(f"unknown memory mode {self.memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        if self.expert_train_epochs is not None and self.expert_train_epochs < self.needed_expert_epochs:
            raise DdplugError(
                f"expert_train_epochs {self.expert_train_epochs} is too few: max_start_epoch - 1 + expert_epochs "
                f"= {self.needed_expert_epochs}; raise it or lower --max-start-epoch / --expert-epochs"
            )


@dataclasses.dataclass
class StudentRun:
    """One iteration's student training, fully determined so that any step can be replayed.

    Step ``t`` takes the synthetic images ``batches[t]``, augments them with
    ``augment(images, t)`` (the same draw on every call) and does one SGD step.
    """

    network: nn.Module  # architecture only: its parameters are replaced by the flat vector
    start: Tensor  # θ_0, flat
    target: Tensor  # the expert's parameters expert_epochs later, flat
    batches: Tensor  # (syn_steps, batch) indices into the synthetic set
    augment: Callable[[Tensor, int], Tensor] | None = None
    mine: Tensor | None = None  # the positions of each batch whose terms this rank computes; None: all

    @property
    def shared(self) -> bool:
        """Whether each step's gradient is split between ranks (to be summed over them)."""
        return self.mine is not None

    @property
    def steps(self) -> int:
        return self.batches.shape[0]

    def gradient(self, theta: Tensor, images: Tensor, targets: Tensor, step: int, create_graph: bool) -> Tensor:
        """The student's cross-entropy gradient at ``theta`` (which must require grad) on step
        ``step``'s batch: this rank's share of it when the run is shared."""
        index = self.batches[step]
        x = images[index]
        if self.augment is not None:
            x = self.augment(x, step)  # the whole batch: every rank draws the same augmentation
        if self.mine is None:
            loss = F.cross_entropy(functional_call(self.network, self._parameters(theta), (x,)), targets[index])
        else:
            logits = functional_call(self.network, self._parameters(theta), (x[self.mine],))
            loss = F.cross_entropy(logits, targets[index][self.mine], reduction="sum") / len(index)
        return torch.autograd.grad(loss, theta, create_graph=create_graph)[0]

    def matching_loss(self, end: Tensor) -> Tensor:
        return (end - self.target).square().sum() / (self.start - self.target).square().sum()

    def _parameters(self, theta: Tensor) -> dict[str, Tensor]:
        """The network's parameters as views into the flat vector ``theta``."""
        named = list(self.network.named_parameters())
        pieces = theta.split([p.numel() for _, p in named])
        return {name: piece.view(p.shape) for (name, p), piece in zip(named, pieces)}


@dataclasses.dataclass
class MatchingGradients:
    """The matching loss of a student run and its gradients (``targets`` None for hard labels)."""

    loss: Tensor
    images: Tensor
    targets: Tensor | None
    lr: Tensor


@torch.enable_grad()  # the student trains by gradients even where the caller turned them off
def matching_gradients(
    run: StudentRun,
    images: Tensor,
    targets: Tensor,
    lr: Tensor,
    *,
    memory: str = "constant",
    memory_slots: int = 8,
) -> MatchingGradients:
    """The matching loss of ``run`` trained on ``images``/``targets`` with ``lr``, and its exact
    gradients in the images, the (soft) targets and the lr; ``memory`` picks how."""
    leaves = _Leaves(images, targets, lr)
    if memory == "unrolled":
        loss = unrolled_loss(run, leaves.images, leaves.targets, leaves.lr)
        grads = torch.autograd.grad(loss, leaves.differentiable())
        return leaves.result(loss.detach(), grads)
    if memory == "constant":
        return _ReverseSweep(run, leaves, memory_slots).compute()
    raise DdplugError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")


@torch.enable_grad()
def unrolled_loss(run: StudentRun, images: Tensor, targets: Tensor, lr: Tensor) -> Tensor:
    """The matching loss with the graph of every student step kept (differentiable in all inputs)."""
    theta = run.start.detach().clone().requires_grad_(True)
    for step in range(run.steps):
        theta = theta - lr * run.gradient(theta, images, targets, step, create_graph=True)
    return run.matching_loss(theta)


class _Leaves:
    """Detached copies of the differentiated inputs, and the assembly of their gradients."""

    def __init__(self, images: Tensor, targets: Tensor, lr: Tensor) -> None:
        self.images = images.detach().requires_grad_(True)
        self.soft = targets.is_floating_point()
        self.targets = targets.detach().requires_grad_(self.soft)
        self.lr = lr.detach().requires_grad_(True)

    def differentiable(self) -> list[Tensor]:
        return [self.images, self.targets, self.lr] if self.soft else [self.images, self.lr]

    def result(self, loss: Tensor, grads: Sequence[Tensor]) -> MatchingGradients:
        if self.soft:
            return MatchingGradients(loss, grads[0], grads[1], grads[2])
        return MatchingGradients(loss, grads[0], None, grads[1])


class _ReverseSweep:
    """The constant-memory backward pass: reverse-mode recursion over the student steps."""

    def __init__(self, run: StudentRun, leaves: _Leaves, memory_slots: int) -> None:
        self.run = run
        self.leaves = leaves
        self.slots = min(memory_slots, run.steps - 1)
        self.splits = _checkpoint_splits(run.steps, self.slots)
        self.lr = leaves.lr.detach()
        self.frozen_images = leaves.images.detach()
        self.frozen_targets = leaves.targets.detach()
        self.grads = [torch.zeros_like(leaf) for leaf in leaves.differentiable()]
        self.adjoint: Tensor | None = None  # λ_{t+1} while step t is reversed
        self.loss: Tensor | None = None

    def compute(self) -> MatchingGradients:
        self._reverse(self.run.start.detach(), 0, self.run.steps, self.slots)
        return self.leaves.result(self.loss, self.grads)

    def _advance(self, theta: Tensor, start: int, stop: int) -> Tensor:
        """``θ_stop`` from ``θ_start``, without any graph kept."""
        for step in range(start, stop):
            theta = theta.detach().requires_grad_(True)
            gradient = self.run.gradient(theta, self.frozen_images, self.frozen_targets, step, create_graph=False)
            if self.run.shared:
                sum_over_ranks([gradient])
            theta = theta.detach() - self.lr * gradient
        return theta.detach()

    def _reverse(self, theta: Tensor, start: int, stop: int, slots: int) -> None:
        """Reverse steps ``start..stop-1`` given ``θ_start``, last step first."""
        while stop - start > 1 and slots > 0:
            slots = min(slots, stop - start - 1)
            middle = start + self.splits[slots][stop - start]
            self._reverse(self._advance(theta, start, middle), middle, stop, slots - 1)
            stop = middle
        for step in reversed(range(start, stop)):
            self._reverse_step(self._advance(theta, start, step), step)

    def _reverse_step(self, theta: Tensor, step: int) -> None:
        theta = theta.detach().requires_grad_(True)
        leaves = self.leaves
        gradient = self.run.gradient(theta, leaves.images, leaves.targets, step, create_graph=True)
        if self.adjoint is None:  # the last step: its end point gives the loss and λ_N
            whole = gradient.detach()
            if self.run.shared:  # a copy: the graph still holds this rank's share
                whole = whole.clone()
                sum_over_ranks([whole])
            end = theta.detach() - self.lr * whole
            self.loss = self.run.matching_loss(end)
            self.adjoint = 2 * (end - self.run.target) / (self.run.start - self.run.target).square().sum()
        product = (gradient * self.adjoint).sum()
        hessian_vector, *input_grads = torch.autograd.grad(product, [theta, *leaves.differentiable()[:-1]])
        for accumulated, grad in zip(self.grads, input_grads):
            accumulated.sub_(self.lr * grad)
        self.grads[-1].sub_(product.detach())
        if self.run.shared:
            sum_over_ranks([hessian_vector])
        self.adjoint = self.adjoint - self.lr * hessian_vector


@functools.cache
def _checkpoint_splits(steps: int, slots: int) -> list[list[int]]:
    """``splits[s][n]``: where, counted from the first step, to store the next parameter vector
    when reversing ``n`` steps with ``s`` free slots, so that the fewest steps are recomputed.

    Cost of reversing ``n`` steps: with no slot, every step is recomputed from the first,
    ``n(n-1)/2`` steps; with ``s`` slots, advance ``k`` steps, store, reverse the last ``n - k``
    steps with ``s - 1`` slots, then the first ``k`` with ``s``.
    """
    cost = [[n * (n - 1) // 2 for n in range(steps + 1)]]
    splits = [[0] * (steps + 1)]
    for s in range(1, slots + 1):
        cost.append([0] * (steps + 1))
        splits.append([0] * (steps + 1))
        for n in range(2, steps + 1):
            cost[s][n], splits[s][n] = min((k + cost[s - 1][n - k] + cost[s][k], k) for k in range(1, n))
    return splits


@register_distiller
class TrajectoryMatching(Distiller):
    name = "mtt"
    config_class = MTTConfig
    uses_labels = True
    uses_lr = True
    shares = "student-batches"

    def __init__(self, real: ImageDataset, config: MTTConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(real, config, device)
        self.config: MTTConfig = config
        experts = self._experts()
        if len(experts) < config.num_experts:
            raise DdplugError(
                f"{experts.folder} holds {len(experts)} experts of {config.needed_expert_epochs}+ epochs but "
                f"num_experts is {config.num_experts}: lower --num-experts or train more with `ddplug experts`"
            )
        self.network = self.build_network(seed=0)  # the architecture; its weights come from the experts
        if config.memory == "unrolled" or batch_norm_layers(self.network):
            self.shares = ""
        if experts.num_params != sum(p.numel() for p in self.network.parameters()):
            raise DdplugError(f"the experts in {experts.folder} do not fit {config.model}: train experts of this model")
        trajectories = experts.stack(config.needed_expert_epochs, config.num_experts)
        # Pinned host memory lets each iteration copy its two parameter vectors without a sync.
        self.trajectories = trajectories.pin_memory() if self.device.type == "cuda" else trajectories

    def _experts(self) -> ExpertSet:
        config = self.config
        zca_epsilon = None if self.zca is None else self.zca.epsilon  # self.real is whitened with it
        if config.expert_folder is not None:
            return load_experts(config.expert_folder, dataset=self.real.name, model=config.model,
                                min_epochs=config.needed_expert_epochs, zca_epsilon=zca_epsilon)
        return ensure_experts(self.real, model=config.model, num_experts=config.num_experts,
                              epochs=config.expert_train_epochs or config.needed_expert_epochs,
                              training=ExpertTraining(per_class=config.expert_per_class, zca_epsilon=zca_epsilon),
                              device=self.device, progress=sys.stderr.isatty())

    def student_run(self, iteration: int) -> StudentRun:
        """The expert, start epoch, batches and augmentations of ``iteration``."""
        # A CPU generator: the host picks expert and epoch without waiting for the device.
        choice = make_generator(self.config.seed, "expert", iteration)
        expert = int(torch.randint(len(self.trajectories), (1,), generator=choice))
        start = int(torch.randint(self.config.max_start_epoch, (1,), generator=choice))
        trajectory = self.trajectories[expert]
        return StudentRun(
            network=self.network,
            start=trajectory[start].to(self.device, non_blocking=True),
            target=trajectory[start + self.config.expert_epochs].to(self.device, non_blocking=True),
            batches=self._batches(iteration),
            augment=None if self.dsa is None else functools.partial(self._augment, iteration),
            mine=self._my_positions(),
        )

    def _my_positions(self) -> Tensor | None:
        """The positions of every student batch this rank computes; None in one process or unshared."""
        if not self.shares or world_size() == 1:
            return None
        size = min(self.config.batch_syn or len(self.labels), len(self.labels))
        return torch.arange(size, device=self.device)[my_share(size)]

    def _batches(self, iteration: int) -> Tensor:
        """``(syn_steps, batch_syn)`` indices: passes over the set in random order, as MTT's student."""
        n, steps = len(self.labels), self.config.syn_steps
        size = min(self.config.batch_syn or n, n)
        per_pass = n // size  # the remainder of each pass sits out, so every batch is full
        generator = self.generator(iteration, "syn-batches")
        passes = [torch.randperm(n, generator=generator, device=self.device) for _ in range(-(-steps // per_pass))]
        return torch.stack(passes)[:, : per_pass * size].reshape(-1, size)[:steps]

    def _augment(self, iteration: int, images: Tensor, step: int) -> Tensor:
        return self.dsa(images, generator=make_generator(self.config.seed, "syn-dsa", iteration, step))

    def loss(self, iteration: int) -> Tensor:
        """The matching loss of ``iteration`` through the unrolled student (differentiable; the
        whole batch on every rank)."""
        run = dataclasses.replace(self.student_run(iteration), mine=None)
        return unrolled_loss(run, self.images, self.targets(), self.learning_rate())

    def step(self, iteration: int) -> Tensor:
        targets, images = self.targets(), self.images
        result = matching_gradients(self.student_run(iteration), images, targets, self.learning_rate(),
                                    memory=self.config.memory, memory_slots=self.config.memory_slots)
        self.optimizer.zero_grad(set_to_none=True)
        images.backward(result.images)  # into the code, through the decoder
        if self.label_logits is not None:
            targets.backward(result.targets)
        if self.student_lr is not None:
            self.student_lr.grad = result.lr
        self.sum_shared_gradients()  # every rank's loss is already the whole loss
        self.update()
        return result.loss
