import math
import os
import signal

import pytest
import torch

from ddplug.methods import (
    DistributionMatching,
    DMConfig,
    create_distiller,
    make_config,
    run_distillation,
    select_subset,
)
from ddplug.methods.dm import class_statistics
from ddplug.methods.sampling import ClassBalancedSampler
from ddplug.methods.selection import herding_indices, kcenter_indices
from ddplug.errors import DdplugError

from helpers import TINY_MODEL


def dm(digits, **overrides):
    settings = {"ipc": 2, "iterations": 30, "model": TINY_MODEL, "batch_real": 32, "seed": 0, **overrides}
    return create_distiller("dm", digits.train, DMConfig(**settings))


def test_sampler_draws_distinct_indices_per_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 2])
    sampler = ClassBalancedSampler(labels, 3)
    draw = sampler.sample(2, torch.Generator().manual_seed(0))
    assert draw.shape == (3, 2)
    for c in range(3):
        assert (labels[draw[c]] == c).all()
        assert len(set(draw[c].tolist())) == 2
    assert sampler.sample(10).shape == (3, 2)  # capped at the smallest class
    with pytest.raises(DdplugError, match="no real images"):
        ClassBalancedSampler(torch.tensor([0, 0, 2]), 3)


def test_dm_lowers_its_loss_and_moves_the_images(digits):
    distiller = dm(digits, lr_images=5.0)
    start = distiller.images.detach().clone()
    probe = range(1000, 1010)  # fixed networks and batches, unseen during training
    with torch.no_grad():
        before = torch.stack([distiller.loss(i) for i in probe]).mean()
    result = run_distillation(distiller, progress=False)
    with torch.no_grad():
        after = torch.stack([distiller.loss(i) for i in probe]).mean()
    assert after < 0.8 * before
    assert (distiller.images.detach() - start).abs().max() > 1e-3
    assert len(result.losses) == 30 and result.iterations == 30 and not result.interrupted
    synthetic = result.synthetic
    assert synthetic.images.shape == (20, 1, 8, 8)
    assert synthetic.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert synthetic.meta["method"] == "dm" and synthetic.meta["ipc"] == 2 and synthetic.meta["iterations"] == 30


def test_dm_initialisations(digits):
    real_init = dm(digits).images.detach()
    rows = digits.train.images.flatten(1)
    for image in real_init.flatten(1):
        assert (rows == image).all(dim=1).any()  # every synthetic image starts as a real one
    noise = dm(digits, init="noise").images.detach()
    assert abs(noise.std().item() - 1) < 0.2


def test_blend_initialisation_starts_each_image_as_a_mean_of_its_class(digits):
    """Each image starts as the mean of N random real images of its own class: no copy of
    any, nearer its class's mean than a real image is."""
    from ddplug.privacy.leakage import nearest_similarity

    images, labels = digits.train.images, digits.train.labels
    for spec, n in (("blend", 4), ("blend:images=8", 8)):
        blended = dm(digits, init=spec).images.detach()
        assert blended.shape == (20, 1, 8, 8)
        nearest = nearest_similarity(blended, images)
        assert nearest.max() < 0.99, spec  # no start is a near copy of a real image
        for c in range(10):
            members, start = images[labels == c], blended[2 * c:2 * c + 2]
            spread = (members - members.mean(0)).flatten(1).norm(dim=1).median()
            assert ((start - members.mean(0)).flatten(1).norm(dim=1) < spread).all(), (spec, c)
        # the mean of n images varies about 1/sqrt(n) as much as one image does
        assert blended.std(dim=0).mean() < 0.8 * images.std(dim=0).mean()
    assert not torch.equal(dm(digits, init="blend").images, dm(digits, init="blend:images=8").images)


