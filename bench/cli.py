"""The ``bench`` command line: thin Typer commands over the library functions."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dmlbench.running.config import RunConfig, cli_fields
from dmlbench.core.errors import DMLBenchError

app = typer.Typer(help="dmlbench: compare deep metric-learning methods with one trainer and one evaluation suite.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # None: help text is literal, so "[default: X]" is not eaten as Rich markup

LIST_WHAT = ("methods", "datasets", "metrics", "encoders", "presets", "all")


def user_errors(fn):
    """Report DMLBenchError as one line on stderr and exit 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DMLBenchError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def err(msg: str) -> None:
    typer.echo(msg, err=True)


def load_plugin(spec: str) -> None:
    """Import a user's method module (a .py file or an importable module name)."""
    import importlib
    import importlib.util

    try:
        if spec.endswith(".py"):
            path = Path(spec)
            if not path.is_file():
                raise DMLBenchError(f"plugin file {spec} does not exist")
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
    except DMLBenchError:
        raise
    except Exception as e:
        raise DMLBenchError(f"cannot import plugin {spec}: {type(e).__name__}: {e}") from None


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every epoch's loss terms to stderr.")] = False):
    # Only dmlbench's own logger: libraries (faiss, matplotlib) keep their chatter to themselves.
    logger = logging.getLogger("dmlbench")
    for h in [h for h in logger.handlers if getattr(h, "_dmlbench_cli", False)]:
        logger.removeHandler(h)  # a previous in-process invocation's stream may be closed
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._dmlbench_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


# ----------------------------------------------------------------------------- bench run

SUITE_OPTIONS = [
    ("methods", Optional[str], "Comma-separated method names, or pml:<LossName>. [default: all six; raw is always added]", None),
    ("seeds", Optional[str], "Comma-separated seeds, one run each. [default: 0]", None),
    ("out", Optional[Path], "Results folder. [default: results]", None),
    ("suite", Optional[str], "A name for this suite: its runs and table go to OUT/<dataset>/<suite>/.", None),
    ("workers", Optional[str], "Runs at once (a number, or auto: 4 per GPU, 1 per 4 CPU cores); the thread budget is split between them. [default: 1]", None),
    ("devices", Optional[str], "Comma-separated devices to spread the runs over, e.g. cuda:0,cuda:1. [default: --device]", None),
    ("executor", Optional[str], "local (this machine) or ray (a Ray cluster; pip install 'dmlbench[ray]'). [default: local]", None),
    ("ray_address", Optional[str], "Ray cluster: auto or HOST:PORT. [default: $RAY_ADDRESS, else a local Ray instance]", None),
    ("gpus_per_run", Optional[float], "GPU fraction per Ray task (0.25 packs four runs on a GPU). [default: 0]", None),
]


def _typer_type(f: dataclasses.Field):
    """The Typer-facing type of a RunConfig field: Literal choices and unions become str/int/float."""
    import typing

    tp = typing.get_type_hints(RunConfig)[f.name]
    if typing.get_origin(tp) is typing.Literal:
        return str
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = args[0]
    if typing.get_origin(base) is typing.Literal:
        return str
    return base


def _run_parameters() -> list[inspect.Parameter]:
    """``bench run``'s options: the suite's, then one per RunConfig field (help and defaults from there)."""
    params = []
    for name, tp, help_, default in SUITE_OPTIONS:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[tp, typer.Option(help=help_)]))
    for f in cli_fields():
        tp = _typer_type(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f.metadata["help"]
        if "[default:" not in help_ and default is not None:
            help_ += f" [default: {default}]"
        flag = "--" + f.name.replace("_", "-")
        decl = (f"{flag}/--no-{f.name.replace('_', '-')}",) if tp is bool else (flag,)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[tp], typer.Option(*decl, help=help_)]))
    params += [
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[list[str]], typer.Option("--set", help="Method option METHOD.KEY=VALUE (e.g. tvae.weights.triplet=10), "
                                                              "or data.KEY=VALUE; repeatable.")]),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option(help="A TOML suite file with the same keys as these flags; flags override it.")]),
        inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option(help="A suite shipped with dmlbench (see `bench list presets`).")]),
        inspect.Parameter("tuned", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option(help="A tuned suite folder (bench tune): each method runs with its best "
                                              "validation settings from there.")]),
        inspect.Parameter("reuse_stale", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option(help="Keep complete runs made by other code or libraries instead of re-running them.")]),
        inspect.Parameter("plugin", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[list[str]], typer.Option(help="A Python file or module to import first (its @register_method "
                                                   "classes can then run); repeatable.")]),
    ]
    return params


