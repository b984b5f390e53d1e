"""A small name -> object registry in the style of timm's ``@register_model``.

Discovery is by explicit import (the package imports its own modules); third-party packages add
entries through an entry-point group, loaded the first time the registry is queried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import types
from importlib import metadata
from typing import Generic, TypeVar

from dmlbench.core.errors import DMLBenchError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered (by {self._items[name]!r})")
        self._items[name] = obj

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue
            # Loading a module registers its methods through the decorator; an entry point that
            # names a class directly is registered under the entry point's name.
            obj = ep.load()
            if ep.name not in self._items and not isinstance(obj, types.ModuleType):
                self.add(ep.name, obj)

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._items)

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self._items)
            raise DMLBenchError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
