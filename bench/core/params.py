"""Typed, validated overrides for dataclass configs.

``--set tvae.margin=0.5`` and ``--set tvae.weights.triplet=10`` (or the same keys in a TOML file)
are applied to a method's ``Params`` dataclass. A misspelled key, a wrong type or a value outside a
``Literal`` is an error that lists what is allowed; nothing is silently dropped.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

from dmlbench.core.errors import DMLBenchError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise DMLBenchError(f"option {key}={value!r} is not allowed; choose one of: {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if set(args) == {int, float}:  # a number whose default was an int: keep ints integral
            number = _coerce(value, float, key)
            return int(number) if number.is_integer() else number
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise DMLBenchError(f"option {key}={value!r} must be of type {tp.__name__}") from None
    return value


def option_keys(obj: Any, prefix: str = "") -> list[str]:
    """The keys ``--set`` accepts for dataclass ``obj``: each field, or ``field.key`` for each key of a dict field."""
    keys = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, dict):
            keys += [f"{prefix}{f.name}.{k}" for k in v]
        else:
            keys.append(prefix + f.name)
    return keys


def apply_overrides(obj: Any, overrides: dict[str, Any], owner: str) -> Any:
    """Return a copy of dataclass ``obj`` with dotted-key overrides applied and type-checked."""
    obj = dataclasses.replace(obj)
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise DMLBenchError(
                f"unknown option {owner}.{key}; {owner} options are: {', '.join(option_keys(obj)) or '(none)'}"
            )
        current = getattr(obj, head)
        if isinstance(current, dict):
            if not rest or rest not in current:
                raise DMLBenchError(
                    f"unknown option {owner}.{key}; {owner}.{head} has keys: {', '.join(current)}"
                )
            new = dict(current)
            new[rest] = _coerce(value, type(current[rest]), f"{owner}.{key}")
            setattr(obj, head, new)
        elif rest:
            raise DMLBenchError(f"option {owner}.{head} has no sub-keys (got {owner}.{key})")
        else:
            setattr(obj, head, _coerce(value, hints[head], f"{owner}.{key}"))
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def parse_set(items: list[str]) -> dict[str, dict[str, str]]:
    """['tvae.margin=0.5', 'data.resize=64'] -> {'tvae': {'margin': '0.5'}, 'data': {'resize': '64'}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        owner, dot, rest = key.strip().partition(".")
        if not eq or not dot or not rest:
            raise DMLBenchError(f"--set {item!r} must look like METHOD.KEY=VALUE (e.g. tvae.weights.triplet=10)")
        out.setdefault(owner, {})[rest] = value.strip()
    return out
