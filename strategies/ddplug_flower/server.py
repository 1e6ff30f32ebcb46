"""The ServerApp: collects distilled sets (or FedAvg updates), trains and judges the global model.

A run waits for the expected nodes, asks each for its partition (``query``), then runs
``rounds`` rounds of one of two strategies through Flower's ``Strategy.start``:

- :class:`DistilledSets` (mode ``distill``): every node uploads a synthetic set; each
  upload is checked (:func:`record_to_set`) and a bad one is dropped with its reason; the
  global model trains on the union with the preset's protocol. With one round this is
  one-shot; with more, from round 2 on the global model goes to the clients, who distil
  around it (FedDM).
- :class:`CheckedFedAvg` (mode ``fedavg``): Flower's ``FedAvg`` with the same checks.

Nodes that fail or time out are left out of the round. After the initial evaluation
and every round the global model is tested on the real test set, and the history (accuracy,
bytes each way, seconds, which clients were missing, failed or dropped, and why) is
written to ``OUT/history.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, TypeVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

from ddplug.augment import DSA, DSAConfig
from ddplug.data import DatasetSplits
from ddplug.errors import DdplugError
from ddplug.evaluation.training import TrainSettings, classification_accuracy, train_classifier
from ddplug.privacy import LeakageReport
from ddplug.seeding import make_generator
from ddplug.sets import SyntheticSet
from ddplug.storage import writable_folder, write_json
from ddplug_flower.client import FEDAVG_ACTION, LEFT_OUT_KEY, tuned_allocator
from ddplug_flower.payload import (
    ADVANTAGE_KEY,
    EPSILON_KEY,
    REAL_SIMILARITY_KEY,
    UPLOAD_SIMILARITY_KEY,
    PayloadError,
    SetSpec,
    check_envelope,
    check_metrics,
    check_reply_size,
    check_model_reply,
    check_partition_info,
    content_bytes,
    is_finite_number,
    leakage_from_metrics,
    model_bytes_limit,
    record_to_set,
)
from ddplug_flower.settings import ROUND_KEY, FederatedSettings, cached_dataset

HISTORY_FILE = "history.json"
Checked = TypeVar("Checked")


def make_server_app(settings: FederatedSettings | None = None) -> ServerApp:
    """A ServerApp running ``settings``, or, when None, the run config's settings."""
    server = ServerApp()
    server.lifespan()(tuned_allocator)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, settings or FederatedSettings.from_config(context.run_config))

    return server


app = make_server_app()