def test_a_blend_of_a_class_smaller_than_its_images_still_starts_every_image_from_it(digits):
    from ddplug.data import ImageDataset

    keep = torch.cat([torch.nonzero(digits.train.labels == c).flatten()[:3] for c in range(10)])
    tiny = ImageDataset(digits.train.images[keep], digits.train.labels[keep], 10, digits.train.mean,
                        digits.train.std, name="tiny-digits")
    config = DMConfig(ipc=2, iterations=1, model=TINY_MODEL, batch_real=3, init="blend:images=8")
    blended = create_distiller("dm", tiny, config).images.detach()
    for c in range(10):  # every start lies within its class's three images' hull: a mean of them
        members = tiny.images[tiny.labels == c].flatten(1)
        start = blended[2 * c:2 * c + 2].flatten(1)
        assert (start >= members.min(0).values - 1e-6).all() and (start <= members.max(0).values + 1e-6).all()


def test_same_seed_same_set_different_seed_differs(digits):
    a = run_distillation(dm(digits, iterations=5), progress=False).synthetic.images
    b = run_distillation(dm(digits, iterations=5), progress=False).synthetic.images
    c = run_distillation(dm(digits, iterations=5, seed=1), progress=False).synthetic.images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resume_continues_the_same_trajectory(digits, tmp_path):
    uninterrupted = run_distillation(dm(digits, iterations=12), progress=False)
    checkpoint = tmp_path / "ckpt.pt"
    first = run_distillation(dm(digits, iterations=7), checkpoint=checkpoint, checkpoint_every=3, progress=False)
    assert first.iterations == 7
    resumed = run_distillation(dm(digits, iterations=12), checkpoint=checkpoint, progress=False)
    assert resumed.iterations == 12
    assert torch.allclose(resumed.synthetic.images, uninterrupted.synthetic.images, atol=1e-6)
    assert len(resumed.losses) == 12
    assert resumed.losses[:7] == first.losses


