"""The Avalanche condensed-replay adapter and the continual-learning runner, on tiny streams."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark  # noqa: E402
from avalanche.benchmarks.utils.data_loader import ReplayDataLoader  # noqa: E402
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche.training.plugins import EWCPlugin, LwFPlugin  # noqa: E402
from avalanche.training.supervised import Naive  # noqa: E402

import ddplug_avalanche.runner as continual  # noqa: E402
from ddplug.cli import main  # noqa: E402
from ddplug.data import pixel_scale  # noqa: E402
from ddplug.errors import DdplugError  # noqa: E402
from ddplug.models import create_model  # noqa: E402
from ddplug_avalanche import Condensation, CondensedBuffer, CondensedReplay, CondensedReplayPlugin  # noqa: E402
from ddplug_avalanche.streams import MemoryBudget  # noqa: E402
from ddplug_avalanche.buffer import DEEP_CONVOLUTIONS  # noqa: E402

from helpers import write_fake_fashion_mnist  # noqa: E402

TINY = "convnet:width=4,depth=1"
# The tests' code packs 4 half-resolution images in each stored image's bytes; the memory's
# own default (16, at 2 bits) has its test.
FAST = {"iterations": 3, "batch_real": 4, "model": TINY, "param": "multi:factor=2"}
QUICK = Condensation(settings=FAST, progress=False)
CLASSES = 6


def make_stream(per_class: int = 12, experiences: int = 3, drop_to_one: int | None = None):
    """Separable 8x8 classes (a bright row per class), ``experiences`` experiences of 2 classes."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int):
        labels = torch.arange(CLASSES).repeat_interleave(n)
        images = torch.randn(len(labels), 1, 8, 8, generator=generator) * 0.3
        images[torch.arange(len(labels)), 0, labels] += 2.0
        return images, labels

    train, test = split(per_class), split(4)
    if drop_to_one is not None:  # keep one image of that class
        keep = (train[1] != drop_to_one) | (torch.arange(len(train[1])) == int((train[1] == drop_to_one).nonzero()[0]))
        train = (train[0][keep], train[1][keep])
    return nc_benchmark(torch.utils.data.TensorDataset(*train), torch.utils.data.TensorDataset(*test),
                        n_experiences=experiences, task_labels=False, seed=0, fixed_class_order=list(range(CLASSES)))


def tiny_model():
    return create_model(TINY, in_channels=1, num_classes=CLASSES, image_size=(8, 8), seed=0)