def given_run_flags(flags: dict) -> dict:
    """The tunable run keys (lr, ...) given on the command line: a tune fixes them, and a tuned
    run refuses one that its tuned value would replace."""
    from dmlbench.core.space import RUN_KEYS

    return {k: flags[k] for k in RUN_KEYS if flags.get(k) is not None}


def run(**kw):
    """Train and evaluate each (method, seed) on one dataset, then print the results table."""
    from dmlbench.core.runtime import limit_threads
    from dmlbench.running.suite import read_toml, resolve_suite, run_suite
    from dmlbench.report.table import write_tables

    for p in kw.pop("plugin") or []:
        load_plugin(p)
    config, preset, tuned = kw.pop("config"), kw.pop("preset"), kw.pop("tuned")
    flags = {k: v for k, v in kw.items() if k != "set_"}
    flags["set"] = kw["set_"]
    if flags.get("out") is not None:
        flags["out"] = str(flags["out"])
    flags["reuse_stale"] = flags["reuse_stale"] or None
    file_values = read_toml(config, preset)
    suite = resolve_suite(file_values, flags)
    if tuned is not None:
        from dmlbench.tune import apply_tuned

        suite = apply_tuned(suite, tuned, seeds_given=flags.get("seeds") is not None or "seeds" in file_values,
                            run_flags=given_run_flags(flags))
    suite.base.resolved().check()  # bad values fail here, before any thread pool or data is touched
    # The driver imports no torch: the executor sets each run's threads where it runs (in this
    # process for one worker), so a pool's workers do not wait for a third `import torch`.
    limit_threads(suite.base.threads)
    done: list = []
    total = [0]

    def start(suite, data, planned) -> None:
        total[0] = len(planned)
        b = planned[0].config
        err(f"running {', '.join(suite.methods)} on {b.dataset} ({len(data.train)} train / {len(data.test)} test, "
            f"{b.encoder} encoder, {b.steps} steps) with seeds {','.join(map(str, suite.seeds))} -> {suite.dir}")

    def report(r) -> None:
        done.append(r)
        head = f"[{len(done)}/{total[0]}] {r.config.method} seed {r.config.seed}"
        if r.status == "failed":
            err(f"{head}: {r.status.upper()}: {r.reason}")
        else:
            m = r.metrics
            err(f"{head}: {r.status} (triplet_acc {m.get('triplet_acc', float('nan')):.4f}, "
                f"recall@1 {m.get('recall@1', float('nan')):.4f}) {r.run_dir}")

    try:
        results = run_suite(suite, on_result=report, on_start=start)
    except KeyboardInterrupt:
        from dmlbench.core.runtime import shutdown_ray

        shutdown_ray()  # now, not in Ray's exit hook, where a second Ctrl-C prints a traceback
        err(f"interrupted after {len(done)} run(s); finished runs are saved: re-run the same command to resume")
        raise typer.Exit(130) from None
    typer.echo(write_tables(suite.dir))
    err(f"table written to {suite.dir / 'table.md'} and table.csv")
    bad = [r for r in results if r.status == "failed"]
    if bad:
        err(f"error: {len(bad)} of {len(results)} runs failed (see failed.json in their "
            "folders); fix the cause and re-run: complete runs are skipped")
        raise typer.Exit(1)


run.__signature__ = inspect.Signature(_run_parameters())
app.command()(user_errors(run))


