"""From tuning to the table: ``bench run --tuned`` retrains each method with its best settings."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import CorruptFileError, read_json
from dmlbench.core.params import apply_overrides
from dmlbench.core.space import RUN_KEYS
from dmlbench.data import DatasetRef
from dmlbench.methods import get_method
from dmlbench.running.suite import CONFIG_KEYS, Suite
from dmlbench.tune.options import DEFAULT_TEST_SEEDS, TUNED_FILE
from dmlbench.tune.summary import budget_warnings, edge_warnings

log = logging.getLogger("dmlbench")


# ----------------------------------------------------------------------------- from tuning to the table


def read_tuned(tuned_dir: Path) -> tuple[Path, dict]:
    """The path and contents of a tune's tuned.json (given it or its suite folder), checked to hold a dataset
    and each method's settings and best trial."""
    path = Path(tuned_dir)
    if path.is_dir():
        path = path / TUNED_FILE
    elif path.is_file() and path.suffix != ".json":
        raise DMLBenchError(f"--tuned {path}: give the suite folder of a `bench tune` (or its {TUNED_FILE}), not "
                            f"{path.name}")
    if not path.is_file():
        raise DMLBenchError(f"{path} does not exist; give the suite folder of a finished `bench tune` "
                            "(it holds tuned.json)")
    doc = read_json(path)
    methods = doc.get("methods")
    if not isinstance(methods, dict) or not isinstance(doc.get("dataset"), str):
        raise CorruptFileError(path, "no dataset or methods")
    for name, m in methods.items():
        if not isinstance(m, dict) or not isinstance(m.get("method_params"), dict) or \
                not isinstance(m.get("run_params"), dict) or "best_trial" not in m:
            raise CorruptFileError(path, f"method {name!r} lacks method_params, run_params or best_trial")
    return path, doc


# A tune's settings that become a --tuned run's defaults (the test runs train as the trials did);
# where it runs (device, threads, data folder) stays this machine's.
NOT_CARRIED = ("device", "threads", "data_dir", "method", "seed", "method_params", "data_options", "tuned")


def tuned_defaults(tuned_dir: Path) -> dict:
    """The settings a tune ran with, as suite keys: the defaults of ``bench run --tuned`` (a preset,
    a file and flags still override them)."""
    _, doc = read_tuned(tuned_dir)
    cfg = doc.get("config") or {}
    out = {k: v for k, v in cfg.items() if k in CONFIG_KEYS and k not in NOT_CARRIED and v is not None}
    return {**out, "dataset": doc["dataset"]}


