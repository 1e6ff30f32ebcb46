"""Condensed replay for Avalanche: a rehearsal memory of synthetic samples made by ddplug.

:class:`CondensedBuffer` condenses each experience's data, class by class, with any ddplug
method (``"dm"`` by default; the ``"random"``/``"herding"``/``"kcenter"`` selections work
alike). :class:`CondensedReplayPlugin` puts that memory to work in any Avalanche strategy:
``mode="replay"`` mixes it into every minibatch (as Avalanche's ``ReplayPlugin``), and
``mode="retrain"`` trains a freshly initialised model on the memory alone at each step
(GDumb-style; the DM paper's continual-learning protocol). :class:`CondensedReplay` is a
strategy with the plugin attached::

    strategy = CondensedReplay(model=model, optimizer=optimizer, mem_per_class=10,
                               condensation=Condensation(method="dm", dataset="fashion-mnist"),
                               train_mb_size=128, device="cuda")

Data: the images are condensed as the benchmark delivers them for evaluation
(``exp.dataset.eval()``, no train-time augmentation), so already normalised by its
transforms, and the memory replays them on that scale. The codes are stored (quantised) on
the pixel scale of that normalisation: ``mean``/``std`` name it (Avalanche's ``SplitFMNIST``:
``(0.2860,)``, ``(0.3530,)``); left out, it is taken from each experience's data (its darkest
value per channel is pixel 0, its brightest pixel 1: :func:`ddplug.data.pixel_scale`), which
stores any delivered range without clipping it. A normalisation that does not fit the data
is refused before the experience trains. ``dataset`` names the data for DSA's choice of
transforms: ``"mnist"`` and ``"svhn"`` digits are never flipped.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.evaluation.metric_results import MetricValue
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.storage_policy import ExemplarsBuffer
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ddplug.augment import DSA, DSAConfig
from ddplug.data import ImageDataset, check_pixel_scale, pixel_scale
from ddplug.methods import CONDENSERS
from ddplug.errors import DdplugError
from ddplug.memory import peak_memory
from ddplug.models import register_template
from ddplug.models.template import linear_layers
from ddplug.pipeline import check_condensation, condense_classes
from ddplug.presets import Preset, get_preset
from ddplug.seeding import derive_seed
from ddplug.sets import as_stored

MODES = ("replay", "retrain")
# Condensation(model=...): match with fresh copies of the strategy's model, or with the preset's network.
STRATEGY_MODEL = "strategy"
PRESET_MODEL = "preset"


@dataclass(frozen=True)
class MemoryDefaults:
    """How a replay memory is condensed unless the :class:`Condensation` says otherwise, for
    one kind of strategy network: the network matched with and the method's settings over
    the preset's, with the measurement that chose them."""

    model: str  # STRATEGY_MODEL or PRESET_MODEL
    settings: Mapping[str, Any]
    chosen_by: str
    augment: bool = False  # each memory sample drawn for training gets its own DSA transform


