"""A small name -> factory registry with "did you mean" suggestions (shared by models, metrics, datasets)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import suggest

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps lower-case names to objects; used through a ``register`` decorator.

    Args:
        what: singular noun used in error messages ("method", "metric", "dataset").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = (name or obj.__name__).lower()
            if key in self._items:
                raise ValueError(f"{self.what} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._items:
            raise suggest(str(name), self._items, self.what)
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