class History:
    """Per-round record of a run, rewritten to ``history.json`` after every round."""

    def __init__(self, settings: FederatedSettings, partitions: dict[int, dict[str, Any]], connected: int,
                 began: float) -> None:
        self.settings = settings
        self.partitions = partitions  # node id -> what it said in reply to the query
        self.connected = connected
        ids = [info["partition-id"] for info in partitions.values()]
        # Nodes with data silos of their own may all call themselves partition 0 of 1.
        self.names = {node: str(info["partition-id"]) if ids.count(info["partition-id"]) == 1
                      else f"{info['partition-id']}@node-{node}" for node, info in partitions.items()}
        self.began = began  # time.perf_counter() when the run started
        self.initial_accuracy: float | None = None
        self.rounds: list[dict[str, Any]] = []
        self.current: dict[str, Any] = {}
        self.leakage: list[LeakageReport] = []  # every accepted upload's report, all rounds
        self.epsilon: dict[str, float] = {}  # per client: epsilon spent over the rounds so far
        self._round_began = 0.0

    def client(self, node_id: int) -> str:
        """A node's name in the history: its partition id, or its node id if it never said."""
        return self.names.get(node_id, f"node-{node_id}")

    def sent(self, server_round: int, messages: list[Message]) -> None:
        self._round_began = time.perf_counter()
        self.current = {
            "round": server_round, "sent": _ordered(self.client(m.metadata.dst_node_id) for m in messages),
            "participants": [], "failed": {}, "timed_out": [], "dropped": {}, "missing": [], "left_out": {},
            "leakage": {}, "client_seconds": {},
            "bytes_down": sum(content_bytes(m.content) for m in messages), "bytes_up": 0,
        }

    def screen(self, replies: Iterable[Message], check: Callable[[Message], Checked]) -> list[Checked]:
        """``check(reply)`` of every reply that passes it. Silent nodes, error replies and
        replies whose check raises :class:`DdplugError` are recorded, with the reason."""
        # In partition order, not arrival order: the union (and FedAvg's sums) come out the same every run.
        replies = sorted(replies, key=lambda reply: _order(self.client(reply.metadata.src_node_id)))
        answered = {self.client(reply.metadata.src_node_id) for reply in replies}
        self.current["timed_out"] = [name for name in self.current["sent"] if name not in answered]
        passed = []
        for reply in replies:
            if reply.has_error():
                self._note("failed", reply, _last_line(reply.error.reason))
                continue
            self.current["bytes_up"] += content_bytes(reply.content)
            try:
                passed.append(check(reply))
            except DdplugError as error:
                self._note("dropped", reply, str(error))
                continue
            name = self.client(reply.metadata.src_node_id)
            self.current["participants"].append(name)
            metrics = reply.content.metric_records.get("metrics")
            seconds = None if metrics is None else metrics.get("seconds")
            if is_finite_number(seconds) and 0 <= seconds <= 1e7:  # what the client says its work took
                self.current["client_seconds"][name] = round(float(seconds), 3)
        return passed

    def leaked(self, node: int, report: LeakageReport, epsilon: float | None) -> None:
        """Record a client's leakage report on its upload and, under DP, what it spent."""
        name = self.client(node)
        entry = report.summary()
        if epsilon is not None:  # rounds compose: a client's epsilons add up
            self.epsilon[name] = self.epsilon.get(name, 0.0) + epsilon
            entry["epsilon"] = self.epsilon[name]
        self.current["leakage"][name] = entry
        self.leakage.append(report)

    def evaluated(self, server_round: int, accuracy: float) -> None:
        if server_round == 0:
            self.initial_accuracy = accuracy
            return
        expected = _ordered({self.client(node) for node in self.partitions} | set(self.current["sent"]))
        self.current["missing"] = [name for name in expected if name not in self.current["participants"]]
        self.current["participants"] = _ordered(self.current["participants"])
        self.current.update(accuracy=accuracy, seconds=time.perf_counter() - self._round_began)
        self.rounds.append(self.current)
        write_json(Path(self.settings.out) / HISTORY_FILE, self.summary())

    def summary(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "mode": settings.mode, "clients": settings.clients, "alpha": settings.alpha,
            "partitioner": settings.partitioner, "rounds": len(self.rounds), "dataset": settings.dataset,
            "ipc": settings.ipc, "method": settings.method, "encoding": settings.encoding, "preset": settings.preset,
            "accuracy": self.rounds[-1]["accuracy"] if self.rounds else None,
            "initial_accuracy": self.initial_accuracy,
            "bytes_up": sum(entry["bytes_up"] for entry in self.rounds),
            "bytes_down": sum(entry["bytes_down"] for entry in self.rounds),
            "seconds": time.perf_counter() - self.began,
            "connected": self.connected,
            # Over every accepted upload of the run (all clients' images), and the largest
            # attack advantage and per-client epsilon (None: no upload / not private).
            **(LeakageReport.combine(self.leakage).summary() if self.leakage else dict.fromkeys(LeakageReport.KEYS)),
            "epsilon": max(self.epsilon.values(), default=None),
            "partitions": {self.client(node): {"examples": self.partitions[node]["num-examples"],
                                               "class_counts": self.partitions[node]["class-counts"]}
                           for node in sorted(self.partitions, key=lambda node: _order(self.client(node)))},
            "history": self.rounds,
            "settings": settings.to_config(),
        }

    def _note(self, kind: str, reply: Message, reason: str) -> None:
        name = self.client(reply.metadata.src_node_id)
        log(WARNING, "round %s: client %s %s: %s", self.current["round"], name, kind, reason)
        self.current[kind][name] = reason