# Per method and kind of strategy network (:func:`network_kind`). A dense network learns
# most from many coarse samples matched through copies of itself; a convolutional one from
# full-size images matched through the preset's ConvNet; a deep one overfits so small a
# memory unless each sample drawn is transformed (python -m simulations.avalanche_native
# --set param=... --augment-memory, the rows in benchmarks/avalanche-native and docs/results.md).
MEMORY_DEFAULTS: dict[str, dict[str, MemoryDefaults]] = {
    "dm": {
        "dense": MemoryDefaults(STRATEGY_MODEL, {"param": "multi:factor=2,bits=2"},
                                "SimpleMLP on SplitFMNIST, LwF, K = 10, 3 seeds: 72.42 % against 65.15 for "
                                "ReplayPlugin; 8-bit multi:factor=2 70.32, pixels:bits=4 70.06 (seed 0, memories "
                                "drawn whole into each minibatch)"),
        "convolutional": MemoryDefaults(PRESET_MODEL, {"param": "pixels:bits=2"},
                                        "SlimResNet18 on SplitFMNIST, memories drawn whole into each minibatch, "
                                        "Naive, K = 10, 3 seeds: 67.39 % against 57.14 "
                                        "for ReplayPlugin; seed 0 (Replay 54.67): pixels:bits=4 63.30, raw pixels "
                                        "59.58, multi:factor=2,bits=2 46.23, matching copies of the ResNet 32.06; "
                                        "K = 1, 3 seeds: 40.11 against 24.50, multi:factor=2,bits=2 35.77; "
                                        "not augmented: a batch-norm CNN of 2 convolutions, K = 10, 3 seeds, "
                                        "augmented Naive 56.14, LwF 55.94, EWC 53.55 against 58.78, 60.11, 61.04"),
        "deep convolutional": MemoryDefaults(PRESET_MODEL, {"param": "pixels:bits=2"},
                                             "the convolutional code; augmented: SlimResNet18 on SplitFMNIST, 3 "
                                             "seeds, K = 1: Naive 59.52 % (41.56 not augmented) against 24.50 for "
                                             "ReplayPlugin, LwF 61.36 (51.30) against 21.74, EWC 57.67 (39.80) "
                                             "against 20.31, retrained 30 epochs 39.33 (18.59) against GDumbPlugin's "
                                             "18.67; K = 10: Naive 68.55 (64.93), LwF 70.03 (68.50), EWC 68.08 (66.47); "
                                             "SimpleCNN, 3 epochs per experience, 3 seeds, K = 10: EWC 57.39 (49.44) "
                                             "against 46.20 for ReplayPlugin, Naive 55.00 (55.14), LwF 62.33 (64.39); "
                                             "K = 1: EWC 58.11 (33.56), Naive 59.57 (55.85), LwF 64.29 (59.71)",
                                             augment=True),
    },
}


# Convolutions from which a network counts as deep: SlimResNet18 has 20, SimpleCNN 5, a small
# batch-norm CNN 2 (whose memory lost when augmented).
DEEP_CONVOLUTIONS = 5


def network_kind(model: nn.Module | None) -> str:
    """``"dense"`` for a network without a convolution, ``"deep convolutional"`` for one with
    :data:`DEEP_CONVOLUTIONS` or more, ``"convolutional"`` for the others; with no network the
    preset's ConvNet is matched, so ``"convolutional"``."""
    if model is None:
        return "convolutional"
    convolutions = sum(isinstance(module, nn.modules.conv._ConvNd) for module in model.modules())
    if not convolutions:
        return "dense"
    return "deep convolutional" if convolutions >= DEEP_CONVOLUTIONS else "convolutional"


@dataclass(frozen=True)
class CondensationCost:
    """What condensing one experience cost."""

    experience: int
    seconds: float
    peak_memory_mb: float
    peak_memory_kind: str  # "cuda-allocated" (this condensation) or "process-max-rss" (the process so far)
    images: int  # samples the experience left in the memory


