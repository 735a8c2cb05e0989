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
        entry_points: an entry-point group (``ivfuse.methods``) whose entries third-party packages declare
            (``[project.entry-points."ivfuse.methods"] mine = "pkg.module:MyFusion"``); they are loaded and
            registered on the first look-up. A name already registered keeps its object (the plugin is skipped with
            a warning), and a plugin that fails to import is a one-line warning, never an error of ivfuse.
        on_plugin: ``(name, obj) -> obj`` applied to each plugin before it is registered.
    """

    def __init__(
        self, what: str, entry_points: str | None = None, on_plugin: Callable[[str, T], T] | None = None
    ) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._group, self._on_plugin, self._plugins_loaded = entry_points, on_plugin, entry_points is None
        self.plugins: dict[str, str] = {}  # name -> "distribution (module:attr)" of the registered plugins

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        from .errors import warn

        for ep in sorted(entry_points(group=self._group), key=lambda e: e.name):
            key = ep.name.lower()
            dist = ep.dist.name if ep.dist is not None else "?"
            if key in self._items:
                warn(f"{self._group} plugin '{ep.name}' of {dist} is skipped: ivfuse already has a {self.what} '{key}'")
                continue
            try:
                obj = ep.load()
                if self._on_plugin is not None:
                    obj = self._on_plugin(key, obj)
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break ivfuse
                warn(f"{self._group} plugin '{ep.name}' ({ep.value}) of {dist} failed to load: {type(e).__name__}: {e}")
                continue
            self._items[key] = obj
            self.plugins[key] = f"{dist} ({ep.value})"

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
        self._load_plugins()
        key = str(name).lower()
        if key not in self._items:
            raise suggest(str(name), self._items, self.what)
        return self._items[key]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._items)
