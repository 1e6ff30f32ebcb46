"""Keep freed memory in the process: glibc's allocator tuned for training loops.

Every training or matching step allocates and frees activation buffers of tens of MB. By
default glibc serves blocks above its mmap threshold with a fresh ``mmap`` and returns
them to the OS on ``free`` (and trims the heap top above its trim threshold), so each step
page-faults its buffers in again: measured here, 40 % of a ddplug process's CPU time was
system time. Raising the thresholds keeps those pages in the heap for the next step; peak
memory barely moves because the next step needs the same sizes.

Importing ddplug changes nothing: the entry points (the ``ddplug`` command, the Avalanche
runner, the Flower ClientApp and ServerApp, the benchmarks, the test suite) call
:func:`tune_allocator`, and a library user may call it too. ``DDPLUG_MALLOC_TUNING=0``
turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

ENV_VAR = "DDPLUG_MALLOC_TUNING"

# mallopt(3) parameter numbers (malloc.h); values are C ints, so at most 2 GiB - 1.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 128 MiB (a step's activation buffers on the cpu presets: 61 MiB for DM's
# 640 real images at width 32) come from the heap and stay there when freed, and the heap's
# free top is returned only past 1 GiB, above a step's ~300 MB of buffers, so no step
# page-faults them in again. Larger blocks (whole datasets, one-off arrays) are mapped and
# returned when freed: kept in the heap, they left holes the steps' buffers could not fill
# (peak memory +10 % over the untuned one with a 2 GiB mmap threshold). Measured with
# simulations/allocator_speed.py. A step's blocks above the threshold (FRePo's first layer on
# 1 580 images: 198 MiB) are faulted in every step; that costs system time, not wall time:
# keeping them (1 GiB threshold, no trimming) left a 40-step probe as slow, its peak RSS 20 %
# higher (docs/results.md).
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 128 * 2**20, 2**30
SETTINGS = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


@dataclass(frozen=True)
class AllocatorTuning:
    """Whether this process's allocator is tuned, and if not, why."""

    applied: bool
    reason: str

    def __str__(self) -> str:
        return f"{'on' if self.applied else 'off'} ({self.reason})"


_state: AllocatorTuning | None = None


def tune_allocator() -> AllocatorTuning:
    """Raise glibc's mmap, trim and top-pad thresholds for this process, once.

    Idempotent; a no-op (with the reason) when ``DDPLUG_MALLOC_TUNING=0`` or when the C
    library is not glibc. Results are bit-identical either way: only where freed memory
    goes changes.

    Returns:
        What was done: whether the thresholds were set, and why not when they were not.
    """
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "off", "false", "no"):
        _state = AllocatorTuning(False, f"{ENV_VAR}={os.environ[ENV_VAR]}")
        return _state
    libc = _glibc()
    if libc is None:
        _state = AllocatorTuning(False, "the C library is not glibc")
        return _state
    failed = [parameter for parameter, value in SETTINGS if libc.mallopt(parameter, value) != 1]
    if failed:
        _state = AllocatorTuning(False, f"glibc refused mallopt parameters {failed}")
    else:
        _state = AllocatorTuning(True, f"glibc mmap threshold {_MMAP_THRESHOLD >> 20} MiB, trim threshold "
                                       f"{_TRIM_THRESHOLD >> 30} GiB; {ENV_VAR}=0 turns it off")
    return _state


def allocator_tuning() -> AllocatorTuning:
    """This process's state, without changing it."""
    return _state or AllocatorTuning(False, "tune_allocator() not called in this process")


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it (musl, macOS do not)
    except (OSError, AttributeError, TypeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
