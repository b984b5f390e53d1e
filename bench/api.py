"""The Python API: the functions the ``bench`` commands are a thin layer over.

Same suite semantics, errors (:class:`~dmlbench.core.errors.DMLBenchError`, one line each) and
folders as the CLI::

    import dmlbench
    df = dmlbench.run(methods=["siamese", "triplet-hinge"], dataset="digits", seeds=[0, 1], epochs=2)
    df.groupby("method")["map@r"].mean()

Options are the CLI's, with ``_`` for ``-``: any run setting (``lr``, ``epochs``, ``encoder``,
...), the suite's (``out``, ``suite``, ``workers``, ``executor``, ``devices``, ``reuse_stale``) and an
executor's own (``ray_address``, ``gpus_per_run``); ``sets`` are ``--set`` items.

Under ``torchrun`` (or ``srun torchrun``), :func:`run` joins the world torchrun started, and its
processes make each run of the suite together, one run at a time (docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from dmlbench.core import distributed
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.runtime import default_threads, echo_line, limit_threads
from dmlbench.report.compare import compare as compare_results
from dmlbench.report.results import collect
from dmlbench.report.table import write_tables
from dmlbench.running.execute import run_suite
from dmlbench.running.presets import given_run_flags, suite_from_options
from dmlbench.tune.options import TuneOptions
from dmlbench.tune.study import tune as tune_suite
from dmlbench.tune.tuned import apply_tuned, tuned_defaults

log = logging.getLogger("dmlbench")


def _options(methods, dataset, seeds, sets, options: dict) -> dict:
    """The API's arguments as the suite's flag values (None: not given)."""
    out = dict(options)
    if methods is not None:
        out["methods"] = methods if isinstance(methods, str) else ",".join(methods)
    if seeds is not None:
        out["seeds"] = seeds if isinstance(seeds, str) else str(seeds) if isinstance(seeds, int) \
            else ",".join(str(s) for s in seeds)
    if dataset is not None:
        out["dataset"] = dataset
    out["set"] = list(sets or [])
    return out


def run(methods: Iterable[str] | str | None = None, dataset: str | None = None,
        seeds: Iterable[int] | int | None = None, *, preset: str | None = None, config: str | Path | None = None,
        tuned: str | Path | None = None, sets: Iterable[str] = (), plugins: Iterable[str] = (),
        echo: Callable[[str], None] | None = echo_line, **options: Any) -> pd.DataFrame:
    """Train and evaluate each (method, seed) on one dataset, write the suite's table, and return
    this command's runs: one row each, with ``status`` (done, skipped: already complete, failed),
    ``reason``, ``run_dir``, every metric and every config field. ``df.attrs`` holds ``suite_dir``
    and ``table`` (the markdown written to ``table.md``). ``echo``: where progress lines go (None:
    nowhere). ``tuned``: a ``bench tune`` suite folder whose best settings the methods run with."""
    flags = _options(methods, dataset, seeds, sets, options)
    under = tuned_defaults(Path(tuned)) if tuned is not None else None  # train as the tune's trials did
    suite, file_values = suite_from_options(flags, config=config, preset=preset, plugins=tuple(plugins), under=under)
    if tuned is not None:
        given = {**file_values, **{k: v for k, v in flags.items() if v is not None}}
        suite = apply_tuned(suite, Path(tuned), seeds_given="seeds" in given, methods_given="methods" in given,
                            place_given=bool({"out", "suite"} & set(given)), run_flags=given_run_flags(flags))
    suite.base.resolved().check()  # bad values fail here, before any thread pool or data is touched
    suite = _join_torchrun(suite)
    # The driver imports no torch: the executor sets each run's threads where it runs.
    limit_threads(suite.base.threads)
    world = distributed.current()
    main = world is None or world.main
    say = (echo if main else None) or (lambda line: None)
    done: list = []
    total = [0]

    def start(suite, data, planned) -> None:
        total[0] = len(planned)
        b = planned[0].config
        say(f"running {', '.join(suite.methods)} on {b.dataset} ({len(data.train)} train / {len(data.test)} test, "
            f"{b.encoder} encoder, {b.steps:,} step{'s' if b.steps != 1 else ''}) with seeds "
            f"{','.join(map(str, suite.seeds))} -> {suite.dir}")

    def report(r) -> None:
        done.append(r)
        head = f"[{len(done)}/{total[0]}] {r.config.method} seed {r.config.seed}"
        if r.status == "failed":
            say(f"{head}: {r.status.upper()}: {r.reason}")
        else:
            m = r.metrics
            say(f"{head}: {r.status} (triplet_acc {m.get('triplet_acc', float('nan')):.4f}, "
                f"recall@1 {m.get('recall@1', float('nan')):.4f}) {r.run_dir}")

    try:
        results = run_suite(suite, on_result=report, on_start=start)
    except KeyboardInterrupt:
        say(f"interrupted after {len(done)} run(s); finished runs are saved: re-run the same command to resume")
        raise
    finally:
        if world is not None:
            distributed.leave()
    # Under torchrun, rank 0 writes the table (its runs' results); the other ranks return their own.
    table = write_tables(suite.dir, suite.table_metrics or None, only={str(r.run_dir) for r in results}) if main else ""
    others = _other_runs(suite.dir, results) if main else ""
    if others:
        say(f"{suite.dir} also holds {others} from other commands: its table.md lists every run there "
            f"(bench table {suite.dir}); above, this command's runs")
    rows = [{"method": r.config.method, "seed": r.config.seed, "status": r.status, "reason": r.reason,
             "run_dir": str(r.run_dir), **r.metrics, **_config_columns(r.config.to_dict())} for r in results]
    df = pd.DataFrame(rows)
    df.attrs.update(suite_dir=str(suite.dir), table=table)
    return df


def _join_torchrun(suite):
    """The suite as one process of the world ``torchrun`` started it in (RANK, WORLD_SIZE and
    LOCAL_RANK set): the world joined, each run made by all of them (``nproc_per_run`` = WORLD_SIZE),
    one run at a time, each process with its share of this machine's threads. The suite itself
    outside torchrun (or in a world of one)."""
    env = distributed.torchrun_env()
    if env is None or env["WORLD_SIZE"] == 1 or distributed.current() is not None:
        return suite
    n, base = env["WORLD_SIZE"], suite.base
    if base.nproc_per_run not in (1, n):
        raise DMLBenchError(f"--nproc-per-run {base.nproc_per_run} under torchrun's {n} processes: leave it out "
                            "(torchrun's --nnodes and --nproc-per-node set the processes)")
    if suite.executor != "local" or suite.workers != 1:
        raise DMLBenchError("under torchrun, its processes make each run together, one run at a time: leave out "
                            "--executor and --workers")
    threads = max(1, (base.threads or default_threads()) // env["LOCAL_WORLD_SIZE"])
    if env["RANK"]:  # what the suite has to say, rank 0 says once
        logging.getLogger("dmlbench").setLevel(max(logging.ERROR, logging.getLogger("dmlbench").level))
    distributed.join_torchrun(base.device)
    return dataclasses.replace(suite, base=dataclasses.replace(base, nproc_per_run=n, threads=threads))


def tune(methods: Iterable[str] | str | None = None, dataset: str | None = None, *, trials: int = 30,
         folds: int = 1, validation: str | None = None, objective: str = "map@r", storage: str | None = None,
         space: str | Path | None = None, prune: bool = False, tune_seed: int = 0, timeout: float | None = None,
         preset: str | None = None, config: str | Path | None = None, sets: Iterable[str] = (),
         plugins: Iterable[str] = (), echo: Callable[[str], None] | None = echo_line, **options: Any) -> dict:
    """Tune each method on validation folds of the training set with an equal budget (Optuna TPE);
    returns tuned.json's content (per method: best settings and value, trial counts). Test the
    best settings with ``run(tuned=doc["suite_dir"])``."""
    flags = _options(methods, dataset, None, sets, options)
    suite, _ = suite_from_options(flags, config=config, preset=preset, plugins=tuple(plugins))
    opts = TuneOptions(trials=trials, folds=folds, validation=validation, objective=objective, storage=storage,
                       space=Path(space) if space else None, prune=prune, tune_seed=tune_seed, timeout=timeout,
                       run_flags=given_run_flags(flags))
    return tune_suite(suite, opts, echo=echo or (lambda line: None))


def compare(results_dir: str | Path = "results", metric: str = "map@r", alpha: float = 0.05) -> dict:
    """Ranks and pairwise tests of the methods under ``results_dir`` (paired t over seeds, and a
    paired bootstrap over test queries, Holm-corrected); over several datasets also the Friedman
    test and Nemenyi critical difference. ``format_compare`` prints it as ``bench compare`` does."""
    return compare_results(Path(results_dir), metric, alpha)


def _other_runs(suite_dir: Path, results: list) -> str:
    """The complete runs in the suite folder that this command did not plan, as 'N runs (labels)'."""
    mine = {str(Path(r.run_dir).resolve()) for r in results}
    runs = collect(suite_dir, recursive=False)
    if not len(runs):
        return ""
    other = runs[(runs["status"] == "done") & ~runs["run_dir"].map(lambda r: str(Path(r).resolve())).isin(mine)]
    if not len(other):
        return ""
    return f"{len(other)} complete run(s) ({', '.join(dict.fromkeys(other['label']))})"


NOT_CONFIG = ("provenance", "data", "weights_info")


def _config_columns(cfg: dict) -> dict:
    """A run's config as flat columns: ``method_params`` and ``data_options`` keys become
    ``method_params.KEY`` (so a tuned margin is a column of its own)."""
    out = {}
    for k, v in cfg.items():
        if k in NOT_CONFIG or k in ("method", "seed"):
            continue
        if isinstance(v, dict) and k in ("method_params", "data_options"):
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    out.update({f"{k}.{kk}.{x}": y for x, y in vv.items()})
                else:
                    out[f"{k}.{kk}"] = vv
        elif not isinstance(v, dict):
            out[k] = v
    return out


def load_results(path: str | Path = "results", suite: str | None = None) -> pd.DataFrame:
    """Every run folder under ``path`` (or ``path/<suite>`` where ``suite`` names a suite folder
    under a dataset folder): one row per run, with ``dataset``, ``method``, ``label`` (the table's
    row), ``seed``, ``status``, every metric and every config field as a column."""
    root = Path(path)
    if suite:
        hits = [root / suite] if (root / suite).is_dir() else sorted(p for p in root.glob(f"*/{suite}") if p.is_dir())
        if not hits:
            raise DMLBenchError(f"no suite folder {suite!r} under {root}; give the folder bench run wrote")
        root = hits[0]
    if not root.is_dir():
        raise DMLBenchError(f"results folder {root} does not exist; run `bench run` first or give its path")
    runs = collect(root)
    if not len(runs):
        return runs
    configs = runs.pop("options") if "options" in runs else None
    if configs is not None:
        flat = pd.DataFrame([_config_columns(c if isinstance(c, dict) else {}) for c in configs], index=runs.index)
        runs = runs.join(flat[[c for c in flat.columns if c not in runs.columns]])
    return runs.reset_index(drop=True)


def export(run_dir: str | Path, fmt: str = "safetensors", out: str | Path | None = None) -> Path:
    """Write a trained run's embedder (encoder and embedding head, its preprocessing in the
    metadata) as ``safetensors``, ``torchscript`` or ``onnx``; returns the file."""
    from dmlbench.running.export import FORMATS
    from dmlbench.running.export import export as export_run  # heavy: torch

    if fmt not in FORMATS:
        raise DMLBenchError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    return export_run(Path(run_dir), fmt, Path(out) if out else Path(run_dir) / f"embedder{FORMATS[fmt]}")


def load_embedder(path: str | Path):
    """``(module, preprocess)`` of an exported embedder: ``module(preprocess(image))`` embeds a PIL
    image or a uint8 array (or a batch of them)."""
    from dmlbench.running.export import load_embedder as load  # heavy: torch

    return load(Path(path))