@dataclass(frozen=True)
class Condensation:
    """How each experience is condensed: one object passed through the strategy, the plugin
    and the buffer.

    ``method`` is any ddplug method (a distiller, or the ``random``/``herding``/``kcenter``
    selections); ``preset`` and ``settings`` choose its settings as for ``ddplug distill``
    (e.g. ``settings={"iterations": 200}``), over the memory's own defaults for the kind of
    network the strategy trains (:data:`MEMORY_DEFAULTS`: for DM and a dense network,
    ``multi:factor=2,bits=2`` codes, 16 half-resolution 2-bit images in the bytes of one raw
    image; for a convolutional one, ``pixels:bits=2``, 4 full-size 2-bit images); ``model`` is
    the network the distiller matches with: ``"strategy"`` (a freshly initialised copy of the
    strategy's own model at every draw, embedding at the input of its last linear layer),
    ``"preset"`` (the preset's, a ddplug ConvNet), or a ddplug model spec; None (the default)
    is ``settings["model"]`` if given, else the memory's default for the strategy's kind of
    network (DM: copies of a dense network, the preset's ConvNet for a convolutional one),
    else the strategy's model where there is one with a linear layer, else the preset's;
    ``dataset`` names the data for DSA's choice of
    transforms; ``mean``/``std`` name the normalisation the benchmark applied (None: taken
    from the data's range). Every setting is checked here, so a bad one fails when the
    object is made; what needs the data (a parameterisation that does not fit the image
    size, a normalisation that does not fit the data) fails before the first experience trains.
    """

    method: str = "dm"
    preset: str | Preset = "cpu"
    settings: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    dataset: str = ""
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        methods = [name for name, condenser in CONDENSERS.items() if condenser.per_class]
        if self.method not in methods:
            raise DdplugError(f"unknown condensation method {self.method!r}; choose one of {', '.join(methods)}")
        if isinstance(self.preset, str):
            object.__setattr__(self, "preset", get_preset(self.preset))
        if not isinstance(self.settings, Mapping):
            raise DdplugError(f"settings must be a mapping of {self.method}'s settings such as {{'iterations': 200}}, "
                              f"got the {type(self.settings).__name__} {self.settings!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DdplugError(f"seed must be an integer, 0 or more, got {self.seed!r}")
        self._check_normalisation()
        condenser = CONDENSERS[self.method]
        if self.model is not None and not condenser.learns:
            raise DdplugError(f"model is the network a distiller matches with; {self.method} picks real images: "
                              "drop model")
        if self.model is not None and "model" in self.settings:
            raise DdplugError("give the matching network once: model=..., or settings['model'], not both")
        named = self.model not in (None, STRATEGY_MODEL, PRESET_MODEL)
        checked = {**self.method_settings(), **({"model": self.model} if named else {})}
        config = condenser.make_config({**self.preset.method_settings(self.method), **checked}
                                       if condenser.config_class else self.method_settings())
        if config is not None:
            config.check()
        if getattr(config, "learn_labels", False):
            # Avalanche's items carry class ids: the labels would be cut to their arg-max and
            # the bytes the budget gave them lost.
            raise DdplugError("an Avalanche memory replays class ids, so learned soft labels would be dropped and "
                              "their bytes wasted: drop learn_labels")

    def defaults(self, strategy_model: nn.Module | None = None) -> MemoryDefaults | None:
        """The memory's defaults for the method and the strategy's kind of network, if any."""
        return MEMORY_DEFAULTS.get(self.method, {}).get(network_kind(strategy_model))

    def augments(self, strategy_model: nn.Module | None = None) -> bool:
        """Whether the memory is augmented for training by default for the strategy's kind of network."""
        defaults = self.defaults(strategy_model)
        return defaults is not None and defaults.augment

    def method_settings(self, strategy_model: nn.Module | None = None) -> dict[str, Any]:
        """``settings`` over the memory's defaults (:meth:`defaults`)."""
        defaults = self.defaults(strategy_model)
        return {**(defaults.settings if defaults else {}), **self.settings}

    def settings_for(self, strategy_model: nn.Module | None) -> dict[str, Any]:
        """The method's settings for one condensation, the matching network included."""
        settings = self.method_settings(strategy_model)
        defaults = self.defaults(strategy_model)
        model = self.model if self.model is not None or defaults is None else defaults.model
        if not CONDENSERS[self.method].learns or "model" in settings or model == PRESET_MODEL:
            return settings
        if model not in (None, STRATEGY_MODEL):
            return {**settings, "model": model}
        usable = strategy_model is not None and bool(linear_layers(strategy_model))
        if self.model == STRATEGY_MODEL and not usable:  # asked for; a default falls back to the preset's
            raise DdplugError('model="strategy" matches with the strategy\'s model, which needs an nn.Linear layer '
                              '(its input is what is matched): none was found; use model="preset"')
        return {**settings, "model": register_template(strategy_model)} if usable else settings

    def _check_normalisation(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise DdplugError("give both mean and std (the benchmark's normalisation), or neither to take it from the data")
        if self.mean is None:
            return
        try:
            mean, std = (tuple(float(value) for value in values) for values in (self.mean, self.std))
        except (TypeError, ValueError):
            raise DdplugError(f"mean and std must be sequences of numbers, got {self.mean!r} and {self.std!r}") from None
        if not mean or len(mean) != len(std):
            raise DdplugError(f"mean and std need one value per channel each, got {mean} and {std}")
        if not all(math.isfinite(value) for value in mean + std) or min(std) <= 0:
            raise DdplugError(f"mean must be finite and std finite and positive, got {mean} and {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def normalisation(self, images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The normalisation of ``images`` as delivered: ``mean``/``std`` if given (refused if
        they do not fit the images), else their pixel scale."""
        if self.mean is None:
            return pixel_scale(images)
        if len(self.mean) != images.shape[1]:
            raise DdplugError(f"mean and std have {len(self.mean)} values but the stream's images have "
                              f"{images.shape[1]} channels")
        check_pixel_scale(images, self.mean, self.std, "the stream's images")
        return self.mean, self.std


class CondensedBuffer(ExemplarsBuffer):
    """A rehearsal memory of condensed samples within a budget in bytes: the bytes of
    ``mem_per_class`` raw uint8 images per class, or of ``max_size`` raw images in all.

    The budget is spent as the method's parameterisation packs it (``param`` in the
    condensation's settings; DM's default for a dense network is ``multi:factor=2,bits=2``):
    a class given the bytes of 10 images holds 160 half-resolution 2-bit images decoded from
    10 stored ones. The
    memory keeps the decoded images to train on and counts each class at its stored code's
    size (:attr:`memory_bytes`), so the Avalanche baselines with ``mem_per_class`` raw images
    hold the same bytes.

    ``post_adapt(agent, exp)`` condenses ``exp``'s data with ``method`` (ddplug's
    ``condense_classes``: a class with no more real images than its share keeps them as they
    are) on the agent's device. With ``max_size`` the share per class is
    ``max_size // classes held`` and shrinks as classes arrive: old classes then keep the
    first samples of their current ones, as many as the smaller share pays for (in
    proportion to what the class's samples cost), without re-condensing. That is cheap, and for the
    selections it is exactly the smaller selection (herding's picks come in herding order);
    for distilled sets it is a random subset of equally made samples. A class that comes back
    in a later experience is condensed afresh from its new data. Memory groups are
    (task label, class) pairs, so task-incremental streams work too. Learned soft labels are
    refused (Avalanche's items carry class ids) and a learned learning rate (MTT) is not used.

    ``condensation`` says how (:class:`Condensation`); with ``augment`` each sample drawn from
    ``buffer``'s train view gets its own DSA transform (None: the memory's default for the
    method and the strategy's kind of network, :data:`MEMORY_DEFAULTS`; :attr:`augmented`
    says what was chosen). ``costs`` lists each condensation's
    :class:`CondensationCost`; each is also published to the strategy's evaluator
    (``Condensation_Seconds/ExpNNN``, ``Condensation_PeakMemory_MB/ExpNNN``), so
    ``EvaluationPlugin`` loggers print it.
    """

    def __init__(
        self,
        max_size: int | None = None,
        *,
        mem_per_class: int | None = None,
        condensation: Condensation = Condensation(),
        augment: bool | None = None,
    ) -> None:
        if (max_size is None) == (mem_per_class is None):
            raise DdplugError("give the memory budget as mem_per_class (images per class) or as max_size "
                              "(images in all), exactly one of them")
        for name, value in (("max_size", max_size), ("mem_per_class", mem_per_class)):
            if value is not None:
                _check_count(name, value)
        if not isinstance(condensation, Condensation):
            raise DdplugError(f"condensation must be a Condensation(...), got {type(condensation).__name__}")
        _check_flag("augment", augment, optional=True)
        # Per class, the budget in force is mem_per_class x the classes held (0 while empty).
        super().__init__(0 if max_size is None else max_size)
        self.mem_per_class = mem_per_class
        self.condensation = condensation
        self.augment = augment
        # With augmentation the memory's training view gives each sample drawn its own DSA
        # transform (the field's protocol for training on a distilled set); its eval view
        # stays as stored. Settled at each condensation, where the strategy's network is seen.
        self.augmented = False
        self._transform = _EachImage(DSA(DSAConfig.for_dataset(condensation.dataset)))
        self.groups: dict[tuple[int, int], Tensor] = {}  # (task label, class) -> its samples, on the CPU
        # (task label, class) -> budget units (raw images' bytes) one of its samples costs: 1 for
        # raw images, 1/4 for images decoded from multi:factor=2 codes.
        self.sample_cost: dict[tuple[int, int], float] = {}
        self.pixels_per_image = 0  # C x H x W of the stream's images: a raw uint8 image's bytes
        self.costs: list[CondensationCost] = []
        self._prepared: tuple[Any, list[tuple[int, ImageDataset]], int] | None = None

    def share(self, num_groups: int) -> int:
        """Samples each of ``num_groups`` classes may keep."""
        if self.mem_per_class is not None:
            return self.mem_per_class
        if self.max_size < num_groups:
            raise DdplugError(f"a memory of {self.max_size} images cannot hold {num_groups} classes; "
                              f"give max_size >= {num_groups} or a budget per class (mem_per_class)")
        return self.max_size // num_groups

    def prepare(self, exp: Any, model: nn.Module | None = None) -> None:
        """Read ``exp``'s data and check that it can be condensed as asked (its normalisation,
        the method's settings on its classes and image size, ``model`` for
        ``Condensation(model="strategy")``), before anything trains on it."""
        if self._prepared is not None and self._prepared[0] is exp:
            return
        images, labels, tasks = _tensors(exp.dataset.eval())
        self.pixels_per_image = images[0].numel()
        arriving = {(int(task), int(label)) for task, label in zip(tasks.tolist(), labels.tolist())}
        share = self.share(len(self.groups.keys() | arriving))
        how = self.condensation
        mean, std = how.normalisation(images)
        parts = []
        for task in tasks.unique().tolist():
            mine = tasks == task
            real = ImageDataset(images[mine], labels[mine], int(labels.max()) + 1, mean, std, how.dataset)
            check_condensation(real, how.method, ipc=share, preset=how.preset, settings=how.settings_for(model))
            parts.append((task, real))
        self._prepared = (exp, parts, share)

    def post_adapt(self, agent_state: Any, exp: Any) -> None:
        """Condense ``exp``'s data into the memory, after shrinking old classes to the new share."""
        model = getattr(agent_state, "model", None)  # only Condensation(model="strategy") needs it
        self.prepare(exp, model)
        _, parts, share = self._prepared
        self._prepared = None
        self._shrink(share)
        how = self.condensation
        self.augmented = how.augments(model) if self.augment is None else self.augment
        device = torch.device(agent_state.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        made = 0
        for task, real in parts:
            condensed = condense_classes(real, how.method, ipc=share, preset=how.preset,
                                         seed=derive_seed(how.seed, "condense", exp.current_experience, task),
                                         settings=how.settings_for(model), device=device,
                                         progress=how.progress)
            if CONDENSERS[how.method].learns:  # a distiller's code, quantised as stored, decoded
                condensed = as_stored(condensed)
            classes = condensed.hard_labels
            kept_raw = set(condensed.meta["kept_real_classes"])
            for label in classes.unique().tolist():
                samples = condensed.images[classes == label].detach().cpu()
                self.groups[(task, label)] = samples
                self.sample_cost[(task, label)] = 1.0 if label in kept_raw else share / len(samples)
            made += len(condensed)
        cost = CondensationCost(exp.current_experience, time.perf_counter() - began, *peak_memory(device), made)
        self.costs.append(cost)
        self._rebuild()
        _publish(agent_state, self, cost)

    def resize(self, strategy: Any, new_size: int) -> None:
        """Set a total budget of ``new_size`` images (a per-class budget ends here); classes
        beyond their new share keep their first samples."""
        if new_size < 1:
            raise DdplugError(f"the memory size must be at least 1, got {new_size}")
        self.max_size, self.mem_per_class = new_size, None
        if self.groups:
            self._shrink(self.share(len(self.groups)))
            self._rebuild()

    def _shrink(self, share: int) -> None:
        """Cut every class to the first samples that ``share`` raw images' bytes pay for."""
        self.groups = {key: samples[:int(share / self.sample_cost[key] + 1e-9)] for key, samples in self.groups.items()}

    @property
    def memory_bytes(self) -> int:
        """The memory's size stored as codes: each class's samples at what they cost, in uint8
        pixels of the images it holds (a raw image is one byte per pixel and channel)."""
        units = sum(len(samples) * self.sample_cost[key] for key, samples in self.groups.items())
        return round(units * self.pixels_per_image)

    def _rebuild(self) -> None:
        """``buffer`` from ``groups``: an Avalanche dataset of ``(x, y, t)`` items."""
        keys = sorted(self.groups)
        counts = [len(self.groups[key]) for key in keys]
        labels = torch.tensor([label for (_, label), n in zip(keys, counts) for _ in range(n)], dtype=torch.long)
        tasks = [task for (task, _), n in zip(keys, counts) for _ in range(n)]
        self.buffer = _make_taskaware_tensor_classification_dataset(
            torch.cat([self.groups[key] for key in keys]), labels, task_labels=tasks,
            transform_groups={"train": (self._transform if self.augmented else None, None), "eval": (None, None)})
        if self.mem_per_class is not None:
            self.max_size = self.mem_per_class * len(keys)


class _EachImage:
    """A batch transform applied to one image (an Avalanche transform sees one item)."""

    def __init__(self, transform: nn.Module) -> None:
        self.transform = transform

    def __call__(self, image: Tensor) -> Tensor:
        return self.transform(image[None])[0]


def _check_flag(name: str, value: Any, optional: bool = False) -> None:
    if not isinstance(value, bool) and not (optional and value is None):
        raise DdplugError(f"{name} must be True or False{' (or None for the default)' * optional}, got {value!r}")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DdplugError(f"{name} must be a whole number, 1 or more, got {value!r}")


def _tensors(dataset: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Images, labels and task labels of every ``(x, y, t)`` item of ``dataset``, on the CPU."""
    loader = DataLoader(dataset, batch_size=1024, collate_fn=getattr(dataset, "collate_fn", None))
    images, labels, tasks = (torch.cat(parts) for parts in zip(*((x, y, t) for x, y, t, *_ in loader)))
    return images.float(), labels.long(), tasks.long()


def _publish(agent: Any, origin: Any, cost: CondensationCost) -> None:
    """Hand ``cost`` to the agent's evaluator, whose loggers print it with the other metrics."""
    evaluator = getattr(agent, "evaluator", None)
    if evaluator is None:
        return
    step = agent.clock.train_iterations
    for name, value in (("Condensation_Seconds", cost.seconds), ("Condensation_PeakMemory_MB", cost.peak_memory_mb)):
        evaluator.publish_metric_value(MetricValue(origin, f"{name}/Exp{cost.experience:03d}", value, step))


class CondensedReplayPlugin(ReplayPlugin):
    """Condensed rehearsal for any Avalanche strategy (``plugins=[...]``, next to others).

    ``mode="replay"``: after each experience its data is condensed into the memory, and from
    the next experience on every minibatch of ``batch_size`` new samples comes with
    ``batch_size_mem`` memory samples (default: the strategy's minibatch size), as in
    Avalanche's ``ReplayPlugin``. A memory that holds fewer samples than that is drawn with
    repetition to fill its share (``fill_memory_batches``): Avalanche's loader would draw the
    whole memory instead, so the smaller the budget, the less the old classes weigh against
    the new ones (``False`` draws as Avalanche does). ``mode="retrain"``: each experience is
    condensed into the memory before training, the model is reset to its initial weights,
    and the strategy's own loop (its optimiser, epochs and other plugins) trains it on the
    memory alone. ``augment_memory=True`` gives each memory sample drawn for training its own
    DSA transform (the dataset's families, as ddplug's evaluation trains on a distilled set);
    what the memory holds, and its eval view, stay as condensed. None (the default) augments
    where the memory's defaults say so for the strategy's kind of network (DM: a
    convolutional one, not a dense one; :data:`MEMORY_DEFAULTS`).

    The budget (``mem_per_class`` or ``max_size``) and ``condensation`` are
    :class:`CondensedBuffer`'s; the buffer is ``plugin.storage_policy``.
    """

    def __init__(
        self,
        mem_per_class: int | None = None,
        max_size: int | None = None,
        *,
        mode: str = "replay",
        batch_size: int | None = None,
        batch_size_mem: int | None = None,
        task_balanced_dataloader: bool = False,
        fill_memory_batches: bool = True,
        augment_memory: bool | None = None,
        condensation: Condensation = Condensation(),
    ) -> None:
        if mode not in MODES:
            raise DdplugError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        _check_flag("fill_memory_batches", fill_memory_batches)
        _check_flag("augment_memory", augment_memory, optional=True)
        for name, value in (("batch_size", batch_size), ("batch_size_mem", batch_size_mem)):
            if value is not None:
                _check_count(name, value)
        buffer = CondensedBuffer(max_size, mem_per_class=mem_per_class, condensation=condensation,
                                 augment=augment_memory)
        super().__init__(mem_size=buffer.max_size, batch_size=batch_size, batch_size_mem=batch_size_mem,
                         task_balanced_dataloader=task_balanced_dataloader, storage_policy=buffer)
        self.mode = mode
        self.fill_memory_batches = fill_memory_batches
        self.initial_model: torch.nn.Module | None = None

    def before_train_dataset_adaptation(self, strategy: SupervisedTemplate, **kwargs: Any) -> None:
        if self.mode != "retrain":
            return
        if self.initial_model is None:
            self.initial_model = copy.deepcopy(strategy.model)
        else:
            # A new model object: Avalanche's optimizer update swaps its parameters in, state reset.
            strategy.model = copy.deepcopy(self.initial_model)

    def after_train_dataset_adaptation(self, strategy: SupervisedTemplate, **kwargs: Any) -> None:
        if self.mode == "retrain":
            self.storage_policy.post_adapt(strategy, strategy.experience)
            strategy.adapted_dataset = self.storage_policy.buffer

    def before_training_exp(self, strategy: SupervisedTemplate, **kwargs: Any) -> None:
        # A setting that cannot work fails before training.
        self.storage_policy.prepare(strategy.experience, strategy.model)
        if self.mode != "replay":
            return
        held = self.storage_policy.buffer
        share = self.batch_size_mem or strategy.train_mb_size
        if not self.fill_memory_batches or not 0 < len(held) < share:
            super().before_training_exp(strategy, **kwargs)
            return
        # ReplayPlugin builds its loader from storage_policy.buffer: it sees the memory repeated
        # for as long as the loader is made, and the memory itself stays as held. Repeated to a
        # multiple of the share, or the loader's last batch of each pass would come up short.
        self.storage_policy.buffer = held.subset(list(range(len(held))) * (share // math.gcd(len(held), share)))
        try:
            super().before_training_exp(strategy, **kwargs)
        finally:
            self.storage_policy.buffer = held

    def after_training_exp(self, strategy: SupervisedTemplate, **kwargs: Any) -> None:
        # post_adapt directly: ReplayPlugin's update() path is deprecated in Avalanche 0.6.
        if self.mode == "replay":
            self.storage_policy.post_adapt(strategy, strategy.experience)


class CondensedReplay(SupervisedTemplate):
    """An Avalanche strategy with a :class:`CondensedReplayPlugin` attached.

    Takes the plugin's arguments (budget, ``mode``, ``condensation``, ``batch_size_mem``,
    ``fill_memory_batches``, ``augment_memory``) and ``SupervisedTemplate``'s (``train_mb_size``,
    ``train_epochs``, ``eval_mb_size``, ``device``, ``evaluator``, ``eval_every``, ...) as
    keywords; ``strategy.plugin`` is the plugin and ``strategy.plugin.storage_policy`` the
    memory.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Any = None,
        mem_per_class: int | None = None,
        max_size: int | None = None,
        mode: str = "replay",
        condensation: Condensation = Condensation(),
        batch_size_mem: int | None = None,
        fill_memory_batches: bool = True,
        augment_memory: bool | None = None,
        plugins: Sequence[Any] | None = None,
        **base_kwargs: Any,
    ) -> None:
        self.plugin = CondensedReplayPlugin(mem_per_class, max_size, mode=mode, batch_size_mem=batch_size_mem,
                                            fill_memory_batches=fill_memory_batches, augment_memory=augment_memory,
                                            condensation=condensation)
        super().__init__(model=model, optimizer=optimizer,
                         criterion=torch.nn.CrossEntropyLoss() if criterion is None else criterion,
                         plugins=[*(plugins or []), self.plugin], **base_kwargs)
