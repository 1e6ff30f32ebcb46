"""What travels between the server and the clients, and the server's checks on what comes back.

A synthetic set travels as an ArrayRecord. Plain pixels: ``images`` (uint8 pixels on the
[0, 1] scale times 255, or float16/float32 normalised images), ``labels`` (int64 class ids
or float32 soft labels) and an optional ``lr`` (float32, one value). Another
parameterisation (``multi:factor=2``, ...): its code at the storage dtypes (``code.NAME``,
as in set files), ``classes`` (int64, the classes it holds, ascending: the decoded images
are class by class), optional soft ``labels`` (float16, inside the budget, as in set files)
and ``lr``; the server decodes it, so the upload costs the run's budget of ``ipc`` raw uint8 images per class held. Nothing a client sends is
trusted: every array's serialized header is checked against its declared dtype and shape
before numpy allocates anything, and every value is bounded before the server uses it
(:data:`UPLOAD_PIXEL_RANGE`, soft labels that are probabilities, a learned lr within the
run's range; FedAvg: example counts within the client's partition, weights within a bound).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import io
import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ddplug.data import ImageDataset
from ddplug.errors import DdplugError
from ddplug.privacy import LeakageReport
from ddplug.sets import (
    Layout,
    SetLimits,
    SyntheticSet,
    create_param,
    decode_code,
    decode_images,
    encode_images,
    fit_layout,
    stored_code,
)
from ddplug.sets.files import CODE_PREFIX, restored_labels, stored_labels

SET_KEYS = ("images", "labels", "lr")
CLASSES_KEY = "classes"
_SLACK_BYTES = 4096  # numpy headers and key names on top of the raw array bytes
# Float uploads may leave [0, 1] (learned images do) but not by more than the range's own
# width on either side: anything further is no image, and would swamp the union's training.
UPLOAD_PIXEL_RANGE = (-1.0, 2.0)
# Learned lrs a client may declare (the run's lr-min/lr-max default): honest MTT sets learn ~0.01.
DEFAULT_LR_RANGE = (1e-5, 1.0)
FEDAVG_METRICS = ("num-examples", "bytes", "seconds")  # what a FedAvg client's reply reports


class PayloadError(DdplugError):
    """A client's upload that the server refuses; the message says why."""


@dataclass(frozen=True)
class SetSpec:
    """What a valid synthetic-set upload looks like for one dataset and ipc."""

    channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ipc: int
    encoding: str
    max_bytes: int
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE
    param: str = "pixels"  # what the clients learn and send: pixels as images, anything else as its code
    soft_labels: bool = False  # the clients learn soft labels: a code makes room for them in the budget

    @classmethod
    def for_dataset(cls, data: ImageDataset, *, ipc: int, encoding: str, max_bytes: int = 0,
                    lr_range: tuple[float, float] = DEFAULT_LR_RANGE, param: str = "pixels",
                    soft_labels: bool = False) -> SetSpec:
        """``max_bytes`` 0 allows the largest upload an honest client makes: ``ipc`` images of
        every class in ``encoding`` (or ``param``'s code of every class), with float32 soft
        labels and a learned lr."""
        spec = cls(data.in_channels, data.image_size, data.num_classes, data.mean, data.std, ipc, encoding, 0,
                   lr_range, param, soft_labels)
        pixels = data.in_channels * data.image_size[0] * data.image_size[1]
        if param == "pixels":
            images, per_class = ipc * data.num_classes * pixels * np.dtype(encoding).itemsize, ipc
        else:
            layout = spec.layout(data.num_classes)
            images, per_class = layout.stored_bytes + data.num_classes * 8, layout.decoded_per_class
        largest = images + per_class * data.num_classes ** 2 * 4 + 4
        return dataclasses.replace(spec, max_bytes=max_bytes or largest + _SLACK_BYTES)

    @property
    def max_images(self) -> int:
        """The most images an upload of every class decodes to."""
        if self.param == "pixels":
            return self.ipc * self.num_classes
        return self.layout(self.num_classes).decoded_per_class * self.num_classes

    def layout(self, classes: int) -> Layout:
        """The code of ``param`` for ``classes`` classes in the budget of ``ipc`` raw uint8 images
        each (with their soft labels, when the clients learn them)."""
        shape = (self.channels, *self.image_size)
        return fit_layout(create_param(self.param), classes, shape, self.ipc * math.prod(shape),
                          soft_labels=self.soft_labels)

    @property
    def limits(self) -> SetLimits:
        return SetLimits(pixel_range=UPLOAD_PIXEL_RANGE, lr_range=self.lr_range)


