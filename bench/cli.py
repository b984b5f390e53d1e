"""The ``bench`` command line: each command parses its flags and calls one library function
(:mod:`dmlbench.api`, the report stage, :mod:`dmlbench.catalog`); the options of ``run`` and
``tune`` are generated (:mod:`dmlbench.cli_options`), so each default is written once."""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Annotated

import typer

from dmlbench import __version__
from dmlbench import cli_options as opt
from dmlbench.cli_options import run_parameters, tune_parameters
from dmlbench.core.errors import DMLBenchError, user_error
from dmlbench.core.runtime import default_threads, limit_threads, log_to_stderr

# Each command imports its library function when it runs: `bench table` answers without loading
# torch, Optuna, matplotlib or the runner.

app = typer.Typer(help="dmlbench: compare deep metric-learning methods with one trainer and one evaluation suite.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode="markdown")  # markdown: option panels, examples as code blocks, [brackets] literal


def user_errors(fn):
    """Report DMLBenchError as one line on stderr and exit 2, with no traceback; a full disk
    anywhere too (under ``-v``, the traceback of what raised it goes to the log). ``-v`` is taken
    after the command (``bench run -v``) as well as before it."""

    @functools.wraps(fn)
    def wrapper(*args, verbose: bool = False, **kwargs):
        if verbose:
            logging.getLogger("dmlbench").setLevel(logging.INFO)
        try:
            return fn(*args, **kwargs)
        except (DMLBenchError, OSError) as e:
            shown = user_error(e)
            if shown is None:  # a bug: its traceback
                raise
            typer.echo(f"error: {shown}", err=True)
            raise typer.Exit(2) from None

    sig = inspect.signature(fn, eval_str=True)  # (this module's annotations are strings)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), inspect.Parameter(
        "verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=opt.Verbose)])
    return wrapper


def err(msg: str) -> None:
    """A line on stderr."""
    typer.echo(msg, err=True)


def _version(value: bool) -> None:  # --version
    if value:
        typer.echo(f"dmlbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(verbose: opt.Verbose = False, version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print dmlbench's version and exit.")] = False):
    log_to_stderr(logging.INFO if verbose else logging.WARNING, fresh=True)


def _suite_kwargs(kw: dict) -> dict:
    """The API's keyword arguments from a command's flags (``--set`` -> ``sets``, ``--plugin`` ->
    ``plugins``; None: not given)."""
    kw = dict(kw)
    kw["sets"], kw["plugins"] = kw.pop("set_") or [], kw.pop("plugin") or []
    return kw


def run(**kw):
    """Train and evaluate each (method, seed) on one dataset, then print the results table.

    ```
    bench run                                                # every method on the bundled digits
    bench run --methods tvae,siamese --dataset mnist --seeds 0,1,2
    bench run --preset mnist-all --workers 2
    bench run --methods triplet-hinge --set triplet-hinge.margin=0.5 --lr 3e-4
    bench run --tuned results/mnist/tune                     # test what bench tune chose
    bench run --dataset folder:~/photos --encoder timm:resnet50 --pretrained
    ```
    """
    from dmlbench import api

    try:
        df = api.run(**_suite_kwargs(kw), echo=err)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if df.attrs["table"]:  # (under torchrun, rank 0 writes and prints the table, and says what failed)
        typer.echo(df.attrs["table"])
        err(f"table written to {Path(df.attrs['suite_dir']) / 'table.md'} and table.csv")
    if df.attrs["table"] and (bad := int((df["status"] == "failed").sum())):
        err(f"error: {bad} of {len(df)} runs failed (see failed.json in their folders); fix the cause and re-run: "
            "complete runs are skipped")
        raise typer.Exit(1)


def tune_(**kw):
    """Tune each method on validation folds of the training set, with the same budget for every method.

    Optuna TPE, `--trials` per method; the test set is never read. Then `bench run --tuned SUITE_DIR`
    retrains the best settings and tests them.

    ```
    bench tune --methods siamese,triplet-hinge --dataset mnist --trials 30 --workers 2
    bench tune --preset mnist-tuned --timeout 3600        # resume later with the same command
    bench run --tuned results/mnist/tune
    ```
    """
    from dmlbench import api
    from dmlbench.tune.summary import failed_methods, summary_table

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


run.__signature__ = inspect.Signature(run_parameters())
tune_.__signature__ = inspect.Signature(tune_parameters())
app.command(short_help="Train and evaluate each (method, seed) on one dataset; print the table.")(user_errors(run))
app.command("tune", short_help="Tune every method with the same budget on validation folds (Optuna).")(
    user_errors(tune_))


