"""Small files that would cost gigabytes are refused before anything that size is allocated."""

from __future__ import annotations

import json
import resource

import pytest
import torch
from safetensors.torch import save_file

from ddplug import memory
from ddplug.errors import DdplugError
from ddplug.sets import load_set
from ddplug.sets.param import _zigzag


def _coded_file(path, param: str, shape: tuple[int, int, int], tensors: dict[str, torch.Tensor], classes: int = 10):
    metadata = {"format": "ddplug.synthetic-set", "format_version": "2", "num_classes": str(classes),
                "mean": json.dumps([0.5] * shape[0]), "std": json.dumps([0.25] * shape[0]), "meta": "{}",
                "param": param, "image_shape": json.dumps(list(shape))}
    save_file({f"code.{name}": tensor for name, tensor in tensors.items()}, str(path), metadata=metadata)
    return path


def test_a_small_code_declaring_a_huge_decoded_set_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * 2**20)  # a machine with 100 MiB free
    # 98 KB of 1-bit mosaics of 7x7 tiles: 1 000 stored images, 49 000 decoded ones (154 MB as float32).
    path = _coded_file(tmp_path / "bomb.safetensors", "multi:factor=7,bits=1", (1, 28, 28),
                       {"images": torch.zeros(1000 * 28 * 28 // 8, dtype=torch.uint8)})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DdplugError, match=r"would decode to 49000 images of 1x28x28 \(0\.143 GiB as float32\), "
                                          r"over the 0\.0244 GiB"):
        load_set(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # under 50 MB more (KiB units)


def test_a_set_of_what_the_machine_can_hold_still_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * 2**20)
    path = _coded_file(tmp_path / "fine.safetensors", "multi:factor=7,bits=1", (1, 28, 28),
                       {"images": torch.zeros(10 * 28 * 28 // 8, dtype=torch.uint8)})
    assert len(load_set(path)) == 490


@pytest.mark.parametrize(("shape", "message"), [
    ((1, 4096, 4096), r"image_shape \(1, 4096, 4096\) is larger than ddplug handles"),
    ((3, 0, 8), "positive whole sizes"),
    ((16, 1024, 1024), "larger than ddplug handles"),
])
def test_an_absurd_image_shape_is_refused(tmp_path, shape, message):
    path = _coded_file(tmp_path / "dct.safetensors", "dct:keep=1e-9", shape,
                       {"coefficients": torch.zeros(10, shape[0], 1, dtype=torch.float16)})
    with pytest.raises(DdplugError, match=message):
        load_set(path)


def test_a_code_missing_its_tensors_is_refused(tmp_path):
    path = _coded_file(tmp_path / "empty.safetensors", "factor:bases=2", (1, 8, 8),
                       {"bases": torch.zeros(2, 1, 8, 8, dtype=torch.float16)})
    with pytest.raises(DdplugError, match="not a factor:bases=2 code"):
        load_set(path)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (4, 7), (28, 28), (9, 3)])
def test_the_zigzag_order_is_by_frequency_then_row(height, width):
    expected = [u * width + v for _, u, v in sorted((u + v, u, v) for u in range(height) for v in range(width))]
    assert _zigzag(height, width).tolist() == expected


def test_a_code_stored_at_another_dtype_than_its_parameterisation_is_refused(tmp_path):
    path = _coded_file(tmp_path / "int64.safetensors", "multi:factor=2", (1, 8, 8),
                       {"images": torch.full((10, 1, 8, 8), 10**12, dtype=torch.int64)})
    with pytest.raises(DdplugError, match="its code.images is int64, where multi:factor=2 stores uint8"):
        load_set(path)
