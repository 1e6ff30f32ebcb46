"""The allocator tuning: applied by the entry points, never by an import, and harmless to results.

Each case runs in a fresh Python process and probes glibc directly: a 64 MiB block (the
size of a step's buffers) is malloc'ed, touched and freed; untuned glibc serves it with
mmap and returns it to the OS on free (resident memory drops), tuned glibc keeps it in the
heap.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import write_fake_fashion_mnist

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"),
]

PROBE = textwrap.dedent("""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def resident():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    size = SIZE
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    before = resident()
    libc.free(block)
    print("KEPT" if before - resident() < size // 2 else "RETURNED")
""")


def probe_after(setup: str, tuning: str | None = None, size: int = 64 << 20) -> str:
    """KEPT or RETURNED: what a fresh process does with a freed block of ``size`` bytes after ``setup``."""
    env = {key: value for key, value in os.environ.items() if key != "DDPLUG_MALLOC_TUNING"}
    if tuning is not None:
        env["DDPLUG_MALLOC_TUNING"] = tuning
    script = textwrap.dedent(setup) + PROBE.replace("SIZE", str(size))
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                               cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip().splitlines()[-1]


def test_a_bare_import_leaves_the_allocator_alone() -> None:
    assert probe_after("import ddplug, ddplug.cli") == "RETURNED"


def test_the_ddplug_command_tunes_its_process_and_the_variable_turns_it_off() -> None:
    run_list = """
        import contextlib, io
        from ddplug.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["list"]) == 0
    """
    assert probe_after(run_list) == "KEPT"
    assert probe_after(run_list, tuning="0") == "RETURNED"


def test_blocks_larger_than_a_step_buffer_still_go_back_to_the_os() -> None:
    # Whole datasets and one-off arrays: kept in the heap they strand memory (issue 13's peak).
    tuned = "from ddplug import tune_allocator; assert tune_allocator().applied"
    assert probe_after(tuned, size=100 << 20) == "KEPT"
    assert probe_after(tuned, size=256 << 20) == "RETURNED"


def test_version_and_list_say_whether_it_is_on() -> None:
    def version(tuning: str | None) -> str:
        env = {key: value for key, value in os.environ.items() if key != "DDPLUG_MALLOC_TUNING"}
        env.update({} if tuning is None else {"DDPLUG_MALLOC_TUNING": tuning})
        return subprocess.run([sys.executable, "-m", "ddplug.cli", "--version"], capture_output=True, text=True,
                              env=env, timeout=300).stdout

    assert "allocator tuning on" in version(None)
    assert "allocator tuning off (DDPLUG_MALLOC_TUNING=0)" in version("0")


def test_a_flower_client_process_tunes_its_allocator() -> None:
    # The ClientApp's lifespan runs around every message, before the handler is chosen.
    handle_message = """
        import time
        from flwr.app import Context, Message, RecordDict, RecordDict as State
        from flwr.common import Metadata
        from ddplug_flower.client import app
        metadata = Metadata(run_id=1, message_id="", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="",
                            created_at=time.time(), ttl=60.0, message_type="query.nothing")
        message = Message(content=RecordDict(), metadata=metadata)
        try:
            app(message, Context(run_id=1, node_id=1, node_config={}, state=State(), run_config={}))
        except ValueError as error:
            assert "No query function registered" in str(error)
    """
    assert probe_after("import ddplug_flower.client") == "RETURNED"
    assert probe_after(handle_message) == "KEPT"


def test_results_are_bit_identical_with_and_without_it(tmp_path: Path) -> None:
    data_root = write_fake_fashion_mnist(tmp_path / "data")
    sets = {}
    for tuning in ("1", "0"):
        out = tmp_path / f"run-{tuning}"
        command = [sys.executable, "-m", "ddplug.cli", "distill", "--ipc", "2", "--iterations", "5", "--model",
                   "convnet:width=8,depth=2", "--no-eval", "--quiet", "--device", "cpu", "--out", str(out)]
        env = {**os.environ, "DDPLUG_MALLOC_TUNING": tuning, "DDPLUG_DATA": str(data_root)}
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert completed.returncode == 0, completed.stderr
        sets[tuning] = load_file(out / "synthetic.safetensors")
    assert sets["1"].keys() == sets["0"].keys() == {"code.images"}  # uint8 pixels, labels implied
    for key in sets["1"]:
        assert sets["1"][key].equal(sets["0"][key])
