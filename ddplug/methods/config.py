"""The settings every distillation method shares (:class:`DistillConfig`), and the rules
they must follow, checked before any work: :meth:`DistillConfig.check` without the data,
:meth:`DistillConfig.validate` with it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ddplug.data import ImageDataset
from ddplug.errors import DdplugError
from ddplug.memory import check_decoded_size
from ddplug.models import check_model_spec
from ddplug.settings import parse_spec
from ddplug.sets.param import Layout, create_param, fit_layout, raw_images_per_class

INITIALISATIONS = ("real", "noise", "herding", "blend")
LR_SCHEDULES = ("constant", "cosine")
BLEND_IMAGES = 4  # real images averaged into each synthetic image by init "blend", unless blend:images=N


def parse_init(spec: str) -> tuple[str, int]:
    """An ``init`` setting as its name and, for ``blend``, how many real images each
    synthetic image starts as the mean of (``blend`` or ``blend:images=8``).

    Examples:
        >>> parse_init("blend:images=8")
        ('blend', 8)
        >>> parse_init("real")
        ('real', 1)
    """
    name, options = parse_spec(spec, "init", "blend:images=4")
    if name not in INITIALISATIONS:
        raise DdplugError(f"unknown init {spec!r}; choose one of {', '.join(INITIALISATIONS)} (blend:images=N)")
    if name != "blend":
        if options:
            raise DdplugError(f"init {name!r} takes no options, got {spec!r}")
        return name, 1
    unknown = set(options) - {"images"}
    if unknown:
        raise DdplugError(f"init {spec!r}: unknown option {sorted(unknown)[0]!r}; blend takes images=N")
    text = options.get("images", str(BLEND_IMAGES))
    if not text.isdigit() or int(text) < 2:
        raise DdplugError(f"init {spec!r}: images must be a whole number of at least 2 (the images each "
                          f"synthetic image starts as the mean of), got {text!r}")
    return name, int(text)


@dataclass
class DistillConfig:
    """Settings every method has; methods subclass it with their own fields and defaults.

    Besides those below, the fields are the optimiser's (``lr_images``, ``momentum``), the
    real batch (``batch_real``), augmentation (``augment``, ``dsa_strategy``), learned labels
    and learning rate, and ZCA whitening; each is commented where it is declared.

    Attributes:
        ipc: the budget in raw images per class (the baselines' size).
        budget_bytes: > 0: the code's bytes for the whole set, instead of ``ipc`` raw images.
        iterations: optimisation steps.
        model: the matching network's spec.
        init: ``real``, ``noise``, ``herding`` or ``blend[:images=N]`` (see :func:`parse_init`).
        param: the parameterisation spec (``pixels``, ``multi:factor=2``, ``dct:keep=0.25``, ...).
        dp_epsilon: > 0: differentially private at (``dp_epsilon``, ``dp_delta``), for DM.
        seed: every draw of the run derives from it.
    """

    ipc: int = 10
    budget_bytes: int = 0  # > 0: the code's bytes for the whole set, in place of ipc raw images per class
    iterations: int = 1000
    model: str = "convnet"  # spec of the network(s) used for matching
    init: str = "real"  # random "real" images of each class, Gaussian "noise", the "herding" selection, or a
    # "blend" (each image the mean of a few random real images of its class: no upload is a copy)
    lr_images: float = 0.1
    momentum: float = 0.5
    # How the learnables' rates change over the run: "constant", or "cosine" (from the rate at
    # the first step towards 0 after the last, as FRePo's images learn).
    lr_schedule: str = "constant"
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
    # From this fraction of the iterations on, the code is learned through its storage's rounding (the
    # straight-through estimator), so the set that is stored is the one that was matched; 1: never.
    round_from: float = 1.0
    dp_epsilon: float = 0.0  # > 0: differentially private at this (epsilon, dp_delta), for methods that can be (dm)
    dp_delta: float = 1e-5
    dp_clip: float = 10.0  # bound on each real image's embedding norm under DP (ConvNet's on Fashion-MNIST: ~13)
    seed: int = 0

    def layout(self, real: ImageDataset) -> Layout:
        """How ``param`` fills the budget: ``budget_bytes`` shared by the classes, or else
        ``ipc`` raw uint8 images' bytes per class; learned soft labels take their bytes from it."""
        shape = (real.in_channels, *real.image_size)
        per_class = self.budget_bytes // real.num_classes if self.budget_bytes else self.ipc * math.prod(shape)
        return fit_layout(create_param(self.param), real.num_classes, shape, per_class, soft_labels=self.learn_labels)

    def extendable(self) -> bool:
        """Whether a run given more iterations goes on along the same trajectory: not when the
        rates' schedule or the start of the rounding depend on the total."""
        return self.lr_schedule == "constant" and self.round_from >= 1

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
        parse_init(self.init)
        for name in ("iterations", "batch_real"):
            if getattr(self, name) < 1:
                raise DdplugError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr_images", "lr_labels", "init_lr", "lr_lr"):
            if getattr(self, name) <= 0:
                raise DdplugError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise DdplugError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.round_from > 1:
            raise DdplugError(f"round_from is a fraction of the iterations, from 0 to 1, got {self.round_from}")
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


def lr_scale(schedule: str, iteration: int, iterations: int) -> float:
    """The factor on the learnables' rates at step ``iteration`` of ``iterations``.

    Examples:
        >>> [round(lr_scale("cosine", i, 4), 3) for i in range(4)], lr_scale("constant", 3, 4)
        ([1.0, 0.854, 0.5, 0.146], 1.0)
    """
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(iteration, iterations) / iterations))


def check_private(method: str, private: bool, config: DistillConfig) -> None:
    """Refuse ``dp_epsilon`` for a method that cannot keep the promise."""
    if config.dp_epsilon and not private:
        raise DdplugError(f"{method} cannot be made differentially private: it reads the real data through "
                          "network gradients or trajectories that ddplug does not privatise; drop dp_epsilon, "
                          "or use --method dm")
