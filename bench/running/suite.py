"""A suite: which (method, seed) runs to make on one dataset, resolved from defaults, a preset or
TOML file, and command-line flags (in that order; later wins; unknown keys are errors).

:func:`resolve_suite` checks and merges the settings, :func:`expand` turns a suite into its
runs; :mod:`.execute` checks, loads the data and hands the runs to an executor. Where the
settings come from is :mod:`.presets`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.params import apply_overrides, parse_set
from dmlbench.core.runtime import default_threads
from dmlbench.evaluation.metrics import METRICS
from dmlbench.executors import EXECUTORS, executor_options, get_executor, option_keys
from dmlbench.methods import BUILTIN, get_method
from dmlbench.running import layout
from dmlbench.running.config import RunConfig
from dmlbench.running.runner import Planned, with_method

log = logging.getLogger("dmlbench")

SUITE_KEYS = {"methods", "seeds", "out", "set", "suite", "workers", "executor", "reuse_stale", "devices",
              "table_metrics"}
# The RunConfig fields a suite file or flag may set (the method, seed and options come otherwise).
CONFIG_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"method", "seed", "method_params", "data_options",
                                                                  "tuned"}


@dataclass
class Suite:
    """One dataset's runs: a base config, the methods and seeds, each method's options, where the
    results go and where the runs are made.

    A tuned suite (``bench run --tuned``) also holds, per method, the tuned run keys (``run_sets``:
    lr, ...) and where they came from (``tuned``: study, trial, values), which :func:`expand`
    applies to each run.
    """

    base: RunConfig
    methods: list[str]
    seeds: list[int]
    method_sets: dict[str, dict] = field(default_factory=dict)
    out: Path = layout.DEFAULT_OUT
    name: str = ""
    workers: int = 1
    executor: str = "local"
    reuse_stale: bool = False
    devices: list[str] = field(default_factory=list)  # runs are spread over these (round robin)
    executor_options: dict = field(default_factory=dict)  # the executor's own options, by suite key
    run_sets: dict[str, dict] = field(default_factory=dict)  # tuned run keys per method
    tuned: dict[str, dict] = field(default_factory=dict)  # per method: where its tuned settings came from
    directory: Path | None = None  # the suite's folder where not <out>/<dataset>[/<suite>] (a tune's own)
    table_metrics: list[str] = field(default_factory=list)  # the table's columns (empty: the default metrics)

    @property
    def dir(self) -> Path:
        """Where the suite's runs and tables live: ``<out>/<dataset>[/<suite>]``, or ``directory``."""
        return Path(self.directory) if self.directory else layout.suite_dir(self.out, self.base.dataset, self.name)

    def make_executor(self):
        """The suite's executor, with its share of the thread budget and its own options."""
        return get_executor(self.executor, workers=self.workers, threads=self.base.threads,
                            options=self.executor_options)