@app.command()
@user_errors
def table(
    results_dir: Annotated[Path, typer.Argument(help="A results folder (all datasets) or one dataset's folder.")] = Path("results"),
    format: Annotated[str, typer.Option("--format", help="markdown, csv or latex.")] = "markdown",
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated metric names, or 'all'. [default: triplet_acc, triplet_acc_margin, recall@1, map@r, knn_acc, svm_acc, recon_error]")] = None,
    spread: Annotated[str, typer.Option(help="What follows each mean: ci (± half-width of the 95% t-interval), std "
                                             "(± standard deviation), interval ([low, high] of the 95% t-interval) "
                                             "or none.")] = "ci",
):
    """Aggregate run folders: one row per (dataset, method), the mean over seeds ± the half-width of
    its 95% t-interval (--spread for another; the csv format holds the std and half-width)."""
    from dmlbench.evaluation.metrics import METRICS
    from dmlbench.report.table import aggregate, collect, format_table

    if results_dir.exists() and not results_dir.is_dir():
        raise DMLBenchError(f"{results_dir} is a file, not a results folder; give the folder bench run wrote "
                            "(e.g. results/digits)")
    if not results_dir.is_dir():
        raise DMLBenchError(f"results folder {results_dir} does not exist; run `bench run` first or give its path")
    names = None
    if metrics:
        known = METRICS.names()
        names = known if metrics == "all" else [m.strip() for m in metrics.split(",")]
        bad = [m for m in names if m not in known]
        if bad:
            raise DMLBenchError(f"unknown metric(s) {', '.join(bad)}; known: {', '.join(known)}")
    from dmlbench.report.table import failures

    runs = collect(results_dir)
    from dmlbench.report.table import SPREADS, legend

    if spread not in SPREADS:
        raise DMLBenchError(f"--spread {spread!r} is not one of: {', '.join(SPREADS)}")
    text = format_table(aggregate(runs, names), format, names, spread=spread)
    if format == "markdown":
        text += "\n" + legend(spread) + "\n"
    fails = failures(runs)
    if fails and format == "markdown":
        text += "\nRuns left out (failed or unreadable):\n" + "".join(f"- {f}\n" for f in fails)
    elif fails:
        err(f"{len(fails)} run(s) failed or unreadable, left out of the table: " + "; ".join(fails))
    typer.echo(text)


@app.command()
@user_errors
def compare(
    results_dir: Annotated[Path, typer.Argument(help="A results folder (one or several datasets).")] = Path("results"),
    metric: Annotated[str, typer.Option(help="The metric to compare on.")] = "map@r",
    alpha: Annotated[float, typer.Option(help="Significance level, after Holm's correction.")] = 0.05,
    cd_plot: Annotated[Optional[Path], typer.Option(help="Write the critical-difference diagram (several datasets) to this PNG.")] = None,
):
    """Rank the methods and say, for each pair, whether the difference is significant."""
    from dmlbench.report.compare import compare as run_compare
    from dmlbench.report.compare import format_compare
    from dmlbench.evaluation.metrics import METRICS

    if not 0 < alpha < 1:
        raise DMLBenchError(f"--alpha {alpha} must lie between 0 and 1 (e.g. 0.05)")
    if metric in METRICS.names() and not METRICS.get(metric).comparable:
        raise DMLBenchError(f"{metric} depends on a setting (not on the method alone) and is never ranked; "
                            "compare on another metric, e.g. --metric map@r")
    if results_dir.is_file():
        raise DMLBenchError(f"{results_dir} is a file, not a results folder; give the folder bench run wrote "
                            "(e.g. results/digits)")
    if cd_plot is not None and (cd_plot.is_dir() or not cd_plot.parent.is_dir()):
        raise DMLBenchError(f"--cd-plot {cd_plot}: give a PNG file path in an existing folder"
                            + (" (that is a folder)" if cd_plot.is_dir() else ""))
    result = run_compare(results_dir, metric, alpha)
    if cd_plot is not None and result["friedman"] is None:  # refused before anything is printed
        raise DMLBenchError("a critical-difference diagram needs at least 2 datasets and 3 methods that every "
                            "dataset has; leave out --cd-plot")
    typer.echo(format_compare(result))
    if cd_plot is not None:
        from dmlbench.report.plots.cd import cd_diagram

        cd_diagram(result["friedman"], cd_plot, title=f"{metric}: average ranks")
        err(f"written {cd_plot}")


