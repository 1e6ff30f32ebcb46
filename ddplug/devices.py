"""Turning a user's device name into a ``torch.device`` (with a clear error when it can't work)."""

from __future__ import annotations

import torch

from ddplug.errors import DdplugError


def check_device_name(name: str) -> None:
    """Raise :class:`DdplugError` unless ``name`` is a device ddplug runs on (``auto``, ``cpu``,
    ``cuda``, ``cuda:N``), whether or not this machine has it (a server checks its clients')."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DdplugError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DdplugError(f"--device {name} was asked for but no CUDA GPU is available here; use --device cpu")
    return device
