from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ddplug.errors import DdplugError
from ddplug.models import (
    ACTIVATIONS,
    NORMS,
    ImageClassifier,
    available_models,
    create_model,
    parse_model_spec,
    register_model,
)
from ddplug.models import registry

MNIST = {"in_channels": 1, "num_classes": 10, "image_size": (28, 28)}
CIFAR = {"in_channels": 3, "num_classes": 10, "image_size": (32, 32)}
# Small widths keep the big models fast; models without a width option use their defaults.
SMALL = {"convnet": 16, "convnet-bn": 16, "mlp": 32, "vgg11": 8, "vgg11-bn": 8, "resnet18": 8, "resnet18-bn": 8}


def _small(name: str, **shape) -> ImageClassifier:
    options = {"width": SMALL[name]} if name in SMALL else {}
    return create_model(name, seed=0, **shape, **options)


def _images(shape: dict, n: int = 4) -> torch.Tensor:
    return torch.randn(n, shape["in_channels"], *shape["image_size"], generator=torch.Generator().manual_seed(1))


def test_registry_lists_every_model():
    expected = {"convnet", "convnet-bn", "mlp", "lenet", "alexnet", "alexnet-bn"}
    expected |= {"vgg11", "vgg11-bn", "resnet18", "resnet18-bn"}
    assert set(available_models()) >= expected
    assert available_models() == sorted(available_models())


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", available_models())
def test_forward_and_embed_shapes(name, shape):
    model = _small(name, **shape)
    x = _images(shape)
    logits, features = model(x), model.embed(x)
    assert logits.shape == (4, 10)
    assert features.shape == (4, model.feature_dim)
    assert isinstance(model.feature_dim, int)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, model.classifier(features))


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["1x28x28", "3x32x32"])
def test_reference_convnet_has_2048_features(shape):
    model = create_model("convnet", **shape)
    assert model.feature_dim == 2048
    assert model.spec == "convnet:depth=3,width=128,norm=instance,act=relu,pool=avg"
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(n.num_groups == n.num_channels == 128 and n.affine for n in norms)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(320_000, rel=0.01)


def test_tiny_imagenet_sizes():
    shape = {"in_channels": 3, "num_classes": 200, "image_size": (64, 64)}
    assert create_model("convnet", **shape).feature_dim == 128 * 8 * 8
    assert create_model("convnet", depth=4, **shape).feature_dim == 128 * 4 * 4
    assert create_model("vgg11", width=8, **shape)(_images(shape, 2)).shape == (2, 200)


def test_same_seed_same_weights_different_seed_different():
    a = create_model("convnet", seed=7, **CIFAR).state_dict()
    b = create_model("convnet", seed=7, **CIFAR).state_dict()
    c = create_model("convnet", seed=8, **CIFAR).state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


def test_seeded_creation_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    create_model("convnet", seed=3, width=16, **CIFAR)
    assert torch.equal(torch.get_rng_state(), state)


def test_unseeded_creation_uses_global_rng():
    torch.manual_seed(5)
    a = create_model("mlp", **MNIST).state_dict()
    torch.manual_seed(5)
    b = create_model("mlp", **MNIST).state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(create_model("mlp", **MNIST).state_dict()["classifier.weight"], a["classifier.weight"])


def test_parse_model_spec():
    assert parse_model_spec("convnet:width=32,norm=batch") == ("convnet", {"width": 32, "norm": "batch"})
    assert parse_model_spec(" mlp ") == ("mlp", {})
    name, options = parse_model_spec("x: a=1 , b=0.5,c=1e-3,d=relu,")
    assert name == "x" and options == {"a": 1, "b": 0.5, "c": 1e-3, "d": "relu"}
    assert isinstance(options["a"], int) and isinstance(options["b"], float)


@pytest.mark.parametrize("spec", ["", ":width=3", "convnet:width", "convnet:=3", "convnet:width=3,width=4"])
def test_parse_model_spec_rejects_malformed(spec):
    with pytest.raises(DdplugError):
        parse_model_spec(spec)


