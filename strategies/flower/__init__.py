"""Flower adapter: clients that upload distilled sets instead of model updates.

``client_app`` and ``server_app`` are the Flower apps (``flwr run .`` finds them through
``[tool.flwr.app.components]``); ``make_server_app(settings)`` builds a ServerApp with
fixed settings for the Simulation Engine (``simulations.federated``).
"""

from strategies.flower.client import app as client_app
from strategies.flower.partitions import partition_indices
from strategies.flower.payload import PayloadError, SetSpec, record_to_set, set_to_record
from strategies.flower.server import app as server_app
from strategies.flower.server import HISTORY_FILE, make_server_app, run_federation
from strategies.flower.settings import FederatedSettings

__all__ = [
    "HISTORY_FILE", "FederatedSettings", "PayloadError", "SetSpec", "client_app", "make_server_app",
    "partition_indices", "record_to_set", "run_federation", "server_app", "set_to_record",
]