class Recorder(SupervisedPlugin):
    """Labels trained on and the starting weights, per experience."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: list[list[int]] = []
        self.start: list[dict[str, torch.Tensor]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.labels.append([])
        self.start.append({k: v.clone() for k, v in strategy.model.state_dict().items()})

    def after_training_iteration(self, strategy, **kwargs):
        self.labels[-1].extend(strategy.mb_y.tolist())


AGENT = types.SimpleNamespace(device="cpu")  # what post_adapt reads from a strategy (no evaluator)


def held(buffer: CondensedBuffer) -> dict[int, int]:
    return {label: len(samples) for (_, label), samples in buffer.groups.items()}


# None: the memory's default code with no strategy network, that of a convolutional one:
# pixels:bits=2 (4 full-size 2-bit images per raw image)
@pytest.mark.parametrize(("param", "decoded_per_stored"), [("pixels", 1), ("multi:factor=2", 4), ("pixels:bits=4", 2),
                                                          ("multi:factor=2,bits=2", 16), (None, 4)])
def test_buffer_budgets_in_bytes_hold_every_class_and_shrink_old_ones_to_a_prefix(param, decoded_per_stored):
    stream = make_stream()
    settings = {**FAST, "param": param} if param else {key: value for key, value in FAST.items() if key != "param"}
    how = Condensation(settings=settings, progress=False)
    per_class = CondensedBuffer(mem_per_class=3, condensation=how)
    total = CondensedBuffer(10, condensation=how)
    image_bytes = 8 * 8  # one raw uint8 8x8 image
    before = None
    for step, experience in enumerate(stream.train_stream):
        classes = 2 * step + 2
        for buffer in (per_class, total):
            buffer.post_adapt(AGENT, experience)
            assert buffer.memory_bytes <= buffer.max_size * image_bytes  # never over the budget's bytes
            assert len(buffer.buffer) <= buffer.max_size * decoded_per_stored
            assert set(held(buffer)) == set(range(classes))
        assert set(held(per_class).values()) == {3 * decoded_per_stored} and per_class.max_size == 3 * classes
        assert per_class.memory_bytes == 3 * classes * image_bytes  # the budget, spent in full
        assert set(held(total).values()) == {10 // classes * decoded_per_stored}
        if before is not None:  # old classes keep the first of their samples, not re-condensed
            assert torch.equal(total.groups[(0, 0)], before[: len(total.groups[(0, 0)])])
        before = total.groups[(0, 0)].clone()
    assert [cost.experience for cost in total.costs] == [0, 1, 2]
    assert all(cost.seconds > 0 and cost.images for cost in total.costs)
    if param == "pixels:bits=4":  # the memory holds what its bytes store: pixels of 16 grey levels
        images = torch.cat([stream.train_stream[i].dataset.eval()[j][0][None] for i in range(3) for j in range(24)])
        (mean,), (std,) = pixel_scale(images[:24])  # the scale of the first experience, as the buffer found it
        levels = (total.groups[(0, 0)] * std + mean) * 15
        assert torch.allclose(levels, levels.round(), atol=1e-4) and len(levels.round().unique()) > 2
    total.resize(None, 6)
    assert set(held(total).values()) == {decoded_per_stored} and total.memory_bytes == 6 * image_bytes


def test_herding_selection_buffer(tiny_preset):
    stream = make_stream()
    buffer = CondensedBuffer(mem_per_class=2, condensation=Condensation(method="herding", preset=tiny_preset,
                                                                              progress=False))
    buffer.post_adapt(AGENT, stream.train_stream[0])
    images = stream.train_stream[0].dataset.eval()
    real = torch.stack([images[i][0] for i in range(len(images))])
    for samples in buffer.groups.values():  # selections keep real images
        assert all((real == sample).flatten(1).all(1).any() for sample in samples)


def test_buffer_items_are_xyt_and_replay_loader_mixes_them():
    stream = make_stream()
    buffer = CondensedBuffer(mem_per_class=2, condensation=QUICK)
    buffer.post_adapt(AGENT, stream.train_stream[0])
    x, y, t = buffer.buffer[0]
    assert x.shape == stream.train_stream[0].dataset[0][0].shape and isinstance(y, int) and t == 0
    loader = ReplayDataLoader(stream.train_stream[1].dataset, buffer.buffer, batch_size=8, batch_size_mem=4)
    batches = list(loader)
    assert all(len(batch) == 3 and len(batch[0]) == len(batch[1]) == len(batch[2]) for batch in batches)
    seen = {label for batch in batches for label in batch[1].tolist()}
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("other", [LwFPlugin, lambda: EWCPlugin(ewc_lambda=1.0)], ids=["lwf", "ewc"])
def test_plugin_replays_memory_with_naive_and_another_plugin(other):
    stream = make_stream()
    model = tiny_model()
    plugin = CondensedReplayPlugin(mem_per_class=2, condensation=QUICK)
    recorder = Recorder()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8, device="cpu",
                     plugins=[plugin, other(), recorder])
    for experience in stream.train_stream:
        strategy.train(experience)
    # FAST's code packs 4 half-resolution images into each stored image's bytes.
    assert set(held(plugin.storage_policy)) == set(range(CLASSES)) and len(plugin.storage_policy.buffer) == 4 * 12
    assert plugin.storage_policy.memory_bytes == 12 * 8 * 8
    assert set(recorder.labels[0]) == {0, 1}
    assert set(recorder.labels[2]) == set(range(CLASSES))  # memory of classes 0-3 mixed in
    metrics = strategy.eval(stream.test_stream)
    assert metrics["Condensation_Seconds/Exp002"] == plugin.storage_policy.costs[-1].seconds


class MinibatchCounter(SupervisedPlugin):
    """How many of each minibatch's samples came from the memory (labels of classes seen
    before), and how many samples ``memory`` held meanwhile."""

    def __init__(self, memory) -> None:
        super().__init__()
        self.memory = memory
        self.seen: set[int] = set()
        self.from_memory: list[list[int]] = []
        self.held: set[int] = set()

    def before_training_exp(self, strategy, **kwargs):
        self.from_memory.append([])

    def after_training_iteration(self, strategy, **kwargs):
        self.from_memory[-1].append(sum(label in self.seen for label in strategy.mb_y.tolist()))
        self.held.add(len(self.memory.buffer))

    def after_training_exp(self, strategy, **kwargs):
        self.seen.update(strategy.experience.classes_in_this_experience)


@pytest.mark.parametrize("fill", [True, False])
@pytest.mark.parametrize("share", [16, 3])  # a multiple of the 2 held samples, and not one
def test_a_small_memory_fills_its_share_of_every_minibatch(fill, share):
    stream = make_stream()
    model = tiny_model()
    plugin = CondensedReplayPlugin(mem_per_class=1, batch_size_mem=share, fill_memory_batches=fill,
                                   condensation=Condensation(method="random", progress=False))
    counter = MinibatchCounter(plugin.storage_policy)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8, device="cpu", plugins=[plugin, counter])
    for experience in stream.train_stream[:2]:
        strategy.train(experience)
    assert counter.from_memory[0] and set(counter.from_memory[0]) == {0}  # nothing held yet
    # after the first experience the memory holds one real image of each of its 2 classes
    assert len(counter.from_memory[1]) == 3  # 24 new samples, 8 a minibatch
    assert set(counter.from_memory[1]) == {share if fill else 2}  # every minibatch, not only the first
    assert counter.held == {0, 2}  # repeated for the loader only: the memory holds what was condensed


class MemoryRows(SupervisedPlugin):
    """The images of classes seen before (the memory's) in the last experience's minibatches."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()
        self.rows: list[torch.Tensor] = []

    def after_training_iteration(self, strategy, **kwargs):
        old = torch.tensor([label in self.seen for label in strategy.mb_y.tolist()])
        self.rows.append(strategy.mb_x[old].detach().clone())

    def before_training_exp(self, strategy, **kwargs):
        self.rows = []

    def after_training_exp(self, strategy, **kwargs):
        self.seen.update(strategy.experience.classes_in_this_experience)


@pytest.mark.parametrize("mode", ["replay", "retrain"])
@pytest.mark.parametrize(("augment", "network", "augmented"), [
    (True, "conv", True), (False, "deep", False), (True, "dense", True),
    # unsaid: DM's memory defaults, augmented for a deep convolutional network only
    (None, "deep", True), (None, "conv", False), (None, "dense", False)])
def test_an_augmented_memory_trains_on_transformed_samples_and_keeps_its_own(mode, augment, network, augmented):
    stream = make_stream()
    model = {"conv": tiny_model, "deep": DeepNet, "dense": FlatNet}[network]()
    plugin = CondensedReplayPlugin(mem_per_class=2, mode=mode, augment_memory=augment,
                                   condensation=Condensation(settings={**FAST, "param": "pixels"}, progress=False))
    rows = MemoryRows()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8, train_epochs=3, device="cpu",
                     plugins=[plugin, rows])
    for experience in stream.train_stream[:2]:
        strategy.train(experience)
    memory = plugin.storage_policy
    stored = torch.cat(list(memory.groups.values()))
    drawn = torch.cat(rows.rows)
    assert len(drawn) >= 12 and drawn.shape[1:] == stored.shape[1:]
    as_stored = (drawn[:, None] == stored[None]).flatten(2).all(2).any(1)  # each drawn row: equal to a held image?
    assert memory.augmented is augmented
    if augmented:
        assert as_stored.float().mean() < 0.5
    else:
        assert as_stored.all()
    # the memory keeps what was condensed; its eval view is not transformed
    evaluated = torch.stack([memory.buffer.eval()[index][0] for index in range(len(memory.buffer))])
    assert torch.equal(evaluated, torch.cat([memory.groups[key] for key in sorted(memory.groups)]))