def set_to_record(synthetic: SyntheticSet, encoding: str) -> ArrayRecord:
    """``synthetic`` as an ArrayRecord: plain pixels as images encoded as ``encoding``,
    another parameterisation as its code (see the module's docstring)."""
    synthetic = synthetic.detach().to("cpu")
    labels = synthetic.labels.float() if synthetic.soft_labels else synthetic.labels.long()
    if synthetic.code is not None and synthetic.param != "pixels":
        classes = torch.tensor(synthetic.meta["classes"]) if "classes" in synthetic.meta else \
            synthetic.hard_labels.unique_consecutive()
        arrays = {f"{CODE_PREFIX}{name}": Array(tensor.numpy()) for name, tensor in stored_code(synthetic).items()}
        arrays[CLASSES_KEY] = Array(classes.long().numpy())
        if synthetic.soft_labels:
            arrays["labels"] = Array(stored_labels(labels).numpy())
    else:
        arrays = {"images": Array(encode_images(synthetic, encoding).numpy()), "labels": Array(labels.numpy())}
    if synthetic.lr is not None:
        arrays["lr"] = Array(synthetic.lr.reshape(1).float().numpy())
    return ArrayRecord(arrays)


def record_to_set(record: ArrayRecord, spec: SetSpec) -> SyntheticSet:
    """The synthetic set in a client's upload; :class:`PayloadError` if anything about it is wrong.

    The declared dtypes and shapes and the size are checked before anything is decoded.
    """
    if spec.param != "pixels":
        return _coded_set(record, spec)
    unknown = sorted(set(record) - set(SET_KEYS))
    if unknown:
        raise PayloadError(f"unexpected arrays {', '.join(unknown)}")
    if "images" not in record or "labels" not in record:
        raise PayloadError("the upload needs both images and labels")
    _check_layout(record, spec)
    size = record.count_bytes()
    if size > spec.max_bytes:
        raise PayloadError(f"{size} bytes, over the limit of {spec.max_bytes} per client")
    images, labels = _decode(record, "images"), _decode(record, "labels")
    lr = torch.from_numpy(_decode(record, "lr")).reshape(()) if "lr" in record else None
    try:
        synthetic = SyntheticSet(decode_images(torch.from_numpy(images), spec.mean, spec.std), torch.from_numpy(labels),
                                 spec.num_classes, spec.mean, spec.std, lr=lr)
        synthetic.check(spec.limits)
    except DdplugError as error:
        raise PayloadError(str(error)) from None
    counts = torch.bincount(synthetic.hard_labels, minlength=spec.num_classes)
    if counts.max() > spec.ipc:
        raise PayloadError(f"{int(counts.max())} images of class {int(counts.argmax())}, over ipc {spec.ipc}")
    return synthetic


UPLOAD_SIMILARITY_KEY = "upload-nn-similarity"
REAL_SIMILARITY_KEY = "real-nn-similarity"
ADVANTAGE_KEY = "membership-advantage"
EPSILON_KEY = "epsilon"


