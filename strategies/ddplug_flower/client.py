"""The ClientApp: each node condenses its partition and uploads the synthetic set.

Messages it answers:

- ``query``: the node's partition id and class counts (the server maps nodes to partitions);
- ``train``: condense the partition (``condense_classes``) and reply with the set; when the
  message carries the global model's arrays, distil around them (anchored DM, FedDM). No
  real image leaves the node: a class with no more images than ``ipc`` is left out of the
  upload (not copied into it), and the reply's metrics list it (``left-out-classes``). The
  metrics also carry the upload's leakage report (``ddplug.privacy.leakage``: nearest-real
  similarities, membership-inference advantage against the test split) and, under
  differential privacy, the epsilon this upload spent;
- ``train.fedavg``: the FedAvg baseline: train the received model on the partition for
  ``local-epochs`` and reply with its weights.

Settings come in the message's ConfigRecord; the partition from the node config
(``partition-id``, ``num-partitions``, optionally ``data-root``).
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from safetensors.torch import save_file
from torch import Tensor

from ddplug.allocator import tune_allocator
from ddplug.data import ImageDataset
from ddplug.methods import AnchoredDistributionMatching, get_condenser
from ddplug.errors import DdplugError
from ddplug.evaluation.training import train_classifier
from ddplug.pipeline import condense_classes
from ddplug.privacy import leakage_report
from ddplug.presets import Preset
from ddplug.seeding import derive_seed, make_generator
from ddplug.sets import as_stored
from ddplug_flower.partitions import partition_indices
from ddplug_flower.payload import leakage_to_metrics, set_to_record
from ddplug_flower.settings import ROUND_KEY, FederatedSettings, cached_dataset, data_source

FEDAVG_ACTION = "fedavg"
LEFT_OUT_KEY = "left-out-classes"  # classes too small to condense, which the upload leaves out


def tuned_allocator(context: Context) -> Iterator[None]:
    """Lifespan of the ClientApp and the ServerApp: both train step after step, each in a
    process of its own (SuperNode, Ray worker, SuperLink's ServerApp), so each tunes it."""
    tune_allocator()
    yield


def describe(msg: Message, context: Context) -> Message:
    """The node's partition: id, size and class counts."""
    partition_id, real = load_partition(_settings(msg), context.node_config)
    info = MetricRecord({"partition-id": partition_id, "num-examples": len(real),
                         "class-counts": real.class_counts().tolist()})
    return Message(RecordDict({"info": info}), reply_to=msg)


def distill(msg: Message, context: Context) -> Message:
    """Condense the partition; reply with the set (ArrayRecord ``set``) and metrics."""
    began = time.perf_counter()
    settings = _settings(msg)
    partition_id, real = load_partition(settings, context.node_config)
    preset = settings.resolved_preset()
    seed = derive_seed(settings.seed, "client", partition_id, _round(msg))
    with tempfile.TemporaryDirectory() as folder:
        method, method_settings = _method(msg, settings, preset, Path(folder))
        synthetic = condense_classes(real, method, ipc=settings.ipc, preset=preset, seed=seed,
                                     settings=method_settings, device=settings.torch_device(),
                                     copy_small_classes=False)
    record = set_to_record(synthetic, settings.encoding)
    holdout = cached_dataset(settings.dataset, _data_root(settings, context.node_config)).test
    # On the images the server decodes from the upload (the code quantised to its storage dtypes).
    report = leakage_report(as_stored(synthetic).images, real, holdout, probes=settings.leakage_probes, seed=seed)
    privacy = synthetic.meta.get("privacy")
    metrics = MetricRecord({"num-examples": len(real), "images": len(synthetic), "bytes": record.count_bytes(),
                            "seconds": time.perf_counter() - began, LEFT_OUT_KEY: synthetic.meta["left_out_classes"],
                            **leakage_to_metrics(report, None if privacy is None else privacy["epsilon"])})
    return Message(RecordDict({"set": record, "metrics": metrics}), reply_to=msg)


def local_training(msg: Message, context: Context) -> Message:
    """FedAvg: train the received global model on the partition; reply with its weights."""
    began = time.perf_counter()
    settings = _settings(msg)
    partition_id, real = load_partition(settings, context.node_config)
    protocol = settings.resolved_preset().evaluation
    device = settings.torch_device()
    model = settings.global_model(real)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    model.to(device)
    # FedAvg's client update keeps its lr constant (no decay after half the local epochs).
    local = dataclasses.replace(protocol.train_settings(settings.local_epochs), lr_decay=False)
    train_classifier(model, real.images.to(device), real.labels.to(device), local,
                     generator=make_generator(settings.seed, "fedavg-local", partition_id, _round(msg)))
    weights = ArrayRecord(model.state_dict())
    metrics = MetricRecord({"num-examples": len(real), "bytes": weights.count_bytes(),
                            "seconds": time.perf_counter() - began})
    return Message(RecordDict({"arrays": weights, "metrics": metrics}), reply_to=msg)


def make_client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp: ``describe`` answers ``query``, ``distill`` answers ``train`` and
    ``local_training`` answers ``train.fedavg``; ``mods`` wrap every handler (Flower mods)."""
    client = ClientApp(mods=list(mods))
    client.lifespan()(tuned_allocator)
    client.query()(describe)
    client.train()(distill)
    client.train(FEDAVG_ACTION)(local_training)
    return client


app = make_client_app()


def load_partition(settings: FederatedSettings, node_config: Mapping[str, Any]) -> tuple[int, ImageDataset]:
    """This node's partition id and its share of the training split."""
    try:
        partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError:
        raise DdplugError("the node config needs partition-id and num-partitions: start the SuperNode with "
                          "--node-config 'partition-id=0 num-partitions=N'") from None
    if not 0 <= partition_id < num_partitions:
        raise DdplugError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    root = _data_root(settings, node_config)
    parts = _partitions(settings.dataset, root, data_source(root), settings.partitioner, num_partitions,
                        settings.alpha, settings.classes_per_client, settings.seed)
    return partition_id, cached_dataset(settings.dataset, root).train.subset(parts[partition_id])


def _data_root(settings: FederatedSettings, node_config: Mapping[str, Any]) -> str:
    return str(node_config.get("data-root", settings.data_root))


@functools.lru_cache(maxsize=2)
def _partitions(dataset: str, root: str, source: str, scheme: str, num_partitions: int, alpha: float, classes: int,
                seed: int) -> list[Tensor]:  # ``source`` (where ``root`` reads from) keys the cache
    return partition_indices(cached_dataset(dataset, root).train.labels, num_partitions, scheme=scheme, alpha=alpha,
                             classes_per_partition=classes, seed=seed)


def _settings(msg: Message) -> FederatedSettings:
    return FederatedSettings.from_config(msg.content.config_records["config"])


def _round(msg: Message) -> int:
    return int(msg.content.config_records["config"].get(ROUND_KEY, 1))


def _method(msg: Message, settings: FederatedSettings, preset: Preset, folder: Path) -> tuple[str, dict[str, Any] | None]:
    """The distiller and its settings: the configured method, or DM anchored at the received global model."""
    if "arrays" not in msg.content.array_records:
        return settings.method, settings.upload_settings() if get_condenser(settings.method).learns else None
    anchor = folder / "anchor.safetensors"
    save_file(dict(msg.content.array_records["arrays"].to_torch_state_dict()), str(anchor))
    return AnchoredDistributionMatching.name, {**preset.method_settings("dm"), "model": preset.evaluation.model,
                                               "anchor": str(anchor), "anchor_noise": settings.anchor_noise,
                                               **settings.upload_settings()}
