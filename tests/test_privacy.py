"""The leakage report and differentially private distribution matching."""

import pytest
import torch

from ddplug.data import ImageDataset
from ddplug.methods import DMConfig, create_distiller, make_config, run_distillation
from ddplug.errors import DdplugError
from ddplug.privacy import (
    LeakageReport,
    PrivateClassMeans,
    calibrate_noise,
    clip_rows,
    epsilon_spent,
    leakage_report,
    membership_advantage,
    nearest_similarity,
)

from helpers import TINY_MODEL


def private_dm(digits, **overrides):
    settings = {"ipc": 2, "iterations": 30, "model": TINY_MODEL, "batch_real": 16, "seed": 0, "init": "noise",
                "dp_epsilon": 4.0, "dp_clip": 1.0, "lr_images": 5.0, **overrides}
    return create_distiller("dm", digits.train, DMConfig(**settings))


# --- leakage -------------------------------------------------------------------------

def test_centred_similarity_ignores_brightness_and_excludes_self():
    images = torch.rand(5, 1, 4, 4)
    brighter = images * 2 + 0.5  # same pattern, other contrast and brightness: similarity 1
    assert torch.allclose(nearest_similarity(brighter, images), torch.ones(5, dtype=torch.float64))
    own = nearest_similarity(images, images, exclude=torch.arange(5))
    assert (own < 1 - 1e-6).all()  # an image is never its own nearest neighbour


def test_membership_advantage_values():
    assert membership_advantage(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2])) == 1.0
    assert membership_advantage(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])) == 0.0
    assert membership_advantage(torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.2])) == pytest.approx(0.5)


def test_leakage_report_flags_uploaded_copies_of_real_images(digits):
    real = digits.train.subset(torch.arange(200))
    copies = leakage_report(real.images[:20], real, digits.test, probes=50)
    assert copies.near_copies == 20 and copies.summary()["upload_nn_similarity_median"] == pytest.approx(1.0)
    assert tuple(copies.summary()) == LeakageReport.KEYS
    # Synthetic images unrelated to the data: no copy, and lower than the real images' scale.
    noise = leakage_report(torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)), real,
                           digits.test, probes=50)
    assert noise.near_copies == 0
    assert noise.summary()["upload_nn_similarity_median"] < noise.summary()["real_nn_similarity_median"]
    assert noise.membership_advantage < 0.3
    # A set that is all of its members: the attack tells every member from a non-member.
    small = digits.train.subset(torch.arange(40))
    assert leakage_report(small.images, small, digits.test, probes=40).membership_advantage == 1.0


def test_leakage_report_needs_non_members_of_each_class(digits):
    real = digits.train.subset(torch.arange(100))
    holdout = ImageDataset(digits.test.images[:5], torch.zeros(5, dtype=torch.long), 10, digits.test.mean,
                           digits.test.std, "digits")
    with pytest.raises(DdplugError, match="no image of classes"):
        leakage_report(real.images[:4], real, holdout, probes=30)


# --- the mechanism -------------------------------------------------------------------

def test_noise_follows_from_the_budget_through_the_accountant():
    sigma = calibrate_noise(4.0, 1e-5, 0.1, 250)
    assert epsilon_spent(sigma, 0.1, 250, 1e-5) == pytest.approx(4.0, rel=0.01)
    assert epsilon_spent(sigma * 0.9, 0.1, 250, 1e-5) > 4.0  # the smallest noise that fits
    assert calibrate_noise(1.0, 1e-5, 0.1, 250) > sigma > calibrate_noise(10.0, 1e-5, 0.1, 250)
    assert calibrate_noise(4.0, 1e-5, 0.1, 1000) > sigma  # more steps spend more
    assert calibrate_noise(4.0, 1e-5, 0.2, 250) > sigma  # so does a larger sample
    with pytest.raises(DdplugError, match="epsilon > 0"):
        calibrate_noise(0.0, 1e-5, 0.1, 10)


