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
    ("methods", str, "NAMES", "Comma-separated method names, or pml:LossName. [default: all six; the raw floor is "
                              "always added]"),
    ("seeds", str, "SEEDS", "Comma-separated seeds, one run each. [default: 0]"),
    ("out", Path, "DIR", "Results folder. [default: results]"),
    ("suite", str, "NAME", "A name for this suite: its runs and table go to OUT/DATASET/NAME/."),
    ("workers", str, "N", "Runs at once (a number, or auto: 4 per GPU, 1 per 4 CPU cores); the thread budget is split "
                          "between them. [default: 1]"),
    ("devices", str, "DEVICES", "Comma-separated devices to spread the runs over, e.g. cuda:0,cuda:1. "
                                "[default: --device]"),
    ("table_metrics", str, "NAMES", "The table's metric columns, comma-separated (bench list metrics). [default: "
                                    "the registry's default metrics]"),
    ("executor", str, "NAME", "Where runs are made: local (this machine) or ray (a Ray cluster; pip install "
                              "'dmlbench[ray]'); bench list executors. [default: local]"),
]
EXTRA_OPTIONS = [
    ("set_", Optional[list[str]], None, ("--set",), "METHOD.KEY=VALUE",
     "Method option (e.g. tvae.weights.triplet=10), or data.KEY=VALUE; repeatable."),
    ("config", Optional[Path], None, (), "FILE", "A TOML suite file with the same keys as these flags; flags "
                                                 "override it."),
    ("preset", Optional[str], None, (), "NAME", "A suite shipped with dmlbench (bench list presets)."),
    ("tuned", Optional[Path], None, (), "DIR", "A tuned suite folder (bench tune): each method runs with its best "
                                               "validation settings from there."),
    ("reuse_stale", bool, False, (), None, "Keep complete runs made by other code or libraries instead of re-running "
                                           "them."),
    ("plugin", Optional[list[str]], None, (), "FILE", "A Python file or module to import first (its registered "
                                                      "methods, encoders, metrics, datasets or executors can then be "
                                                      "used); repeatable."),
]
# Which panel of `bench run --help` an option goes in (the rest: Training).
PANELS = {
    "Suite": ("methods", "seeds", "set_", "config", "preset", "tuned", "out", "suite", "reuse_stale", "plugin",
              "table_metrics"),
    "Data": ("dataset", "split", "normalize", "data_seed", "data_dir", "image_size"),
    "Model": ("encoder", "embedder", "embedding_dim", "pretrained", "weights", "freeze_bn"),
    "Training": (),
    "Evaluation": ("test_triplets", "triplet_seed", "eval_margin", "knn_k"),
    "Where it runs": ("device", "threads", "deterministic", "workers", "devices", "executor", "nproc_per_run"),
}
PANEL = {name: panel for panel, names in PANELS.items() for name in names}
METAVAR = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}


def _plain_type(tp):
    """The Typer-facing type of a dataclass field: Literal choices and unions become str/int/float."""
    if typing.get_origin(tp) is typing.Literal:
        return str
    base = ([a for a in typing.get_args(tp) if a is not type(None)] or [tp])[0]
    return str if typing.get_origin(base) is typing.Literal else base


def _choices(tp) -> str | None:
    """``a|b|c`` for a Literal type (or an optional one), the metavar that lists the choices."""
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) is typing.Literal:
            return "|".join(map(str, typing.get_args(t)))
    return None


def _option(name: str, tp, default, help_: str, decl: tuple = (), metavar: str | None = None,
            panel: str | None = None) -> inspect.Parameter:
    base = _plain_type(tp)
    if metavar is None:
        metavar = "" if base is bool else METAVAR.get(base, "TEXT")  # a flag takes no value: no metavar
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[
        tp, typer.Option(*decl, help=help_, metavar=metavar, rich_help_panel=panel or PANEL.get(name, "Training"))])


