"""Search spaces for tuning, declared next to each method's ``Params`` (torch-free).

A space maps an option key to a distribution. Keys are the ``--set`` keys of the method
(``margin``, ``weights.triplet``) or one of :data:`RUN_KEYS`, which tune the run itself (the
learning rate). ``--space FILE.toml`` overrides a method's space, validated like ``--set``::

    [tvae]
    "weights.triplet" = {low = 1, high = 300, log = true}
    lr = {low = 1e-4, high = 3e-3, log = true}
    [triplet-hinge]
    mining = {choices = ["random", "semihard"]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from dmlbench.core.errors import DMLBenchError

RUN_KEYS = ("lr", "trunk_lr", "weight_decay", "momentum")


@dataclass(frozen=True)
class Range:
    """Values between ``low`` and ``high``, drawn uniformly, or log-uniformly with ``log``."""

    low: float
    high: float
    log: bool = False
    kind: ClassVar[str] = "uniform"

    def show(self, value) -> str:
        """A bound as written in ``str`` (and so in tuned.json and a study's fingerprint)."""
        return f"{value:g}"

    def __str__(self) -> str:
        return f"{'log-' if self.log else ''}{self.kind}[{self.show(self.low)}, {self.show(self.high)}]"

    def at_edge(self, value, margin: float = 0.05) -> bool:
        """Whether ``value`` lies in the outer ``margin`` of the range at either end (on the log scale
        for a log range): a search whose best lands there may have its optimum beyond the range."""
        lo, hi, v = ((math.log(self.low), math.log(self.high), math.log(value)) if self.log
                     else (float(self.low), float(self.high), float(value)))
        pos = (v - lo) / (hi - lo)
        return pos <= margin or pos >= 1 - margin


@dataclass(frozen=True)
class Float(Range):
    """A float between ``low`` and ``high`` (log-uniform with ``log``)."""


@dataclass(frozen=True)
class Int(Range):
    """An integer between ``low`` and ``high``, both included (log-uniform with ``log``)."""

    kind: ClassVar[str] = "int"

    def show(self, value) -> str:
        """Integers as they are."""
        return str(value)


@dataclass(frozen=True)
class Choice:
    """One of ``choices``."""

    choices: tuple

    def __str__(self) -> str:
        return "{" + ", ".join(map(str, self.choices)) + "}"


Dist = Float | Int | Choice

# Every trained method tunes its learning rate.
LR = {"lr": Float(1e-4, 1e-2, log=True)}


def describe(space: dict[str, Dist]) -> str:
    """A space in one line, ``key ~ distribution`` comma-separated, or ``(nothing to tune)``."""
    return ", ".join(f"{k} ~ {d}" for k, d in space.items()) or "(nothing to tune)"


def from_value(key: str, value: Any) -> Dist:
    """A distribution from its TOML form: {low, high[, log][, int]} or {choices = [...]}."""
    if not isinstance(value, dict):
        raise DMLBenchError(f"space key {key!r}: give {{low = A, high = B}} or {{choices = [...]}}, got {value!r}")
    if "choices" in value:
        if set(value) != {"choices"} or not isinstance(value["choices"], list) or not value["choices"]:
            raise DMLBenchError(f"space key {key!r}: choices must be a non-empty list and stand alone")
        return Choice(tuple(value["choices"]))
    unknown = set(value) - {"low", "high", "log", "int"}
    if unknown or not {"low", "high"} <= set(value):
        raise DMLBenchError(f"space key {key!r}: expected low, high and optionally log, int; got {sorted(value)}")
    lo, hi, log = value["low"], value["high"], bool(value.get("log", False))
    nums = [v for v in (lo, hi) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) != 2 or not all(math.isfinite(v) for v in nums) or lo >= hi or (log and lo <= 0):
        raise DMLBenchError(f"space key {key!r}: need finite low < high (and low > 0 with log), got {lo!r}, {hi!r}")
    if value.get("int") or (isinstance(lo, int) and isinstance(hi, int) and not log and "int" not in value):
        return Int(int(lo), int(hi), log)
    return Float(float(lo), float(hi), log)


def to_optuna(d: Dist):
    """The optuna distribution for ``d``: categorical, int or float, log-scaled as ``d`` says."""
    import optuna.distributions as od

    if isinstance(d, Choice):
        return od.CategoricalDistribution(list(d.choices))
    if isinstance(d, Int):
        return od.IntDistribution(d.low, d.high, log=d.log)
    return od.FloatDistribution(d.low, d.high, log=d.log)
