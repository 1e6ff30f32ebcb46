"""Crash-safe file writes: an output is either the old complete file or the new one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddplug.errors import DdplugError


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from collaborators
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def writable_folder(path: str | Path, files: tuple[str, ...] = ()) -> Path:
    """``path``, once it is clear that this process can make it (or write in it) and write
    ``files`` there: one clear :class:`DdplugError` if not, so a run fails before its work
    rather than at its first save. Nothing is left behind: a run refused later for other
    reasons leaves no folder."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DdplugError(f"output folder {path} is a symlink to nothing ({os.readlink(path)}): choose another --out")
    if path.exists() and not path.is_dir():
        raise DdplugError(f"output folder {path} is an existing file: choose another --out")
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise DdplugError(f"cannot write in output folder {path} ({existing} is a file): choose another --out")
    try:  # access() says yes to root everywhere; only a real file says whether writing works
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise DdplugError(f"cannot write in output folder {path} ({existing}: {error.strerror}): choose another --out"
                          ) from None
    for name in files:
        if (path / name).is_dir():
            raise DdplugError(f"{path / name} is a folder where the run writes a file: move it or choose another --out")
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """Atomically write ``payload`` as indented JSON."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2) + "\n"))


def path_part(spec: str) -> str:
    """A spec such as ``multi:factor=2,bits=4`` as part of a file or folder name.

    Examples:
        >>> path_part("multi:factor=2,bits=4")
        'multi-factor2-bits4'
    """
    return spec.replace(":", "-").replace("=", "").replace(",", "-")
