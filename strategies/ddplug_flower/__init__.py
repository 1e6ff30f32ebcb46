"""Flower adapter: clients that upload distilled sets instead of model updates.

``client_app`` and ``server_app`` are the Flower apps (``flwr run .`` finds them through
``[tool.flwr.app.components]``); ``make_server_app(settings)`` builds a ServerApp with
fixed settings for the Simulation Engine (``ddplug_flower.simulation``, ``ddplug fl``).
Names load on first use, so registering ``ddplug fl`` does not import Flower.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "client_app": ("client", "app"), "server_app": ("server", "app"), "HISTORY_FILE": ("server", "HISTORY_FILE"),
    "make_server_app": ("server", "make_server_app"), "run_federation": ("server", "run_federation"),
    "partition_indices": ("partitions", "partition_indices"), "PayloadError": ("payload", "PayloadError"),
    "SetSpec": ("payload", "SetSpec"), "record_to_set": ("payload", "record_to_set"),
    "set_to_record": ("payload", "set_to_record"), "FederatedSettings": ("settings", "FederatedSettings"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module, attribute = _WHERE[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
