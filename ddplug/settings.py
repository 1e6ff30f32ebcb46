"""Settings written as text (``--set dm.iterations=200``, run configs, flags) converted to
the types of the dataclass fields they set: one rule for every setting of ddplug."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from ddplug.errors import DdplugError


def parse_spec(spec: str, what: str, example: str) -> tuple[str, dict[str, str]]:
    """Split a ``name:key=value,...`` spec (a model, a parameterisation) into its name and
    options, values as written; one rule for all: a name, ``key=value`` items, no key twice.

    Examples:
        >>> parse_spec("multi:factor=2, bits=4", "parameterisation", "multi:factor=2")
        ('multi', {'factor': '2', 'bits': '4'})
        >>> parse_spec("convnet:width=8,width=16", "model spec", "convnet:width=64")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: model spec 'convnet:width=8,width=16': option 'width' is given twice
    """
    name, _, option_text = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise DdplugError(f"{what} {spec!r} has no name; write e.g. {example!r}")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in option_text.split(","))):
        key, equals, value = (text.strip() for text in item.partition("="))
        if not equals or not key or not value:
            raise DdplugError(f"{what} {spec!r}: option {item!r} should look like KEY=VALUE (e.g. {example})")
        if key in options:
            raise DdplugError(f"{what} {spec!r}: option {key!r} is given twice")
        options[key] = value
    return name, options


def kebab(name: str) -> str:
    """A setting's name as a flag or run-config key: ``lr_images`` -> ``lr-images``."""
    return name.replace("_", "-")


def add_setting_flags(group: Any, helps: dict[str, str], dest_prefix: str = "") -> None:
    """One ``--kebab-name VALUE`` flag per setting of ``helps`` (name -> help) on an argparse
    group, default None (the setting's own default); :func:`given_settings` reads them back."""
    for name, help_text in helps.items():
        group.add_argument(f"--{kebab(name)}", dest=dest_prefix + name, default=None, metavar="VALUE", help=help_text)


def given_settings(args: Any, names: Any, dest_prefix: str = "") -> dict[str, Any]:
    """The settings among ``names`` whose flags (:func:`add_setting_flags`) were given."""
    return {name: getattr(args, dest_prefix + name) for name in names
            if getattr(args, dest_prefix + name, None) is not None}


def fields_from_mapping(cls: type, values: Any, what: str) -> dict[str, Any]:
    """``{"kebab-key": value}`` (a run config, a message's record) as typed values of
    dataclass ``cls``'s fields: an unknown key, or a value of another type than its field's
    (TOML's ``1.5`` for an int, a bool for a number), is one error.

    Examples:
        >>> from ddplug.evaluation import EvalProtocol
        >>> fields_from_mapping(EvalProtocol, {"epochs": 50, "num-models": "2"}, "evaluation setting")
        {'epochs': 50, 'num_models': 2}
        >>> fields_from_mapping(EvalProtocol, {"epochs": 1.5}, "evaluation setting")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: setting epochs expects int, got 1.5
    """
    kinds = typing.get_type_hints(cls)
    names = sorted(field.name for field in dataclasses.fields(cls))
    typed = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in names:
            raise DdplugError(f"unknown {what} {key!r}; settings: {', '.join(map(kebab, names))}")
        value = convert_field(cls, name, value)
        kind = [k for k in typing.get_args(kinds[name]) or (kinds[name],) if k is not type(None)][0]
        if value is None and type(None) in typing.get_args(kinds[name]):
            typed[name] = value
            continue
        allowed = (int, float) if kind is float else (kind,)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, allowed):
            raise DdplugError(f"setting {key} expects {kind.__name__}, got {value!r}")
        typed[name] = value
    return typed


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["eval.epochs=100", ...]`` (``--set`` values) as ``{"eval.epochs": "100", ...}``.

    Examples:
        >>> parse_assignments(["eval.epochs=100", "dm.iterations = 50"])
        {'eval.epochs': '100', 'dm.iterations': '50'}
        >>> parse_assignments(["eval.epochs"])
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: --set expects KEY=VALUE (e.g. eval.epochs=100 or dm.iterations=200), got 'eval.epochs'
    """
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
    ``str`` or one of those ``| None`` (where ``none`` means None).

    Examples:
        >>> from ddplug.methods import DMConfig
        >>> convert_field(DMConfig, "iterations", "250"), convert_field(DMConfig, "lr_images", "0.5")
        (250, 0.5)
    """
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
