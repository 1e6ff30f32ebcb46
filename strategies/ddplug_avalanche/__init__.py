"""Avalanche adapter: a rehearsal memory of condensed samples, and the ``ddplug cl`` runner.

``Condensation`` (how each experience is condensed), ``CondensedBuffer``,
``CondensedReplayPlugin`` and ``CondensedReplay`` live in
:mod:`ddplug_avalanche.buffer`; they load on first use, so registering ``ddplug cl`` does not
import Avalanche (about 7 s).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Condensation", "CondensationCost", "CondensedBuffer", "CondensedReplay", "CondensedReplayPlugin"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ddplug_avalanche import buffer

        return getattr(buffer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
