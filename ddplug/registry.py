"""Names to things, with one rule for every registry (methods, models, parameterisations):
a name is registered once, and an unknown name is one error that lists the known ones."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from ddplug.errors import DdplugError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping of names, in registration order, filled by :meth:`add`.

    Examples:
        >>> kinds = Registry("colour")
        >>> kinds.add("red", 1)
        >>> kinds.lookup("red"), list(kinds)
        (1, ['red'])
        >>> kinds.add("red", 2)
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: a colour named 'red' is already registered; pick another name
        >>> kinds.lookup("blue")
        Traceback (most recent call last):
        ...
        ddplug.errors.DdplugError: unknown colour 'blue'; choose one of red
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        """Register ``item`` under ``name``; a name already taken is an error."""
        self.check_free(name)
        self._items[name] = item

    def remove(self, name: str) -> None:
        """Forget ``name`` (nothing if it is not registered): for entries that live only as
        long as an object they stand for."""
        self._items.pop(name, None)

    def check_free(self, name: str) -> None:
        """Raise unless ``name`` can still be registered."""
        if name in self._items:
            raise DdplugError(f"a {self.kind} named {name!r} is already registered; pick another name")

    def copy(self) -> Registry[T]:
        """An independent registry holding the same items (to register into without touching this one)."""
        copied: Registry[T] = Registry(self.kind)
        copied._items = dict(self._items)
        return copied

    def lookup(self, name: str) -> T:
        """The item named ``name``, or one error listing the names there are."""
        if name not in self._items:
            raise DdplugError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._items)}")
        return self._items[name]

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
