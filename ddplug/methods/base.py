"""The distiller interface that every method shares, and the loop that runs one.

A distiller owns the learnable synthetic tensors and knows how to take one optimisation
step (``step``). Everything around the steps (progress bar, checkpoints, resume,
Ctrl-C) lives in :func:`run_distillation`, so methods stay short and all behave alike.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddplug.version import __version__
from ddplug.augment import DSA, DSAConfig
from ddplug.data import ZCA, ImageDataset
from ddplug.methods.condenser import (
    CHECKPOINT_FILE,
    C,
    Condensed,
    Condenser,
    register_condenser,
    snapshot_path,
)
from ddplug.methods.sampling import ClassBalancedSampler
from ddplug.methods.selection import select_subset
from ddplug.errors import DdplugError
from ddplug.memory import check_decoded_size
from ddplug.models import check_model_spec, create_model
from ddplug.privacy import PrivateClassMeans
from ddplug.seeding import derive_seed, make_generator
from ddplug.sets import SyntheticSet, save_set
from ddplug.sets.files import unpickling_cause
from ddplug.sets.param import Layout, create_param, raw_images_per_class
from ddplug.storage import atomic_write

if TYPE_CHECKING:
    from ddplug.presets import Preset

INITIALISATIONS = ("real", "noise", "herding")
MIN_STUDENT_LR = 1e-6
MAX_ITERATIONS = 10**9  # a checkpoint recording more is not one ddplug wrote


@dataclass
class DistillConfig:
    """Settings every method has; methods subclass it with their own fields and defaults."""

    ipc: int = 10
    budget_bytes: int = 0  # > 0: the code's bytes for the whole set, in place of ipc raw images per class
    iterations: int = 1000
    model: str = "convnet"  # spec of the network(s) used for matching
    init: str = "real"  # random "real" images of each class, Gaussian "noise", or the "herding" selection
    lr_images: float = 0.1
    momentum: float = 0.5
    batch_real: int = 256  # real images per class per step
    augment: bool = True  # DSA on real and synthetic batches alike
    dsa_strategy: str | None = None  # None: the dataset's standard strategy
    learn_labels: bool = False  # learn soft labels (softmax of per-image logits) with the images
    lr_labels: float = 1.0
    learn_lr: bool = False  # learn the student's learning rate (methods that unroll training)
    init_lr: float = 0.01  # the student's learning rate (its start value when learned)
    lr_lr: float = 1e-5
    zca: bool = False  # distil (and evaluate) in the ZCA-whitened space of the real training images
    zca_epsilon: float = 0.1  # added to the covariance's eigenvalues (MTT's and KIP's CIFAR value)
    param: str = "pixels"  # what is learned: a parameterisation spec (ddplug.sets.param), e.g. multi:factor=2
    dp_epsilon: float = 0.0  # > 0: differentially private at this (epsilon, dp_delta), for methods that can be (dm)
    dp_delta: float = 1e-5
    dp_clip: float = 10.0  # bound on each real image's embedding norm under DP (ConvNet's on Fashion-MNIST: ~13)
    seed: int = 0

    def layout(self, real: ImageDataset) -> Layout:
        """How ``param`` fills the budget: ``budget_bytes`` shared by the classes, or else
        ``ipc`` raw uint8 images' bytes per class."""
        shape = (real.in_channels, *real.image_size)
        per_class = self.budget_bytes // real.num_classes if self.budget_bytes else self.ipc * math.prod(shape)
        return create_param(self.param).layout(real.num_classes, shape, per_class)

    def check(self) -> None:
        """Fail at once on settings that cannot work whatever the data (values, choices, specs);
        methods add their own rules. :meth:`validate` adds the rules that need the data."""
        for setting in dataclasses.fields(self):
            value = getattr(self, setting.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value) or value < 0:
                raise DdplugError(f"{setting.name} must be a finite number, 0 or more, got {value}")
        if not self.momentum < 1:
            raise DdplugError(f"momentum must be within [0, 1), got {self.momentum}")
        if self.ipc < 1:
            raise DdplugError(f"ipc must be at least 1, got {self.ipc}")
        if self.init not in INITIALISATIONS:
            raise DdplugError(f"unknown init {self.init!r}; choose one of {', '.join(INITIALISATIONS)}")
        for name in ("iterations", "batch_real"):
            if getattr(self, name) < 1:
                raise DdplugError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr_images", "lr_labels", "init_lr", "lr_lr"):
            if getattr(self, name) <= 0:
                raise DdplugError(f"{name} must be positive, got {getattr(self, name)}")
        if self.zca_epsilon <= 0:
            raise DdplugError(f"zca_epsilon must be positive, got {self.zca_epsilon}: use e.g. --zca-epsilon 0.1")
        if self.dp_clip <= 0:
            raise DdplugError(f"dp_clip must be positive (a bound on each embedding's norm), got {self.dp_clip}")
        if self.dp_epsilon:
            if self.init != "noise":
                raise DdplugError(f"differential privacy needs --init noise: an initialisation from {self.init} "
                                  "images would put real images into the set, outside the privacy guarantee")
            if not 0 < self.dp_delta < 1:
                raise DdplugError(f"differential privacy needs 0 < dp_delta < 1, got {self.dp_delta}")
        check_model_spec(self.model)
        create_param(self.param)

    def validate(self, real: ImageDataset) -> None:
        """Fail early, before any long work, on settings that cannot work on ``real``."""
        self.check()
        if self.budget_bytes:
            # ipc stays the budget's measure in raw images (baselines, DC's loops): it must agree.
            held = raw_images_per_class(self.budget_bytes, real.num_classes, (real.in_channels, *real.image_size))
            if held < 1:
                one_each = real.num_classes * real.in_channels * math.prod(real.image_size)
                raise DdplugError(f"a budget of {self.budget_bytes} bytes holds no raw image per class of {real.name} "
                                  f"(one each takes {one_each} bytes), so no baseline can match it: "
                                  f"give at least {one_each} bytes")
            if self.ipc != held:
                raise DdplugError(f"ipc {self.ipc} does not match budget_bytes {self.budget_bytes}, which hold {held} "
                                  f"raw images per class: set ipc={held}")
        per_class = self.layout(real).decoded_per_class
        shape = (real.in_channels, *real.image_size)
        check_decoded_size(per_class * real.num_classes, shape, f"a set of {self.param} in the bytes of {self.ipc} raw "
                           "images per class", "lower --ipc or --bytes")
        smallest = int(real.class_counts().min())
        # A parameterisation may decode more images than a class has (real init then starts
        # the extra ones from noise), but a budget beyond the class is better spent on the
        # real images themselves, and herding cannot pick more than there are.
        starts = self.ipc if self.init == "real" else per_class
        if self.init in ("real", "herding") and starts > smallest:
            raise DdplugError(
                f"the set starts from {starts} real images per class ({self.param} in the bytes of {self.ipc}), "
                f"more than the smallest class of {real.name} ({smallest} images): lower --ipc or use --init noise"
            )