def test_checkpoint_of_another_run_is_refused(digits, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    run_distillation(dm(digits, iterations=2), checkpoint=checkpoint, progress=False)
    with pytest.raises(DdplugError, match="different run"):
        run_distillation(dm(digits, iterations=2, lr_images=3.0), checkpoint=checkpoint, progress=False)


def test_bad_settings_fail_before_work(digits):
    with pytest.raises(DdplugError, match="ipc must be"):
        dm(digits, ipc=0)
    with pytest.raises(DdplugError, match="more than the smallest class"):
        dm(digits, ipc=10_000)
    with pytest.raises(DdplugError, match="unknown init"):
        dm(digits, init="zeros")
    with pytest.raises(DdplugError, match="images must be a whole number of at least 2"):
        dm(digits, init="blend:images=1")
    with pytest.raises(DdplugError, match="unknown option 'size'"):
        dm(digits, init="blend:size=3")
    with pytest.raises(DdplugError, match="takes no options"):
        dm(digits, init="real:images=3")
    with pytest.raises(DdplugError, match="needs --init noise"):
        dm(digits, init="blend", dp_epsilon=1.0)
    with pytest.raises(DdplugError, match="unknown method"):
        make_config("dx")
    with pytest.raises(DdplugError, match="no setting"):
        make_config("dm", {"itrations": "3"})
    config = make_config("dm", {"iterations": "7", "augment": "false"})
    assert config.iterations == 7 and config.augment is False
    assert isinstance(create_distiller("dm", digits.train, config), DistributionMatching)
    # Only the methods that learn a code are distillers; a selection picks real images.
    with pytest.raises(DdplugError, match="herding is not a distillation method; distillers: dc, dsa, dm"):
        create_distiller("herding", digits.train)


def test_herding_and_kcenter_on_known_points():
    points = torch.tensor([[0.0, 0.0], [10.0, 0.0], [-10.0, 0.0], [1.0, 0.0], [0.0, 9.0]])
    # The mean is (0.2, 1.8): herding takes the point nearest it first.
    assert herding_indices(points, 1).tolist() == [0]
    assert herding_indices(points, 3).tolist()[:1] == [0]
    assert len(set(herding_indices(points, 5).tolist())) == 5
    # k-center: nearest-to-mean first, then farthest points.
    assert kcenter_indices(points, 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_selections_pick_real_images_per_class(digits, method):
    from helpers import TINY_MODEL as spec
    from ddplug.models import create_model

    network = create_model(spec, in_channels=1, num_classes=10, image_size=(8, 8), seed=0)
    subset = select_subset(method, digits.train, 3, seed=0, feature_network=network)
    assert subset.images.shape == (30, 1, 8, 8)
    assert torch.bincount(subset.labels, minlength=10).tolist() == [3] * 10
    rows = digits.train.images.flatten(1)
    assert all((rows == image).all(dim=1).any() for image in subset.images.flatten(1))
    assert subset.meta["method"] == method


def test_selection_errors(digits):
    with pytest.raises(DdplugError, match="feature_network"):
        select_subset("herding", digits.train, 2)
    with pytest.raises(DdplugError, match="larger than the smallest class"):
        select_subset("random", digits.train, 5000)
    with pytest.raises(DdplugError, match="unknown selection"):
        select_subset("best", digits.train, 2)
    assert len(select_subset("full", digits.train, 1)) == len(digits.train)


class InterruptedDM(DistributionMatching):
    """Presses Ctrl-C (SIGINT to itself) during iteration 3."""

    def step(self, iteration):
        if iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return super().step(iteration)


def test_ctrl_c_stops_after_the_step_and_saves_it(digits, tmp_path):
    config = DMConfig(ipc=1, iterations=50, model=TINY_MODEL, batch_real=8)
    checkpoint = tmp_path / "ckpt.pt"
    result = run_distillation(InterruptedDM(digits.train, config), checkpoint=checkpoint, checkpoint_every=100, progress=False)
    assert result.interrupted and result.iterations == 4
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["iteration"] == 4
    assert torch.equal(saved["state"]["images"], result.synthetic.images)
    # the same command again picks up at iteration 4 and finishes
    finished = run_distillation(DistributionMatching(digits.train, config), checkpoint=checkpoint, progress=False)
    assert finished.iterations == 50 and not finished.interrupted


def test_learned_labels_and_lr_are_refused_where_the_loss_ignores_them(digits):
    with pytest.raises(DdplugError, match="learn_labels"):
        dm(digits, learn_labels=True)
    with pytest.raises(DdplugError, match="learn_lr"):
        dm(digits, learn_lr=True)


def test_pooled_dm_matches_with_networks_that_train_on_real_batches(digits):
    distiller = dm(digits, iterations=6, pool_size=2, max_online_steps=2)
    first = [network.classifier.weight.detach().clone() for network in distiller.pool.networks]
    assert distiller.pool.steps == [0, 1]  # staggered ages
    run_distillation(distiller, progress=False)
    slots = [distiller.pool.slot(i) for i in range(6)]
    for slot in (0, 1):
        uses = slots.count(slot)
        assert distiller.pool.generations[slot] == max(0, (slot + uses - 1) // 2)
        if uses:
            assert not torch.equal(distiller.pool.networks[slot].classifier.weight, first[slot])
    # the pool's networks, not fresh ones, embed the sets
    assert distiller.network(0) is distiller.pool.networks[slots[0]]


def test_pooled_dm_resumes_exactly(digits, tmp_path):
    settings = {"pool_size": 2, "max_online_steps": 2}
    uninterrupted = run_distillation(dm(digits, iterations=5, **settings), progress=False)
    checkpoint = tmp_path / "ckpt.pt"
    run_distillation(dm(digits, iterations=3, **settings), checkpoint=checkpoint, progress=False)
    resumed = run_distillation(dm(digits, iterations=5, **settings), checkpoint=checkpoint, progress=False)
    assert torch.equal(resumed.synthetic.images, uninterrupted.synthetic.images)


def test_pool_settings_are_checked(digits, tmp_path):
    with pytest.raises(DdplugError, match="pool_size must be a finite number, 0 or more, got -1"):
        dm(digits, pool_size=-1)
    with pytest.raises(DdplugError, match="max_online_steps must be at least 1"):
        dm(digits, pool_size=2, max_online_steps=0)


def test_dm_class_statistics_are_means_then_variances():
    features = torch.tensor([[1.0, 2.0], [3.0, 6.0], [0.0, 0.0], [2.0, -2.0]])  # classes 0, 0, 1, 1
    assert torch.equal(class_statistics(features, 2, 1), torch.tensor([[2.0, 4.0], [1.0, -1.0]]))
    assert torch.equal(class_statistics(features, 2, 2), torch.tensor([[2.0, 4.0, 1.0, 4.0], [1.0, -1.0, 1.0, 1.0]]))


def test_dm_with_variances_matches_them_too(digits):
    """Moments 2 adds the squared gap of the class variances to the mean loss, no more."""
    means, both = dm(digits), dm(digits, moments=2)
    network = means.network(0)
    real, real_labels = means.sample_real(0)
    real, syn = means.augment_pair(0, real, real_labels, means.images, means.labels)
    with torch.no_grad():
        real_embedding, syn_embedding = network.embed(real), network.embed(syn)
        gap = (class_statistics(real_embedding, 10, 2) - class_statistics(syn_embedding, 10, 2)).square()
        assert torch.allclose(means.loss(0), gap[:, :real_embedding.shape[1]].sum(), rtol=1e-5)
        assert torch.allclose(both.loss(0), gap.sum(), rtol=1e-5)
        assert both.loss(0) > means.loss(0)
    with pytest.raises(DdplugError, match="moments must be 1"):
        dm(digits, moments=3)
    with pytest.raises(DdplugError, match="only class means are released under differential privacy"):
        dm(digits, moments=2, dp_epsilon=1.0, init="noise")



def test_dm_embedding_in_checkpointed_chunks_gives_the_same_gradient_in_less_memory(digits):
    from ddplug.memory import peak_memory_bytes

    grads, peaks = [], []
    for chunk in (0, 16):
        distiller = create_distiller("dm", digits.train, make_config("dm", {
            "ipc": 10, "model": TINY_MODEL, "embed_chunk": chunk, "batch_real": 64}))

        def backward() -> None:
            distiller.optimizer.zero_grad()
            distiller.loss(0).backward()

        peaks.append(peak_memory_bytes(backward, "cpu"))
        grads.append(distiller.code["images"].grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-7)
    assert grads[0].abs().max() > 0
    assert peaks[1] < 0.6 * peaks[0]  # one 16-image chunk's activations at a time, not 100 images'


def test_dm_embed_chunk_is_refused_where_it_would_change_the_loss(digits):
    with pytest.raises(DdplugError, match="embed_chunk must be a finite number, 0 or more"):
        make_config("dm", {"ipc": 1, "embed_chunk": -1}).check()
    with pytest.raises(DdplugError, match="normalises over the batch"):
        create_distiller("dm", digits.train, make_config("dm", {"ipc": 1, "model": "convnet:width=8,norm=batch",
                                                                "embed_chunk": 4}))


def test_a_cosine_schedule_sets_the_rate_of_every_step_and_a_stopped_run_resumes_on_it(digits, tmp_path):
    rates = []

    class Recorded(DistributionMatching):
        def step(self, iteration):
            rates.append(self.optimizer.param_groups[0]["lr"])
            return super().step(iteration)

    config = DMConfig(ipc=1, iterations=8, model=TINY_MODEL, batch_real=8, lr_images=2.0, lr_schedule="cosine")
    uninterrupted = run_distillation(Recorded(digits.train, config), progress=False)
    assert rates == pytest.approx([2.0 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)])
    checkpoint = tmp_path / "ckpt.pt"
    stopped = run_distillation(InterruptedDM(digits.train, config), checkpoint=checkpoint, progress=False)
    assert stopped.iterations == 4
    resumed = run_distillation(DistributionMatching(digits.train, config), checkpoint=checkpoint, progress=False)
    assert torch.allclose(resumed.synthetic.images, uninterrupted.synthetic.images, atol=1e-6)
    # the schedule is tied to the total, so a longer run is another run, not this one extended
    with pytest.raises(DdplugError, match="different run"):
        run_distillation(dm(digits, ipc=1, iterations=12, batch_real=8, lr_images=2.0, lr_schedule="cosine"),
                         checkpoint=checkpoint, progress=False)
    assert dm(digits, lr_schedule="constant").config.extendable()
    assert not dm(digits, round_from=0.5).config.extendable()


def test_an_unknown_lr_schedule_is_refused_when_configured(digits):
    with pytest.raises(DdplugError, match="unknown lr_schedule 'linear'; choose one of constant, cosine"):
        dm(digits, lr_schedule="linear")
