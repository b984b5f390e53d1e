"""A small name -> object registry in the style of timm's ``@register_model``, and plugin loading.

Discovery is by explicit import (the package imports its own modules); third-party packages add
entries through an entry-point group, loaded the first time the registry is queried, and a
user's own module (``--plugin my_loss.py``) through :func:`load_plugin`, whose decorators
(``@register_method``, ``@register_dataset``, ``@register_metric``, ``@register_encoder``,
``@register_executor``) fill the registries as it is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Generic, TypeVar

from dmlbench.core.errors import DMLBenchError

T = TypeVar("T")

# The plugins this process imported (files by absolute path): executors import them again in each
# worker process, so that a plugin's methods, encoders and metrics run there too.
LOADED_PLUGINS: list[str] = []


class Registry(Generic[T]):
    """Names to objects of one kind (methods, datasets, metrics, encoders, executors)."""

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 adapt: Callable[[str, object], T] | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        # How an entry point that names an object rather than a module becomes an entry (an
        # encoder's builder function becomes its EncoderSpec); default: the object itself.
        self.adapt = adapt or (lambda name, obj: obj)
        self._items: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds the decorated object under ``name``."""
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Add ``obj`` under ``name``; a name is registered once."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered (by {self._items[name]!r})")
        self._items[name] = obj

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests and docs examples leave the registries as they were)."""
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
                self.add(ep.name, self.adapt(ep.name, obj))

    def names(self) -> list[str]:
        """Every registered name, built-ins first, in registration order."""
        self._load_plugins()
        return list(self._items)

    def get(self, name: str) -> T:
        """The object registered under ``name``; an unknown name is a one-line error listing the known ones."""
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


def load_plugin(spec: str) -> None:
    """Import a user's module (a ``.py`` file or an importable module name), so that what it
    registers can be run; importing the same file twice in one process is a no-op. It is noted
    in :data:`LOADED_PLUGINS` for the executors' workers."""
    try:
        if spec.endswith(".py"):
            path = Path(spec)
            if not path.is_file():
                raise DMLBenchError(f"plugin file {spec} does not exist")
            if str(path.resolve()) not in LOADED_PLUGINS:
                LOADED_PLUGINS.append(str(path.resolve()))
            name = f"dmlbench_plugin_{path.stem}"
            loaded = sys.modules.get(name)
            if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
                return  # already imported in this process (its methods are registered)
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
            if spec not in LOADED_PLUGINS:
                LOADED_PLUGINS.append(spec)
    except DMLBenchError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises, reported in one line
        raise DMLBenchError(f"cannot import plugin {spec}: {type(e).__name__}: {e}") from None
