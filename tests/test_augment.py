"""Tests for differentiable siamese augmentation (ddplug.augment)."""

from __future__ import annotations

import pytest
import torch

from ddplug.augment import DSA, FAMILIES, DSAConfig, DSAParams, apply_dsa, sample_dsa_params
from ddplug.errors import DdplugError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 4, c: int = 3, size: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=_gen(seed), dtype=dtype)


def _repeated(n: int, c: int = 3, size: int = 8) -> torch.Tensor:
    return _images(1, c, size).expand(n, -1, -1, -1).clone()


def _color(brightness: float, saturation: float, contrast: float) -> DSAParams:
    return DSAParams(
        "color",
        {
            "brightness": torch.tensor([brightness]),
            "saturation": torch.tensor([saturation]),
            "contrast": torch.tensor([contrast]),
        },
    )


def _crop(translate: list[list[float]], ratio: float) -> DSAParams:
    u = torch.tensor(translate)
    return DSAParams("crop", {"translate": u, "ratio": torch.full((len(u),), ratio)})


def _cutout(center: list[list[float]], ratio: float) -> DSAParams:
    u = torch.tensor(center)
    return DSAParams("cutout", {"center": u, "ratio": torch.full((len(u),), ratio)})


# --- shapes, gradients, devices -------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_shape_dtype_and_device(family: str, dtype: torch.dtype) -> None:
    x = _images(dtype=dtype)
    out = DSA(family)(x, generator=_gen(1))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_the_input(family: str) -> None:
    x = _images().requires_grad_(True)
    a, b = DSA(family).siamese(_images(seed=5), x, generator=_gen(2))
    (a.sum() + b.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "params",
    [
        _color(0.2, 1.7, 0.8),
        _crop([[0.9, 0.1]], 0.25),
        _cutout([[0.3, 0.6]], 0.5),
        DSAParams("flip", {"flip": torch.tensor([True])}),
        DSAParams("scale", {"scale": torch.tensor([[1.13, 0.91]])}),
        DSAParams("rotate", {"angle": torch.tensor([11.0])}),
    ],
    ids=lambda p: p.family,
)
def test_gradients_are_correct(params: DSAParams) -> None:
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, generator=_gen(3), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_dsa(t, params), (x,))


@pytest.mark.parametrize("family", FAMILIES)
def test_runs_without_reading_tensor_values_on_the_host(family: str) -> None:
    # Meta tensors hold no data: any .item(), .cpu() or `if tensor:` in the path would raise.
    x = torch.empty(4, 3, 8, 8, device="meta", requires_grad=True)
    dsa = DSA(family)
    out = dsa(x)
    groups = [torch.zeros(4, dtype=torch.long, device="meta"), torch.ones(2, dtype=torch.long, device="meta")]
    a, b = dsa.siamese(x, x[:2], groups=groups, num_groups=2)
    (out.sum() + a.sum() + b.sum()).backward()
    assert out.device.type == a.device.type == b.device.type == "meta"
    assert x.grad is not None and x.grad.shape == x.shape


# --- siamese and grouped draws -------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_gives_every_image_of_every_batch_the_same_transform(family: str) -> None:
    real = _repeated(4)
    real_out, syn_out = DSA(family).siamese(real, real[:2].clone(), generator=_gen(4))
    outputs = torch.cat([real_out, syn_out])
    assert torch.equal(outputs, outputs[:1].expand_as(outputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_groups_share_transforms_by_class(family: str) -> None:
    real = _repeated(4, size=16)
    syn = _repeated(2, size=16)
    groups = [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])]
    real_out, syn_out = DSA(family).siamese(real, syn, groups=groups, num_groups=2, generator=_gen(5))
    for image in (real_out[1], syn_out[0]):
        assert torch.equal(image, real_out[0])
    for image in (real_out[3], syn_out[1]):
        assert torch.equal(image, real_out[2])


@pytest.mark.parametrize("family", ["scale", "rotate", "color"])
def test_siamese_groups_get_their_own_transforms(family: str) -> None:
    x = _repeated(2)
    groups = [torch.tensor([0, 1])]
    (out,) = DSA(family).siamese(x, groups=groups, num_groups=2, generator=_gen(6))
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_draws_a_transform_per_image(family: str) -> None:
    out = DSA(family)(_repeated(16, size=16), generator=_gen(7))
    assert not torch.equal(out, out[:1].expand_as(out))


# --- geometry -----------------------------------------------------------------------------


def test_integer_crop_is_an_exact_shift_with_zero_fill() -> None:
    # 8 px, ratio 0.25: shifts in [-2, 2], u -> floor(5u) - 2.
    x = torch.randn(3, 2, 8, 8, generator=_gen(8))
    params = _crop([[0.9, 0.5], [0.5, 0.1], [0.3, 0.7]], 0.25)  # (dx, dy) = (2, 0), (0, -2), (-1, 1)
    out = apply_dsa(x, params)
    expected = torch.zeros_like(x)
    expected[0, :, :, 2:] = x[0, :, :, :-2]
    expected[1, :, :-2, :] = x[1, :, 2:, :]
    expected[2, :, 1:, :-1] = x[2, :, :-1, 1:]
    assert torch.equal(out, expected)