# ----------------------------------------------------------------------------- reading results


@app.command(short_help="One results table of every run under a folder: mean ± 95% CI, bold = best.")
@user_errors
def table(results_dir: opt.ResultsDir = Path("results"), format: opt.TableFormat = "markdown",
          metrics: opt.Metrics = None, spread: opt.Spread = "ci"):
    """Aggregate run folders: one row per (dataset, method configuration), the mean over seeds ± the
    half-width of its 95% t-interval (`--spread` for another; csv holds the std and half-width).

    ```
    bench table results/mnist/mnist-all
    bench table results --format latex --metrics triplet_acc,recall@1,map@r
    ```
    """
    from dmlbench.report.table import table_text

    typer.echo(table_text(results_dir, format, metrics, spread))


@app.command(short_help="Which differences between methods are significant (paired tests, Holm).")
@user_errors
def compare(results_dir: opt.ResultsDirs = [Path("results")], metric: opt.Metric = "map@r",  # noqa: B006
            alpha: opt.Alpha = 0.05, cd_plot: opt.CdPlot = None):
    """Rank the methods and say, for each pair, whether the difference is significant, and what
    difference its seeds could detect.

    ```
    bench compare results/mnist/mnist-tuned --metric map@r
    bench compare results/digits/digits-all results/mnist/mnist-all --cd-plot cd.png   # Friedman + Nemenyi
    ```
    """
    from dmlbench.report.compare import compare_report

    typer.echo(compare_report(results_dir, metric, alpha, cd_plot))
    if cd_plot is not None:
        err(f"written {cd_plot}")


@app.command(short_help="Draw the figures of a results folder (png, pdf or svg).")
@user_errors
def plot(results_dir: opt.ResultsDir = Path("results"), out: opt.PlotsOut = None, projection: opt.Projection = "tsne",
         threads: opt.Threads = None, format: opt.FigureFormat = "png", dpi: opt.Dpi = 150):
    """Draw the figures (embeddings, reconstructions, confusion matrices, loss curves, metrics,
    trade-off).

    ```
    bench plot results/mnist/tvae-paper --format pdf --dpi 300
    ```
    """
    from dmlbench.report.plots.figures import plot_results

    limit_threads(threads or default_threads())
    for path in plot_results(results_dir, out, projection, fmt=format, dpi=dpi):
        typer.echo(str(path))


@app.command(short_help="One suite's report: report.md and a self-contained report.html.")
@user_errors
def report(results_dir: opt.ResultsDir, suite: opt.SuiteName = None, metric: opt.Metric = "map@r",
           format: opt.FigureFormat = "png", dpi: opt.Dpi = 150):
    """Write a suite's report: the table with its budgets, the statistics and their power, tuning
    curves, figures, a retrieval gallery and the provenance.

    ```
    bench report results/mnist --suite mnist-tuned
    bench report results/digits
    ```
    """
    from dmlbench.report.build import build_report

    for path in build_report(results_dir, suite, fmt=format, dpi=dpi, metric=metric):
        typer.echo(str(path))


@app.command(short_help="A trained run's embedder alone: safetensors, TorchScript or ONNX.")
@user_errors
def export(run_dir: opt.RunDir, format: opt.ExportFormat = "safetensors", out: opt.ExportOut = None):
    """Write a run's embedder, its preprocessing in the metadata (`dmlbench.load_embedder` reads it).

    ```
    bench export results/digits/siamese/s0-1a2b3c4d5e --format onnx --out siamese.onnx
    ```
    """
    from dmlbench import api

    typer.echo(str(api.export(run_dir, format, out)))


@app.command("list", short_help="List methods, datasets, metrics, encoders, executors and presets.")
@user_errors
def list_(what: opt.ListWhat = "all", plugin: opt.Plugins = None):
    """List the registered methods (paper, loss, defaults, search space), datasets, metrics,
    encoders, executors and presets.

    ```
    bench list methods
    bench list methods --plugin my_loss.py
    ```
    """
    from dmlbench.catalog import catalog

    typer.echo(catalog(what, plugin or []))


@app.command(short_help="Download MNIST or Fashion-MNIST (needs torchvision).")
@user_errors
def download(name: opt.DownloadName, data_dir: opt.DataDir = None):
    """Download MNIST or Fashion-MNIST with torchvision (optional) into the data folder.

    ```
    bench download mnist --data-dir ~/data
    ```
    """
    from dmlbench.data import idx, resolve_data_dir

    typer.echo(f"downloaded {name} into {idx.download(name, resolve_data_dir(data_dir))}")


def main() -> None:
    """The ``bench`` console script."""
    app()


if __name__ == "__main__":
    main()
