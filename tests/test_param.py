"""Parameterisations: decoders, byte layouts, encoding, errors, and distillation through them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddplug.methods import create_distiller, make_config, run_distillation
from ddplug.errors import DdplugError
from ddplug.sets import as_stored, load_set, payload_bytes, save_set
from ddplug.sets.param import Parameterisation, _zigzag, available_params, create_param, fit_layout, soft_label_bytes

from helpers import TINY_MODEL

SHAPE = (1, 8, 8)
CLASSES = 10


def smooth_images(n: int, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> torch.Tensor:
    """Low-frequency images (a 2x2 random field upsampled), which every code can hold well."""
    coarse = torch.randn(n, shape[0], 2, 2, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=True)


@pytest.mark.parametrize(("spec", "decoded_per_class", "stored_bytes"), [
    ("pixels", 3, 3 * CLASSES * 64),  # ipc 3: three uint8 images of 64 bytes per class
    ("multi:factor=2", 12, 3 * CLASSES * 64),  # the same bytes hold 4x the images
    ("dct:keep=0.25", 6, 6 * CLASSES * 16 * 2),  # 16 fp16 coefficients = 32 bytes per image
    ("factor:bases=2", 41, 2 * 64 * 2 + 41 * CLASSES * 2 * 2),  # shared bases, then coefficient rows
    ("pixels:bits=4", 6, 6 * CLASSES * 32),  # 4-bit pixels: two images in a raw image's bytes
    ("multi:factor=2,bits=4", 24, 6 * CLASSES * 32),  # and each of those holds 4
    ("pixels:bits=3", 8, math.ceil(8 * CLASSES * 64 * 3 / 8)),  # 8 images of 24 bytes in 192, packed end to end
])
def test_each_layout_fills_the_budget_and_decodes_to_its_images(spec, decoded_per_class, stored_bytes):
    assert available_params() == ["pixels", "multi", "dct", "factor"]
    param = create_param(spec)
    budget = 3 * math.prod(SHAPE)
    layout = param.layout(CLASSES, SHAPE, budget)
    assert layout.decoded_per_class == decoded_per_class
    assert layout.stored_bytes == stored_bytes <= CLASSES * budget
    code = {name: torch.randn(shape, requires_grad=True) for name, shape in layout.shapes.items()}
    images = param.decode(code, SHAPE)
    assert images.shape == (CLASSES * decoded_per_class, *SHAPE)
    images.square().sum().backward()
    assert all(tensor.grad is not None and tensor.grad.abs().sum() > 0 for tensor in code.values())


@pytest.mark.parametrize(("spec", "tolerance"), [
    ("pixels", 0.0), ("dct:keep=1", 1e-5), ("dct:keep=0.25", 0.05), ("multi:factor=2", 0.15),
    ("factor:bases=4", 1e-4),
])
def test_encode_then_decode_gives_the_images_back(spec, tolerance):
    # smooth images have rank <= 4 (a 2x2 field), so 4 bases hold them exactly
    param = create_param(spec)
    layout = param.layout(CLASSES, SHAPE, 4 * math.prod(SHAPE))
    images = smooth_images(CLASSES * layout.decoded_per_class)
    back = param.decode(param.encode(images, layout), SHAPE)
    assert back.shape == images.shape
    assert (back - images).norm() / images.norm() <= tolerance


def test_multi_formation_tiles_are_the_stored_quarters():
    param = create_param("multi:factor=2")
    stored = torch.arange(64.0).reshape(1, 1, 8, 8)
    images = param.decode({"images": stored}, SHAPE)
    # image 1 is the top-right 4x4 quarter, upsampled: its mean is that quarter's mean
    assert images.shape == (4, 1, 8, 8)
    assert float(images[1].mean()) == pytest.approx(float(stored[0, 0, :4, 4:].mean()), abs=1e-4)


@pytest.mark.parametrize(("spec", "budget", "message"), [
    ("waves", 64, "unknown parameterisation 'waves'"),
    ("multi:factor=3", 64, "factor 3 does not divide the image size 8x8"),
    ("multi:scale=2", 64, "multi has no option scale"),
    ("multi:factor", 64, "should look like KEY=VALUE"),
    ("multi:factor=0", 64, "factor must be a whole number from 1 to 8"),
    ("dct:keep=2", 64, "keep must be a fraction"),
    ("dct:keep=1", 64, "too small for one image of dct:keep=1.0"),
    ("pixels", 63, "a budget of 63 bytes per class is too small"),
    ("pixels:bits=0", 64, "bits must be a whole number from 1 to 8"),
    ("multi:factor=2,bits=9", 64, "bits must be a whole number from 1 to 8"),
    ("pixels:bits=4", 31, "too small for one image of pixels:bits=4 \\(32 bytes per class\\)"),
    ("dct:keep=0.25,bits=0", 64, "bits must be a whole number from 1 to 8"),
    ("dct:select=high", 64, "select must be one of low, variance"),
    ("dct:mask=set", 64, "mask= chooses the masks of select=variance; add select=variance"),
    ("dct:select=variance,mask=image", 64, "mask must be one of class, set, got 'image'"),
    # one image of 16 fp16 coefficients a class, and the 10 classes' masks of 64 bits: 40 bytes per class
    ("dct:keep=0.25,select=variance", 39, "too small for one image of dct:keep=0.25,select=variance "
                                          "\\(40 bytes per class\\)"),
])
def test_bad_specs_and_budgets_are_one_clear_error(spec, budget, message):
    with pytest.raises(DdplugError, match=message):
        create_param(spec).layout(CLASSES, SHAPE, budget)


@pytest.mark.parametrize(("budget_bytes", "ipc", "message"), [
    (639, 1, "a budget of 639 bytes holds no raw image per class of digits \\(one each takes 640 bytes\\)"),
    (1500, 1, "ipc 1 does not match budget_bytes 1500, which hold 2 raw images per class: set ipc=2"),
])
def test_a_byte_budget_must_hold_its_ipc_of_raw_images(digits, budget_bytes, ipc, message):
    config = make_config("dm", {"ipc": ipc, "budget_bytes": budget_bytes, "model": TINY_MODEL})
    with pytest.raises(DdplugError, match=message):
        create_distiller("dm", digits.train, config)


def test_a_byte_budget_is_shared_by_the_classes_and_filled(digits, tmp_path):
    # 1900 bytes: 190 per class, two raw 64-byte images (the baselines' ipc), or five 4-bit
    # images of 32 bytes (ipc 2's bytes would hold four)
    config = make_config("dm", {"ipc": 2, "budget_bytes": 1900, "param": "pixels:bits=4", "model": TINY_MODEL})
    distiller = create_distiller("dm", digits.train, config)
    assert distiller.per_class == 5
    path = save_set(distiller.synthetic_set(), tmp_path / "set.safetensors")
    assert payload_bytes(path) == 10 * 5 * 32 <= 1900
    assert load_set(path).budget_ipc == 2


@pytest.mark.parametrize("method", ["dm", "dc", "dsa", "kip", "frepo"])
@pytest.mark.parametrize("spec", ["pixels", "multi:factor=2", "dct:keep=0.25", "factor:bases=2",
                                  "multi:factor=2,bits=4", "dct:keep=0.25,select=variance",
                                  "dct:keep=0.25,bits=4"])
def test_every_distiller_learns_every_parameterisation(digits, method, spec, tmp_path):
    settings = {"ipc": 1, "iterations": 2, "model": TINY_MODEL, "batch_real": 8, "param": spec,
                **({"pool_size": 2} if method == "frepo" else {}), **({"num_networks": 1} if method == "kip" else {}),
                **({"outer_loop": 1, "inner_loop": 1} if method in ("dc", "dsa") else {}),
                # KIP's and FRePo's pixel learning rates (100, 1000) blow a product of two factors up
                **({"lr_images": 0.1} if spec.startswith("factor") and method in ("kip", "frepo") else {})}
    distiller = create_distiller(method, digits.train, make_config(method, settings))
    before = {name: tensor.detach().clone() for name, tensor in distiller.code.items()}

    def probe() -> float:  # the mean loss of three later iterations (their draws fixed by the seed)
        return sum(float(distiller.loss(100 + i).detach()) for i in range(3)) / 3

    start = probe()
    losses = [distiller.step(i) for i in range(15)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert any(not torch.equal(before[name], tensor) for name, tensor in distiller.code.items())
    assert probe() < start  # the code learned, through the decoder, what lowers the method's loss
    synthetic = distiller.synthetic_set()
    assert len(synthetic) == 10 * distiller.per_class
    assert synthetic.param == synthetic.meta["param"] == create_param(spec).spec
    # the file holds the code within the budget (hard labels implied), and loads as it was stored
    path = save_set(synthetic, tmp_path / "set.safetensors")
    assert payload_bytes(path) == distiller.layout.stored_bytes <= 10 * 64
    loaded = load_set(path)
    assert loaded.param == synthetic.param and torch.equal(loaded.labels, synthetic.labels)
    assert torch.allclose(loaded.images, as_stored(synthetic).images)


def test_distribution_matching_through_multi_formation_lowers_its_loss(digits):
    config = make_config("dm", {"ipc": 1, "iterations": 40, "model": TINY_MODEL, "batch_real": 64,
                                "param": "multi:factor=2", "augment": "false", "lr_images": 5})
    distiller = create_distiller("dm", digits.train, config)
    losses = [float(distiller.step(i)) for i in range(40)]
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert distiller.per_class == 4 and distiller.code["images"].shape == (10, 1, 8, 8)


def test_decoded_slots_beyond_a_small_class_start_from_noise(digits):
    from ddplug.methods import DistributionMatching
    from ddplug.methods.sampling import ClassBalancedSampler

    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1])
    index, real = ClassBalancedSampler(labels, 2).sample_padded(5, torch.Generator().manual_seed(0))
    assert real.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert sorted(index[0, :3].tolist()) == [0, 1, 2] and len(set(index[1].tolist())) == 5  # distinct, own class
    smallest = int(digits.train.class_counts().min())
    ipc = smallest // 4 + 1  # fits as pixels, but multi:factor=2 decodes 4x as many images as the class has
    with_noise = DistributionMatching(digits.train, make_config("dm", {"ipc": ipc, "param": "multi:factor=2",
                                                                        "model": TINY_MODEL, "iterations": 1}))
    assert with_noise.per_class == 4 * ipc > smallest
    with pytest.raises(DdplugError, match="more than the smallest class"):  # the budget itself exceeds the class
        make_config("dm", {"ipc": smallest + 1, "param": "multi:factor=2"}).validate(digits.train)
    with pytest.raises(DdplugError, match="more than the smallest class"):  # herding cannot pad
        make_config("dm", {"ipc": ipc, "param": "multi:factor=2", "init": "herding"}).validate(digits.train)


@pytest.mark.parametrize(("spec", "levels"), [("pixels", 255), ("multi:factor=2", 255), ("pixels:bits=4", 15),
                                             ("multi:factor=2,bits=2", 3)])
def test_a_saved_pixel_code_is_exactly_its_budget_and_round_trips(digits, spec, levels, tmp_path):
    config = make_config("dm", {"ipc": 2, "iterations": 1, "model": TINY_MODEL, "batch_real": 8, "param": spec,
                                "init": "noise"})
    synthetic = create_distiller("dm", digits.train, config).synthetic_set()
    path = save_set(synthetic, tmp_path / "set.safetensors")
    assert payload_bytes(path) == 2 * 10 * 64  # the bytes of 2 raw uint8 images per class, nothing else
    loaded = load_set(path)
    assert len(loaded) == len(synthetic)
    assert torch.equal(loaded.images, load_set(save_set(loaded, tmp_path / "again.safetensors")).images)
    # at most half a grey level (of 2**bits) from the learned code, on the pixel scale
    pixels = {name: (code * digits.train.std[0] + digits.train.mean[0]).clamp(0, 1) for name, code in
              {"learned": synthetic.code["images"], "stored": loaded.code["images"]}.items()}
    error = (pixels["stored"] - pixels["learned"]).abs().max()
    assert error <= 0.5 / levels + 1e-6
    assert len(torch.unique((pixels["stored"] * levels).round())) <= levels + 1  # on 2**bits grey levels


def test_packed_levels_round_trip_and_refuse_a_wrong_length():
    from ddplug.sets.param import pack_levels, unpack_levels

    levels = torch.randint(0, 8, (5, 1, 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_levels(levels, 3)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(45 * 3 / 8),)
    assert torch.equal(unpack_levels(packed, 3, (5, 1, 3, 3)), levels)
    assert pack_levels(torch.tensor([1, 2, 3, 15], dtype=torch.uint8), 4).tolist() == [0x12, 0x3F]
    assert pack_levels(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8), 1).tolist() == [0xB0, 0x80]
    assert pack_levels(torch.tensor([3, 1, 2], dtype=torch.uint8), 2).tolist() == [0b11011000]
    for bits in range(1, 9):  # every depth round-trips; 8 bits are the bytes themselves
        values = torch.randint(0, 2**bits, (37,), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
        assert torch.equal(unpack_levels(pack_levels(values, bits), bits, (37,)), values)
    assert torch.equal(pack_levels(values, 8), values)
    with pytest.raises(ValueError, match="do not hold 36 values of 3 bits"):
        unpack_levels(packed, 3, (4, 1, 3, 3))


def test_a_diverging_code_stops_with_a_clear_error(digits):
    config = make_config("kip", {"ipc": 1, "iterations": 20, "model": TINY_MODEL, "batch_real": 8,
                                 "num_networks": 1, "param": "factor:bases=2", "lr_images": 1e6,
                                 "ridge": 1e-6})  # the papers' ridge: steep gradients
    with pytest.raises(DdplugError, match="diverged by iteration .* lower --lr-images"):
        run_distillation(create_distiller("kip", digits.train, config), progress=False)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("param", "waves", "unknown parameterisation 'waves'"),
    ("param", "dct:keep=0.5", "its code holds 16 coefficients per image, where dct:keep=0.5 keeps 32 of 8x8"),
    ("image_shape", "[1, 8]", "is not \\(C, H, W\\)"),
    ("image_shape", "[1, 100000, 8]", "is larger than ddplug handles"),
])
def test_a_coded_file_with_a_bad_header_is_one_clear_error(digits, tmp_path, field, value, message):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    config = make_config("dm", {"ipc": 1, "iterations": 1, "model": TINY_MODEL, "param": "dct:keep=0.25"})
    path = save_set(create_distiller("dm", digits.train, config).synthetic_set(), tmp_path / "set.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(path)), str(path), metadata={**metadata, field: value})
    with pytest.raises(DdplugError, match=message):
        load_set(path)


def test_a_packed_file_that_does_not_fill_its_layout_is_one_clear_error(digits, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    config = make_config("dm", {"ipc": 1, "iterations": 1, "model": TINY_MODEL, "param": "pixels:bits=4"})
    path = save_set(create_distiller("dm", digits.train, config).synthetic_set(), tmp_path / "set.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    save_file({**tensors, "code.images": tensors["code.images"][:-1].clone()}, str(path), metadata=metadata)
    with pytest.raises(DdplugError, match=r"does not decode as pixels:bits=4 \(\(639,\) bytes do not hold 1216 "
                                          r"values of 4 bits \(608 bytes\): the code was cut or padded"):
        load_set(path)


def _basis_image(u: int, v: int, size: int = 8) -> torch.Tensor:
    """The image of the single orthonormal DCT coefficient (u, v)."""
    from ddplug.sets.param import _dct_matrix

    d = _dct_matrix(size)
    return torch.outer(d[u], d[v])


def test_variance_selection_keeps_each_class_s_varying_coefficients_and_the_mask_costs_its_bits():
    # Each class varies only along 16 high frequencies of its own (u + v >= 8, beyond the lowest
    # quarter): a variance-chosen mask holds them exactly, the lowest frequencies hold none.
    param, low = create_param("dct:keep=0.25,select=variance"), create_param("dct:keep=0.25")
    assert param.spec == "dct:keep=0.25,select=variance" and low.spec == "dct:keep=0.25"
    budget = 3 * math.prod(SHAPE)
    layout = param.layout(CLASSES, SHAPE, budget)
    # 16 fp16 coefficients (32 bytes) per image; the masks take 10 x 64 bits = 80 bytes of the 1920
    assert layout.decoded_per_class == (CLASSES * budget - 80) // (CLASSES * 32) == 5
    assert layout.stored_bytes == 5 * CLASSES * 32 + 80 <= CLASSES * budget
    assert low.layout(CLASSES, SHAPE, budget).decoded_per_class == 6
    generator = torch.Generator().manual_seed(0)
    frequencies = [(u, v) for u in range(8) for v in range(8) if u + v >= 8]  # 28 of them
    chosen = [torch.randperm(len(frequencies), generator=generator)[:16] for _ in range(CLASSES)]
    bases = torch.stack([torch.stack([_basis_image(*frequencies[i]) for i in rows]) for rows in chosen])  # (10, 16, 8, 8)

    def images_of(per_class: int) -> torch.Tensor:
        weights = torch.randn(CLASSES, per_class, 16, generator=generator)
        return torch.einsum("cnk,ckhw->cnhw", weights, bases).reshape(-1, *SHAPE)

    images, reference = images_of(5), images_of(40)
    code = param.encode(images, layout, reference)
    assert code["mask"].shape == (CLASSES, 64) and code["mask"].dtype == torch.bool
    for c, rows in enumerate(chosen):
        wanted = sorted(frequencies[i][0] * 8 + frequencies[i][1] for i in rows)
        assert torch.nonzero(code["mask"][c]).flatten().tolist() == wanted
    assert torch.allclose(param.decode(code, SHAPE), images, atol=1e-5)
    lost = low.decode(low.encode(images, low.layout(CLASSES, SHAPE, budget)), SHAPE)
    assert lost.abs().max() < 1e-5 < images.abs().max()  # the lowest quarter holds none of it
    # without reference images the mask comes from the images themselves; one per class ties at
    # zero variance and keeps the lowest frequencies, as select=low does
    one_each = param.layout(CLASSES, SHAPE, 32 + 8)
    assert one_each.decoded_per_class == 1
    single = param.encode(images_of(1), one_each)
    lowest = torch.zeros(64, dtype=torch.bool)
    lowest[_zigzag(8, 8)[:16]] = True
    assert torch.equal(single["mask"], lowest.expand(CLASSES, 64))


def test_one_mask_for_the_set_keeps_the_coefficients_that_vary_most_over_all_classes():
    param = create_param("dct:keep=0.25,select=variance,mask=set")
    assert param.spec == "dct:keep=0.25,select=variance,mask=set"
    budget = 3 * math.prod(SHAPE)
    layout = param.layout(CLASSES, SHAPE, budget)
    # one mask of 64 bits (8 bytes) instead of ten: 16 fp16 coefficients (32 bytes) per image
    assert layout.shapes["mask"] == (1, 64) and layout.decoded_per_class == (CLASSES * budget - 8) // (CLASSES * 32)
    assert layout.stored_bytes == layout.decoded_per_class * CLASSES * 32 + 8
    # every class varies along the same 16 high frequencies, with a class-sized scale
    generator = torch.Generator().manual_seed(1)
    frequencies = [(u, v) for u in range(8) for v in range(8) if u + v >= 8][:16]
    bases = torch.stack([_basis_image(u, v) for u, v in frequencies])
    scale = torch.linspace(0.5, 3, CLASSES).repeat_interleave(40).view(-1, 1)
    reference = torch.einsum("nk,khw->nhw", torch.randn(CLASSES * 40, 16, generator=generator) * scale,
                             bases).unsqueeze(1)
    per_class = layout.decoded_per_class
    images = reference.reshape(CLASSES, 40, *SHAPE)[:, :per_class].reshape(-1, *SHAPE)
    code = param.encode(images, layout, reference)
    assert code["mask"].shape == (1, 64)
    assert torch.nonzero(code["mask"][0]).flatten().tolist() == sorted(u * 8 + v for u, v in frequencies)
    assert torch.allclose(param.decode(code, SHAPE), images, atol=1e-5)


def test_one_mask_for_the_set_weighs_every_class_and_the_differences_between_classes():
    # Classes 0-4 vary along 7 high frequencies, classes 5-9 along 7 others, and the class
    # means differ (with no variation inside a class) along 2 more; every class also varies a
    # little along the low frequencies. Only the variance over all images of all classes
    # ranks those 16 first: one class's, or the mean of the classes', prefers low ones.
    param, budget = create_param("dct:keep=0.25,select=variance,mask=set"), 3 * math.prod(SHAPE)
    layout = param.layout(CLASSES, SHAPE, budget)
    generator = torch.Generator().manual_seed(2)
    high = [(u, v) for u in range(8) for v in range(8) if u + v >= 8]
    first, second, between = high[:7], high[7:14], high[14:16]
    basis = {uv: _basis_image(*uv) for uv in high[:16]}
    low = [(u, v) for u in range(8) for v in range(8) if u + v < 8]
    low_bases = torch.stack([_basis_image(*uv) for uv in low])
    images = []
    for c in range(CLASSES):
        own = first if c < 5 else second
        weights = torch.randn(40, len(own), generator=generator)
        varying = torch.einsum("nk,khw->nhw", weights, torch.stack([basis[uv] for uv in own]))
        offset = (c - 4.5) * (basis[between[0]] - basis[between[1]])
        faint = 0.01 * torch.einsum("nk,khw->nhw", torch.randn(40, len(low), generator=generator), low_bases)
        images.append(varying + offset + faint)
    reference = torch.cat(images).unsqueeze(1)
    per_class = layout.decoded_per_class
    chosen = reference.reshape(CLASSES, 40, *SHAPE)[:, :per_class].reshape(-1, *SHAPE)
    code = param.encode(chosen, layout, reference)
    assert torch.nonzero(code["mask"][0]).flatten().tolist() == sorted(u * 8 + v for u, v in high[:16])
    assert (param.decode(code, SHAPE) - chosen).abs().max() < 0.1 < chosen.abs().max()  # only the faint part lost
    per_class_mask = create_param("dct:keep=0.25,select=variance")
    own_masks = per_class_mask.encode(chosen, per_class_mask.layout(CLASSES, SHAPE, budget), reference)["mask"]
    assert not torch.equal(own_masks[0], code["mask"][0])  # class 0 alone would keep neither class 5's nor the means'


def test_a_shared_mask_file_travels_and_a_mask_per_class_in_its_place_is_refused(digits, tmp_path):
    from safetensors.torch import save_file

    spec = "dct:keep=0.25,select=variance,mask=set,bits=4"
    path, metadata, tensors = _saved_code(digits, tmp_path, spec, ipc=2)
    loaded = load_set(path)
    assert loaded.code["mask"].shape == (1, 64) and payload_bytes(path) <= 10 * 2 * 64
    tensors["code.mask"] = tensors["code.mask"].repeat(10)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(DdplugError, match=r"its mask has shape \(10, 64\), where .*mask=set.* stores one row"):
        load_set(path)


def test_a_variance_selected_code_is_its_budget_in_its_file_and_keeps_its_masks(digits, tmp_path):
    config = make_config("dm", {"ipc": 2, "iterations": 1, "model": TINY_MODEL, "batch_real": 8,
                                "param": "dct:keep=0.25,select=variance"})
    distiller = create_distiller("dm", digits.train, config)
    assert set(distiller.code) == {"coefficients"} and set(distiller.masks) == {"mask"}  # the mask is not learned
    # the masks were chosen from the reference images: each class's own, 16 of 64 coefficients
    masks = distiller.masks["mask"]
    assert masks.sum(dim=1).tolist() == [16] * 10 and len({tuple(row.tolist()) for row in masks}) > 1
    synthetic = distiller.synthetic_set()
    path = save_set(synthetic, tmp_path / "set.safetensors")
    assert payload_bytes(path) == distiller.layout.stored_bytes == 3 * 10 * 32 + 80 <= 10 * 2 * 64
    loaded = load_set(path)
    assert torch.equal(loaded.code["mask"], masks) and len(loaded) == 30
    assert torch.equal(loaded.images, as_stored(synthetic).images)


def _saved_code(digits, tmp_path, param: str, ipc: int = 1):
    """A DM set of ``param`` saved to a file: its path, header metadata and tensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    config = make_config("dm", {"ipc": ipc, "iterations": 1, "model": TINY_MODEL, "param": param})
    path = save_set(create_distiller("dm", digits.train, config).synthetic_set(), tmp_path / "set.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return path, metadata, load_file(str(path))


@pytest.mark.parametrize(("fault", "message"), [
    ("flip", r"its mask keeps \[17, 16, .*\] coefficients per class, where its code holds 16 per image"),
    ("short", "its code.mask holds 79 bytes, not whole masks of 64 bits packed"),
    ("nine classes", r"its mask has shape \(9, 64\), not one row per class of 30 images"),
    ("no mask", "not a dct:keep=0.25,select=variance code"),
])
def test_a_file_whose_mask_does_not_fit_its_code_is_one_clear_error(digits, tmp_path, fault, message):
    from safetensors.torch import save_file

    path, metadata, tensors = _saved_code(digits, tmp_path, "dct:keep=0.25,select=variance", ipc=2)
    mask = tensors.pop("code.mask")
    if fault == "flip":  # one more coefficient kept in class 0 than the code holds
        bits = torch.tensor(np.unpackbits(mask.numpy()))
        bits[int(torch.nonzero(bits[:64] == 0)[0])] = 1
        tensors["code.mask"] = torch.from_numpy(np.packbits(bits.numpy()))
    elif fault == "short":
        tensors["code.mask"] = mask[:-1].clone()
    elif fault == "nine classes":
        tensors["code.mask"] = mask[:72].clone()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(DdplugError, match=message):
        load_set(path)


@pytest.mark.parametrize("select", ["low", "variance", "variance,mask=set"])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_a_low_bit_dct_code_fills_its_budget_and_is_stored_within_half_a_step(select, bits):
    from ddplug.sets import decode_code

    spec = f"dct:keep=0.25,select={select},bits={bits}"
    param = create_param(spec)
    budget = 3 * math.prod(SHAPE)
    layout = param.layout(CLASSES, SHAPE, budget)
    groups = CLASSES if select == "variance" else 1  # one step per kept coefficient (and class, when they differ)
    masks = {"low": 0, "variance": 80, "variance,mask=set": 8}[select]  # 64 bits per mask
    per_class = ((CLASSES * budget - masks - groups * 16 * 2) * 8) // (CLASSES * 16 * bits)
    assert layout.decoded_per_class == per_class > 2 * 6 // 2  # more images than fp16's 6 per class
    assert layout.stored_bytes == math.ceil(CLASSES * per_class * 16 * bits / 8) + groups * 32 + masks
    assert layout.stored_bytes <= CLASSES * budget
    images = smooth_images(CLASSES * per_class) * torch.linspace(0.5, 2, CLASSES).repeat_interleave(per_class).view(
        -1, 1, 1, 1)
    code = param.encode(images, layout)
    stored = param.store(code, (0.5,), (0.25,))
    assert {name: tuple(tensor.shape) for name, tensor in stored.items()} == {
        name: layout.stored_shape(name) for name in layout.shapes}
    assert sum(tensor.numel() * tensor.element_size() for tensor in stored.values()) == layout.stored_bytes
    back, decoded = decode_code(stored, spec, (0.5,), (0.25,), SHAPE)
    # every coefficient within half a step of its own group's largest value over 2**bits - 1 levels
    largest = code["coefficients"].abs().reshape(groups, -1, 1, 16).amax(dim=1)
    half_step = (largest / (2**bits - 1)).repeat_interleave(CLASSES * per_class // groups, dim=0)
    assert ((back["coefficients"] - code["coefficients"]).abs() <= half_step * 1.002 + 1e-4).all()
    assert len(torch.unique(back["coefficients"][:per_class, 0, 3])) <= 2**bits  # one coefficient of a class: 2**bits levels
    assert torch.equal(decoded, param.decode(back, SHAPE))


@pytest.mark.parametrize(("fault", "message"), [
    ("infinite step", "its steps hold values that are not finite and positive"),
    ("negative step", "its steps hold values that are not finite and positive"),
    ("steps per class", r"its steps have shape \(10, 1, 16\), where dct:keep=0.25,bits=4 stores one per kept "
                        r"coefficient and channel: \(1, 1, 16\)"),
    ("no steps", "its code has no steps, which a dct:keep=0.25,bits=4 code needs"),
    ("float coefficients", "its code.coefficients is float32, where dct:keep=0.25,bits=4 stores uint8"),
])
def test_a_low_bit_dct_file_with_bad_steps_is_one_clear_error(digits, tmp_path, fault, message):
    from safetensors.torch import save_file

    path, metadata, tensors = _saved_code(digits, tmp_path, "dct:keep=0.25,bits=4")
    steps = tensors["code.steps"]
    if fault == "infinite step":
        tensors["code.steps"] = steps.clone().index_fill_(2, torch.tensor([3]), float("inf"))
    elif fault == "negative step":
        tensors["code.steps"] = -steps
    elif fault == "steps per class":
        tensors["code.steps"] = steps.repeat(10, 1, 1)
    elif fault == "no steps":
        del tensors["code.steps"]
    else:
        tensors["code.coefficients"] = tensors["code.coefficients"].float()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(DdplugError, match=message):
        load_set(path)


def test_a_private_run_chooses_its_masks_without_the_real_images(digits, monkeypatch):
    from ddplug.methods.base import Distiller

    seen = []
    reference = Distiller._reference_images
    monkeypatch.setattr(Distiller, "_reference_images", lambda self: seen.append(out := reference(self)) or out)
    settings = {"ipc": 2, "iterations": 1, "model": TINY_MODEL, "init": "noise", "param": "dct:keep=0.25,select=variance"}
    private = create_distiller("dm", digits.train, make_config("dm", {**settings, "dp_epsilon": 4.0}))
    public = create_distiller("dm", digits.train, make_config("dm", settings))
    assert seen[0] is None and seen[1].shape == (10 * 100, 1, 8, 8)  # 100 real images per class, public only
    assert private.masks["mask"].sum(dim=1).tolist() == [16] * 10
    assert not torch.equal(private.masks["mask"], public.masks["mask"])


def test_learned_soft_labels_are_stored_in_float16_inside_the_budget(digits, tmp_path):
    config = make_config("kip", {"ipc": 2, "iterations": 1, "model": TINY_MODEL, "num_networks": 1,
                                 "learn_labels": True, "param": "multi:factor=2,bits=4"})
    distiller = create_distiller("kip", digits.train, config)
    synthetic = distiller.synthetic_set()
    # 128 bytes per class: one 4-bit mosaic (32 bytes) of 4 images whose 10 fp16 labels take 80;
    # a second mosaic would take the class to 224
    assert synthetic.soft_labels and synthetic.labels.shape == (10 * 4, 10)
    assert distiller.layout.stored_bytes == 10 * 32
    path = save_set(synthetic, tmp_path / "set.safetensors")
    assert payload_bytes(path) == 10 * 32 + 40 * 10 * 2 <= 10 * 128
    loaded = load_set(path)
    assert loaded.labels.dtype == torch.float32
    assert torch.allclose(loaded.labels.sum(dim=1), torch.ones(40))
    assert torch.allclose(loaded.labels, synthetic.labels, atol=1e-3)
    assert torch.equal(loaded.labels, as_stored(synthetic).labels)  # what is judged is what the file holds
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    for broken, cause in ((torch.zeros(40, 10), "do not sum to 1"), (loaded.labels * 1.1, "do not sum to 1"),
                          (torch.full((40, 10), -0.1), "negative"),
                          (torch.full((40,), 0.5), "int64")):
        save_file({**tensors, "labels": broken.half()}, str(tmp_path / "broken.safetensors"), metadata=metadata)
        with pytest.raises(DdplugError, match=cause):
            load_set(tmp_path / "broken.safetensors")


def test_a_budget_with_no_room_for_the_soft_labels_fails_before_any_work(digits):
    config = make_config("kip", {"ipc": 1, "model": TINY_MODEL, "learn_labels": True,
                                 "param": "multi:factor=2,bits=4"})
    with pytest.raises(DdplugError, match="no multi:factor=2,bits=4 image with its learned soft labels"):
        create_distiller("kip", digits.train, config)


@pytest.mark.parametrize("spec", ["pixels", "pixels:bits=2", "multi:factor=2,bits=2", "dct:keep=0.25,bits=4",
                                  "factor:bases=4"])
def test_fit_layout_takes_the_largest_code_whose_labels_fit_beside_it(spec):
    param = create_param(spec)
    for budget in (2 * 784, 3 * 784 + 100, 7840):
        layout = fit_layout(param, 10, (1, 28, 28), budget, soft_labels=True)
        assert layout.stored_bytes + soft_label_bytes(10 * layout.decoded_per_class, 10) <= 10 * budget
        best = 0  # every smaller code, tried one by one
        for spend in range(1, budget + 1, 3):
            try:
                tried = param.layout(10, (1, 28, 28), spend)
            except DdplugError:
                continue
            if tried.stored_bytes + soft_label_bytes(10 * tried.decoded_per_class, 10) <= 10 * budget:
                best = max(best, tried.decoded_per_class)
        assert layout.decoded_per_class == best, (spec, budget)
        assert fit_layout(param, 10, (1, 28, 28), budget) == param.layout(10, (1, 28, 28), budget)


ROUNDED_CODES = ["pixels:bits=2", "multi:factor=2,bits=4", "pixels", "dct:keep=0.25,bits=2",
                 "dct:keep=0.25,select=variance,bits=4", "dct:keep=0.25", "factor:bases=2"]


def _learned_code(spec: str) -> tuple[Parameterisation, dict[str, torch.Tensor]]:
    param = create_param(spec)
    layout = param.layout(CLASSES, SHAPE, 3 * math.prod(SHAPE))
    images = smooth_images(CLASSES * layout.decoded_per_class) * 0.3
    code = param.encode(images, layout)
    return param, {name: tensor.requires_grad_() if tensor.is_floating_point() else tensor
                   for name, tensor in code.items()}


@pytest.mark.parametrize("spec", ROUNDED_CODES)
def test_a_rounded_code_is_what_storage_keeps_with_its_gradient_passed_straight_through(spec):
    param, code = _learned_code(spec)
    mean, std = (0.3,), (0.4,)
    rounded = param.rounded(code, mean, std)
    shapes = {name: tuple(tensor.shape) for name, tensor in code.items()}
    kept = param.restore(param.store(code, mean, std), shapes, mean, std)
    for name, tensor in rounded.items():
        assert torch.equal(tensor.detach(), kept[name].to(tensor.dtype))
        if tensor.is_floating_point():
            weights = torch.randn(tensor.shape)
            gradient, = torch.autograd.grad((tensor * weights).sum(), code[name])
            assert torch.equal(gradient, weights)  # the rounding is the identity to the gradient
    assert any(not torch.equal(rounded[name].detach(), code[name].detach()) for name in code)  # storage rounds every code


@pytest.mark.parametrize("spec", ROUNDED_CODES)
def test_rounding_a_code_reads_no_value_back_to_the_host(spec, monkeypatch):
    """Rounding runs at every step: a value read back (a host sync on a GPU) would stall each one."""
    param, code = _learned_code(spec)

    def read_back(*args: object) -> None:
        raise AssertionError("a tensor's value was read back to the host")

    for name in ("__bool__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, read_back)
    param.rounded(code, (0.3,), (0.4,))


@pytest.mark.parametrize("method", ["dm", "frepo"])
def test_a_run_rounding_from_halfway_learns_the_set_it_stores(digits, method):
    settings = {"ipc": 1, "iterations": 6, "model": TINY_MODEL, "batch_real": 8, "param": "pixels:bits=2",
                "round_from": 0.5, **({"pool_size": 2} if method == "frepo" else {})}
    distiller = create_distiller(method, digits.train, make_config(method, settings))
    seen = []
    for iteration in range(6):
        distiller.begin(iteration)
        seen.append(distiller.rounding)
        distiller.step(iteration)
    assert seen == [False] * 3 + [True] * 3
    synthetic = distiller.synthetic_set()
    stored = as_stored(synthetic)
    assert torch.equal(synthetic.images, stored.images)  # matched at its grey levels: storage changes nothing
    assert len(torch.unique(synthetic.images)) <= 4
    unrounded = create_distiller(method, digits.train, make_config(method, {**settings, "round_from": 1.0}))
    run_distillation(unrounded, progress=False)
    assert not unrounded.rounding
    assert not torch.equal(unrounded.synthetic_set().images, as_stored(unrounded.synthetic_set()).images)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_round_from_outside_the_run_is_refused_when_configured(value):
    with pytest.raises(DdplugError, match="round_from"):
        make_config("frepo", {"round_from": value}).check()