def apply_tuned(suite: Suite, tuned_dir: Path, *, seeds_given: bool | None = None, methods_given: bool = True,
                place_given: bool = True, run_flags: dict | None = None) -> Suite:
    """The suite with each tuned method at its best validation settings (``bench run --tuned``).

    Methods: with ``methods_given``, the suite's, and those not tuned are left out (with a
    warning), except untrained ones (the raw floor); else every tuned method (plugin and ``pml:``
    ones too). A tuned method that cannot run here (a plugin not given with --plugin) is left out
    and named, with the reason. The tuned values apply over the suite's --set. Seeds: 0-4 unless
    given (``seeds_given=None``: the suite's seeds count as not given when they are the default
    [0]). Where: without ``place_given`` (--out or --suite), the test runs go into the tune's own
    folder, beside its trials.
    """
    path, doc = read_tuned(tuned_dir)
    if DatasetRef.parse(doc["dataset"]).slug() != DatasetRef.parse(suite.base.dataset).slug():
        raise DMLBenchError(f"{path} was tuned on {doc['dataset']}, but this suite runs {suite.base.dataset}; "
                            f"give --dataset {doc['dataset']}")
    tuned_methods = doc["methods"]
    wanted = suite.methods if methods_given else [*tuned_methods, *[m for m in suite.methods if m == "raw"]]
    keep, unusable = [], {}
    for m in wanted:
        try:
            trainable = get_method(m).trainable
        except DMLBenchError as e:  # a plugin method whose module was not given here
            unusable[m] = f"{e}; give --plugin with the file that registers it"
            continue
        if m in tuned_methods or not trainable:
            keep.append(m)
    for m, why in unusable.items():
        log.warning("--tuned %s: %s left out: %s", path, m, why)
    dropped = [m for m in wanted if m not in keep and m not in unusable]
    if not any(m in tuned_methods for m in keep):
        raise DMLBenchError(f"none of {', '.join(wanted)} can run with the settings tuned in {path} (tuned: "
                            f"{', '.join(tuned_methods)})" + ("; give --methods" if not unusable
                                                                 else "; give --plugin for the methods named above"))
    if dropped:
        log.warning("--tuned %s: %s not tuned there, left out", path, ", ".join(dropped))
    method_sets, run_sets, tuned = dict(suite.method_sets), {}, {}
    cfg = doc.get("config") or {}  # the run config the tune had
    here = suite.base.resolved()
    for name in keep:
        if name not in tuned_methods:
            continue
        m = tuned_methods[name]
        if m["best_trial"] is None:
            raise DMLBenchError(f"{path}: no trial of {name} completed (states {m.get('states')}); tune it again "
                                "or leave it out with --methods")
        mine = suite.method_sets.get(name, {})
        clash = [f"--set {name}.{k}={mine[k]} (tuned: {m['method_params'][k]})" for k in sorted(mine)
                 if k in m["method_params"] and str(mine[k]) != str(m["method_params"][k])]
        # A run key (lr, ...) given as a flag with another value than the tuned one: the user's value
        # would be replaced without a word, so refuse it instead.
        clash += [f"--{k.replace('_', '-')} {run_flags[k]} (tuned: {v})" for k, v in sorted(m["run_params"].items())
                  if k in (run_flags or {}) and str(run_flags[k]) != str(v)]
        if clash:
            raise DMLBenchError(f"--tuned {path} runs {name} with its tuned settings, but this command asks for "
                                f"{'; '.join(clash)}; leave those out, or run without --tuned")
        overrides = {**mine, **m["method_params"]}
        apply_overrides(get_method(name).Params(), overrides, name)  # a tuned.json from other code fails here
        unknown = sorted(set(m["run_params"]) - set(RUN_KEYS))
        if unknown:  # a hand-edited tuned.json must not change the steps, the seed or the data
            raise CorruptFileError(path, f"{name}'s run_params set {', '.join(unknown)}, which are not tuned run keys "
                                         f"({', '.join(RUN_KEYS)})")
        apply_overrides(suite.base, m["run_params"], "run").check()
        method_sets[name] = overrides
        run_sets[name] = dict(m["run_params"])
        tuned[name] = {"study": m.get("study", name), "trial": m["best_trial"], "value": m.get("best_value"),
                       "objective": doc.get("objective"), "params": m.get("params", {}),
                       "storage": m.get("storage", doc.get("storage")), "validation": doc.get("validation"),
                       "from": str(path)}
    differ = [k for k in ("encoder", "embedding_dim", "epochs", "steps", "batch_size", "optimizer", "lr_schedule",
                          "augment", "normalize", "split") if k in cfg and cfg[k] != getattr(here, k)]
    if differ:
        log.warning("--tuned: tuned with other %s than this run (%s)", ", ".join(differ),
                    ", ".join(f"{k} {cfg[k]} -> {getattr(here, k)}" for k in differ))

    kept = {**doc, "methods": {n: m for n, m in tuned_methods.items() if n in keep}}
    for line in budget_warnings(kept) + edge_warnings(kept):
        log.warning("--tuned %s: %s", path, line)
    if seeds_given is None:
        seeds_given = suite.seeds != [0]
    seeds = list(suite.seeds) if seeds_given else list(DEFAULT_TEST_SEEDS)
    here_dir = {} if place_given else {"directory": path.parent}
    return dataclasses.replace(suite, methods=keep, method_sets=method_sets, seeds=seeds, run_sets=run_sets,
                               tuned=tuned, **here_dir)