class DeepNet(torch.nn.Sequential):
    """A deep convolutional network: as many 3x3 convolutions as ``DEEP_CONVOLUTIONS``, then a linear layer."""

    def __init__(self) -> None:
        layers = [torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU()]
        for _ in range(DEEP_CONVOLUTIONS - 1):
            layers += [torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()]
        super().__init__(*layers, torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, CLASSES))


class FlatNet(torch.nn.Module):
    """A user's own network, unlike any ddplug model: an MLP on the flattened image."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.classifier = torch.nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.classifier(self.body(x))


def test_the_memory_can_be_condensed_by_matching_the_strategys_own_model(monkeypatch):
    import ddplug.methods.base as base

    built = []
    real_create = base.create_model
    monkeypatch.setattr(base, "create_model", lambda spec, **kw: built.append(spec) or real_create(spec, **kw))
    stream = make_stream()
    model = FlatNet()
    before = [p.detach().clone() for p in model.parameters()]
    how = Condensation(settings={"iterations": 3, "batch_real": 4}, progress=False)  # the default: the strategy's
    plugin = CondensedReplayPlugin(mem_per_class=2, condensation=how)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), criterion=torch.nn.CrossEntropyLoss(),
                     train_mb_size=8, device="cpu", plugins=[plugin])
    strategy.train(stream.train_stream[0])
    assert built and all(spec.startswith("template-") for spec in built)  # every draw: a copy of FlatNet
    assert len(plugin.storage_policy.buffer) == 2 * 2 * 16  # a dense network's default code: 16 per stored image
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the user's model is untouched
    # A convolutional network's memory: matched through the preset's ConvNet, 4 full-size 2-bit images each
    convolutional = types.SimpleNamespace(device="cpu", model=torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, CLASSES)))
    built.clear()
    buffer = CondensedBuffer(mem_per_class=2, condensation=how)
    buffer.post_adapt(convolutional, stream.train_stream[0])
    assert built and all(spec.startswith("convnet") for spec in built)
    assert len(buffer.buffer) == 2 * 2 * 4 and buffer.memory_bytes == 2 * 2 * 8 * 8
    copies = CondensedBuffer(mem_per_class=2, condensation=Condensation(
        settings={"iterations": 3, "batch_real": 4}, model="strategy", progress=False))
    built.clear()
    copies.post_adapt(convolutional, stream.train_stream[0])  # a model given wins over the default
    assert built and all(spec.startswith("template-") for spec in built) and len(copies.buffer) == 2 * 2 * 4
    for how in (Condensation(settings=FAST, progress=False),  # a model named in the settings wins
                Condensation(settings={"iterations": 3, "batch_real": 4}, model="preset", progress=False)):
        built.clear()
        CondensedBuffer(mem_per_class=2, condensation=how).post_adapt(strategy, stream.train_stream[0])
        assert built and all(spec.startswith("convnet") for spec in built)
    no_linear = torch.nn.Sequential(torch.nn.Conv2d(1, CLASSES, 8), torch.nn.Flatten())
    strict = CondensedBuffer(mem_per_class=2, condensation=Condensation(model="strategy", progress=False))
    with pytest.raises(DdplugError, match="needs an nn.Linear layer"):
        strict.post_adapt(types.SimpleNamespace(device="cpu", model=no_linear), stream.train_stream[0])
    # Left to its defaults, a dense network with no nn.Linear to match is matched through the preset's
    built.clear()
    lenient = CondensedBuffer(mem_per_class=2, condensation=Condensation(settings={"iterations": 3, "batch_real": 4},
                                                                         progress=False))
    lenient.post_adapt(types.SimpleNamespace(device="cpu", model=torch.nn.Sequential(torch.nn.Flatten())),
                       stream.train_stream[0])
    assert built and all(spec.startswith("convnet") for spec in built) and len(lenient.buffer) == 2 * 2 * 16


def test_class_with_a_single_sample_is_kept_as_it_is():
    stream = make_stream(drop_to_one=1)
    buffer = CondensedBuffer(mem_per_class=3, condensation=QUICK)
    buffer.post_adapt(AGENT, stream.train_stream[0])
    data = stream.train_stream[0].dataset.eval()
    only = next(data[i][0] for i in range(len(data)) if data[i][1] == 1)
    assert held(buffer) == {0: 4 * 3, 1: 1}  # class 0: 12 decoded images in 3 raw images' bytes
    assert torch.equal(buffer.groups[(0, 1)][0], only) and buffer.memory_bytes == (3 + 1) * 8 * 8


def test_retrain_mode_starts_fresh_and_trains_on_memory_only():
    stream = make_stream()
    model = tiny_model()
    recorder = Recorder()
    strategy = CondensedReplay(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                               mem_per_class=2, mode="retrain", condensation=QUICK,
                               train_mb_size=4, train_epochs=3, device="cpu", plugins=[recorder])
    for experience in stream.train_stream[:2]:
        strategy.train(experience)
    for name, tensor in recorder.start[1].items():
        assert torch.equal(tensor, recorder.start[0][name]), name
    memory = sorted(label for _, label, _ in strategy.plugin.storage_policy.buffer)
    assert sorted(recorder.labels[1]) == sorted(memory * 3) and set(memory) == {0, 1, 2, 3}
    assert not torch.equal(strategy.model.state_dict()["classifier.weight"], recorder.start[0]["classifier.weight"])


def test_condensed_buffer_survives_avalanche_checkpoint(tmp_path, monkeypatch):
    # torch 2.14 hides torch.optim.sgd from attribute lookup, so dill (Avalanche's pickler)
    # would copy SGD's class by value and fail; restoring the attribute lets it pickle by name.
    monkeypatch.setattr(torch.optim, "sgd", sys.modules["torch.optim.sgd"], raising=False)
    stream = make_stream()

    def fresh():
        model = tiny_model()
        return CondensedReplay(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), max_size=8,
                               condensation=QUICK, train_mb_size=8, device="cpu", evaluator=None)

    strategy = fresh()
    for experience in stream.train_stream[:2]:
        strategy.train(experience)
    save_checkpoint(strategy, tmp_path / "checkpoint.pkl")
    restored, next_experience = maybe_load_checkpoint(fresh(), tmp_path / "checkpoint.pkl")
    saved, loaded = strategy.plugin.storage_policy, restored.plugin.storage_policy
    assert next_experience == 2 and loaded is not saved and loaded.groups.keys() == saved.groups.keys()
    assert all(torch.equal(loaded.groups[key], saved.groups[key]) for key in saved.groups)
    assert all(torch.equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(saved.buffer, loaded.buffer))
    restored.train(stream.train_stream[2])
    assert set(held(loaded)) == set(range(CLASSES)) and loaded.memory_bytes <= 8 * 8 * 8


def test_bad_settings_raise_clear_errors():
    with pytest.raises(DdplugError, match="exactly one"):
        CondensedBuffer(10, mem_per_class=2)
    with pytest.raises(DdplugError, match="unknown condensation method"):
        Condensation(method="full")
    with pytest.raises(DdplugError, match="no setting"):
        Condensation(settings={"iteratoins": 3})
    with pytest.raises(DdplugError, match="unknown mode"):
        CondensedReplayPlugin(mem_per_class=2, mode="replace")
    buffer = CondensedBuffer(3, condensation=QUICK)
    buffer.post_adapt(AGENT, make_stream().train_stream[0])
    with pytest.raises(DdplugError, match="cannot hold 4 classes"):
        buffer.post_adapt(AGENT, make_stream().train_stream[1])


def delivered(experience) -> tuple[torch.Tensor, torch.Tensor]:
    """An experience's images and labels as the benchmark delivers them for evaluation."""
    loader = torch.utils.data.DataLoader(experience.dataset.eval(), batch_size=1000)
    images, labels = zip(*((x, y) for x, y, *_ in loader))
    return torch.cat(images), torch.cat(labels)


