"""No client ends a federated run: hostile replies to the real strategies (fabricated Flower
messages, one hostile client beside honest ones) are dropped with their reason, the round
completes on the honest clients, and the history stays strict JSON."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: E402

from ddplug.models import create_model  # noqa: E402
from ddplug.sets import SyntheticSet  # noqa: E402
from ddplug_flower import FederatedSettings, SetSpec, set_to_record  # noqa: E402
from ddplug_flower.server import CheckedFedAvg, DistilledSets, discover  # noqa: E402
from helpers import TINY_MODEL  # noqa: E402
from test_flower import _FakeData, _Grid, _coded_upload, _history, _replies, _set, _upload  # noqa: E402

NODES = [11, 12, 13]  # partitions 0, 1 honest; 2 hostile


@pytest.fixture(autouse=True)
def identity(task_identity: None) -> None:
    """Every test here makes Messages outside a Flower run."""


@pytest.fixture()
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _distill_round(tmp_path: Path, hostile: RecordDict, spec: SetSpec | None = None,
                   honest: dict[int, RecordDict] | None = None) -> tuple[dict[str, Any], list[SyntheticSet]]:
    """One distill round of DistilledSets; returns the history's entry and the unions trained on."""
    history = _history(tmp_path, NODES, encoding="float32")
    spec = spec or SetSpec.for_dataset(_FakeData, ipc=2, encoding="float32")
    trained: list[SyntheticSet] = []
    strategy = DistilledSets(spec, lambda union, server_round: trained.append(union) or ArrayRecord(), history)
    messages = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), _Grid(NODES))
    contents = honest or {11: _upload(_set()), 12: _upload(_set(classes=(1, 2)))}
    strategy.aggregate_train(1, _replies(messages, {**contents, 13: hostile}))
    history.evaluated(1, 0.5)
    text = (tmp_path / "history.json").read_text()
    return json.loads(text, parse_constant=_refuse), trained


def _refuse(constant: str) -> None:
    raise AssertionError(f"history.json is not strict JSON: it holds {constant}")


def _with(content: RecordDict, **records: Any) -> RecordDict:
    return RecordDict({**dict(content.items()), **records})


def _metrics(content: RecordDict, **metrics: Any) -> RecordDict:
    return _with(content, metrics=MetricRecord({**dict(content.metric_records["metrics"].items()), **metrics}))


HOSTILE_UPLOADS = {
    "empty-string config": (lambda: _with(_upload(_set()), x=ConfigRecord({"x": ""})),
                            r"config record 'x'; a reply holds only array record 'set', metric record 'metrics'"),
    "junk arrays": (lambda: _with(_upload(_set()), junk=ArrayRecord({"x": Array(np.zeros(10**7, np.float32))})),
                    "array record 'junk'"),
    "8 MB metric list": (lambda: _metrics(_upload(_set()), pad=[0.0] * 10**6), "unexpected metrics pad"),
    "8 MB similarity list": (lambda: _metrics(_upload(_set()), **{"real-nn-similarity": [0.5] * 10**6}),
                             "real-nn-similarity must list at most 100"),
    "unknown metric": (lambda: _metrics(_upload(_set()), extra=1.0), "unexpected metrics extra"),
    "nan images count": (lambda: _metrics(_upload(_set()), images=float("nan")), "metric images must be a finite"),
}


@pytest.mark.parametrize("case", list(HOSTILE_UPLOADS))
def test_a_hostile_distill_reply_is_dropped_and_the_round_completes(tmp_path: Path, case: str) -> None:
    make, reason = HOSTILE_UPLOADS[case]
    summary, trained = _distill_round(tmp_path, make())
    entry = summary["history"][0]
    assert entry["participants"] == ["0", "1"] and list(entry["dropped"]) == ["2"]
    assert re.search(reason, entry["dropped"]["2"]), entry["dropped"]["2"]
    (union,) = trained
    assert len(union) == 6 + 4


def _fedavg_round(tmp_path: Path, hostile: Any) -> tuple[dict[str, Any], ArrayRecord, dict[str, torch.Tensor]]:
    history = _history(tmp_path, NODES, mode="fedavg")
    strategy = CheckedFedAvg(history, history.settings)
    model = create_model(TINY_MODEL, in_channels=1, num_classes=10, image_size=(28, 28), seed=0)
    messages = strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord(), _Grid(NODES))

    def update(shift: float, examples: int = 50, **metrics: Any) -> RecordDict:
        arrays = ArrayRecord({key: value + shift for key, value in model.state_dict().items()})
        return RecordDict({"arrays": arrays, "metrics": MetricRecord(
            {"num-examples": examples, "bytes": arrays.count_bytes(), "seconds": 1.5, **metrics})})

    contents = {11: update(1.0), 12: update(3.0, examples=100), 13: hostile(update)}
    averaged, metrics = strategy.aggregate_train(1, _replies(messages, contents))
    history.evaluated(1, 0.5)
    summary = json.loads((tmp_path / "history.json").read_text(), parse_constant=_refuse)
    return summary, averaged, model.state_dict()


def _listed_seconds(update: Any) -> RecordDict:
    content = update(0.0)
    content.metric_records["metrics"]["seconds"] = [1.0, 2.0]
    return content