def _order(name: str) -> tuple[int, str]:
    """Sort key: partition 2 before partition 10; node names after partitions."""
    head = name.split("@")[0]
    return (int(head) if head.isdigit() else sys.maxsize, name)


def _ordered(names: Iterable[str]) -> list[str]:
    return sorted(names, key=_order)


def _last_line(reason: str) -> str:
    """The gist of an error reply: the simulation wraps the client's exception in a traceback."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    return lines[-1].removesuffix("'>") if lines else reason


class DistilledSets(Strategy):
    """Clients upload synthetic sets and the server trains the global model on their union
    (averaging, as FedAvg does with weights, means nothing for data)."""

    def __init__(self, spec: SetSpec, train: Callable[[SyntheticSet, int], ArrayRecord], history: History) -> None:
        self.spec = spec
        self.train = train
        self.history = history
        self.probes = history.settings.leakage_probes  # the most real images a leakage report may list
        self.private = bool(history.settings.dp_epsilon)  # uploads must say what epsilon they spent

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        config[ROUND_KEY] = server_round
        # Round 1 is plain DM (one-shot's set): the untrained global model would only narrow
        # DM's fresh random networks down to one. Later rounds distil around the global model.
        content = RecordDict({"config": config, **({"arrays": arrays} if server_round > 1 else {})})
        messages = [Message(content, dst_node_id=node, message_type=MessageType.TRAIN) for node in grid.get_node_ids()]
        self.history.sent(server_round, messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sets = self.history.screen(replies, self.uploaded_set)
        if not sets:
            log(WARNING, "round %s: no usable set arrived; the global model stays as it was", server_round)
            return None, None
        union = SyntheticSet.concatenate(sets, meta={"round": server_round})  # lr: the valid uploads' median
        self.history.current["images"] = len(union)
        if union.lr is not None:
            self.history.current["lr"] = float(union.lr)
        return self.train(union, server_round), MetricRecord({"images": len(union)})

    def uploaded_set(self, reply: Message) -> SyntheticSet:
        spec = self.spec
        check_envelope(reply.content, arrays=("set",), metrics=("metrics",))
        if "set" not in reply.content.array_records:
            raise PayloadError("the reply holds no 'set' array record")
        metrics = reply.content.metric_records.get("metrics", {})
        check_metrics(metrics, {"num-examples": (0, 1e9), "images": (0, spec.max_images), "bytes": (0, 1e12)},
                      elsewhere=(UPLOAD_SIMILARITY_KEY, REAL_SIMILARITY_KEY, ADVANTAGE_KEY, EPSILON_KEY, LEFT_OUT_KEY,
                                 "seconds"))
        synthetic = record_to_set(reply.content.array_records["set"], spec)
        left_out = metrics.get(LEFT_OUT_KEY, [])
        if not (isinstance(left_out, list) and all(isinstance(c, int) and 0 <= c < spec.num_classes for c in left_out)
                and len(set(left_out)) == len(left_out)):
            raise PayloadError(f"{LEFT_OUT_KEY} must list distinct class ids 0..{spec.num_classes - 1}")
        uploaded = set(synthetic.hard_labels.unique().tolist())
        if uploaded & set(left_out):
            raise PayloadError(f"{LEFT_OUT_KEY} names classes {sorted(uploaded & set(left_out))}, which the upload holds")
        report, epsilon = leakage_from_metrics(metrics, images=len(synthetic), probes=self.probes,
                                               private=self.private)
        # The leakage report lists a float per decoded image and per probed real image.
        check_reply_size(reply.content, spec.max_bytes + 16 * (spec.max_images + self.probes + spec.num_classes) + 4096)
        if left_out:  # too few images to condense: the client kept them home rather than upload them raw
            self.history.current["left_out"][self.history.client(reply.metadata.src_node_id)] = left_out
        self.history.leaked(reply.metadata.src_node_id, report, epsilon)
        return synthetic

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        return []  # the server tests the global model itself, on the real test set

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log(INFO, "\t├── distilled sets: ipc %d, %s images, at most %d bytes per client",
            self.spec.ipc, self.spec.encoding, self.spec.max_bytes)
        log(INFO, "\t└── round 1 from scratch, later rounds around the global model")


class CheckedFedAvg(FedAvg):
    """Flower's FedAvg over every connected node, with the same history and upload checks."""

    def __init__(self, history: History, settings: FederatedSettings) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.history = history
        self.settings = settings
        self.reference = ArrayRecord()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        self.reference = arrays
        messages = [Message(m.content, dst_node_id=m.metadata.dst_node_id,
                            message_type=f"{MessageType.TRAIN}.{FEDAVG_ACTION}")
                    for m in super().configure_train(server_round, arrays, config, grid)]
        self.history.sent(server_round, messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, self.history.screen(replies, self.checked_update))

    def checked_update(self, reply: Message) -> Message:
        limit = model_bytes_limit(self.reference, self.settings.max_upload_bytes)
        check_envelope(reply.content, arrays=("arrays",), metrics=("metrics",), max_bytes=limit + 4096)
        check_model_reply(reply.content, self.reference, max_bytes=limit,
                          max_examples=self.max_examples(reply.metadata.src_node_id),
                          max_weight=self.settings.max_weight)
        return reply

    def max_examples(self, node: int) -> int:
        """The most examples a node may weigh its update with: the configured cap, or else
        the partition size it reported when queried (0, so nothing passes, if it never did)."""
        if self.settings.max_examples:
            return self.settings.max_examples
        return int(self.history.partitions.get(node, {}).get("num-examples", 0))


