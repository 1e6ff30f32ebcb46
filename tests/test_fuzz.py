"""Random mutations of valid set files and uploads (bit flips, truncations, header and
metadata edits): each ends in a clean refusal (DdplugError) or a set that can be trained on,
within a memory bound."""

from __future__ import annotations

import json
import random
import resource
import struct
from pathlib import Path

import pytest
import torch

from ddplug.errors import DdplugError
from ddplug.sets import SyntheticSet, load_set, save_set
from ddplug.sets.param import create_param

MEMORY_BOUND_KB = 400 * 1024  # the whole run of mutations may add at most this to the peak RSS
ODD_VALUES = [None, True, -1, 0, 10**12, 1e308, -1e-300, "", "abc", "[1, 2]", [], [1], {"a": 1}, "NaN", 3.5]


def _valid_sets() -> list[SyntheticSet]:
    generator = torch.Generator().manual_seed(0)
    mean, std = (0.5,), (0.25,)
    pixels = SyntheticSet(torch.randn(6, 1, 8, 8, generator=generator).clamp(-2, 2), torch.tensor([0, 0, 1, 1, 2, 2]),
                          3, mean, std, lr=torch.tensor(0.01), meta={"method": "dm", "dataset": "fake", "ipc": 2})
    sets = [pixels]
    for spec in ("multi:factor=2,bits=4", "dct:keep=0.5"):
        param = create_param(spec)
        layout = param.layout(3, (1, 8, 8), 2 * 64)
        code = {name: torch.rand(shape, generator=generator) for name, shape in layout.shapes.items()}
        images = param.decode(code, (1, 8, 8))
        labels = torch.arange(3).repeat_interleave(layout.decoded_per_class)
        sets.append(SyntheticSet(images, labels, 3, mean, std, meta={"method": "dm", "ipc": 2}, code=code,
                                 param=spec))
    return sets


def _split(blob: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def _join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _mutate(blob: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(["flip", "flip", "truncate", "metadata", "tensor", "extend"])
    if kind == "flip":
        data = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "truncate":
        return blob[:rng.randrange(len(blob))]
    if kind == "extend":
        return blob + bytes(rng.randrange(1, 2000))
    header, data = _split(blob)
    if kind == "metadata":
        metadata = header["__metadata__"]
        key = rng.choice(sorted(metadata))
        if key == "meta" and rng.random() < 0.7:  # an edit inside the JSON of the set's provenance
            meta = json.loads(metadata["meta"])
            meta[rng.choice(["method", "dataset", "ipc", "zca_epsilon", "iterations", "seed", "extra"])] = \
                rng.choice(ODD_VALUES)
            metadata["meta"] = json.dumps(meta)
        else:
            value = rng.choice(ODD_VALUES + ["[1, 4096, 4096]", "[64, 64, 64]", "multi:factor=7,bits=1",
                                             "dct:keep=1e-9", "factor:bases=1000"])
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
        return _join(header, data)
    name = rng.choice([key for key in header if key != "__metadata__"])
    entry = header[name]
    field = rng.choice(["shape", "dtype", "data_offsets"])
    if field == "shape":
        entry["shape"] = [rng.choice([0, 1, 3, 10**6, 2**40]) for _ in entry["shape"]] or [2**40]
    elif field == "dtype":
        entry["dtype"] = rng.choice(["F64", "I64", "U8", "F16", "BOOL", "I32"])
    else:
        entry["data_offsets"] = [rng.randrange(2000), rng.randrange(2000, 2**31)]
    return _join(header, data)


def _max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_mutated_set_files_are_refused_or_load_as_valid_sets(tmp_path: Path) -> None:
    rng = random.Random(0)
    originals = [save_set(synthetic, tmp_path / f"valid-{index}.safetensors").read_bytes()
                 for index, synthetic in enumerate(_valid_sets())]
    before = _max_rss_kb()
    outcomes = {"refused": 0, "loaded": 0}
    for case in range(300):
        path = tmp_path / "mutant.safetensors"
        path.write_bytes(_mutate(rng.choice(originals), rng))
        try:
            synthetic = load_set(path)
        except DdplugError as error:
            assert "\n" not in str(error), f"case {case}: {error}"
            outcomes["refused"] += 1
            continue
        synthetic.check()  # what loaded can be trained on
        assert torch.isfinite(synthetic.images).all()
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 10, outcomes
    assert _max_rss_kb() - before < MEMORY_BOUND_KB


def test_mutated_uploads_are_refused_or_decode_as_valid_sets() -> None:
    pytest.importorskip("flwr")
    from flwr.app import Array, ArrayRecord

    from ddplug_flower import PayloadError, SetSpec, record_to_set, set_to_record

    class Data:
        in_channels, image_size, num_classes, mean, std = 1, (8, 8), 3, (0.5,), (0.25,)

    rng = random.Random(1)
    uploads = []
    for synthetic in _valid_sets():
        encoding = "float32" if synthetic.code is None else "uint8"
        spec = SetSpec.for_dataset(Data, ipc=2, encoding=encoding, param=synthetic.param)
        uploads.append((set_to_record(synthetic, encoding), spec))
    before = _max_rss_kb()
    outcomes = {"refused": 0, "decoded": 0}
    for case in range(300):
        record, spec = rng.choice(uploads)
        arrays = {key: record[key] for key in record}
        key = rng.choice(sorted(arrays))
        array = arrays[key]
        data = bytearray(array.data)
        kind = rng.choice(["flip", "truncate", "shape", "dtype", "extend"])
        shape, dtype = list(array.shape), array.dtype
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            data = data[:rng.randrange(len(data))]
        elif kind == "extend":
            data += bytes(rng.randrange(1, 500))
        elif kind == "shape":
            shape = [rng.choice([0, 1, 2, 7, 10**9]) for _ in shape] or [10**9]
        else:
            dtype = rng.choice(["float64", "int64", "uint8", "float16", "bool"])
        arrays[key] = Array(dtype=dtype, shape=tuple(shape), stype=array.stype, data=bytes(data))
        try:
            synthetic = record_to_set(ArrayRecord(arrays), spec)
        except PayloadError:
            outcomes["refused"] += 1
            continue
        synthetic.check(spec.limits)
        outcomes["decoded"] += 1
    assert outcomes["refused"] > 100 and outcomes["decoded"] > 5, outcomes
    assert _max_rss_kb() - before < MEMORY_BOUND_KB
