"""The ``bench`` command line: each command parses its flags and calls one library function.

``run`` and ``tune`` call :mod:`dmlbench.api`; ``table``, ``compare`` and ``plot`` the report
stage; ``list`` :mod:`dmlbench.catalog`. Their run options are generated from the one
``RunConfig`` dataclass and the executors' ``Options``, so each default is written once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from dmlbench import api
from dmlbench.catalog import KINDS, catalog
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.runtime import default_threads, limit_threads
from dmlbench.data import idx, resolve_data_dir
from dmlbench.executors import EXECUTORS, option_keys
from dmlbench.report.compare import compare_report
from dmlbench.report.plots.figures import plot_results
from dmlbench.report.table import table_text
from dmlbench.running.config import RunConfig, cli_fields
from dmlbench.tune import failed_methods, summary_table
from dmlbench.tune.options import TuneOptions

app = typer.Typer(help="dmlbench: compare deep metric-learning methods with one trainer and one evaluation suite.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # None: help text is literal, so "[default: X]" is not eaten as Rich markup


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
    """A line on stderr."""
    typer.echo(msg, err=True)


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


# ----------------------------------------------------------------------------- bench run / tune options

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


def _run_parameters() -> list[inspect.Parameter]:
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


def _suite_kwargs(kw: dict) -> dict:
    """The API's keyword arguments from a command's flags (``--set`` -> ``sets``, ``--plugin`` ->
    ``plugins``; None: not given)."""
    kw = dict(kw)
    kw["sets"], kw["plugins"] = kw.pop("set_") or [], kw.pop("plugin") or []
    return kw


def run(**kw):
    """Train and evaluate each (method, seed) on one dataset, then print the results table."""
    try:
        df = api.run(**_suite_kwargs(kw), echo=err)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(df.attrs["table"])
    err(f"table written to {Path(df.attrs['suite_dir']) / 'table.md'} and table.csv")
    bad = int((df["status"] == "failed").sum())
    if bad:
        err(f"error: {bad} of {len(df)} runs failed (see failed.json in their folders); fix the cause and re-run: "
            "complete runs are skipped")
        raise typer.Exit(1)


run.__signature__ = inspect.Signature(_run_parameters())
app.command()(user_errors(run))

TUNE_HELP = {
    "trials": "Trials per method, the same for every method (complete, pruned and failed ones count).",
    "folds": "Validation folds a trial averages over; 1: one fold of a 4-way partition.",
    "validation": "samples or classes folds. [default: classes where the test protocol is class-disjoint, else samples]",
    "objective": "The validation metric to optimise.",
    "storage": "Study storage: an SQLAlchemy URL (postgresql://...) or journal:PATH. [default: SQLite study.db in the "
               "suite folder]",
    "space": "A TOML file of search spaces, one [METHOD] table each, overriding the methods' own (bench list methods).",
    "prune": "Stop trials whose per-epoch validation score is below the median.",
    "tune_seed": "Seed of the folds, the sampler and the trial runs.",
    "timeout": "Seconds after which no new trial starts (running ones finish); re-running the command resumes the budget.",
}


def tune_(**kw):
    """Tune each method on validation folds of the training set with an equal budget (Optuna TPE), then
    `bench run --tuned SUITE_DIR` tests the best settings."""
    try:
        doc = api.tune(**_suite_kwargs(kw), echo=err)
    except KeyboardInterrupt:
        err("interrupted; finished trials are stored: re-run the same command to run the missing ones")
        raise typer.Exit(130) from None
    typer.echo(summary_table(doc))
    for name, why in failed_methods(doc).items():
        err(f"error: {name}: {why}; it has no settings to test. Fix the cause (see fail_reason in the study, "
            f"the runs under {Path(doc['suite_dir']) / 'trials'}) and tune it again with a new --suite")
    if failed_methods(doc):
        raise typer.Exit(1)


def _tune_parameters() -> list[inspect.Parameter]:
    """``bench run``'s options (less --seeds and --tuned), then the tuner's (from TuneOptions)."""
    params = [p for p in _run_parameters() if p.name not in ("seeds", "tuned")]
    hints = typing.get_type_hints(TuneOptions)
    for f in dataclasses.fields(TuneOptions):
        if f.name in TUNE_HELP:
            tp = hints[f.name]
            tp = Optional[Path] if f.name == "space" else tp
            params.append(_option(f.name, tp, f.default, TUNE_HELP[f.name]))
    return params


tune_.__signature__ = inspect.Signature(_tune_parameters())
app.command("tune")(user_errors(tune_))


# ----------------------------------------------------------------------------- reading results

ResultsDir = Annotated[Path, typer.Argument(help="A results folder (all datasets) or one dataset's folder.")]


@app.command()
@user_errors
def table(
    results_dir: ResultsDir = Path("results"),
    format: Annotated[str, typer.Option("--format", help="markdown, csv or latex.")] = "markdown",
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated metric names, or 'all'. [default: triplet_acc, triplet_acc_margin, recall@1, map@r, knn_acc, svm_acc, recon_error]")] = None,
    spread: Annotated[str, typer.Option(help="What follows each mean: ci (± half-width of the 95% t-interval), std "
                                             "(± standard deviation), interval ([low, high] of the 95% t-interval) "
                                             "or none.")] = "ci",
):
    """Aggregate run folders: one row per (dataset, method), the mean over seeds ± the half-width of
    its 95% t-interval (--spread for another; the csv format holds the std and half-width)."""
    typer.echo(table_text(results_dir, format, metrics, spread))


@app.command()
@user_errors
def compare(
    results_dir: Annotated[Path, typer.Argument(help="A results folder (one or several datasets).")] = Path("results"),
    metric: Annotated[str, typer.Option(help="The metric to compare on.")] = "map@r",
    alpha: Annotated[float, typer.Option(help="Significance level, after Holm's correction.")] = 0.05,
    cd_plot: Annotated[Optional[Path], typer.Option(help="Write the critical-difference diagram (several datasets) to this PNG.")] = None,
):
    """Rank the methods and say, for each pair, whether the difference is significant."""
    typer.echo(compare_report(results_dir, metric, alpha, cd_plot))
    if cd_plot is not None:
        err(f"written {cd_plot}")


@app.command()
@user_errors
def plot(
    results_dir: ResultsDir = Path("results"),
    out: Annotated[Optional[Path], typer.Option(help="Folder for the PNGs. [default: each dataset's results folder/plots]")] = None,
    projection: Annotated[str, typer.Option(help="tsne or pca, for embeddings.png.")] = "tsne",
    threads: Annotated[Optional[int], typer.Option(help="Threads for t-SNE/BLAS. [default: all cores, at most 8]")] = None,
):
    """Draw the figures (embeddings, reconstructions, confusion matrices, loss curves, metrics, trade-off) as PNGs."""
    limit_threads(threads or default_threads())
    for path in plot_results(results_dir, out, projection):
        typer.echo(str(path))


@app.command("list")
@user_errors
def list_(what: Annotated[str, typer.Argument(help=f"{', '.join(KINDS[:-1])} or all.")] = "all",
          plugin: Annotated[Optional[list[str]], typer.Option(help="A Python file or module to import first (its "
                                                                   "methods are listed too); repeatable.")] = None):
    """List the registered methods, datasets, metrics, encoders, executors and presets."""
    typer.echo(catalog(what, plugin or []))


@app.command()
@user_errors
def download(
    name: Annotated[str, typer.Argument(help="mnist or fashion-mnist.")],
    data_dir: Annotated[Optional[str], typer.Option(help="Target folder. [default: $DMLBENCH_DATA_DIR, else ~/.cache/dmlbench]")] = None,
):
    """Download MNIST or Fashion-MNIST with torchvision (optional) into the data folder."""
    typer.echo(f"downloaded {name} into {idx.download(name, resolve_data_dir(data_dir))}")


def main() -> None:
    """The ``bench`` console script."""
    app()


if __name__ == "__main__":
    main()
