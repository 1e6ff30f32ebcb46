"""Settings written as text (``--set dm.iterations=200``, run configs, flags) converted to
the types of the dataclass fields they set: one rule for every setting of ddplug."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from ddplug.errors import DdplugError


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["eval.epochs=100", ...]`` (``--set`` values) as ``{"eval.epochs": "100", ...}``."""
    assignments = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DdplugError(f"--set expects KEY=VALUE (e.g. eval.epochs=100 or dm.iterations=200), got {item!r}")
        assignments[key.strip()] = value.strip()
    return assignments


def convert_field(cls: type, name: str, value: Any) -> Any:
    """``value`` converted to the type of dataclass field ``cls.name`` (strings from a CLI).

    The type comes from the field's resolved type hint: ``int``, ``float``, ``bool``,
    ``str`` or one of those ``| None`` (where ``none`` means None)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    if name not in fields:
        raise DdplugError(f"{cls.__name__} has no setting {name!r}; settings: {', '.join(sorted(fields))}")
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(cls)[name]
    kinds = [kind for kind in typing.get_args(hint) or (hint,) if kind is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and value.lower() == "none":
        return None
    kind = kinds[0]
    try:
        if kind is bool:
            if value.lower() not in _BOOLEANS:
                raise ValueError(value)
            return _BOOLEANS[value.lower()]
        converted = kind(value)
        if kind is float and not math.isfinite(converted):
            raise DdplugError(f"setting {name} must be a finite number, got {value!r}")
        return converted
    except ValueError:
        raise DdplugError(f"setting {name} expects {kind.__name__}{' or none' if optional else ''}, "
                          f"got {value!r}") from None


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
