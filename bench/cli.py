"""The ``bench`` command line: each command parses its flags and calls one library function.

``run`` and ``tune`` call :mod:`dmlbench.api`; ``table``, ``compare`` and ``plot`` the report
stage; ``list`` :mod:`dmlbench.catalog`. Their run options are generated from the one
``RunConfig`` dataclass and the executors' ``Options``, so each default is written once.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dmlbench import api
from dmlbench.catalog import KINDS, catalog
from dmlbench.cli_options import run_parameters, tune_parameters
from dmlbench.core.errors import DiskFullError, DMLBenchError, is_disk_full
from dmlbench.core.runtime import default_threads, limit_threads
from dmlbench.data import idx, resolve_data_dir
from dmlbench.report.compare import compare_report
from dmlbench.report.plots.figures import plot_results
from dmlbench.report.table import table_text
from dmlbench.tune import failed_methods, summary_table

app = typer.Typer(help="dmlbench: compare deep metric-learning methods with one trainer and one evaluation suite.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # None: help text is literal, so "[default: X]" is not eaten as Rich markup


def user_errors(fn):
    """Report DMLBenchError as one line on stderr and exit 2, with no traceback; a full disk
    anywhere too. Under ``bench -v``, an error raised from a library's (a full disk's OSError, a
    storage's) first logs that traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DMLBenchError, OSError) as e:
            if isinstance(e, OSError) and not is_disk_full(e):
                raise
            if isinstance(e, OSError) or e.__cause__ is not None:
                logging.getLogger("dmlbench").info("the error below came from:", exc_info=e)
            if isinstance(e, OSError):  # a writer that did not turn it into one line itself
                e = DiskFullError.of(e)
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


run.__signature__ = inspect.Signature(run_parameters())
app.command()(user_errors(run))


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


tune_.__signature__ = inspect.Signature(tune_parameters())
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