def test_crop_draws_every_whole_pixel_shift_up_to_the_ratio() -> None:
    # 16 px, ratio 0.125: the original draws shifts uniformly from -2..2 on each axis.
    n, size = 400, 16
    impulse = torch.zeros(n, 1, size, size)
    impulse[:, :, 8, 8] = 1.0
    out = DSA(DSAConfig(strategy="crop"))(impulse, generator=_gen(9))
    flat = out.flatten(1)
    assert torch.equal(flat.sum(1), torch.ones(n))  # moved, never split or lost
    position = flat.argmax(1)
    dy, dx = position // size - 8, position % size - 8
    assert set(dx.tolist()) == set(dy.tolist()) == {-2, -1, 0, 1, 2}


def test_identity_scale_and_rotation_leave_images_unchanged() -> None:
    x = _images(2)
    same_scale = apply_dsa(x, DSAParams("scale", {"scale": torch.ones(2, 2)}))
    same_angle = apply_dsa(x, DSAParams("rotate", {"angle": torch.zeros(2)}))
    torch.testing.assert_close(same_scale, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(same_angle, x, atol=1e-5, rtol=0)


def test_rotation_turns_about_the_centre() -> None:
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = apply_dsa(x, DSAParams("rotate", {"angle": torch.tensor([90.0])}))
    torch.testing.assert_close(out, torch.rot90(x, -1, dims=(2, 3)), atol=1e-4, rtol=0)


def test_scale_stretches_the_sampling_grid_about_the_centre() -> None:
    # Stretch 2 along x: output column 2 + d shows input column 2 + 2d, outside is zero.
    x = torch.arange(1.0, 26.0).view(1, 1, 5, 5)
    out = apply_dsa(x, DSAParams("scale", {"scale": torch.tensor([[2.0, 1.0]])}))
    expected = torch.zeros_like(x)
    expected[..., 1:4] = x[..., 0::2]
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_flip_mirrors_only_the_chosen_images() -> None:
    x = _images(2)
    out = apply_dsa(x, DSAParams("flip", {"flip": torch.tensor([True, False])}))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_cutout_zeroes_a_square_of_half_the_size() -> None:
    x = torch.randn(2, 3, 8, 8, generator=_gen(10)) + 10.0  # no accidental zeros
    # side 4 (even) -> 9 centres; u = 0.5 -> centre 4 covers 2..5; u = 0 -> centre 0 covers 0..1.
    out = apply_dsa(x, _cutout([[0.5, 0.5], [0.0, 0.5]], 0.5))
    expected = x.clone()
    expected[0, :, 2:6, 2:6] = 0.0
    expected[1, :, 2:6, 0:2] = 0.0
    assert torch.equal(out, expected)


def test_sampled_cutouts_are_squares_clipped_at_the_border() -> None:
    n, size = 300, 8
    out = DSA("cutout")(torch.ones(n, 1, size, size), generator=_gen(11))
    zeroed = out[:, 0] == 0
    rows, cols = zeroed.any(2).sum(1), zeroed.any(1).sum(1)
    assert torch.equal(zeroed.sum((1, 2)), rows * cols)  # one rectangle per image
    assert rows.max() == cols.max() == 4 and rows.min() >= 2 and cols.min() >= 2
    interior = (rows == 4) & (cols == 4)
    assert interior.any() and (interior.sum() < n)


# --- colour ---------------------------------------------------------------------------------


def test_brightness_adds_a_constant() -> None:
    x = _images(1)
    torch.testing.assert_close(apply_dsa(x, _color(0.3, 1.0, 1.0)), x + 0.3)


def test_saturation_scales_the_distance_to_the_channel_mean() -> None:
    x = torch.tensor([[[[1.0]], [[2.0]], [[6.0]]]])  # channel mean 3
    out = apply_dsa(x, _color(0.0, 0.5, 1.0))
    torch.testing.assert_close(out, torch.tensor([[[[2.0]], [[2.5]], [[4.5]]]]))


def test_saturation_is_the_identity_for_grey_images() -> None:
    x = _images(2, c=1)
    params = DSAParams(
        "color",
        {"brightness": torch.zeros(2), "saturation": torch.tensor([0.0, 2.0]), "contrast": torch.ones(2)},
    )
    torch.testing.assert_close(apply_dsa(x, params), x)


def test_contrast_scales_the_distance_to_the_image_mean() -> None:
    x = torch.tensor([[[[0.0, 4.0]], [[2.0, 6.0]]]])  # image mean 3
    out = apply_dsa(x, _color(0.0, 1.0, 1.5))
    torch.testing.assert_close(out, torch.tensor([[[[-1.5, 4.5]], [[1.5, 7.5]]]]))


def test_color_applies_brightness_then_saturation_then_contrast_without_clamping() -> None:
    x = torch.randn(1, 3, 4, 4, generator=_gen(12)) * 3
    b, s, c = 0.4, 1.6, 1.3
    y = x + b
    y = (y - y.mean(1, keepdim=True)) * s + y.mean(1, keepdim=True)
    y = (y - y.mean()) * c + y.mean()
    out = apply_dsa(x, _color(b, s, c))
    torch.testing.assert_close(out, y)
    assert out.min() < -1 and out.max() > 1


def test_sampled_parameters_follow_the_protocol_ranges() -> None:
    config, n = DSAConfig(), 2000

    def draw(family: str) -> dict[str, torch.Tensor]:
        return sample_dsa_params(DSAConfig(strategy=family), n, generator=_gen(13)).values

    color = draw("color")
    for key, low, high in [("brightness", -0.5, 0.5), ("saturation", 0.0, 2.0), ("contrast", 0.5, 1.5)]:
        value = color[key]
        assert value.shape == (n,) and value.min() >= low and value.max() < high
        assert value.min() < low + 0.05 and value.max() > high - 0.05
    scale = draw("scale")["scale"]
    assert scale.shape == (n, 2) and scale.min() >= 1 / config.scale and scale.max() <= config.scale
    angle = draw("rotate")["angle"]
    assert angle.min() >= -15 and angle.max() <= 15 and angle.min() < -14 and angle.max() > 14
    flip = draw("flip")["flip"]
    assert flip.dtype == torch.bool and 0.45 < flip.float().mean() < 0.55


# --- reproducibility ----------------------------------------------------------------------


def test_same_seed_same_output_different_seed_different_output() -> None:
    dsa, x = DSA(), _images(8)
    assert torch.equal(dsa(x, generator=_gen(14)), dsa(x, generator=_gen(14)))
    assert not torch.equal(dsa(x, generator=_gen(14)), dsa(x, generator=_gen(15)))
    real, syn = _images(4, seed=1), _images(2, seed=2)
    first = dsa.siamese(real, syn, generator=_gen(16))
    second = dsa.siamese(real, syn, generator=_gen(16))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_the_family_is_drawn_from_the_generator() -> None:
    families = [sample_dsa_params(DSAConfig(), 1, generator=_gen(seed)).family for seed in range(60)]
    again = [sample_dsa_params(DSAConfig(), 1, generator=_gen(seed)).family for seed in range(60)]
    assert families == again and set(families) == set(FAMILIES)


def test_params_are_drawn_on_the_requested_device() -> None:
    params = sample_dsa_params(DSAConfig("scale"), 3, device="meta")
    assert params.values["scale"].device.type == "meta" and params.values["scale"].shape == (3, 2)


# --- configuration and errors -------------------------------------------------------------


def test_for_dataset_drops_flip_for_digits_only() -> None:
    for name in ("mnist", "SVHN"):
        config = DSAConfig.for_dataset(name)
        assert "flip" not in config.families
        assert config.families == ("color", "crop", "cutout", "scale", "rotate")
    assert DSAConfig.for_dataset("cifar10") == DSAConfig()
    assert "flip" in DSAConfig.for_dataset("fashion_mnist").families


def test_unknown_family_lists_the_valid_ones() -> None:
    with pytest.raises(DdplugError, match="'blur'.*color, crop, cutout, flip, scale, rotate"):
        DSAConfig(strategy="color_blur")
    with pytest.raises(DdplugError, match="valid families"):
        DSA("colour")


def test_negative_strength_is_rejected() -> None:
    with pytest.raises(DdplugError, match="crop"):
        DSAConfig(crop=-0.1)
    with pytest.raises(DdplugError, match="scale"):
        DSAConfig(scale=0.5)


@pytest.mark.parametrize("strategy", ["none", "", "None"])
def test_no_augmentation_is_the_identity(strategy: str) -> None:
    x = _images()
    dsa = DSA(strategy)
    assert sample_dsa_params(dsa.config, 4, generator=_gen(0)).family == "none"
    assert torch.equal(dsa(x, generator=_gen(0)), x)
    assert all(torch.equal(a, b) for a, b in zip(dsa.siamese(x, x[:2]), (x, x[:2])))


def test_misused_groups_are_reported() -> None:
    x = _images()
    dsa = DSA("rotate")
    with pytest.raises(DdplugError, match="num_groups"):
        dsa.siamese(x, groups=[torch.zeros(4, dtype=torch.long)])
    with pytest.raises(DdplugError, match="one group tensor per batch"):
        dsa.siamese(x, x, groups=[torch.zeros(4, dtype=torch.long)], num_groups=1)
    with pytest.raises(DdplugError, match="groups"):
        apply_dsa(x, sample_dsa_params(dsa.config, 2, generator=_gen(0)))
