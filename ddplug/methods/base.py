"""The distiller interface that every method shares.

A distiller owns the learnable synthetic tensors and knows how to take one optimisation
step (``step``). Everything around the steps (progress bar, checkpoints, resume,
Ctrl-C) lives in :func:`ddplug.methods.running.run_distillation`, so methods stay short
and all behave alike; the settings are :class:`ddplug.methods.config.DistillConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ddplug.version import __version__
from ddplug.augment import DSA, DSAConfig
from ddplug.data import ZCA, ImageDataset
from ddplug.methods.sampling import ClassBalancedSampler
from ddplug.methods.selection import select_subset
from ddplug.distributed import my_share, sum_over_ranks, world_size
from ddplug.errors import DdplugError
from ddplug.models import create_model
from ddplug.privacy import PrivateClassMeans
from ddplug.seeding import derive_seed, make_generator
from ddplug.sets import SyntheticSet
from ddplug.methods.config import DistillConfig, check_private, lr_scale, parse_init
from ddplug.sets.param import create_param

MIN_STUDENT_LR = 1e-6
# Real images per class a code's masks are chosen from (FreD's variances), at most
# REFERENCE_VALUES values in all, so that many classes of large images stay in memory.
REFERENCE_PER_CLASS = 100
REFERENCE_VALUES = 2**26


class Distiller(ABC):
    """Learns a synthetic set for ``real``; subclasses implement :meth:`step`.

    The synthetic images are one tensor ordered class by class (``ipc`` per class), so a
    method can process every class in a single batched forward pass.

    Args:
        real: the real training images.
        config: the method's settings; checked against ``real`` before any work.
        device: where the code is learned.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[DistillConfig]] = DistillConfig
    uses_labels: ClassVar[bool] = True  # False: the loss ignores labels, so they can't be learned
    uses_lr: ClassVar[bool] = False  # True: the loss unrolls training, so its learning rate can be learned
    private: ClassVar[bool] = False  # True: reads real data only through self.privacy when dp_epsilon > 0
    # Under torchrun, what each rank's loss covers of a loss that is a sum of terms: "classes"
    # (terms that see only one class's images: my_classes()), "real-rows" (terms of single
    # real images: my_real_rows()), "student-batches" (MTT: terms of single synthetic images
    # in each student step), or "" (every rank computes the whole loss). With a share, the
    # losses and gradients are summed over the ranks (sum_shares) before every update. The
    # class declares the method's share; an instance whose configuration cannot split its
    # loss (MTT unrolled or with batch norm) sets its own to "".
    shares: str = ""

    def __init__(self, real: ImageDataset, config: DistillConfig, device: torch.device | str = "cpu") -> None:
        config.validate(real)
        if config.learn_labels and not self.uses_labels:
            raise DdplugError(f"{self.name} matches without labels, so learn_labels has nothing to learn; drop it")
        if config.learn_lr and not self.uses_lr:
            raise DdplugError(f"{self.name} does not unroll training, so learn_lr has nothing to learn; drop it")
        check_private(self.name, self.private, config)
        self.config = config
        self.device = torch.device(device)
        self.zca = ZCA.fit(real, config.zca_epsilon, self.device) if config.zca else None
        # Whitened, the real data is what every method matches against (and MTT's experts train on).
        self.real = real if self.zca is None else self.zca.whiten_dataset(real)
        self.num_classes = real.num_classes
        if self.shares == "classes" and world_size() > self.num_classes:
            raise DdplugError(f"{world_size()} ranks share {self.num_classes} classes: use at most "
                              f"{self.num_classes} processes")
        if self.shares and world_size() > 1 and config.dp_epsilon:
            raise DdplugError(f"under torchrun {self.name} shares its {self.shares} between ranks, which a private run "
                              "cannot (each rank would draw its own secret noise): run it in one process")
        self.real_images = self.real.images.to(self.device)
        self.sampler = ClassBalancedSampler(real.labels, real.num_classes).to(self.device)
        self.privacy = None if not config.dp_epsilon else PrivateClassMeans.calibrate(
            real.class_counts(), batch_per_class=config.batch_real, steps=config.iterations,
            epsilon=config.dp_epsilon, delta=config.dp_delta, clip=config.dp_clip)
        # Under DP the samples and the noise must be secret: from the public seed anyone could
        # regenerate the noise and subtract it. They come from OS entropy instead (kept in
        # checkpoints, so a resumed run goes on with the same secret), so runs differ.
        self.secret_seed = secrets.randbits(62) if self.privacy is not None else None
        self.param = create_param(config.param)
        self.image_shape = (real.in_channels, *real.image_size)
        self.layout = config.layout(real)
        self.per_class = self.layout.decoded_per_class  # decoded images per class
        self.labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(self.per_class)
        initial = self.param.encode(self._initial_images(), self.layout, self._reference_images())
        self.code = nn.ParameterDict({name: nn.Parameter(tensor) for name, tensor in initial.items()
                                      if tensor.is_floating_point()})
        # Masks the code chose from the data (FreD's coefficients) stay as chosen: not learned.
        self.masks = {name: tensor for name, tensor in initial.items() if not tensor.is_floating_point()}
        groups = [{"params": list(self.code.values()), "lr": config.lr_images}]
        self.label_logits: nn.Parameter | None = None
        if config.learn_labels:
            # Start at 99% on the true class: near the hard label, yet with a usable gradient.
            one_hot = nn.functional.one_hot(self.labels, self.num_classes).float()
            self.label_logits = nn.Parameter((one_hot * 0.99 + (1 - one_hot) * 0.01 / (self.num_classes - 1)).log())
            groups.append({"params": [self.label_logits], "lr": config.lr_labels})
        self.student_lr: nn.Parameter | None = None
        if config.learn_lr:
            self.student_lr = nn.Parameter(torch.tensor(config.init_lr, device=self.device))
            groups.append({"params": [self.student_lr], "lr": config.lr_lr})
        self.optimizer = torch.optim.SGD(groups, momentum=config.momentum)
        self.base_rates = [group["lr"] for group in groups]
        dsa_config = DSAConfig.for_dataset(real.name)
        if config.dsa_strategy is not None:
            dsa_config = dataclasses.replace(dsa_config, strategy=config.dsa_strategy)
        self.dsa = DSA(dsa_config) if config.augment else None
        self.rounding = False
        self.build_network(seed=0)  # a bad model spec fails here, before any long work

    @property
    def images(self) -> Tensor:
        """The synthetic images: the code decoded (for ``pixels``, the learnable tensor itself),
        rounded as storage rounds it once :meth:`begin` has reached ``round_from``."""
        code = {**self.code, **self.masks}
        if self.rounding:
            code = self.param.rounded(code, self.real.mean, self.real.std, whitened=self.zca is not None)
        return self.param.decode(code, self.image_shape)

    def begin(self, iteration: int) -> None:
        """Called before step ``iteration``: sets the learnables' rates by ``lr_schedule``, and
        from ``round_from`` of the iterations on, the code is learned through its storage's
        rounding. Both follow from the iteration alone, so a resumed run goes on alike."""
        scale = lr_scale(self.config.lr_schedule, iteration, self.config.iterations)
        for group, rate in zip(self.optimizer.param_groups, self.base_rates):
            group["lr"] = rate * scale
        self.rounding = iteration >= self.config.round_from * self.config.iterations

    def build_network(self, seed: int, model: str | None = None) -> nn.Module:
        """A freshly initialised matching network (``model``, by default ``config.model``) on the device."""
        return create_model(
            model or self.config.model,
            in_channels=self.real.in_channels,
            num_classes=self.num_classes,
            image_size=self.real.image_size,
            seed=seed,
        ).to(self.device)

    def _reference_images(self) -> Tensor | None:
        """Real images of every class (class by class, as many of each) for a code that chooses
        masks from the data; None for codes without masks, and under DP, whose code may see
        the real data only through the private mechanism (the masks then come from the noise)."""
        if torch.bool not in self.layout.dtypes.values() or self.privacy is not None:
            return None
        per_class = max(1, min(REFERENCE_PER_CLASS, REFERENCE_VALUES // (self.num_classes * math.prod(self.image_shape))))
        index = self.sampler.sample(per_class, make_generator(self.config.seed, "reference", device=self.device))
        return self.real_images[index.flatten()]

    def _initial_images(self) -> Tensor:
        generator = make_generator(self.config.seed, "init", device=self.device)
        init, blended = parse_init(self.config.init)
        if init == "noise":
            shape = (len(self.labels), self.real.in_channels, *self.real.image_size)
            return torch.randn(shape, generator=generator, device=self.device)
        if init == "blend":  # the mean of `blended` random images of the class, drawn with replacement
            index = self.sampler.sample_with_replacement(self.per_class, blended, generator)
            return self.real_images[index.flatten()].view(-1, blended, *self.image_shape).mean(dim=1)
        if init == "herding":
            # Features of the matching architecture at a seeded random init: training a network
            # first would cost a run of its own, and random networks' features already separate
            # images (DM matches distributions in them), so herding in them picks representatives.
            network = self.build_network(seed=derive_seed(self.config.seed, "herding-init"))
            return select_subset("herding", self.real, self.per_class, feature_network=network,
                                 device=self.device).images.to(self.device)
        chosen, real = (part.flatten() for part in self.sampler.sample_padded(self.per_class, generator))
        images = self.real_images[chosen].clone()
        if not bool(real.all()):  # slots beyond a small class's images: noise, as --init noise
            noise = torch.randn(images.shape, generator=generator, device=self.device)
            images = torch.where(real.view(-1, 1, 1, 1), images, noise)
        return images

    def targets(self) -> Tensor:
        """The synthetic labels: learned soft labels (N, K) or the hard class ids (N,)."""
        return self.labels if self.label_logits is None else self.label_logits.softmax(dim=1)

    def learning_rate(self) -> Tensor:
        """The student's learning rate as a 0-d tensor (a parameter when learned)."""
        if self.student_lr is None:
            return torch.tensor(self.config.init_lr, device=self.device)
        return self.student_lr

    def generator(self, iteration: int, purpose: str) -> torch.Generator:
        """The generator for ``purpose`` at ``iteration``: resume replays the same draws."""
        return make_generator(self.config.seed, purpose, iteration, device=self.device)

    def secret_generator(self, iteration: int, purpose: str) -> torch.Generator:
        """Like :meth:`generator`, from the run's secret seed: the DP mechanism's draws."""
        return make_generator(self.secret_seed, purpose, iteration, device=self.device)

    def sample_real(self, iteration: int, per_class: int | None = None, *, mine: bool = False) -> tuple[Tensor, Tensor]:
        """A class-balanced real batch (class-major order) and its labels. With ``mine``, only the
        part of that same draw whose loss terms this rank computes (its classes or its rows,
        :attr:`shares`), so a rank reads only those images from the data; in one process, all."""
        index = self.sampler.sample(per_class or self.config.batch_real, self.generator(iteration, "real"))
        labels = torch.arange(self.num_classes, device=self.device)[:, None].expand_as(index)
        if mine and self.shares == "classes":
            classes = self.my_classes()
            index, labels = index[classes], labels[classes]
        index, labels = index.flatten(), labels.flatten()
        if mine and self.shares == "real-rows":
            rows = self.my_real_rows(len(index))
            index, labels = index[rows], labels[rows]
        return self.real_images[index], labels

    def augment_pair(self, iteration: int, real: Tensor, real_labels: Tensor, syn: Tensor, syn_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Apply DSA with one draw per class shared by the real and synthetic images of that class."""
        if self.dsa is None:
            return real, syn
        return self.dsa.siamese(
            real, syn, groups=(real_labels, syn_labels), num_groups=self.num_classes,
            # DSA takes a CPU generator (it seeds its device draws from it) for reproducibility.
            generator=make_generator(self.config.seed, "dsa", iteration),
        )

    @abstractmethod
    def loss(self, iteration: int) -> Tensor:
        """The matching loss of ``iteration`` (its networks and batches), differentiable in the set."""

    def step(self, iteration: int) -> Tensor:
        """One optimisation step; returns the loss as a detached 0-d tensor (no host sync).

        Methods with inner loops (networks trained between image updates) override this.
        """
        loss = self.loss(iteration)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss = self.sum_shares(loss)
        self.update()
        return loss.detach()

    def sum_shares(self, loss: Tensor) -> Tensor:
        """Under torchrun with a share, the whole loss and the learnables' whole gradients
        (in ``.grad``): each summed over the ranks. ``loss`` as it is otherwise."""
        if not self.shares or world_size() == 1:
            return loss
        loss = loss.detach().clone()
        sum_over_ranks([loss])
        self.sum_shared_gradients()
        return loss

    def sum_shared_gradients(self) -> None:
        """Under torchrun with a share, each learnable's gradient (in ``.grad``) summed over the ranks."""
        if self.shares and world_size() > 1:
            sum_over_ranks([p.grad for group in self.optimizer.param_groups for p in group["params"]
                            if p.grad is not None])

    def my_classes(self) -> Tensor:
        """The classes whose loss terms this rank computes: all of them in one process."""
        every = torch.arange(self.num_classes, device=self.device)
        return every[my_share(self.num_classes)] if self.shares == "classes" else every

    def my_real_rows(self, count: int) -> Tensor:
        """The rows of a real batch of ``count`` whose loss terms this rank computes: all of
        them in one process."""
        every = torch.arange(count, device=self.device)
        return every[my_share(count)] if self.shares == "real-rows" else every

    def update(self) -> None:
        """Apply the gradients in ``.grad`` to the learnables."""
        self.optimizer.step()
        if self.student_lr is not None:
            # A large early gradient can push the learned lr through zero, and a student that
            # trains with a negative lr diverges (and cannot be evaluated): keep it positive.
            with torch.no_grad():
                self.student_lr.clamp_(min=MIN_STUDENT_LR)

    def synthetic_set(self) -> SyntheticSet:
        return SyntheticSet(
            images=self.images.detach().clone(),
            labels=self.targets().detach().clone(),
            num_classes=self.num_classes,
            mean=self.real.mean,
            std=self.real.std,
            lr=None if self.student_lr is None else self.student_lr.detach().clone(),
            meta={
                "method": self.name,
                "dataset": self.real.name,
                "ipc": self.config.ipc,
                "param": self.param.spec,
                "decoded_per_class": self.per_class,
                "config": dataclasses.asdict(self.config),
                "seed": self.config.seed,
                "zca_epsilon": None if self.zca is None else self.zca.epsilon,
                "ddplug_version": __version__,
            },
            code={name: tensor.detach().clone() for name, tensor in {**self.code, **self.masks}.items()},
            param=self.param.spec,
        )

    def learnables(self) -> dict[str, nn.Parameter]:
        tensors = {**self.code, "label_logits": self.label_logits, "student_lr": self.student_lr}
        return {name: tensor for name, tensor in tensors.items() if tensor is not None}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; methods with more state extend it."""
        state: dict[str, Any] = {name: tensor.detach().clone() for name, tensor in self.learnables().items()}
        state["optimizer"] = self.optimizer.state_dict()
        if self.secret_seed is not None:
            state["secret_seed"] = self.secret_seed
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, tensor in self.learnables().items():
                tensor.copy_(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.secret_seed is not None:
            self.secret_seed = int(state["secret_seed"])