def assert_memory_fits_the_data(buffer: CondensedBuffer, images: torch.Tensor, labels: torch.Tensor,
                                level: float, mean_tolerance: float, bounds: tuple | None = None) -> None:
    """The memory stays within ``bounds`` per channel (default: the delivered data's range;
    up to one stored level) and reaches the data's darkest values (nothing clipped), and
    keeps each class's channel means."""
    low, high = images.amin(dim=(0, 2, 3)), images.amax(dim=(0, 2, 3))
    floor, ceiling = (low, high) if bounds is None else bounds
    memory = torch.cat(list(buffer.groups.values()))
    assert (memory.amin(dim=(0, 2, 3)) >= floor - level).all()
    assert (memory.amax(dim=(0, 2, 3)) <= ceiling + level).all()
    assert (memory.amin(dim=(0, 2, 3)) <= low + 0.2 * (high - low)).all()
    for (_, label), samples in buffer.groups.items():
        assert torch.allclose(samples.mean(dim=(0, 2, 3)), images[labels == label].mean(dim=(0, 2, 3)),
                              atol=mean_tolerance)


def test_memory_of_avalanches_normalised_split_fmnist_keeps_its_range_and_class_means(tmp_path):
    from avalanche.benchmarks.classic import SplitFMNIST

    write_fake_fashion_mnist(tmp_path, per_class=20, test_per_class=2, torchvision_layout=True)
    stream = SplitFMNIST(n_experiences=5, seed=0, dataset_root=tmp_path, fixed_class_order=list(range(10)))
    images, labels = delivered(stream.train_stream[0])
    assert images.min() < -0.7  # delivered normalised with (0.2860, 0.3530): background near -0.81
    budget = 2 * 28 * 28
    for param in ("multi:factor=2", "multi:factor=2,bits=4"):
        buffer = CondensedBuffer(mem_per_class=2, condensation=Condensation(settings={**FAST, "param": param},
                                                                            progress=False))
        buffer.post_adapt(AGENT, stream.train_stream[0])
        assert buffer.memory_bytes == 2 * budget  # two classes, each its budget's bytes, with the new scale
        step = 1 / 255 if param.endswith("=2") else 1 / 15
        assert_memory_fits_the_data(buffer, images, labels, level=step / 0.353, mean_tolerance=0.1)