def run_parameters() -> list[inspect.Parameter]:
    """``bench run``'s options: the suite's, one per RunConfig field, the executors' own, the rest."""
    params = [_option(name, Optional[tp], None, help_, (), metavar) for name, tp, metavar, help_ in SUITE_OPTIONS]
    hints = typing.get_type_hints(RunConfig)
    for f in cli_fields():
        tp, help_ = _plain_type(hints[f.name]), f.metadata["help"]
        if "[default:" not in help_ and f.default not in (dataclasses.MISSING, None):
            help_ += f" [default: {f.default}]"
        flag = "--" + f.name.replace("_", "-")
        decl = (f"{flag}/--no-{f.name.replace('_', '-')}",) if tp is bool else (flag,)
        params.append(_option(f.name, Optional[tp], None, help_, decl, _choices(hints[f.name])))
    for key, (owner, f) in option_keys().items():  # --ray-address, --gpus-per-run, ...
        tp = _plain_type(typing.get_type_hints(EXECUTORS.get(owner).Options)[f.name])
        params.append(_option(key, Optional[tp], None, f.metadata.get("help", ""), ("--" + key.replace("_", "-"),),
                              panel="Where it runs"))
    params += [_option(name, tp, default, help_, decl, metavar) for name, tp, default, decl, metavar, help_
               in EXTRA_OPTIONS]
    order = list(PANELS)  # the panels in the order a run is described: suite, data, model, ...
    return sorted(params, key=lambda prm: order.index(prm.annotation.__metadata__[0].rich_help_panel))


def tune_parameters() -> list[inspect.Parameter]:
    """``bench run``'s options (less --seeds and --tuned), then the tuner's (from TuneOptions)."""
    params = [p for p in run_parameters() if p.name not in ("seeds", "tuned", "methods")]
    params.insert(0, _option("methods", Optional[str], None, "Comma-separated method names, or pml:LossName; "
                                                          "methods that train nothing are not tuned. [default: all six]",
                             (), "NAMES"))
    hints = typing.get_type_hints(TuneOptions)
    return params + [_option(f.name, hints[f.name], f.default, f.metadata["help"], panel="Tuning")
                     for f in dataclasses.fields(TuneOptions) if f.metadata.get("cli")]


# The options of the commands that read results, written once each.
def _opt(help_: str, metavar: str, *decl: str):
    return typer.Option(*decl, help=help_, metavar=metavar)


ResultsDir = Annotated[Path, typer.Argument(help="A results folder (all datasets), one dataset's folder or a suite's.",
                                            metavar="RESULTS_DIR")]
TableFormat = Annotated[str, _opt("markdown, csv or latex.", "FORMAT", "--format")]
Metrics = Annotated[Optional[str], _opt("Comma-separated metric names, or 'all'. [default: the registry's default "
                                        "metrics]", "NAMES")]
Spread = Annotated[str, _opt("What follows each mean: ci (± half-width of the 95% t-interval), std (± standard "
                             "deviation), interval ([low, high] of the 95% t-interval) or none.", "SPREAD")]
ResultsDirs = Annotated[list[Path], typer.Argument(help="One results folder or several (e.g. a suite per dataset): "
                                                 "their runs are compared together.", metavar="RESULTS_DIR...")]
Metric = Annotated[str, _opt("The metric to compare on.", "NAME")]
Alpha = Annotated[float, _opt("Significance level, after Holm's correction.", "FLOAT")]
CdPlot = Annotated[Optional[Path], _opt("Write the critical-difference diagram (several datasets) to this PNG.",
                                        "FILE")]
PlotsOut = Annotated[Optional[Path], _opt("Folder for the figures. [default: each dataset's results folder/plots]",
                                          "DIR")]
Projection = Annotated[str, _opt("tsne or pca, for the embedding map.", "NAME")]
Threads = Annotated[Optional[int], _opt("Threads for t-SNE/BLAS. [default: all cores, at most 8]", "INT")]
FigureFormat = Annotated[str, _opt("png, pdf or svg.", "FORMAT", "--format")]
Dpi = Annotated[int, _opt("Resolution of the figures (150 for a screen, 300 for print).", "INT")]
SuiteName = Annotated[Optional[str], _opt("The suite folder under RESULTS_DIR.", "NAME")]
ListWhat = Annotated[str, typer.Argument(help="methods, datasets, metrics, encoders, executors, presets or all.",
                                         metavar="WHAT")]
Plugins = Annotated[Optional[list[str]], _opt("A Python file or module to import first (what it registers is listed "
                                              "too); repeatable.", "FILE")]
DownloadName = Annotated[str, typer.Argument(help="mnist or fashion-mnist.", metavar="NAME")]
DataDir = Annotated[Optional[str], _opt("Target folder. [default: $DMLBENCH_DATA_DIR, else ~/.cache/dmlbench]",
                                        "DIR")]
RunDir = Annotated[Path, typer.Argument(help="A complete run's folder (it holds checkpoint.pt).", metavar="RUN_DIR")]
ExportFormat = Annotated[str, _opt("safetensors, torchscript or onnx.", "FORMAT", "--format")]
ExportOut = Annotated[Optional[Path], _opt("The file to write. [default: RUN_DIR/embedder.<format's suffix>]", "FILE")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log every epoch's loss terms (and tracebacks) to "
                                                              "stderr.")]