def check_before_start(settings: FederatedSettings) -> DatasetSplits:
    """Everything about ``settings`` that can fail, checked before any node is asked for
    anything: the data, what the clients will distil from it, the output folder. Returns the data."""
    data = cached_dataset(settings.dataset, settings.data_root)
    settings.check_for(data)
    writable_folder(settings.out, files=(HISTORY_FILE,))
    return data


def global_trainer(model: torch.nn.Module, training: TrainSettings, augment: DSA | None,
                   seed: int) -> Callable[[SyntheticSet, int], ArrayRecord]:
    """What :class:`DistilledSets` does with a round's union: train ``model`` on it under
    ``training`` (the union's learned lr, if any) and return the weights."""
    device = next(model.parameters()).device

    def train(union: SyntheticSet, server_round: int) -> ArrayRecord:
        # The one long silent stretch of a round: say what it trains and how long it took.
        log(INFO, "round %d: training the global model on the %d uploaded images for %d epochs",
            server_round, len(union), training.epochs)
        began = time.perf_counter()
        train_classifier(model, union.images.to(device), union.labels.to(device), training,
                         lr=None if union.lr is None else float(union.lr), augment=augment,
                         generator=make_generator(seed, "server-train", server_round))
        log(INFO, "round %d: global model trained in %.0f s", server_round, time.perf_counter() - began)
        return ArrayRecord(model.state_dict())

    return train