def test_memory_of_a_three_channel_stream_with_other_statistics(tmp_path):
    generator = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    labels = torch.arange(4).repeat_interleave(20)
    pixels = torch.rand(len(labels), 3, 8, 8, generator=generator) * 0.5
    pixels[torch.arange(len(labels)), labels % 3] += 0.5  # each class brighter in one channel
    stream = nc_benchmark(torch.utils.data.TensorDataset((pixels - mean) / std, labels),
                          torch.utils.data.TensorDataset((pixels[::10] - mean) / std, labels[::10]),
                          n_experiences=2, task_labels=False, seed=0, fixed_class_order=[0, 1, 2, 3])
    images, labels = delivered(stream.train_stream[0])
    pixel_sets = {**FAST, "param": "pixels"}
    pixel_range = ((0 - mean) / std).flatten(), ((1 - mean) / std).flatten()
    for how, bounds in ((Condensation(settings=pixel_sets, progress=False), None),  # the scale found in the data
                        (Condensation(settings=pixel_sets, mean=mean.flatten().tolist(), std=std.flatten().tolist(),
                                      progress=False), pixel_range)):  # the scale given: its pixels' range
        buffer = CondensedBuffer(mem_per_class=3, condensation=how)
        buffer.post_adapt(AGENT, stream.train_stream[0])
        assert_memory_fits_the_data(buffer, images, labels, level=1 / 255 / 0.24, mean_tolerance=0.15, bounds=bounds)


