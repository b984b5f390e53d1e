"""Where a suite's settings come from: the presets shipped with dmlbench, a TOML suite file, and
the command line, in that order (later wins). :func:`suite_from_options` is the one function that
``bench run``, ``bench tune`` and the Python API call to turn what they were given into a checked
:class:`~dmlbench.running.suite.Suite`.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.registry import load_plugin
from dmlbench.core.space import RUN_KEYS
from dmlbench.running.suite import Suite, resolve_suite


def preset_names() -> list[str]:
    """The suites shipped with dmlbench (``bench list presets``)."""
    return sorted(p.name[:-5] for p in resources.files("dmlbench.presets").iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """A shipped preset's TOML text."""
    return resources.files("dmlbench.presets").joinpath(f"{name}.toml").read_text()


def read_toml(path: Path | None = None, preset: str | None = None) -> dict:
    """The preset's keys, then the file's over them (``-`` in keys read as ``_``)."""
    data: dict = {}
    if preset:
        if preset not in preset_names():
            raise DMLBenchError(f"unknown preset {preset!r}; presets: {', '.join(preset_names())}")
        data.update(tomllib.loads(preset_text(preset)))
    if path:
        if not Path(path).is_file():
            raise DMLBenchError(f"config file {path} does not exist; give a TOML file with the same keys as the flags")
        try:
            data.update(tomllib.loads(Path(path).read_text()))
        except tomllib.TOMLDecodeError as e:
            raise DMLBenchError(f"config file {path} is not valid TOML ({e})") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


def given_run_flags(flags: dict) -> dict:
    """The tunable run keys (lr, ...) given on the command line: a tune fixes them, and a tuned
    run refuses one that its tuned value would replace."""
    return {k: flags[k] for k in RUN_KEYS if flags.get(k) is not None}


def suite_from_options(options: dict, *, config: Path | str | None = None, preset: str | None = None,
                       plugins: list[str] | tuple[str, ...] = (), under: dict | None = None) -> tuple[Suite, dict]:
    """The suite of ``bench run`` / ``bench tune`` / :func:`dmlbench.run`: plugins imported, then
    defaults <- ``under`` (a tune's settings, for ``--tuned``) <- preset <- TOML file <- ``options``
    (None: not given; ``set``: a list of METHOD.KEY=VALUE). Returns the suite and the values the
    preset and file gave."""
    for spec in plugins or ():
        load_plugin(spec)
    flags = dict(options)
    if flags.get("out") is not None:
        flags["out"] = str(flags["out"])
    flags["reuse_stale"] = flags.get("reuse_stale") or None  # False: not given (a preset may say true)
    file_values = read_toml(Path(config) if config else None, preset)
    if under and {"steps", "epochs"} & set(file_values):  # one budget in two units: the file's replaces the tune's
        under = {k: v for k, v in under.items() if k not in ("steps", "epochs")}
    return resolve_suite({**(under or {}), **file_values}, flags), file_values