def leakage_to_metrics(report: LeakageReport, epsilon: float | None) -> dict[str, Any]:
    """A client's leakage report (and, under DP, the epsilon of this upload) as reply metrics."""
    metrics = {UPLOAD_SIMILARITY_KEY: report.upload_similarity.tolist(),
               REAL_SIMILARITY_KEY: report.real_similarity.tolist(), ADVANTAGE_KEY: report.membership_advantage}
    return metrics if epsilon is None else {**metrics, EPSILON_KEY: epsilon}


def leakage_from_metrics(metrics: Mapping[str, Any], *, images: int, probes: int,
                         private: bool) -> tuple[LeakageReport, float | None]:
    """The leakage report in a reply's metrics, checked: one similarity in [-1, 1] per uploaded
    image, at most ``probes`` real ones, an advantage in [0, 1], and with ``private`` a
    finite epsilon >= 0."""
    def similarities(key: str, count: int, exact: bool) -> torch.Tensor:
        values = metrics.get(key)
        if not (isinstance(values, list) and (len(values) == count if exact else len(values) <= count)
                and all(is_finite_number(v) and -1 - 1e-6 <= v <= 1 + 1e-6 for v in values)):
            amount = f"{count}" if exact else f"at most {count}"
            raise PayloadError(f"{key} must list {amount} similarities within [-1, 1]")
        return torch.tensor(values, dtype=torch.float64)

    report = LeakageReport(similarities(UPLOAD_SIMILARITY_KEY, images, True),
                           similarities(REAL_SIMILARITY_KEY, probes, False), metrics.get(ADVANTAGE_KEY))
    if not (is_finite_number(report.membership_advantage) and 0 <= report.membership_advantage <= 1):
        raise PayloadError(f"{ADVANTAGE_KEY} must be a number within [0, 1]")
    epsilon = metrics.get(EPSILON_KEY)
    if private and not (is_finite_number(epsilon) and epsilon >= 0):
        raise PayloadError(f"a private run's upload must report its {EPSILON_KEY} (a finite number >= 0)")
    return report, float(epsilon) if private else None


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coded_set(record: ArrayRecord, spec: SetSpec) -> SyntheticSet:
    """The set in an upload of ``spec.param``'s code: every array's dtype and shape held to
    the layout of the classes it says it holds, then decoded and checked."""
    storage = create_param(spec.param).storage
    allowed = {f"{CODE_PREFIX}{name}" for name in storage} | {CLASSES_KEY, "labels", "lr"}
    unknown = sorted(set(record) - allowed)
    if unknown or CLASSES_KEY not in record:
        raise PayloadError(f"a {spec.param} upload holds {', '.join(sorted(allowed - {'labels', 'lr'}))} "
                           f"(and optionally labels, lr); got {', '.join(sorted(record))}")
    size = record.count_bytes()
    if size > spec.max_bytes:
        raise PayloadError(f"{size} bytes, over the limit of {spec.max_bytes} per client")
    declared = record[CLASSES_KEY]
    if declared.dtype != "int64" or len(declared.shape) != 1 or not 1 <= declared.shape[0] <= spec.num_classes:
        raise PayloadError(f"classes are {declared.dtype} {tuple(declared.shape)}, expected int64 (k,) with "
                           f"1 <= k <= {spec.num_classes}")
    classes = torch.from_numpy(_decode(record, CLASSES_KEY))
    if not (bool((classes[1:] > classes[:-1]).all()) and 0 <= int(classes[0]) and int(classes[-1]) < spec.num_classes):
        raise PayloadError(f"classes must be distinct class ids 0..{spec.num_classes - 1} in ascending order")
    try:
        layout = spec.layout(len(classes))
    except DdplugError as error:
        raise PayloadError(f"{len(classes)} classes cannot hold a {spec.param} code: {error}") from None
    stored = {}
    for name in layout.shapes:
        key, dtype = f"{CODE_PREFIX}{name}", str(layout.stored_dtype(name)).removeprefix("torch.")
        shape = layout.stored_shape(name)
        if key not in record or record[key].dtype != dtype or tuple(record[key].shape) != shape:
            found = "nothing" if key not in record else f"{record[key].dtype} {tuple(record[key].shape)}"
            raise PayloadError(f"{key} should be {dtype} {shape} ({spec.param} for {len(classes)} classes), "
                               f"got {found}")
        stored[name] = torch.from_numpy(_decode(record, key))
    count = len(classes) * layout.decoded_per_class
    labels = classes.repeat_interleave(layout.decoded_per_class)
    if "labels" in record:
        soft = record["labels"]
        if soft.dtype != "float16" or tuple(soft.shape) != (count, spec.num_classes):
            raise PayloadError(f"labels are {soft.dtype} {tuple(soft.shape)}; a coded upload's labels are "
                               f"float16 ({count}, {spec.num_classes}) soft labels, or absent")
        labels = restored_labels(torch.from_numpy(_decode(record, "labels")))
    if "lr" in record and (record["lr"].dtype != "float32" or tuple(record["lr"].shape) != (1,)):
        raise PayloadError(f"lr is {record['lr'].dtype} {tuple(record['lr'].shape)}, expected float32 (1,)")
    lr = torch.from_numpy(_decode(record, "lr")).reshape(()) if "lr" in record else None
    try:
        code, images = decode_code(stored, spec.param, spec.mean, spec.std, (spec.channels, *spec.image_size))
        synthetic = SyntheticSet(images, labels, spec.num_classes, spec.mean, spec.std, lr=lr, meta={"ipc": spec.ipc},
                                 code=code, param=spec.param)
        synthetic.check(spec.limits)
    except DdplugError as error:
        raise PayloadError(str(error)) from None
    counts = torch.bincount(synthetic.hard_labels, minlength=spec.num_classes)
    strays = sorted(set(torch.nonzero(counts).flatten().tolist()) - set(classes.tolist()))
    if strays:
        raise PayloadError(f"soft labels put images into classes {strays}, which the upload does not declare")
    if counts.max() > layout.decoded_per_class:
        raise PayloadError(f"soft labels put {int(counts.max())} images into class {int(counts.argmax())}, over the "
                           f"{layout.decoded_per_class} a class's code decodes to")
    return synthetic