def test_a_normalisation_that_does_not_fit_the_stream_fails_before_it_trains():
    recorder = Recorder()
    model = tiny_model()
    plugin = CondensedReplayPlugin(mem_per_class=2, condensation=Condensation(settings=FAST, mean=(0.0,), std=(1.0,),
                                                                              progress=False))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=8,
                     plugins=[plugin, recorder], device="cpu", evaluator=None)
    with pytest.raises(DdplugError, match=r"channel 0 spans pixels \[.*outside \[0, 1\]"):
        strategy.train(make_stream().train_stream[0])
    assert recorder.labels in ([], [[]])  # not one minibatch trained


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Condensation(settings={"param": "bogus"}), "unknown parameterisation"),
    (lambda: Condensation(settings={"iterations": -5}), "iterations must be"),
    (lambda: Condensation(settings={"lr_images": float("nan")}), "lr_images must be a finite"),
    (lambda: Condensation(settings={"init": "bogus"}), "unknown init"),
    (lambda: Condensation(settings={"model": "nonet"}), "unknown model 'nonet'"),
    (lambda: Condensation(settings={"model": "convnet:wdth=3"}), "has no option"),
    (lambda: Condensation(settings="iterations=3"), "settings must be a mapping"),
    (lambda: Condensation(preset="bogus"), "unknown preset"),
    (lambda: Condensation(mean=(0.5,), std=(0.0,)), "std finite and positive"),
    (lambda: Condensation(mean=(0.5,)), "both mean and std"),
    (lambda: Condensation(mean=(0.5, 0.5), std=(0.2,)), "one value per channel"),
    (lambda: Condensation(method="random", settings={"iterations": 3}), "takes no settings"),
    (lambda: Condensation(seed=-1), "seed must be"),
    (lambda: Condensation(model="nonet"), "unknown model 'nonet'"),
    (lambda: Condensation(method="herding", model="strategy"), "herding picks real images: drop model"),
    (lambda: Condensation(model="strategy", settings={"model": TINY}), "give the matching network once"),
    (lambda: Condensation(method="frepo", settings={"learn_labels": True}), "replays class ids"),
    (lambda: Condensation(method="dc", settings={"learn_labels": True}), "drop learn_labels"),
    (lambda: CondensedReplayPlugin(mem_per_class=1.5), "mem_per_class must be a whole number"),
    (lambda: CondensedReplayPlugin(mem_per_class=float("nan")), "mem_per_class must be a whole number"),
    (lambda: CondensedReplayPlugin(mem_per_class=True), "mem_per_class must be a whole number"),
    (lambda: CondensedReplayPlugin(max_size=0), "max_size must be a whole number"),
    (lambda: CondensedReplayPlugin(mem_per_class=2, batch_size_mem=-3), "batch_size_mem must be a whole number"),
    (lambda: CondensedReplayPlugin(mem_per_class=2, condensation={"method": "dm"}), "must be a Condensation"),
    (lambda: CondensedReplayPlugin(mem_per_class=2, fill_memory_batches="no"), "must be True or False"),
    (lambda: CondensedReplayPlugin(mem_per_class=2, augment_memory=1), "augment_memory must be True or False"),
    (lambda: CondensedBuffer(mem_per_class=2, augment="yes"), "augment must be True or False"),
])
def test_a_bad_condensation_fails_when_it_is_made(make, message):
    with pytest.raises(DdplugError, match=message):
        make()


