"""Search spaces: a method's space (its ``Params.space`` and --space), checked; sampling a trial."""

from __future__ import annotations

import tomllib
from pathlib import Path

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.params import apply_overrides, option_keys
from dmlbench.core.space import RUN_KEYS, Choice, Dist, Int, from_value
from dmlbench.methods import get_method
from dmlbench.running.config import RunConfig
from dmlbench.tune.options import MethodPlan

# ----------------------------------------------------------------------------- search spaces


def read_space_file(path: Path | None) -> dict[str, dict]:
    """A ``--space`` TOML file's tables, method name -> {dotted key: TOML value}, unvalidated; {} for no file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DMLBenchError(f"space file {path} does not exist; give a TOML file with one [METHOD] table per method")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DMLBenchError(f"space file {path} is not valid TOML ({e})") from None
    out = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            raise DMLBenchError(f"space file {path}: {key} = {value!r} is not a [METHOD] table; write e.g. "
                                '[tvae] then "weights.triplet" = {low = 1, high = 300, log = true}')
        out[key] = _flatten(value)
        for k, v in out[key].items():
            if isinstance(v, list):
                raise DMLBenchError(f"space file {path}: {key}.{k} = {v!r} is a list; write {k} = {{choices = {v!r}}} "
                                    "to search over these values, or a single value to fix it")
    return out


DIST_KEYS = {"low", "high", "log", "int", "choices"}


def _flatten(table: dict, prefix: str = "") -> dict:
    """``weights.triplet = {...}`` unquoted is a nested table in TOML; as a key it means the
    method option ``weights.triplet`` (as it does quoted), so nested tables become dotted keys."""
    out = {}
    for k, v in table.items():
        if isinstance(v, dict) and v and not set(v) & DIST_KEYS:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_run_value(key: str, value) -> None:
    cfg = apply_overrides(RunConfig(), {key: value}, "run")
    cfg.check()


MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")  # the optimizers the trainer gives --momentum


def is_run_key(name: str, key: str) -> bool:
    """A space key tunes the run (lr, ...) unless the method has an option of that name
    (pml:DynamicSoftMarginLoss's ``momentum`` is the loss's, not the optimiser's)."""
    return key in RUN_KEYS and key not in option_keys(get_method(name).Params())


def method_plan(name: str, file_space: dict | None, set_options: dict, run_flags: dict | None = None,
                optimizer: str | None = None) -> MethodPlan:
    """The method's space (its ``Params.space``, keys overridden by its [METHOD] table of --space;
    a plain value there fixes the key), checked like --set: every key an option of the method or a
    run key, every bound and choice a valid value. Keys fixed by --set, and run keys given as flags
    (``run_flags``: ``--lr 0.01`` fixes lr), leave the space. A run key the optimiser ignores
    (momentum without sgd) is refused: the trials would spend their budget on a dead dimension."""
    cls = get_method(name)
    space: dict[str, Dist] = dict(cls.Params.space)
    fixed, fixed_run = dict(set_options), {}
    for key, value in (file_space or {}).items():
        if isinstance(value, dict):
            space[key] = from_value(f"{name}.{key}", value)
        else:
            if key in set_options:
                raise DMLBenchError(f"{name}.{key} is fixed twice: --set {name}.{key}={set_options[key]} and "
                                    f"{key} = {value!r} in the search space; keep one")
            space.pop(key, None)
            (fixed_run if is_run_key(name, key) else fixed)[key] = value
    for key, value in (run_flags or {}).items():
        if not is_run_key(name, key):
            continue
        if key in fixed_run and str(fixed_run[key]) != str(value):
            raise DMLBenchError(f"{key} is fixed twice for {name}: --{key.replace('_', '-')} {value} and {key} = "
                                f"{fixed_run[key]!r} in the search space; keep one")
        if key in space or key in fixed_run:
            space.pop(key, None)
            fixed_run[key] = value
    known = option_keys(cls.Params())
    for key in list(space) + list(fixed_run):
        if key not in RUN_KEYS and key not in known:
            raise DMLBenchError(f"unknown option {name}.{key} in the search space; {name} options are: "
                                f"{', '.join(known) or '(none)'}, and the run keys {', '.join(RUN_KEYS)}")
    if optimizer and optimizer not in MOMENTUM_OPTIMIZERS and "momentum" in space and is_run_key(name, "momentum"):
        raise DMLBenchError(f"{name}: momentum is searched, but the {optimizer} optimizer has no momentum setting "
                            f"(only {' and '.join(MOMENTUM_OPTIMIZERS)} use it); leave momentum out of the space, or "
                            "give --optimizer sgd")
    for key in set_options:
        space.pop(key, None)
    apply_overrides(cls.Params(), fixed, name)
    for key, value in fixed_run.items():
        _check_run_value(key, value)
    for key, dist in space.items():
        values = dist.choices if isinstance(dist, Choice) else (dist.low, dist.high)
        for v in values:
            if is_run_key(name, key):
                _check_run_value(key, v)
            else:
                apply_overrides(cls.Params(), {**fixed, key: v}, name)
    return MethodPlan(name, space, fixed, fixed_run)


def suggest(trial, space: dict[str, Dist]) -> dict:
    """One value per key of ``space``, drawn by the optuna ``trial`` from its distribution."""
    out = {}
    for key, d in space.items():
        if isinstance(d, Choice):
            out[key] = trial.suggest_categorical(key, list(d.choices))
        elif isinstance(d, Int):
            out[key] = trial.suggest_int(key, d.low, d.high, log=d.log)
        else:
            out[key] = trial.suggest_float(key, d.low, d.high, log=d.log)
    return out


def split_params(params: dict, name: str) -> tuple[dict, dict]:
    """(method keys, run keys) of a trial's parameters for method ``name``."""
    run = {k for k in params if is_run_key(name, k)}
    return {k: v for k, v in params.items() if k not in run}, {k: v for k, v in params.items() if k in run}