def test_keyword_options_override_spec():
    model = create_model("convnet:width=32,depth=2", width=16, **CIFAR)
    assert model.feature_dim == 16 * 8 * 8
    assert model.spec == "convnet:depth=2,width=16,norm=instance,act=relu,pool=avg"


def test_bn_aliases_use_batch_norm():
    for name in ["convnet-bn", "vgg11-bn", "alexnet-bn", "resnet18-bn"]:
        model = _small(name, **CIFAR)
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), name
        assert not any(isinstance(m, nn.GroupNorm) for m in model.modules()), name
    for name in ["convnet", "vgg11", "alexnet", "resnet18"]:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in _small(name, **CIFAR).modules()), name


@pytest.mark.parametrize("name", available_models())
def test_spec_round_trips(name):
    model = _small(name, **MNIST)
    rebuilt = create_model(model.spec, seed=0, **MNIST)
    assert rebuilt.spec == model.spec
    assert str(rebuilt) == str(model)
    original, copy = model.state_dict(), rebuilt.state_dict()
    assert original.keys() == copy.keys()
    assert all(torch.equal(original[key], copy[key]) for key in original)


def test_unknown_model_lists_available():
    with pytest.raises(DdplugError, match="unknown model 'convnett'.*convnet, convnet-bn"):
        create_model("convnett", **CIFAR)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"norm": "foo"}, "norm 'foo'.*instance, batch, layer, group, none"),
        ({"act": "tanh"}, "act 'tanh'.*relu, sigmoid, leakyrelu, swish"),
        ({"pool": "sum"}, "pool 'sum'.*avg, max, none"),
        ({"width": 0}, "width must be an integer >= 1, got 0"),
        ({"width": 2.5}, "width must be an integer"),
        ({"depth": 6}, "depth 6 is too deep.*depth <= 5"),
        ({"norm": "group", "width": 6}, "multiple of 4"),
        ({"colour": 1}, "no option.*colour.*valid options: depth, width, norm, act, pool"),
    ],
)
def test_bad_options_raise_with_choices(options, pattern):
    with pytest.raises(DdplugError, match=pattern):
        create_model("convnet", **CIFAR, **options)


def test_bad_spec_option_and_arguments_raise():
    with pytest.raises(DdplugError, match="norm 'foo'"):
        create_model("vgg11:norm=foo", **CIFAR)
    with pytest.raises(DdplugError, match="lenet.*no option.*width.*valid options: \\(none\\)"):
        create_model("lenet:width=3", **CIFAR)
    with pytest.raises(DdplugError, match="image_size"):
        create_model("mlp", in_channels=1, num_classes=10, image_size=(28,))
    with pytest.raises(DdplugError, match="seed"):
        create_model("mlp", seed=-1, **MNIST)
    with pytest.raises(DdplugError, match="vgg11 shrinks 16x16"):
        create_model("vgg11", in_channels=3, num_classes=10, image_size=(16, 16))


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_builds_and_runs(norm):
    model = create_model("convnet", norm=norm, width=16, seed=0, **MNIST)
    assert model(_images(MNIST)).shape == (4, 10)
    if norm == "layer":
        layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
        assert [tuple(m.normalized_shape) for m in layer_norms] == [(16, 32, 32), (16, 16, 16), (16, 8, 8)]
    if norm == "none":
        convs = (1 * 9 * 16 + 16) + 2 * (16 * 9 * 16 + 16)
        assert sum(p.numel() for p in model.parameters()) == convs + 16 * 4 * 4 * 10 + 10


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_builds_and_runs(act):
    model = create_model("convnet", act=act, width=16, seed=0, **CIFAR)
    assert model(_images(CIFAR)).shape == (4, 10)


def test_activations_differ():
    # The features before the classifier are post-activation and post-pool; sigmoid keeps them in (0, 1).
    x = _images(CIFAR)
    relu = create_model("convnet", act="relu", width=16, seed=0, **CIFAR).embed(x)
    sigmoid = create_model("convnet", act="sigmoid", width=16, seed=0, **CIFAR).embed(x)
    leaky = create_model("convnet", act="leakyrelu", width=16, seed=0, **CIFAR).embed(x)
    assert relu.min() >= 0 and (leaky < 0).any()
    assert ((sigmoid > 0) & (sigmoid < 1)).all()