def check_private(method: str, private: bool, config: DistillConfig) -> None:
    """Refuse ``dp_epsilon`` for a method that cannot keep the promise."""
    if config.dp_epsilon and not private:
        raise DdplugError(f"{method} cannot be made differentially private: it reads the real data through "
                          "network gradients or trajectories that ddplug does not privatise; drop dp_epsilon, "
                          "or use --method dm")


class Distiller(ABC):
    """Learns a synthetic set for ``real``; subclasses implement :meth:`step`.

    The synthetic images are one tensor ordered class by class (``ipc`` per class), so a
    method can process every class in a single batched forward pass.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[DistillConfig]] = DistillConfig
    uses_labels: ClassVar[bool] = True  # False: the loss ignores labels, so they can't be learned
    uses_lr: ClassVar[bool] = False  # True: the loss unrolls training, so its learning rate can be learned
    private: ClassVar[bool] = False  # True: reads real data only through self.privacy when dp_epsilon > 0

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
        initial = self.param.encode(self._initial_images(), self.layout)
        self.code = nn.ParameterDict({name: nn.Parameter(tensor) for name, tensor in initial.items()})
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
        dsa_config = DSAConfig.for_dataset(real.name)
        if config.dsa_strategy is not None:
            dsa_config = dataclasses.replace(dsa_config, strategy=config.dsa_strategy)
        self.dsa = DSA(dsa_config) if config.augment else None
        self.build_network(seed=0)  # a bad model spec fails here, before any long work

    @property
    def images(self) -> Tensor:
        """The synthetic images: the code decoded (for ``pixels``, the learnable tensor itself)."""
        return self.param.decode(dict(self.code), self.image_shape)

    def build_network(self, seed: int) -> nn.Module:
        """A freshly initialised matching network (``config.model``) on the device."""
        return create_model(
            self.config.model,
            in_channels=self.real.in_channels,
            num_classes=self.num_classes,
            image_size=self.real.image_size,
            seed=seed,
        ).to(self.device)

    def _initial_images(self) -> Tensor:
        generator = make_generator(self.config.seed, "init", device=self.device)
        if self.config.init == "noise":
            shape = (len(self.labels), self.real.in_channels, *self.real.image_size)
            return torch.randn(shape, generator=generator, device=self.device)
        if self.config.init == "herding":
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

    def sample_real(self, iteration: int, per_class: int | None = None) -> tuple[Tensor, Tensor]:
        """A class-balanced real batch (class-major order) and its labels."""
        index = self.sampler.sample(per_class or self.config.batch_real, self.generator(iteration, "real"))
        labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(index.shape[1])
        return self.real_images[index.flatten()], labels

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
        self.update()
        return loss.detach()

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
            code={name: tensor.detach().clone() for name, tensor in self.code.items()},
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


def run_distillation(
    distiller: Distiller,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    log_every: int = 10,
    progress: bool = True,
    snapshot_every: int | None = None,
    on_snapshot: Callable[[SyntheticSet], None] | None = None,
) -> Condensed:
    """Run ``distiller`` up to its configured number of iterations.

    With ``checkpoint``, state is saved there every ``checkpoint_every`` iterations, at the
    end and on Ctrl-C, and a run finding a checkpoint of the same method and settings
    resumes from it. Ctrl-C stops after the step in flight, so the saved state is always a
    whole step; a second Ctrl-C aborts at once. The loss reaches the host only every
    ``log_every`` iterations (one sync), not at each step.

    With ``snapshot_every``, ``on_snapshot`` receives the set after every ``snapshot_every``
    iterations (not the last), its meta holding ``iterations`` and ``distill_seconds`` (wall
    time since the start, resumed runs included): what time-to-accuracy curves are made of.
    """
    total = distiller.config.iterations
    start, losses, earlier_seconds = _resume(distiller, checkpoint)
    if start:
        print(f"resuming {distiller.name} from iteration {start} of {total} ({earlier_seconds:.0f} s of distillation "
              f"so far; checkpoint {checkpoint})", file=sys.stderr, flush=True)
    pending: list[Tensor] = []
    done = start
    bar = tqdm(total=total, initial=start, desc=f"distill {distiller.name}", disable=not progress, unit="it")
    began = time.perf_counter()

    def elapsed() -> float:
        return earlier_seconds + time.perf_counter() - began

    with _StopRequest() as stop:
        for iteration in range(start, total):
            pending.append(distiller.step(iteration))
            done = iteration + 1
            bar.update(1)
            if done % log_every == 0 or done == total or stop.requested:
                losses.extend(torch.stack(pending).tolist())
                pending.clear()
                if not math.isfinite(losses[-1]):  # checked where the losses reach the host anyway
                    raise DdplugError(f"{distiller.name} diverged by iteration {done} (loss {losses[-1]}): lower "
                                      f"--lr-images, the learning rate of the {distiller.param.spec} code")
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if checkpoint is not None and (done % checkpoint_every == 0 or done == total or stop.requested):
                _save_checkpoint(distiller, checkpoint, done, losses, elapsed())
            if on_snapshot is not None and snapshot_every and done % snapshot_every == 0 and done < total:
                on_snapshot(_described_set(distiller, done, elapsed()))
            if stop.requested:
                break
    bar.close()
    seconds = elapsed()
    return Condensed(_described_set(distiller, done, seconds), distiller.name, done, seconds, losses,
                     interrupted=done < total, zca=distiller.zca)


def _described_set(distiller: Distiller, iterations: int, seconds: float) -> SyntheticSet:
    synthetic = distiller.synthetic_set()
    synthetic.meta.update(iterations=iterations, distill_seconds=seconds)
    if distiller.privacy is not None:
        synthetic.meta["privacy"] = distiller.privacy.report(iterations)
    return synthetic


class _StopRequest:
    """Turns the first Ctrl-C or SIGTERM (what ``timeout``, batch schedulers and containers
    send) into a request to stop after the current step; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in (self._previous or {}).items():
            signal.signal(signum, handler)


