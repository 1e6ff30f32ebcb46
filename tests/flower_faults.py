"""Fault injection for the Flower tests: ddplug's ClientApp with a mod that makes chosen
partitions fail, hang or upload a corrupted set, to exercise the server's checks."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from ddplug_flower.client import make_client_app
from ddplug_flower.settings import FederatedSettings

FAULTS = ("raise", "hang", "nan", "shape", "label", "dtype", "oversize")


def corrupt(record: ArrayRecord, fault: str, max_bytes: int) -> ArrayRecord:
    """A deliberately bad copy of an upload (``oversize``: more than ``max_bytes``)."""
    images, labels = record["images"].numpy().copy(), record["labels"].numpy().copy()
    if fault == "nan":  # needs a float encoding: uint8 images cannot hold NaN
        images.flat[0] = np.nan
    elif fault == "shape":
        images = images[:, :, 1:]
    elif fault == "label":
        labels.flat[0] = -1
    elif fault == "dtype":
        images = images.astype(np.float64)
    elif fault == "oversize":
        copies = max_bytes // images.nbytes + 1
        images, labels = np.concatenate([images] * copies), np.concatenate([labels] * copies)
    return ArrayRecord({**dict(record.items()), "images": Array(images), "labels": Array(labels)})


def faulty_client_app(faults: Mapping[int, str]) -> ClientApp:
    """ddplug's ClientApp where partition ``p`` answers train messages with ``faults[p]``:
    ``raise`` fails, ``hang`` answers after twice the round timeout, the others corrupt the set."""
    unknown = set(faults.values()) - set(FAULTS)
    assert not unknown, f"unknown faults {unknown}"

    def inject(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        fault = faults.get(int(context.node_config["partition-id"]))
        if fault is None or not msg.metadata.message_type.startswith("train"):
            return call_next(msg, context)
        settings = FederatedSettings.from_config(msg.content.config_records["config"])
        if fault == "raise":
            raise RuntimeError(f"partition {context.node_config['partition-id']}: injected failure")
        if fault == "hang":
            time.sleep(2 * settings.round_timeout)
        reply = call_next(msg, context)
        if fault == "hang":
            return reply
        record = reply.content.array_records["set"]
        limit = settings.max_upload_bytes or 20 * record.count_bytes()  # past any limit the server derives
        reply.content.array_records["set"] = corrupt(record, fault, limit)
        return reply

    return make_client_app(mods=[inject])


def ship_by_value() -> None:
    """Ray workers cannot import this test module: pickle its functions by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