def _check_layout(record: ArrayRecord, spec: SetSpec) -> None:
    """Dtypes and shapes as the arrays declare them (:func:`_decode` holds them to it)."""
    images, labels = record["images"], record["labels"]
    expected = (spec.channels, *spec.image_size)
    if images.dtype != spec.encoding:
        raise PayloadError(f"images are {images.dtype}, expected {spec.encoding}")
    if len(images.shape) != 4 or tuple(images.shape[1:]) != expected or images.shape[0] == 0:
        raise PayloadError(f"images have shape {tuple(images.shape)}, expected (N, {', '.join(map(str, expected))}) "
                           "with N >= 1")
    hard = labels.dtype == "int64" and len(labels.shape) == 1
    soft = labels.dtype == "float32" and len(labels.shape) == 2 and labels.shape[1] == spec.num_classes
    if not (hard or soft) or labels.shape[0] != images.shape[0]:
        raise PayloadError(f"labels are {labels.dtype} {tuple(labels.shape)}; expected int64 ({images.shape[0]},) "
                           f"or float32 ({images.shape[0]}, {spec.num_classes})")
    if "lr" in record and (record["lr"].dtype != "float32" or tuple(record["lr"].shape) != (1,)):
        raise PayloadError(f"lr is {record['lr'].dtype} {tuple(record['lr'].shape)}, expected float32 (1,)")