@app.command()
@user_errors
def plot(
    results_dir: Annotated[Path, typer.Argument(help="A results folder (all datasets) or one dataset's folder.")] = Path("results"),
    out: Annotated[Optional[Path], typer.Option(help="Folder for the PNGs. [default: each dataset's results folder/plots]")] = None,
    projection: Annotated[str, typer.Option(help="tsne or pca, for embeddings.png.")] = "tsne",
    threads: Annotated[Optional[int], typer.Option(help="Threads for t-SNE/BLAS. [default: all cores, at most 8]")] = None,
):
    """Draw the figures (embeddings, reconstructions, confusion matrices, loss curves, metrics, trade-off) as PNGs."""
    from dmlbench.report.plots.figures import plot_results
    from threadpoolctl import threadpool_limits

    from dmlbench.core.runtime import default_threads

    threadpool_limits(threads or default_threads())
    for path in plot_results(results_dir, out, projection):
        typer.echo(str(path))


@app.command("list")
@user_errors
def list_(what: Annotated[str, typer.Argument(help="methods, datasets, metrics, encoders, presets or all.")] = "all",
          plugin: Annotated[Optional[list[str]], typer.Option(help="A Python file or module to import first (its "
                                                                   "methods are listed too); repeatable.")] = None):
    """List the registered methods, datasets, metrics, encoders and presets."""
    if what not in LIST_WHAT:
        raise DMLBenchError(f"cannot list {what!r}; use one of: {', '.join(LIST_WHAT)}")
    for p in plugin or []:
        load_plugin(p)
    import json

    if what in ("methods", "all"):
        from dmlbench.methods import get_method, method_names

        typer.echo("Methods (also pml:<LossName> for any pytorch-metric-learning loss):")
        from dmlbench.core.space import describe

        for name in method_names():
            d = get_method(name).describe()
            typer.echo(f"  {name}\n    paper:    {d['paper']}\n    loss:     {d['formula']}\n"
                       f"    defaults: {json.dumps(d['defaults'])}"
                       + (f"\n    space:    {describe(d['space'])}" if d["space"] else ""))
        from dmlbench.methods.pml import FAILS, MAIN_PARAMS
        from dmlbench.core.space import LR

        typer.echo("  pml:<LossName>: any of these pytorch-metric-learning losses; space: lr, plus its main parameters")
        typer.echo(f"    lr ~ {LR['lr']}")
        width = max(map(len, MAIN_PARAMS))
        for loss, space in sorted(MAIN_PARAMS.items()):
            what = (f"refused: fails in pytorch-metric-learning 2.9 ({FAILS[loss].split(' (')[0]})" if loss in FAILS
                    else describe(space) if space else "(lr only)")
            typer.echo(f"    pml:{loss:{width}s} {what}")
    if what in ("datasets", "all"):
        from dmlbench.data import DATASETS, resolve_data_dir

        typer.echo(f"Datasets (data folder: {resolve_data_dir()}):")
        for name in DATASETS.names():
            s = DATASETS.get(name)
            typer.echo(f"  {name:14s} {s.description}\n    size {s.size}; classes {s.classes}; input {s.input_shape}; "
                       f"read from {s.where}")
    if what in ("metrics", "all"):
        from dmlbench.evaluation.metrics import METRICS

        typer.echo("Metrics:")
        for m in (METRICS.get(n) for n in METRICS.names()):
            typer.echo(f"  {m.name:20s} {'(lower is better) ' if not m.higher_is_better else ''}{m.description}")
    if what in ("encoders", "all"):
        from dmlbench.training.encoders import ENCODERS

        typer.echo("Encoders:")
        for name in ENCODERS.names():
            typer.echo(f"  {name:10s} {ENCODERS.get(name).description}")
    if what in ("presets", "all"):
        typer.echo("Presets (bench run --preset NAME):")
        from dmlbench.running.suite import preset_names, preset_text

        for name in preset_names():
            text = preset_text(name)
            first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
            typer.echo(f"  {name:16s} {first}")