@pytest.mark.parametrize(
    ("pool", "feature_dim"), [("avg", 16 * 4 * 4), ("max", 16 * 4 * 4), ("none", 16 * 32 * 32)]
)
def test_every_pool_builds_and_runs(pool, feature_dim):
    model = create_model("convnet", pool=pool, width=16, seed=0, **MNIST)
    assert model.feature_dim == feature_dim
    assert model.embed(_images(MNIST)).shape == (4, feature_dim)


def test_vmap_over_stacked_parameters_matches_separate_models():
    models = [create_model("convnet", width=16, seed=seed, **CIFAR) for seed in range(3)]
    params, buffers = stack_module_state(models)
    assert not buffers
    base = models[0]
    x = _images(CIFAR)

    def run(p, images):
        return functional_call(base, p, (images,))

    stacked = vmap(run, in_dims=(0, None))(params, x)
    assert stacked.shape == (3, 4, 10)
    for index, model in enumerate(models):
        torch.testing.assert_close(stacked[index], model(x), rtol=1e-4, atol=1e-5)


def test_register_custom_model(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())

    @register_model("tiny-test")
    def tiny(in_channels, num_classes, image_size, *, hidden: int = 4):
        features = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], hidden))
        return ImageClassifier(features, hidden, num_classes)

    assert "tiny-test" in available_models()
    model = create_model("tiny-test:hidden=6", **MNIST)
    assert model.feature_dim == 6 and model.spec == "tiny-test:hidden=6"
    with pytest.raises(DdplugError, match="already registered"):
        register_model("tiny-test")
    with pytest.raises(DdplugError, match="invalid model name"):
        register_model("bad:name")


def test_a_template_spec_lives_as_long_as_its_network():
    import gc

    from ddplug.models import available_models, register_template

    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    spec = register_template(network)
    assert spec in available_models()
    assert create_model(spec, in_channels=1, num_classes=3, image_size=(4, 4), seed=0)(torch.zeros(1, 1, 4, 4)).shape \
        == (1, 3)
    del network
    gc.collect()
    assert spec not in available_models()


def test_a_cpu_batch_is_embedded_in_chunks_of_at_most_16_mib_a_layer_with_the_same_values():
    from ddplug.models.chunks import CPU_CHUNK_BYTES, chunk_rows, embed_in_chunks

    network = create_model("convnet:width=32", seed=0, **MNIST)
    images = _images(MNIST, 300).requires_grad_()
    # The first block's output, 32 channels of 32x32 floats, is the widest: 128 KiB an image.
    assert chunk_rows(network, images) == CPU_CHUNK_BYTES // (32 * 32 * 32 * 4) == 128
    calls = []
    network.features.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    chunked = embed_in_chunks(network, images)
    assert calls == [1, 128, 128, 44]  # one image measures the widths, then the chunks
    (chunked_grad,) = torch.autograd.grad(chunked.square().sum(), images)
    whole = network.embed(images)
    (whole_grad,) = torch.autograd.grad(whole.square().sum(), images)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=0, atol=1e-6)
    assert chunk_rows(network, images[:50]) == 50


def test_a_network_that_normalises_over_the_batch_or_drops_out_is_embedded_whole_while_it_trains():
    from ddplug.models.chunks import CPU_CHUNK_BYTES, chunk_rows
    from ddplug.models.template import register_template

    network = create_model("convnet-bn:width=32", seed=0, **MNIST)
    images = _images(MNIST, 300)
    assert chunk_rows(network.train(), images) == 300  # chunks would change its batch statistics
    assert chunk_rows(network.eval(), images) == 128
    # A user's network in training mode may draw at random (here dropout): its masks follow the batch.
    mine = nn.Sequential(nn.Flatten(), nn.Linear(784, 40000), nn.ReLU(), nn.Dropout(0.5), nn.Linear(40000, 10))
    copy = create_model(register_template(mine), seed=0, **MNIST)
    assert chunk_rows(copy.train(), images) == 300
    assert chunk_rows(copy.eval(), images) == CPU_CHUNK_BYTES // (40000 * 4)
