"""Crash-safe file writes: an output is either the old complete file or the new one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    The rename is atomic on POSIX, so a crash (or Ctrl-C) mid-write never leaves a
    truncated file where a good one was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """Atomically write ``payload`` as indented JSON."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2) + "\n"))