def _checkpoint_identity(distiller: Distiller) -> dict[str, Any]:
    config = dataclasses.asdict(distiller.config)
    config.pop("iterations")  # a run may be extended: more iterations continue the same trajectory
    return {"method": distiller.name, "dataset": distiller.real.name, "data": _data_fingerprint(distiller.real),
            "config": config}


def _data_fingerprint(real: ImageDataset) -> dict[str, Any]:
    """Enough of the data to tell another copy (another --data-root) from this one, cheaply."""
    sample = real.images[torch.linspace(0, len(real) - 1, min(64, len(real))).long()]
    return {"examples": len(real), "class_counts": real.class_counts().tolist(),
            "sample_sum": round(float(sample.double().sum()), 3)}


def _save_checkpoint(distiller: Distiller, path: str | Path, iteration: int, losses: list[float], seconds: float) -> None:
    state = {"identity": _checkpoint_identity(distiller), "iteration": iteration, "losses": losses, "seconds": seconds,
             "state": distiller.state_dict()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(distiller: Distiller, path: str | Path) -> tuple[int, list[float], float]:
    def refuse(why: str) -> DdplugError:
        return DdplugError(f"checkpoint {path} {why}; delete it to start afresh")

    try:
        saved = torch.load(path, map_location=distiller.device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint means the same to the user
        raise refuse(f"is unreadable ({unpickling_cause(error)})") from None
    if not isinstance(saved, dict):
        raise refuse(f"holds a {type(saved).__name__}, not a ddplug checkpoint")
    identity = _checkpoint_identity(distiller)
    if saved.get("identity") != identity:
        raise DdplugError(
            f"checkpoint {path} was made by a different run ({_differences(saved.get('identity'), identity)}); "
            "use another output folder, or delete the checkpoint to start afresh"
        )
    iteration, losses, seconds = saved.get("iteration"), saved.get("losses"), saved.get("seconds", 0.0)
    if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration <= MAX_ITERATIONS:
        raise refuse(f"records iteration {iteration!r}, not a whole number within 0..{MAX_ITERATIONS}")
    if not (isinstance(losses, list) and len(losses) <= iteration
            and all(isinstance(loss, float) and math.isfinite(loss) for loss in losses)):
        raise refuse(f"records no list of at most {iteration} finite losses")
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise refuse(f"records {seconds!r} seconds")
    state = saved.get("state")
    if not isinstance(state, dict):
        raise refuse("holds no state")
    for name, tensor in distiller.learnables().items():
        found = state.get(name)
        if not isinstance(found, Tensor) or found.shape != tensor.shape or not found.is_floating_point():
            got = f"{tuple(found.shape)}" if isinstance(found, Tensor) else type(found).__name__
            raise refuse(f"holds {name} as {got}, where this run's is {tuple(tensor.shape)}")
        if not torch.isfinite(found).all():
            raise refuse(f"holds NaN or infinite values in {name}")
    try:
        distiller.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
        raise refuse(f"holds a state this run cannot take up ({type(error).__name__}: {str(error)[:200]})") from None
    return iteration, losses, float(seconds)


def _differences(saved: Any, current: dict[str, Any]) -> str:
    """``name: saved -> now`` for each setting where a checkpoint's identity differs."""
    if not isinstance(saved, dict):
        return "it records no settings"
    flat_saved = {**{k: v for k, v in saved.items() if k != "config"}, **(saved.get("config") or {})}
    flat_now = {**{k: v for k, v in current.items() if k != "config"}, **current["config"]}
    names = sorted(set(flat_saved) | set(flat_now))
    return ", ".join(f"{name}: {flat_saved.get(name, '(unset)')!r} there, {flat_now.get(name, '(unset)')!r} now"
                     for name in names if flat_saved.get(name) != flat_now.get(name))


def _resume(distiller: Distiller, checkpoint: str | Path | None) -> tuple[int, list[float], float]:
    """Iterations done, their losses and their wall time, from ``checkpoint`` if there is one."""
    if checkpoint is None or not Path(checkpoint).exists():
        return 0, [], 0.0
    return _load_checkpoint(distiller, checkpoint)


class Distillation(Condenser):
    """A :class:`~ddplug.methods.base.Distiller` class as a condenser: preset settings, then
    ``settings``; with ``out_dir`` a checkpoint there is resumed and kept up to date."""

    distiller_class: ClassVar[type]
    learns = True

    def make_config(self, settings: dict[str, Any] | None = None) -> DistillConfig:
        config = super().make_config(settings)
        check_private(self.name, self.private, config)
        return config

    def condense(self, real: ImageDataset, *, ipc: int, preset: Preset, seed: int = 0,
                 settings: dict[str, Any] | None = None, device: torch.device | str = "cpu",
                 out_dir: str | Path | None = None, progress: bool = True, snapshots: int = 0) -> Condensed:
        config = self.make_config({**preset.method_settings(self.name), **(settings or {}), "ipc": ipc, "seed": seed})
        distiller = self.distiller_class(real, config, device)
        checkpoint = None if out_dir is None else Path(out_dir) / CHECKPOINT_FILE
        snapshot_every = None
        if snapshots > 0:
            if out_dir is None:
                raise DdplugError("snapshots need an output folder to be saved in")
            snapshot_every = max(1, config.iterations // (snapshots + 1))
        return run_distillation(distiller, checkpoint=checkpoint, progress=progress, snapshot_every=snapshot_every,
                                on_snapshot=lambda synthetic: save_set(synthetic, snapshot_path(out_dir, synthetic)))


def register_distiller(distiller_class: C) -> C:
    """Class decorator for :class:`~ddplug.methods.base.Distiller` subclasses."""
    register_condenser(type(f"{distiller_class.__name__}Condenser", (Distillation,),
                            {"name": distiller_class.name, "distiller_class": distiller_class,
                             "config_class": distiller_class.config_class, "private": distiller_class.private}))
    return distiller_class