def test_a_parameterisation_that_does_not_fit_the_images_fails_before_the_first_experience_trains():
    recorder = Recorder()
    model = tiny_model()
    plugin = CondensedReplayPlugin(mem_per_class=2, condensation=Condensation(
        settings={**FAST, "param": "multi:factor=3"}, progress=False))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=8,
                     plugins=[plugin, recorder], device="cpu", evaluator=None)
    with pytest.raises(DdplugError, match="factor"):
        strategy.train(make_stream().train_stream[0])
    assert recorder.labels in ([], [[]])


@pytest.fixture()
def tiny_runner(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPLUG_DATA", str(write_fake_fashion_mnist(tmp_path / "data")))
    monkeypatch.setattr(continual, "stream_settings", lambda preset, epochs=None: continual.StreamSettings(
        model=TINY, epochs=epochs or 1, memory_epochs=2, batch_size=16, condense=FAST,
        train_per_class=None, test_per_class=None))
    return tmp_path / "out"


def test_runner_prints_json_saves_results_and_resumes(tiny_runner, capsys, monkeypatch):
    argv = ["--experiences", "2", "--strategy", "condensed", "--mem-per-class", "2", "--seeds", "2",
            "--device", "cpu", "--out", str(tiny_runner), "--json"]
    assert main(["cl", *argv]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("strategy", "method", "final_accuracy", "final_accuracy_std", "forgetting", "seconds",
                "mem_per_class", "experiences", "accuracy_matrix"):
        assert key in summary
    assert (summary["strategy"], summary["method"], summary["experiences"], summary["seeds"]) == ("condensed", "dm", 2, 2)
    assert len(summary["accuracy_matrix"]) == 2 and all(len(row) == 2 for row in summary["accuracy_matrix"])
    assert summary["condensation_seconds"] > 0
    assert (tiny_runner / "accuracy.png").is_file() and (tiny_runner / "results-condensed-dm.json").is_file()
    monkeypatch.setattr(continual, "run_one", lambda *a, **k: pytest.fail("a finished run was redone"))
    assert main(["cl", *argv]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy_matrices"] == summary["accuracy_matrices"]


@pytest.mark.parametrize("strategy", ["condensed", "replay", "icarl"])
def test_a_total_memory_is_shared_by_the_classes_seen(tiny_runner, capsys, strategy):
    run = continual.ContinualRun(strategy=strategy, experiences=2, memory=MemoryBudget(total=10))
    summary = continual.run_benchmark("split-fmnist", run, seeds=1, device="cpu", out=tiny_runner)
    assert (summary["mem_per_class"], summary["mem_size"]) == (None, 10)
    assert "memory 10 in all" in capsys.readouterr().out
    assert len(summary["accuracy_matrix"]) == 2
    assert summary["memory_bytes"] == [[10 * 28 * 28] * 2]  # full after each experience, never past the total
    assert summary["memory_sizes"] == [[40, 40] if strategy == "condensed" else [10, 10]]  # decoded: 4 per stored


def test_the_condensed_memorys_parameterisation_is_an_option(tiny_runner):
    one = MemoryBudget(per_class=1)
    run = continual.ContinualRun(strategy="condensed", experiences=2, memory=one, param="pixels")
    summary = continual.run_benchmark("split-fmnist", run, seeds=1, device="cpu", out=tiny_runner)
    assert summary["label"] == "condensed-dm-pixels" and summary["condense_settings"]["param"] == "pixels"
    assert summary["memory_sizes"] == [[5, 10]]  # one raw image per class seen (FAST's multi decodes 4)
    assert summary["memory_bytes"] == [[5 * 784, 10 * 784]]
    run = continual.ContinualRun(strategy="condensed", experiences=2, memory=one, param="multi:factor=2,bits=4")
    packed = continual.run_benchmark("split-fmnist", run, seeds=1, device="cpu", out=tiny_runner)
    assert packed["label"] == "condensed-dm-multi-factor2-bits4"  # a file name without ':', '=' or ','
    assert packed["memory_sizes"] == [[40, 80]]  # 8 decoded images in one raw image's bytes, per class seen
    assert packed["memory_bytes"] == [[5 * 784, 10 * 784]]


def test_runner_accepts_a_ready_scenario_and_icarl(tiny_runner, capsys):
    run = continual.ContinualRun(strategy="icarl", experiences=3, memory=MemoryBudget(per_class=2))
    summary = continual.run_benchmark(make_stream(), run, seeds=1, device="cpu", out=tiny_runner)
    assert len(summary["accuracy_matrix"]) == 3 and 0 <= summary["final_accuracy"] <= 1
    assert "after exp 2" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "ewc"], "unknown strategy"),
    (["--benchmark", "cifar10"], "unknown benchmark"),
    (["--method", "nope"], "unknown condensation method"),
    (["--mem-per-class", "0"], "--mem-per-class must be at least 1"),
    (["--mem-size", "0"], "--mem-size must be at least 1"),
    (["--mem-size", "4", "--mem-per-class", "2"], "not both"),
    (["--experiences", "3"], "cannot be split into 3"),
    (["--param", "nope"], "unknown parameterisation"),
    (["--param", "pixels", "--strategy", "replay"], "drop --param"),
])
def test_runner_rejects_bad_input_before_work(tiny_runner, capsys, argv, message):
    assert main(["cl", *argv, "--seeds", "1", "--device", "cpu", "--out", str(tiny_runner)]) == 2
    assert message in capsys.readouterr().err
    assert not tiny_runner.exists()
