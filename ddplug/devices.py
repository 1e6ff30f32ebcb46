"""Turning a user's device name into a ``torch.device`` (with a clear error when it can't work)."""

from __future__ import annotations

import torch

from ddplug.errors import DdplugError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DdplugError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DdplugError(f"--device {name} was asked for but no CUDA GPU is available here; use --device cpu")
    return device