def test_clipping_bounds_one_images_influence_on_the_released_means():
    counts = torch.tensor([50, 50])
    mechanism = PrivateClassMeans.calibrate(counts, batch_per_class=10, steps=100, epsilon=4.0, delta=1e-5, clip=2.0)
    assert mechanism.sample_rate == pytest.approx(0.2)
    features = torch.randn(20, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(2).repeat_interleave(10)
    changed = features.clone()
    changed[3] *= 1e6  # one image moved as far as it gets
    sums, moved = (mechanism.class_sums(f, labels, 2, torch.Generator().manual_seed(7)) for f in (features, changed))
    assert (moved - sums).norm() <= 2 * mechanism.clip + 1e-4  # at most clip out, clip in
    assert torch.allclose(moved[1], sums[1])  # the other class does not move
    assert clip_rows(changed, 2.0).norm(dim=1).max() <= 2.0 + 1e-6
    # The noise on each class sum has std noise_multiplier * clip.
    many = torch.stack([mechanism.class_sums(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), 2,
                                             torch.Generator().manual_seed(s)) for s in range(200)])
    assert many.std().item() == pytest.approx(mechanism.noise_multiplier * mechanism.clip, rel=0.1)


def test_private_dm_lowers_its_loss_and_reports_epsilon(digits):
    distiller = private_dm(digits)

    def class_balanced_batch(*args):
        raise AssertionError("under DP the real data is read only through the mechanism's Poisson sample")

    distiller.sample_real = class_balanced_batch
    assert distiller.privacy is not None and distiller.privacy.noise_multiplier > 0
    start = distiller.images.detach().clone()
    result = run_distillation(distiller, progress=False)
    assert (distiller.images.detach() - start).abs().max() > 1e-3
    privacy = result.synthetic.meta["privacy"]
    assert privacy["epsilon"] == pytest.approx(4.0, rel=0.02) and privacy["delta"] == 1e-5 and privacy["steps"] == 30
    assert privacy["sample_rate"] == pytest.approx(16 * 10 / len(digits.train))
    # The losses trend down despite the noise: the first ten above the last ten.
    assert sum(result.losses[:10]) > sum(result.losses[-10:])


def test_private_dms_noise_is_secret_yet_a_resumed_run_keeps_it(digits, tmp_path):
    # The public seed must not give the noise away: two runs with it differ...
    first = run_distillation(private_dm(digits, iterations=4), progress=False).synthetic.images
    again = run_distillation(private_dm(digits, iterations=4), progress=False).synthetic.images
    assert not torch.equal(first, again)
    # ...while a run resumed from its checkpoint goes on with its own secret draws.
    checkpoint = tmp_path / "checkpoint.pt"
    first_half = private_dm(digits, iterations=2)
    run_distillation(first_half, checkpoint=checkpoint, progress=False)
    resumed = private_dm(digits, iterations=4)
    assert resumed.secret_seed != first_half.secret_seed  # fresh from the OS...
    run_distillation(resumed, checkpoint=checkpoint, progress=False)
    assert resumed.secret_seed == first_half.secret_seed  # ...until the checkpoint restores the run's own


@pytest.mark.parametrize(("method", "overrides", "message"), [
    ("dm", {"init": "real"}, "needs --init noise"),
    ("dm", {"pool_size": 2}, "pool of networks trains on the real data"),
    ("dm", {"dp_delta": 1.0}, "0 < dp_delta < 1"),
    ("dc", {}, "cannot be made differentially private"),
])
def test_settings_that_cannot_be_private_are_refused(digits, method, overrides, message):
    settings = {"ipc": 2, "iterations": 2, "model": TINY_MODEL, "init": "noise", "dp_epsilon": 1.0, **overrides}
    with pytest.raises(DdplugError, match=message):
        create_distiller(method, digits.train, make_config(method, settings))