HOSTILE_UPDATES = {
    "extra metric key": (lambda update: update(0.0, extra=1.0), "unexpected metrics extra"),
    "list metric": (_listed_seconds, "metric seconds must be a finite number"),
    "nan metric": (lambda update: update(0.0, seconds=float("nan")), "metric seconds must be a finite number"),
    "huge metric": (lambda update: update(0.0, bytes=1.7e308), "metric bytes must be a finite number"),
    "missing metric": (lambda update: RecordDict({"arrays": update(0.0).array_records["arrays"],
                                                  "metrics": MetricRecord({"num-examples": 50})}),
                       "lack bytes, seconds"),
    "empty-string config": (lambda update: _with(update(0.0), x=ConfigRecord({"x": ""})), "config record 'x'"),
}


@pytest.mark.parametrize("case", list(HOSTILE_UPDATES))
def test_a_hostile_fedavg_reply_is_dropped_and_the_average_is_the_honest_one(tmp_path: Path, case: str) -> None:
    make, reason = HOSTILE_UPDATES[case]
    summary, averaged, state = _fedavg_round(tmp_path, make)
    entry = summary["history"][0]
    assert entry["participants"] == ["0", "1"] and list(entry["dropped"]) == ["2"]
    assert re.search(reason, entry["dropped"]["2"]), entry["dropped"]["2"]
    key = next(key for key, value in state.items() if value.is_floating_point())
    assert torch.allclose(torch.from_numpy(averaged[key].numpy()), state[key] + 7 / 3, atol=1e-5)


def _coded_reply(record: ArrayRecord, images: int) -> RecordDict:
    report = {"upload-nn-similarity": [0.5] * images, "real-nn-similarity": [0.6, 0.7], "membership-advantage": 0.05}
    return RecordDict({"set": record, "metrics": MetricRecord(report)})


def _coded_case(tmp_path: Path, param: str, fault: str) -> tuple[RecordDict, SetSpec, dict[int, RecordDict]]:
    # factor:bases=8 at the bytes of 10 images per class: 3 classes hold its bases, 1 does not.
    # (At DM's lr the factor code leaves the upload's pixel range within two steps; 0.01 keeps it.)
    factor = param.startswith("factor")
    synthetic, spec = _coded_upload(tmp_path, param, ipc=10 if factor else 2, **({"lr_images": 0.01} if factor else {}))
    record = set_to_record(synthetic, "uint8")
    honest = {node: _coded_reply(record, len(synthetic)) for node in (11, 12)}
    if fault == "short classes":
        record = ArrayRecord({**dict(record.items()), "classes": Array(np.array([0], np.int64))})
    else:
        soft = torch.zeros(len(synthetic), 10)
        soft[:, 1 if fault == "one class" else 9] = 1.0  # every image into class 1 / into undeclared class 9
        record = ArrayRecord({**dict(record.items()), "labels": Array(soft.half().numpy())})
    return _coded_reply(record, len(synthetic)), spec, honest


@pytest.mark.parametrize(("param", "fault", "reason"), [
    ("factor:bases=8", "short classes", "1 classes cannot hold a factor:bases=8 code"),
    ("multi:factor=2", "short classes", r"code.images should be uint8 \(2, 1, 28, 28\)"),
    ("multi:factor=2", "one class", "soft labels put 24 images into class 1, over the 8"),
    ("multi:factor=2", "undeclared class", r"soft labels put images into classes \[9\], which the upload does not"),
])
def test_a_coded_upload_that_lies_about_its_classes_is_dropped(tmp_path: Path, param: str, fault: str,
                                                               reason: str) -> None:
    hostile, spec, honest = _coded_case(tmp_path, param, fault)
    summary, trained = _distill_round(tmp_path / "run", hostile, spec, honest)
    entry = summary["history"][0]
    assert entry["participants"] == ["0", "1"] and list(entry["dropped"]) == ["2"]
    assert re.search(reason, entry["dropped"]["2"]), entry["dropped"]["2"]
    assert len(trained) == 1


@pytest.mark.parametrize(("info", "kept"), [
    ({"class-counts": [math.nan, math.inf] + [4.0] * 8}, False),
    ({"class-counts": [4] * 10**6}, False),
    ({"class-counts": [-4, 12] + [4] * 8}, False),
    ({"class-counts": [5] * 10}, False),  # sums to 50, not to the 40 examples claimed
    ({"partition-id": -1}, False),
    ({"extra": 1}, False),
    ({}, True),
])
def test_a_query_reply_is_believed_only_when_it_adds_up(info: dict, kept: bool) -> None:
    class QueryGrid(_Grid):
        def send_and_receive(self, messages: list, timeout: float) -> list:
            honest = {"partition-id": 0, "num-examples": 40, "class-counts": [4] * 10}
            return _replies(messages, {11: RecordDict({"info": MetricRecord(honest)}),
                                       12: RecordDict({"info": MetricRecord({**honest, "partition-id": 1, **info})})})

    partitions = discover(QueryGrid([11, 12]), [11, 12], FederatedSettings(), largest=60_000, num_classes=10)
    assert sorted(partitions) == ([11, 12] if kept else [11])
    json.dumps(partitions, allow_nan=False)  # what the history will hold is strict JSON


def test_a_reply_is_bounded_in_all_its_records() -> None:
    from ddplug_flower.payload import PayloadError, check_envelope, content_bytes

    content = _with(_upload(_set()), x=ConfigRecord({"x": "", "y": ["", "a"]}))
    assert content_bytes(content) > 0  # a record Flower cannot measure counts without its empty strings
    with pytest.raises(PayloadError, match=r"the reply holds \d+ bytes, over the limit of 100 per client"):
        check_envelope(_upload(_set()), arrays=("set",), metrics=("metrics",), max_bytes=100)
    check_envelope(_upload(_set()), arrays=("set",), metrics=("metrics",), max_bytes=10**6)