@app.command()
@user_errors
def download(
    name: Annotated[str, typer.Argument(help="mnist or fashion-mnist.")],
    data_dir: Annotated[Optional[str], typer.Option(help="Target folder. [default: $DMLBENCH_DATA_DIR, else ~/.cache/dmlbench]")] = None,
):
    """Download MNIST or Fashion-MNIST with torchvision (optional) into the data folder."""
    from dmlbench.data import idx, resolve_data_dir

    if name not in ("mnist", "fashion-mnist"):
        raise DMLBenchError(f"cannot download {name!r}; bench download knows mnist and fashion-mnist")
    typer.echo(f"downloaded {name} into {idx.download(name, resolve_data_dir(data_dir))}")


TUNE_OPTIONS = [
    ("trials", int, typer.Option(help="Trials per method, the same for every method (complete, pruned and failed "
                                      "ones count).")),
    ("folds", int, typer.Option(help="Validation folds a trial averages over; 1: one fold of a 4-way partition.")),
    ("validation", Optional[str], typer.Option(help="samples or classes folds. [default: classes where the test "
                                                    "protocol is class-disjoint, else samples]")),
    ("objective", str, typer.Option(help="The validation metric to optimise.")),
    ("storage", Optional[str], typer.Option(help="Study storage: an SQLAlchemy URL (postgresql://...) or "
                                                 "journal:PATH. [default: SQLite study.db in the suite folder]")),
    ("space", Optional[Path], typer.Option(help="A TOML file of search spaces, one [METHOD] table each, overriding "
                                                "the methods' own (bench list methods).")),
    ("prune", bool, typer.Option(help="Stop trials whose per-epoch validation score is below the median.")),
    ("tune_seed", int, typer.Option(help="Seed of the folds, the sampler and the trial runs.")),
    ("timeout", Optional[float], typer.Option(help="Seconds after which no new trial starts (running ones finish); "
                                                   "re-running the command resumes the budget.")),
]
TUNE_DEFAULTS = {"trials": 30, "folds": 1, "validation": None, "objective": "map@r", "storage": None, "space": None,
                 "prune": False, "tune_seed": 0, "timeout": None}


def tune_(**kw):
    """Tune each method on validation folds of the training set with an equal budget (Optuna TPE), then
    `bench run --tuned SUITE_DIR` tests the best settings."""
    from dmlbench.running.suite import read_toml, resolve_suite
    from dmlbench.tune import TuneOptions, summary_table, tune
    from dmlbench.tune.summary import failed_methods

    for p in kw.pop("plugin") or []:
        load_plugin(p)
    opts = TuneOptions(**{k: kw.pop(k) for k in TUNE_DEFAULTS})
    config, preset = kw.pop("config"), kw.pop("preset")
    flags = {k: v for k, v in kw.items() if k != "set_"}
    flags["set"] = kw["set_"]
    if flags.get("out") is not None:
        flags["out"] = str(flags["out"])
    flags["reuse_stale"] = flags["reuse_stale"] or None
    suite = resolve_suite(read_toml(config, preset), flags)
    opts.run_flags = given_run_flags(flags)
    try:
        doc = tune(suite, opts, echo=err)
    except KeyboardInterrupt:
        from dmlbench.core.runtime import shutdown_ray

        shutdown_ray()
        err("interrupted; finished trials are stored: re-run the same command to run the missing ones")
        raise typer.Exit(130) from None
    typer.echo(summary_table(doc))
    failed = failed_methods(doc)
    if failed:
        for name, why in failed.items():
            err(f"error: {name}: {why}; it has no settings to test. Fix the cause (see fail_reason in the study, "
                f"the runs under {Path(doc['suite_dir']) / 'trials'}) and tune it again with a new --suite")
        raise typer.Exit(1)


def _tune_parameters() -> list[inspect.Parameter]:
    """``bench run``'s options (less --seeds and --tuned), then the tuner's."""
    params = [p for p in _run_parameters() if p.name not in ("seeds", "tuned")]
    for name, tp, option in TUNE_OPTIONS:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=TUNE_DEFAULTS[name],
                                        annotation=Annotated[tp, option]))
    return params


tune_.__signature__ = inspect.Signature(_tune_parameters())
app.command("tune")(user_errors(tune_))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
