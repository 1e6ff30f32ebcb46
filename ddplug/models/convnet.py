"""The reference ConvNet of the DC/DSA/DM line of work, and the layers every model shares."""

from __future__ import annotations

import torch
from torch import nn

from ddplug.errors import DdplugError
from ddplug.models.registry import check_choice, check_int, register_model

NORMS = ("instance", "batch", "layer", "group", "none")
ACTIVATIONS = ("relu", "sigmoid", "leakyrelu", "swish")
POOLS = ("avg", "max", "none")

_GROUPS = 4


class ImageClassifier(nn.Module):
    """A feature extractor followed by one linear layer: ``forward(x) == classifier(embed(x))``."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.spec = ""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened input of the classifier, shape ``(N, feature_dim)``."""
        # flatten (not view): augmented batches are often non-contiguous.
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.classifier(self.embed(x))


def make_norm(kind: str, channels: int, height: int, width: int) -> nn.Module:
    """A normalisation layer for a ``(channels, height, width)`` feature map."""
    check_choice("norm", kind, NORMS)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.LayerNorm([channels, height, width], elementwise_affine=True)
    if kind == "group":
        if channels % _GROUPS:
            raise DdplugError(
                f"norm 'group' uses {_GROUPS} groups, so channels must be a multiple of {_GROUPS}, got {channels}"
            )
        return nn.GroupNorm(_GROUPS, channels, affine=True)
    return nn.Identity()


def make_activation(kind: str) -> nn.Module:
    """A fresh activation module."""
    check_choice("act", kind, ACTIVATIONS)
    if kind == "relu":
        return nn.ReLU()
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.01)
    return nn.SiLU()


def make_pool(kind: str) -> nn.Module:
    """A 2x2, stride-2 pooling layer (identity for ``"none"``)."""
    check_choice("pool", kind, POOLS)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    if kind == "max":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.Identity()


def extra_padding(image_size: tuple[int, int]) -> int:
    """Padding the first conv adds so a 28x28 input makes a 32x32 map, as the reference models do."""
    return 2 if image_size == (28, 28) else 0


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Side length of a conv or pooling output."""
    return (size + 2 * padding - kernel) // stride + 1


@register_model("convnet-bn", norm="batch")
@register_model("convnet")
def convnet(
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    *,
    depth: int = 3,
    width: int = 128,
    norm: str = "instance",
    act: str = "relu",
    pool: str = "avg",
) -> ImageClassifier:
    """``depth`` x [3x3 conv -> norm -> act -> 2x2 pool], then one linear layer."""
    check_int("depth", depth)
    check_int("width", width)
    check_choice("pool", pool, POOLS)
    first_map = min(image_size) + 2 * extra_padding(image_size)
    if pool != "none" and first_map >> depth < 1:
        raise DdplugError(
            f"depth {depth} is too deep for {image_size[0]}x{image_size[1]} inputs: each pool halves "
            f"the map, which would fall below 1 px; use depth <= {first_map.bit_length() - 1} or pool=none"
        )
    layers: list[nn.Module] = []
    channels, (map_h, map_w) = in_channels, image_size
    for index in range(depth):
        padding = 1 + (extra_padding(image_size) if index == 0 else 0)
        map_h = conv_output_size(map_h, 3, padding=padding)
        map_w = conv_output_size(map_w, 3, padding=padding)
        layers += [
            nn.Conv2d(channels, width, kernel_size=3, padding=padding),
            make_norm(norm, width, map_h, map_w),
            make_activation(act),
            make_pool(pool),
        ]
        channels = width
        if pool != "none":
            map_h, map_w = map_h // 2, map_w // 2
    return ImageClassifier(nn.Sequential(*layers), channels * map_h * map_w, num_classes)