def _as_list(value, key: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise DMLBenchError(f"{key} must be a comma-separated string or a list, got {value!r}")


def resolve_suite(file_values: dict, flags: dict) -> Suite:
    """Defaults <- TOML file/preset <- command-line flags (None = not given)."""
    exec_keys = option_keys()
    unknown = set(file_values) - SUITE_KEYS - CONFIG_KEYS - set(exec_keys)
    if unknown:
        raise DMLBenchError(f"unknown key(s) {', '.join(sorted(unknown))} in the config file; "
                            f"known: {', '.join(sorted(SUITE_KEYS | CONFIG_KEYS | set(exec_keys)))}")
    for key in ("out", "suite", "dataset"):
        if key in file_values and not isinstance(file_values[key], str):
            raise DMLBenchError(f"{key} in the config file must be a string, got {file_values[key]!r}")
    file_sets = file_values.get("set", [])
    if not isinstance(file_sets, list) or not all(isinstance(x, str) for x in file_sets):
        raise DMLBenchError(f'set in the config file must be a list of strings, e.g. set = ["tvae.margin=2"], got {file_sets!r}')
    given = {k: v for k, v in flags.items() if v is not None}
    file_values = dict(file_values)
    # steps and epochs are one budget in two units: a flag for either replaces the file's budget
    # (bench run --preset mnist-all --steps 500), while both in one place stay an error.
    if {"steps", "epochs"} & set(given):
        for key in ("steps", "epochs"):
            file_values.pop(key, None)
    values = {**file_values, **given}
    sets = list(file_sets) + list(flags.get("set") or [])
    methods = _as_list(values.get("methods", list(BUILTIN)), "methods")
    if not methods:
        raise DMLBenchError(f"methods={values.get('methods')!r} names no method; give e.g. --methods siamese,tvae "
                            "(bench list methods), or leave it out for all")
    if "raw" not in methods:
        methods.append("raw")  # every table gets the raw-pixel floor row
    try:
        seeds = [int(s) for s in _as_list(values.get("seeds", [0]), "seeds")]
        if not seeds or min(seeds) < 0:
            raise ValueError
    except ValueError:
        raise DMLBenchError(f"seeds must be integers >= 0 separated by commas, got {values.get('seeds')!r}") from None
    by_owner = parse_set(sets)
    # A preset or file may configure methods that the command line then leaves out: those settings
    # have nothing to apply to. A name that is no method at all is still an error.
    flag_owners = set(parse_set(list(flags.get("set") or [])))
    for owner in list(by_owner):
        if owner != "data" and owner not in methods:
            try:
                get_method(owner)
            except DMLBenchError as e:
                raise DMLBenchError(f"set {owner}.KEY: {e}; or data.KEY for a dataset option "
                                    "(bench list datasets)") from None
            if owner in flag_owners:
                raise DMLBenchError(f"set names {owner!r}, which is not among the methods being run "
                                    f"({', '.join(methods)})")
            del by_owner[owner]
    data_options = by_owner.pop("data", {})
    run_values = {k: v for k, v in values.items() if k in CONFIG_KEYS}
    base = apply_overrides(RunConfig(), run_values, "run")
    base = dataclasses.replace(base, data_options=data_options)
    devices = _as_list(values.get("devices", []), "devices")
    if not devices and values.get("devices") not in (None, "", []):
        raise DMLBenchError(f"devices={values.get('devices')!r} names no device; give e.g. --devices cuda:0,cuda:1")
    for d in devices:
        dataclasses.replace(base, device=d).check()
    if devices:
        base = dataclasses.replace(base, device=devices[0])
    workers = auto_workers(values.get("workers", 1), devices or [base.device], base.threads)
    executor = str(values.get("executor", "local"))
    if executor not in EXECUTORS:
        raise DMLBenchError(f"executor {executor!r} is not one of: {', '.join(EXECUTORS.names())}")
    # An executor's own options (--ray-address, ...): those of another executor are refused when
    # they ask for something (a default value, as a preset may write, asks for nothing).
    given_exec = {k: values[k] for k, (owner, f) in exec_keys.items()
                  if values.get(k) is not None and (owner == executor or values[k] != f.default)}
    executor_options(executor, given_exec)  # type-checked and validated here, before anything runs
    table_metrics = _as_list(values.get("table_metrics", []), "table_metrics")
    unknown_metrics = [m for m in table_metrics if m not in METRICS]
    if unknown_metrics:
        raise DMLBenchError(f"table_metrics: unknown metric(s) {', '.join(unknown_metrics)}; known: "
                            f"{', '.join(METRICS.names())}")
    return Suite(base, methods, seeds, by_owner, Path(values.get("out", layout.DEFAULT_OUT)),
                 str(values.get("suite", "")), workers, executor, bool(values.get("reuse_stale", False)),
                 devices, given_exec, table_metrics=table_metrics)


GPU_RUNS_PER_DEVICE = 4  # measured on an H100: 4 MNIST runs at once finish 3.2x sooner than in a row


def auto_workers(value, devices: list[str], threads: int | None) -> int:
    """``workers``: a number, or ``auto``: 4 runs per GPU; on CPU one per 4 cores (small models
    gain nothing from splitting 2 cores, and a worker pays its own start-up)."""
    if str(value) == "auto":
        gpus = [d for d in devices if d.startswith("cuda")]
        if gpus:
            return GPU_RUNS_PER_DEVICE * len(gpus)
        return max(1, (threads or default_threads()) // 4)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise DMLBenchError(f"workers={value!r} must be a number or auto") from None
    if not 1 <= n <= 1024:
        raise DMLBenchError(f"workers={n} must be between 1 and 1024")
    return n


def _fmt(value) -> str:
    """A row label's value: floats to 4 significant digits (a tuned 0.4807866320755242 reads 0.4808)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _get_key(obj, dotted: str):
    head, _, rest = dotted.partition(".")
    value = getattr(obj, head)
    return value[rest] if rest else value


def expand(suite: Suite, n_train: int) -> list[Planned]:
    """Every run of the suite, with the step budget fixed from the training-set size."""
    base = suite.base.resolved().with_budget(n_train)
    tuned = suite.tuned
    planned = []
    for name in suite.methods:
        cls = get_method(name)
        overrides = suite.method_sets.get(name, {})
        params = apply_overrides(cls.Params(), overrides, name)
        defaults = cls.Params()
        changed = [k for k in sorted(overrides) if _get_key(params, k) != _get_key(defaults, k)]
        variant = ",".join(f"{k}={_fmt(_get_key(params, k))}" for k in changed)
        if name in tuned:
            # The table marks what the tune searched (run keys such as lr first), and apart from it
            # what was held fixed (a --set or --lr given to the tune, or to this run).
            searched = set(tuned[name].get("params") or {})
            run_keys = suite.run_sets.get(name, {})
            run_t = [f"{k}={_fmt(v)}" for k, v in sorted(run_keys.items()) if k in searched]
            meth_t = [f"{k}={_fmt(_get_key(params, k))}" for k in changed if k in searched]
            fixed = [f"{k}={_fmt(v)}" for k, v in sorted(run_keys.items()) if k not in searched] + \
                    [f"{k}={_fmt(_get_key(params, k))}" for k in changed if k not in searched]
            variant = "tuned" + (":" + ",".join(run_t) if run_t else "") + (";" + ",".join(meth_t) if meth_t else "") \
                + (";fixed:" + ",".join(fixed) if fixed else "")
        for seed in suite.seeds:
            cfg = tuned_config(suite, with_method(base, name, seed, dataclasses.asdict(params)))
            planned.append(Planned(cfg, variant))
    return planned


def tuned_config(suite: Suite, cfg: RunConfig) -> RunConfig:
    """A planned run's config with its method's tuned run keys and ``tuned`` record (identity for a
    suite that was not tuned)."""
    run_keys = suite.run_sets.get(cfg.method)
    info = suite.tuned.get(cfg.method)
    if run_keys:
        cfg = apply_overrides(cfg, run_keys, "run")
    if info:
        cfg = dataclasses.replace(cfg, tuned=info)
    return cfg