def _decode(record: ArrayRecord, key: str) -> np.ndarray:
    """The array ``key`` of ``record``, read without pickles, after its serialized .npy header
    is held to the declared dtype and shape and its data to their exact size: a header that
    claims more would make numpy allocate that much before reading."""
    array = record[key]
    if array.stype != "numpy.ndarray":
        raise PayloadError(f"{key} is serialized as {array.stype!r}, expected numpy.ndarray")
    stream = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(stream)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f".npy format {version[0]}.{version[1]}, where numpy writes 1.0 or 2.0")
        read_header = readers[version]
        shape, fortran_order, dtype = read_header(stream, max_header_size=1024)
    except Exception as error:  # noqa: BLE001 - numpy parses the header with ast and tokenize: any failure is one refusal
        raise PayloadError(f"{key} cannot be decoded as a numpy array ({type(error).__name__})") from None
    if shape != tuple(array.shape) or str(dtype) != array.dtype or dtype.hasobject:
        raise PayloadError(f"{key} declares {array.dtype} {tuple(array.shape)} but holds {dtype} {shape}")
    size = math.prod(shape) * dtype.itemsize
    if len(array.data) - stream.tell() != size:
        raise PayloadError(f"{key} holds {len(array.data) - stream.tell()} bytes of data where {dtype} {shape} "
                           f"takes {size}")
    order = "F" if fortran_order else "C"
    return np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=stream.tell()).reshape(
        shape, order=order).copy()


def check_model_reply(content: RecordDict, reference: ArrayRecord, *, max_bytes: int, max_examples: int,
                      max_weight: float) -> None:
    """A FedAvg client's reply: one ArrayRecord ``arrays`` with the global model's array names,
    shapes and dtypes, every weight finite and at most ``max_weight`` in magnitude, and one
    MetricRecord ``metrics`` whose ``num-examples`` is a whole number in 1..``max_examples``
    (it weighs the client's update in the average)."""
    if set(content.array_records) != {"arrays"} or set(content.metric_records) != {"metrics"}:
        raise PayloadError(f"expected records arrays and metrics, got {', '.join(sorted(content)) or 'none'}")
    # Exactly the metrics every honest client sends: FedAvg averages them, and replies whose
    # metrics differ in keys or kinds would end the round (flwr's InconsistentMessageReplies).
    check_metrics(content.metric_records["metrics"], {"bytes": (0, 1e12), "seconds": (0, 1e7)},
                  elsewhere=("num-examples",), required=FEDAVG_METRICS)
    examples = content.metric_records["metrics"].get("num-examples")
    if not is_finite_number(examples) or examples != int(examples) or not 1 <= examples <= max_examples:
        raise PayloadError(f"num-examples must be a whole number from 1 to {max_examples} (the client's partition), "
                           f"got {examples!r}")
    record = content.array_records["arrays"]
    size = record.count_bytes()
    if size > max_bytes:
        raise PayloadError(f"{size} bytes, over the limit of {max_bytes} per client")
    if set(record) != set(reference):
        raise PayloadError(f"arrays {', '.join(sorted(set(record) ^ set(reference)))} differ from the global model's")
    for key, expected in reference.items():
        value = _decode(record, key)
        if value.shape != tuple(expected.shape) or str(value.dtype) != expected.dtype:
            raise PayloadError(f"{key} is {value.dtype} {value.shape}, expected {expected.dtype} {tuple(expected.shape)}")
        if value.dtype.kind == "f" and value.size:
            if not np.isfinite(value).all():
                raise PayloadError(f"{key} holds NaN or infinite values")
            largest = float(np.abs(value).max())
            if largest > max_weight:
                raise PayloadError(f"{key} holds a weight of magnitude {largest:.3g}, over the limit of {max_weight:g}")


def model_bytes_limit(reference: ArrayRecord, max_bytes: int) -> int:
    """``max_bytes``, or when 0 the size of the model itself (an honest update is exactly that)."""
    return max_bytes or reference.count_bytes() + _SLACK_BYTES


def content_bytes(content: RecordDict) -> int:
    """Bytes of every record in a message's content (arrays, configs, metrics). A config
    record holding empty strings, which flwr 1.41's ``count_bytes`` refuses, counts as the
    record without them (as ddplug sends its own)."""
    records = [*content.array_records.values(), *content.config_records.values(), *content.metric_records.values()]
    return sum(_record_bytes(record) for record in records)


