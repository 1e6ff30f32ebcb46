"""Networks for distillation and evaluation, built by name: ``create_model("convnet:width=64", ...)``.

Every model maps ``(N, C, H, W)`` images to ``(N, num_classes)`` logits, exposes
``embed(x)`` (the ``(N, feature_dim)`` input of its final linear layer) and records the
spec that rebuilds it as ``model.spec``.
"""

from __future__ import annotations

from ddplug.models import zoo as _zoo  # noqa: F401  (registers the cross-architecture models)
from ddplug.models.convnet import ACTIVATIONS, NORMS, POOLS, ImageClassifier
from ddplug.models.registry import (
    available_models,
    check_model_spec,
    create_model,
    format_model_spec,
    parse_model_spec,
    register_model,
)
from ddplug.models.template import register_template

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "POOLS",
    "ImageClassifier",
    "available_models",
    "check_model_spec",
    "create_model",
    "format_model_spec",
    "parse_model_spec",
    "register_model",
    "register_template",
]
