"""The options of ``bench run`` and ``bench tune``, generated: one per ``RunConfig`` field (help
and default from there), one per executor option (``--ray-address``, ...), one per ``TuneOptions``
field, and the suite's own; so a new field cannot be forgotten here and each default is written
once. Typer reads a command's options from its signature: :func:`run_parameters` makes it."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from dmlbench.executors import EXECUTORS, option_keys
from dmlbench.running.config import RunConfig, cli_fields
from dmlbench.tune.options import TuneOptions

SUITE_OPTIONS = [
    ("methods", str, "Comma-separated method names, or pml:<LossName>. [default: all six; raw is always added]"),
    ("seeds", str, "Comma-separated seeds, one run each. [default: 0]"),
    ("out", Path, "Results folder. [default: results]"),
    ("suite", str, "A name for this suite: its runs and table go to OUT/<dataset>/<suite>/."),
    ("workers", str, "Runs at once (a number, or auto: 4 per GPU, 1 per 4 CPU cores); the thread budget is split "
                     "between them. [default: 1]"),
    ("devices", str, "Comma-separated devices to spread the runs over, e.g. cuda:0,cuda:1. [default: --device]"),
    ("executor", str, "Where runs are made: local (this machine) or ray (a Ray cluster; pip install "
                      "'dmlbench[ray]'). [default: local]"),
]
EXTRA_OPTIONS = [
    ("set_", Optional[list[str]], None, ("--set",), "Method option METHOD.KEY=VALUE (e.g. tvae.weights.triplet=10), "
                                                    "or data.KEY=VALUE; repeatable."),
    ("config", Optional[Path], None, (), "A TOML suite file with the same keys as these flags; flags override it."),
    ("preset", Optional[str], None, (), "A suite shipped with dmlbench (see `bench list presets`)."),
    ("tuned", Optional[Path], None, (), "A tuned suite folder (bench tune): each method runs with its best validation "
                                        "settings from there."),
    ("reuse_stale", bool, False, (), "Keep complete runs made by other code or libraries instead of re-running them."),
    ("plugin", Optional[list[str]], None, (), "A Python file or module to import first (its @register_method "
                                              "classes can then run); repeatable."),
]


def _plain_type(tp):
    """The Typer-facing type of a dataclass field: Literal choices and unions become str/int/float."""
    if typing.get_origin(tp) is typing.Literal:
        return str
    base = ([a for a in typing.get_args(tp) if a is not type(None)] or [tp])[0]
    return str if typing.get_origin(base) is typing.Literal else base


def _option(name: str, tp, default, help_: str, decl: tuple = ()) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[tp, typer.Option(*decl, help=help_)])


def run_parameters() -> list[inspect.Parameter]:
    """``bench run``'s options: the suite's, one per RunConfig field, the executors' own, the rest."""
    params = [_option(name, Optional[tp], None, help_) for name, tp, help_ in SUITE_OPTIONS]
    hints = typing.get_type_hints(RunConfig)
    for f in cli_fields():
        tp, help_ = _plain_type(hints[f.name]), f.metadata["help"]
        if "[default:" not in help_ and f.default not in (dataclasses.MISSING, None):
            help_ += f" [default: {f.default}]"
        flag = "--" + f.name.replace("_", "-")
        decl = (f"{flag}/--no-{f.name.replace('_', '-')}",) if tp is bool else (flag,)
        params.append(_option(f.name, Optional[tp], None, help_, decl))
    for key, (owner, f) in option_keys().items():  # --ray-address, --gpus-per-run, ...
        tp = _plain_type(typing.get_type_hints(EXECUTORS.get(owner).Options)[f.name])
        params.append(_option(key, Optional[tp], None, f.metadata.get("help", ""), ("--" + key.replace("_", "-"),)))
    params += [_option(name, tp, default, help_, decl) for name, tp, default, decl, help_ in EXTRA_OPTIONS]
    return params


def tune_parameters() -> list[inspect.Parameter]:
    """``bench run``'s options (less --seeds and --tuned), then the tuner's (from TuneOptions)."""
    params = [p for p in run_parameters() if p.name not in ("seeds", "tuned")]
    hints = typing.get_type_hints(TuneOptions)
    return params + [_option(f.name, hints[f.name], f.default, f.metadata["help"])
                     for f in dataclasses.fields(TuneOptions) if f.metadata.get("cli")]