def _record_bytes(record: Any) -> int:
    try:
        return record.count_bytes()
    except (ValueError, TypeError):
        if not isinstance(record, ConfigRecord):
            raise
        kept = {key: [item for item in value if item != ""] if isinstance(value, list) else value
                for key, value in record.items() if value != ""}
        return ConfigRecord(kept).count_bytes()


def check_envelope(content: RecordDict, *, arrays: tuple[str, ...] = (), metrics: tuple[str, ...] = (),
                   max_bytes: int | None = None) -> None:
    """A reply holds no records but the named array and metric records (no config record),
    and (unless None) at most ``max_bytes`` in all: what else a client sends is refused
    before it is read."""
    expected = {"array": set(arrays), "metric": set(metrics), "config": set()}
    found = {"array": set(content.array_records), "metric": set(content.metric_records),
             "config": set(content.config_records)}
    extra = [f"{kind} record {name!r}" for kind in found for name in sorted(found[kind] - expected[kind])]
    if extra:
        allowed = ", ".join([*(f"array record {name!r}" for name in arrays), *(f"metric record {name!r}" for name in metrics)])
        raise PayloadError(f"the reply holds {', '.join(extra)}; a reply holds only {allowed}")
    if max_bytes is not None:
        check_reply_size(content, max_bytes)


def check_reply_size(content: RecordDict, max_bytes: int) -> None:
    """At most ``max_bytes`` in all the reply's records."""
    size = content_bytes(content)
    if size > max_bytes:
        raise PayloadError(f"the reply holds {size} bytes, over the limit of {max_bytes} per client")


def check_metrics(metrics: Mapping[str, Any], bounds: Mapping[str, tuple[float, float]], *,
                  elsewhere: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """A reply's metrics: only keys of ``bounds`` and ``elsewhere`` (with every ``required``
    one), each of ``bounds`` a finite number within its bounds (``elsewhere``: checked where
    they are read)."""
    unknown = sorted(set(metrics) - set(bounds) - set(elsewhere))
    if unknown:
        raise PayloadError(f"unexpected metrics {', '.join(unknown)}; a reply's metrics are "
                           f"{', '.join([*bounds, *elsewhere])}")
    missing = [key for key in required if key not in metrics]
    if missing:
        raise PayloadError(f"the reply's metrics lack {', '.join(missing)}")
    for key, (low, high) in bounds.items():
        if key in metrics and not (is_finite_number(metrics[key]) and low <= metrics[key] <= high):
            raise PayloadError(f"metric {key} must be a finite number within [{low:g}, {high:g}], got {metrics[key]!r}")


def check_partition_info(info: Mapping[str, Any], *, num_classes: int, largest: int) -> str:
    """Why a node's answer to the query cannot be believed ('' when it can): a partition id,
    a size of 1..``largest`` examples, and ``num_classes`` whole class counts summing to it."""
    kinds = {"partition-id": int, "num-examples": int, "class-counts": list}
    if set(info) != set(kinds) or not all(isinstance(info[key], kind) and not isinstance(info[key], bool)
                                          for key, kind in kinds.items()):
        return "its partition info must hold exactly an int partition-id, an int num-examples and a list class-counts"
    if not 0 <= info["partition-id"] <= MAX_PARTITION_ID:
        return f"partition-id {info['partition-id']} is outside 0..{MAX_PARTITION_ID}"
    if not 1 <= info["num-examples"] <= largest:
        return f"it claims {info['num-examples']} examples, outside 1..{largest}"
    counts = info["class-counts"]
    if len(counts) != num_classes or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return f"class-counts must list {num_classes} whole numbers >= 0"
    if sum(counts) != info["num-examples"]:
        return f"class-counts sum to {sum(counts)}, not to its {info['num-examples']} examples"
    return ""


MAX_PARTITION_ID = 10**6
