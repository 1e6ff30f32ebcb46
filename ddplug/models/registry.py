"""Model registry: names and option specs ("convnet:width=32,norm=batch") to seeded models."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ddplug.errors import DdplugError
from ddplug.registry import Registry
from ddplug.settings import parse_spec

ModelFactory = Callable[..., nn.Module]

_RESERVED_CHARACTERS = ":,= "


@dataclass(frozen=True)
class _Entry:
    factory: ModelFactory
    defaults: dict[str, Any]


_REGISTRY: Registry[_Entry] = Registry("model")


def register_model(name: str, **defaults: Any) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(in_channels, num_classes, image_size, *, **options)`` under ``name``.

    The factory's keyword-only parameters are the model's options; ``defaults`` overrides
    some of their defaults, so one factory can be registered under several names
    (e.g. ``"convnet-bn"`` = ``"convnet"`` with ``norm="batch"``). Decorators stack.

    Args:
        name: the model's name, without ``:``, ``,``, ``=`` or spaces, not yet registered.
        **defaults: option defaults of this name.

    Returns:
        The decorator, which registers the factory and returns it unchanged.

    Raises:
        DdplugError: an invalid or taken name, or a default the factory has no option for.

    Examples:
        >>> register_model("wide:resnet")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: invalid model name 'wide:resnet': use a non-empty name without ':', ',', '=' or spaces
        >>> register_model("convnet")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: ...

    A new model, from a plain factory::

        @register_model("my-mlp", hidden=256)
        def my_mlp(in_channels, num_classes, image_size, *, hidden=128):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))
    """
    if not name or any(char in name for char in _RESERVED_CHARACTERS):
        raise DdplugError(f"invalid model name {name!r}: use a non-empty name without ':', ',', '=' or spaces")
    _REGISTRY.check_free(name)  # now, not only when the decorator is applied

    def decorator(factory: ModelFactory) -> ModelFactory:
        options = _factory_defaults(factory)
        unknown = sorted(set(defaults) - set(options))
        if unknown:
            raise DdplugError(f"cannot register {name!r}: {factory.__name__} has no option(s) {', '.join(unknown)}")
        _REGISTRY.add(name, _Entry(factory, {**options, **defaults}))
        return factory

    return decorator


def unregister_model(name: str) -> None:
    """Forget the model called ``name`` (nothing if there is none): a template's spec ends
    with its network."""
    _REGISTRY.remove(name)


def _factory_defaults(factory: ModelFactory) -> dict[str, Any]:
    """The factory's keyword-only options and their defaults, in declaration order."""
    options = {}
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{factory.__name__}: option {parameter.name!r} needs a default value")
        options[parameter.name] = parameter.default
    return options


def available_models() -> list[str]:
    """The model names :func:`create_model` accepts.

    Returns:
        The registered names, sorted.

    Examples:
        >>> "convnet" in available_models() and "mlp" in available_models()
        True
    """
    return sorted(_REGISTRY)


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,..."`` into the name and its options (values as int, float or str)."""
    name, options = parse_spec(spec, "model spec", "convnet:width=64")
    return name, {key: _parse_value(value) for key, value in options.items()}


def _parse_value(text: str) -> int | float | str:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def format_model_spec(name: str, options: dict[str, Any]) -> str:
    """The inverse of :func:`parse_model_spec`."""
    if not options:
        return name
    return name + ":" + ",".join(f"{key}={value}" for key, value in options.items())


def create_model(
    spec: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    seed: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build the model named by ``spec``; keyword ``options`` override those in the spec.

    With ``seed`` the initial weights depend only on the seed (the global RNG is left as
    it was); with ``seed=None`` they come from the global RNG. The model is built on the
    CPU and records its full spec (every option, defaults included) as ``model.spec``.

    Args:
        spec: ``name`` or ``name:key=value,...`` (:func:`available_models` lists the names).
        in_channels: the images' channels.
        num_classes: the outputs.
        image_size: the images' (height, width).
        seed: the initial weights' seed; None for the global RNG.
        **options: the model's options, over the spec's.

    Returns:
        The model, in training mode, on the CPU, with ``.spec``.

    Raises:
        DdplugError: an unknown name or option.

    Examples:
        >>> import torch
        >>> from ddplug.models import create_model
        >>> model = create_model("convnet:width=8,depth=2", in_channels=1, num_classes=10, image_size=(8, 8), seed=0)
        >>> model(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
        >>> model.spec
        'convnet:depth=2,width=8,norm=instance,act=relu,pool=avg'
    """
    name, spec_options = parse_model_spec(spec)
    entry = _lookup(name)
    merged = {**spec_options, **options}
    _reject_unknown_options(name, merged, entry.defaults)
    resolved = {**entry.defaults, **merged}
    size = _check_image_size(image_size)
    check_int("in_channels", in_channels)
    check_int("num_classes", num_classes)
    full_spec = format_model_spec(name, resolved)
    try:
        model = _construct(entry.factory, seed, in_channels, num_classes, size, resolved)
    except DdplugError as error:
        raise DdplugError(f"cannot build model {full_spec!r}: {error}") from None
    model.spec = full_spec
    return model


def check_model_spec(spec: str) -> None:
    """Raise :class:`DdplugError` unless ``spec`` names a registered model with options it has
    (the checks :func:`create_model` makes before it needs the data's shape)."""
    if not isinstance(spec, str):
        raise DdplugError(f"a model spec is a string such as 'convnet:width=32', got {type(spec).__name__}")
    name, options = parse_model_spec(spec)
    _reject_unknown_options(name, options, _lookup(name).defaults)


def _lookup(name: str) -> _Entry:
    return _REGISTRY.lookup(name)


def _reject_unknown_options(name: str, options: dict[str, Any], known: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = ", ".join(known) or "(none)"
        raise DdplugError(f"model {name!r} has no option(s) {', '.join(unknown)}; valid options: {valid}")


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or not all(_is_int(side) and side >= 1 for side in image_size):
        raise DdplugError(f"image_size must be (height, width) with positive ints, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _construct(
    factory: ModelFactory,
    seed: int | None,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    options: dict[str, Any],
) -> nn.Module:
    if seed is None:
        return factory(in_channels, num_classes, image_size, **options)
    check_int("seed", seed, minimum=0)
    # Parameters are initialised on the CPU, so only the CPU generator is forked and
    # reseeded: torch.manual_seed would also reseed (and so disturb) every CUDA generator.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return factory(in_channels, num_classes, image_size, **options)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(option: str, value: object, minimum: int = 1) -> None:
    """Raise :class:`DdplugError` unless ``value`` is an int ``>= minimum``."""
    if not _is_int(value) or value < minimum:
        raise DdplugError(f"{option} must be an integer >= {minimum}, got {value!r}")


def check_choice(option: str, value: object, choices: Iterable[str]) -> None:
    """Raise :class:`DdplugError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise DdplugError(f"invalid {option} {value!r}; valid values: {', '.join(choices)}")
