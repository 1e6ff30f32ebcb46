"""Cross-architecture models of the DC/DSA papers: MLP, LeNet, AlexNet, VGG-11, ResNet-18."""

from __future__ import annotations

import torch
from torch import nn

from ddplug.errors import DdplugError
from ddplug.models.convnet import (
    ImageClassifier,
    conv_output_size,
    extra_padding,
    make_activation,
    make_norm,
)
from ddplug.models.registry import check_int, register_model


def _require_map(model: str, map_h: int, map_w: int, image_size: tuple[int, int]) -> None:
    if map_h < 1 or map_w < 1:
        raise DdplugError(f"{model} shrinks {image_size[0]}x{image_size[1]} inputs below 1 px; use larger images")


@register_model("mlp")
def mlp(in_channels: int, num_classes: int, image_size: tuple[int, int], *, width: int = 128) -> ImageClassifier:
    """Three linear layers (two hidden of ``width`` with ReLU) on the flattened image."""
    check_int("width", width)
    features = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size[0] * image_size[1], width),
        make_activation("relu"),
        nn.Linear(width, width),
        make_activation("relu"),
    )
    return ImageClassifier(features, width, num_classes)


@register_model("lenet")
def lenet(in_channels: int, num_classes: int, image_size: tuple[int, int]) -> ImageClassifier:
    """LeNet-5: two 5x5 conv + max-pool stages, then 120 -> 84 -> classes."""
    padding = extra_padding(image_size)
    map_h, map_w = (conv_output_size(side, 5, padding=padding) // 2 for side in image_size)
    map_h, map_w = conv_output_size(map_h, 5) // 2, conv_output_size(map_w, 5) // 2
    _require_map("lenet", map_h, map_w, image_size)
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
        make_activation("relu"),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5),
        make_activation("relu"),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(16 * map_h * map_w, 120),
        make_activation("relu"),
        nn.Linear(120, 84),
        make_activation("relu"),
    )
    return ImageClassifier(features, 84, num_classes)


# (out channels, kernel, padding, max-pool after) per conv of the small CIFAR AlexNet.
_ALEXNET_LAYERS = ((128, 5, 2, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True))


@register_model("alexnet-bn", norm="batch")
@register_model("alexnet")
def alexnet(
    in_channels: int, num_classes: int, image_size: tuple[int, int], *, norm: str = "instance"
) -> ImageClassifier:
    """The small AlexNet: five convs (128-192-256-192-192) with three max-pools, then a linear layer."""
    layers: list[nn.Module] = []
    channels, (map_h, map_w) = in_channels, image_size
    for index, (out_channels, kernel, padding, pooled) in enumerate(_ALEXNET_LAYERS):
        padding += extra_padding(image_size) if index == 0 else 0
        map_h = conv_output_size(map_h, kernel, padding=padding)
        map_w = conv_output_size(map_w, kernel, padding=padding)
        layers += [
            nn.Conv2d(channels, out_channels, kernel_size=kernel, padding=padding),
            make_norm(norm, out_channels, map_h, map_w),
            make_activation("relu"),
        ]
        if pooled:
            layers.append(nn.MaxPool2d(2, 2))
            map_h, map_w = map_h // 2, map_w // 2
        channels = out_channels
    _require_map("alexnet", map_h, map_w, image_size)
    return ImageClassifier(nn.Sequential(*layers), channels * map_h * map_w, num_classes)


# Channel multipliers of VGG-11's convs ("M" = 2x2 max-pool).
_VGG11_LAYERS = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


@register_model("vgg11-bn", norm="batch")
@register_model("vgg11")
def vgg11(
    in_channels: int, num_classes: int, image_size: tuple[int, int], *, width: int = 64, norm: str = "instance"
) -> ImageClassifier:
    """VGG-11 for small images: 8 3x3 convs (``width`` to 8 x ``width`` channels), 5 max-pools, one linear layer."""
    check_int("width", width)
    layers: list[nn.Module] = []
    channels, (map_h, map_w) = in_channels, image_size
    for item in _VGG11_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            map_h, map_w = map_h // 2, map_w // 2
            continue
        padding = 1 + (extra_padding(image_size) if not layers else 0)
        map_h = conv_output_size(map_h, 3, padding=padding)
        map_w = conv_output_size(map_w, 3, padding=padding)
        out_channels = item * width
        layers += [
            nn.Conv2d(channels, out_channels, kernel_size=3, padding=padding),
            make_norm(norm, out_channels, map_h, map_w),
            make_activation("relu"),
        ]
        channels = out_channels
    _require_map("vgg11", map_h, map_w, image_size)
    return ImageClassifier(nn.Sequential(*layers), channels * map_h * map_w, num_classes)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 conv shortcut when the shape changes)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: str, map_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_channels, *map_size)
        self.act = make_activation("relu")
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels, *map_size)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                make_norm(norm, out_channels, *map_size),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


@register_model("resnet18-bn", norm="batch")
@register_model("resnet18")
def resnet18(
    in_channels: int, num_classes: int, image_size: tuple[int, int], *, width: int = 64, norm: str = "instance"
) -> ImageClassifier:
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, 4 stages of 2 blocks, global average pool."""
    check_int("width", width)
    map_size = image_size
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        make_norm(norm, width, *map_size),
        make_activation("relu"),
    ]
    channels = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        out_channels = width * 2**stage
        map_size = (conv_output_size(map_size[0], 3, stride, 1), conv_output_size(map_size[1], 3, stride, 1))
        layers += [
            BasicBlock(channels, out_channels, stride, norm, map_size),
            BasicBlock(out_channels, out_channels, 1, norm, map_size),
        ]
        channels = out_channels
    layers.append(nn.AdaptiveAvgPool2d(1))
    return ImageClassifier(nn.Sequential(*layers), channels, num_classes)