def run_federation(grid: Grid, settings: FederatedSettings) -> dict[str, Any]:
    """Run ``settings`` over the nodes of ``grid``; returns the summary written to history.json."""
    began = time.perf_counter()
    data = check_before_start(settings)
    protocol = settings.resolved_preset().evaluation
    device = settings.torch_device()
    nodes = wait_for_nodes(grid, settings.clients, settings.node_wait)
    # A partition is at most the whole training set (or the configured cap): what a client
    # says here later bounds the weight of its FedAvg updates.
    largest = settings.max_examples or len(data.train)
    history = History(settings, discover(grid, nodes, settings, largest, data.train.num_classes), len(nodes), began)
    model = settings.global_model(data.train).to(device)
    judge = settings.global_model(data.train).to(device)
    test_images, test_labels = data.test.images.to(device), data.test.labels.to(device)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        judge.load_state_dict(arrays.to_torch_state_dict())
        accuracy = classification_accuracy(judge, test_images, test_labels, protocol.batch_size)
        history.evaluated(server_round, accuracy)
        return MetricRecord({"accuracy": accuracy})

    augment = DSA(DSAConfig.for_dataset(data.train.name)) if protocol.augment else None
    if settings.mode == "fedavg":
        strategy: Strategy = CheckedFedAvg(history, settings)
    else:
        spec = SetSpec.for_dataset(data.train, ipc=settings.ipc, encoding=settings.encoding,
                                   max_bytes=settings.max_upload_bytes, lr_range=(settings.lr_min, settings.lr_max),
                                   param=settings.param, soft_labels=settings.learns_labels())
        strategy = DistilledSets(spec, global_trainer(model, protocol.train_settings(), augment, settings.seed), history)
    strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=settings.rounds, timeout=settings.round_timeout,
                   train_config=config_record(settings), evaluate_fn=evaluate)
    summary = history.summary()
    write_json(Path(settings.out) / HISTORY_FILE, summary)
    return summary


def config_record(settings: FederatedSettings) -> ConfigRecord:
    """The settings for the clients. Empty strings are left out (the clients' defaults are
    the same): flwr 1.41's ``ConfigRecord.count_bytes`` raises on them."""
    return ConfigRecord({key: value for key, value in settings.to_config().items() if value != ""})


NODES_HINT = ("`flwr run` simulates 2 SuperNodes unless told: add --federation-config \"num-supernodes=N\"; "
              "or set --run-config \"clients=N\" to the nodes there are")


def wait_for_nodes(grid: Grid, expected: int, patience: float) -> list[int]:
    """The connected nodes once ``expected`` are, or whatever connected within ``patience`` seconds
    (said on screen as soon as the first look finds fewer, with how to ask for the rest)."""
    deadline = time.monotonic() + patience
    nodes = sorted(grid.get_node_ids())
    if len(nodes) < expected:
        log(INFO, "waiting up to %.0f s for %d nodes (%d connected); %s", patience, expected, len(nodes), NODES_HINT)
    while len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
    if not nodes:
        raise DdplugError(f"no node connected within {patience:.0f} s; is a SuperNode pointed at this SuperLink?")
    if len(nodes) < expected:
        log(WARNING, "only %d of %d nodes connected within %.0f s; going on with them", len(nodes), expected, patience)
    return nodes


def discover(grid: Grid, nodes: list[int], settings: FederatedSettings, largest: int,
             num_classes: int) -> dict[int, dict[str, Any]]:
    """Each node's answer to the query message: partition id, size (at most ``largest``) and
    its ``num_classes`` class counts; a node whose answer is malformed is left undescribed,
    with a warning."""
    content = RecordDict({"config": config_record(settings)})
    messages = [Message(content, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    partitions = {}
    for reply in grid.send_and_receive(messages, timeout=settings.node_wait):
        if reply.has_error():
            reason = _last_line(reply.error.reason)
        else:
            try:
                check_envelope(reply.content, metrics=("info",), max_bytes=16 * num_classes + 4096)
                info = reply.content.metric_records.get("info")
                reason = "no partition info in its reply" if info is None else check_partition_info(
                    info, num_classes=num_classes, largest=largest)
            except PayloadError as error:
                reason = str(error)
        if reason:
            log(WARNING, "node %s did not describe its partition: %s", reply.metadata.src_node_id, reason)
            continue
        partitions[reply.metadata.src_node_id] = dict(reply.content.metric_records["info"])
    return partitions
