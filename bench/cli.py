"""The ``bench`` command line: thin Typer commands over the library functions."""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Optional

import typer

from dmlbench.config import RunConfig
from dmlbench.errors import DMLBenchError

app = typer.Typer(help="dmlbench: compare deep metric-learning methods with one trainer and one evaluation suite.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # None: help text is literal, so "[default: X]" is not eaten as Rich markup

DEFAULTS = RunConfig()
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
            mod_spec = importlib.util.spec_from_file_location(f"dmlbench_plugin_{path.stem}", path)
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
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("dmlbench.presets").iterdir() if p.name.endswith(".toml"))


def _read_toml(path: Path | None, preset: str | None) -> dict:
    data: dict = {}
    if preset:
        if preset not in _preset_names():
            raise DMLBenchError(f"unknown preset {preset!r}; presets: {', '.join(_preset_names())}")
        data.update(tomllib.loads(resources.files("dmlbench.presets").joinpath(f"{preset}.toml").read_text()))
    if path:
        if not Path(path).is_file():
            raise DMLBenchError(f"config file {path} does not exist; give a TOML file with the same keys as the flags")
        try:
            data.update(tomllib.loads(Path(path).read_text()))
        except tomllib.TOMLDecodeError as e:
            raise DMLBenchError(f"config file {path} is not valid TOML ({e})") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


SUITE_KEYS = {"methods", "seeds", "out", "set", "suite"}
RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"method", "seed", "method_params", "data_options"}


def _as_list(value, key: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise DMLBenchError(f"{key} must be a comma-separated string or a list, got {value!r}")


def resolve_suite(file_values: dict, flags: dict) -> tuple[RunConfig, list[str], list[int], dict, Path, str]:
    """Defaults <- TOML file/preset <- command-line flags; unknown keys are errors."""
    from dmlbench.methods import BUILTIN
    from dmlbench.params import apply_overrides, parse_set

    unknown = set(file_values) - SUITE_KEYS - RUN_KEYS
    if unknown:
        raise DMLBenchError(f"unknown key(s) {', '.join(sorted(unknown))} in the config file; "
                            f"known: {', '.join(sorted(SUITE_KEYS | RUN_KEYS))}")
    for key, kind in (("out", str), ("suite", str), ("dataset", str)):
        if key in file_values and not isinstance(file_values[key], kind):
            raise DMLBenchError(f"{key} in the config file must be a string, got {file_values[key]!r}")
    file_sets = file_values.get("set", [])
    if not isinstance(file_sets, list) or not all(isinstance(x, str) for x in file_sets):
        raise DMLBenchError(f'set in the config file must be a list of strings, e.g. set = ["tvae.margin=2"], got {file_sets!r}')
    values = {**file_values, **{k: v for k, v in flags.items() if v is not None}}
    sets = list(file_sets) + list(flags.get("set") or [])
    methods = _as_list(values.get("methods", list(BUILTIN)), "methods")
    if "raw" not in methods:
        methods.append("raw")  # every table gets the raw-pixel floor row
    try:
        seeds = [int(s) for s in _as_list(values.get("seeds", [0]), "seeds")]
        if not seeds or min(seeds) < 0:
            raise ValueError
    except ValueError:
        raise DMLBenchError(f"--seeds must be integers >= 0 separated by commas, got {values.get('seeds')!r}") from None
    by_owner = parse_set(sets)
    # A preset or file may configure methods that the command line then leaves out: those
    # settings have nothing to apply to. A name that is no method at all is still an error.
    from dmlbench.methods import get_method

    flag_owners = set(parse_set(list(flags.get("set") or [])))
    for owner in list(by_owner):
        if owner != "data" and owner not in methods and owner not in flag_owners:
            get_method(owner)
            del by_owner[owner]
    data_options = by_owner.pop("data", {})
    run_values = {k: v for k, v in values.items() if k in RUN_KEYS}
    base = apply_overrides(RunConfig(), run_values, "run")
    base = dataclasses.replace(base, data_options=data_options)
    return base, methods, seeds, by_owner, Path(values.get("out", "results")), str(values.get("suite", ""))


@app.command()
@user_errors
def run(
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated method names, or pml:<LossName>. [default: all six; raw is always added]")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset name; folder:PATH or npz:FILE for your own data. [default: digits]")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds, one run each. [default: 0]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs. [default: per dataset: digits 30, mnist 5, cifar10 10]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per step, the same for every method. [default: {DEFAULTS.batch_size}]")] = None,
    epoch_size: Annotated[Optional[int], typer.Option(help="Images per epoch. [default: the training set size]")] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"Learning rate. [default: {DEFAULTS.lr}]")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adam or sgd. [default: adam]")] = None,
    momentum: Annotated[Optional[float], typer.Option(help=f"SGD momentum. [default: {DEFAULTS.momentum}]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help=f"Weight decay. [default: {DEFAULTS.weight_decay}]")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="constant or cosine. [default: constant]")] = None,
    embedding_dim: Annotated[Optional[int], typer.Option(help="Embedding (latent) size. [default: 20; cifar10 128]")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="mlp, convnet or cifar. [default: per dataset: digits mlp, mnist convnet, cifar10 cifar]")] = None,
    split: Annotated[Optional[str], typer.Option(help="standard, or classes (train on the first half of the classes, test on the rest). [default: standard]")] = None,
    normalize: Annotated[Optional[str], typer.Option(help="unit (pixels in [0, 1]) or standard (train mean/std). [default: unit]")] = None,
    data_seed: Annotated[Optional[int], typer.Option(help=f"Seed of the train/test split where the dataset has none. [default: {DEFAULTS.data_seed}]")] = None,
    knn_k: Annotated[Optional[int], typer.Option(help=f"k of the k-NN classification probe. [default: {DEFAULTS.knn_k}]")] = None,
    test_triplets: Annotated[Optional[int], typer.Option(help=f"Fixed test triplets for triplet accuracy. [default: {DEFAULTS.test_triplets}]")] = None,
    eval_margin: Annotated[Optional[float], typer.Option(help=f"Margin m of triplet_acc_margin. [default: {DEFAULTS.eval_margin}]")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda. [default: cpu]")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Threads for torch, faiss and BLAS. [default: all cores, at most 8]")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Folder with the dataset files. [default: $DMLBENCH_DATA_DIR, else ~/.cache/dmlbench]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Results folder. [default: results]")] = None,
    suite: Annotated[Optional[str], typer.Option(help="A name for this suite: its runs and table go to OUT/<dataset>/<suite>/. [default: none, OUT/<dataset>/]")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method option METHOD.KEY=VALUE (e.g. tvae.weights.triplet=10), or data.KEY=VALUE; repeatable.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="A TOML suite file with the same keys as these flags; flags override it.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="A suite shipped with dmlbench (see `bench list presets`).")] = None,
    plugin: Annotated[Optional[list[str]], typer.Option(help="A Python file or module to import first, e.g. my_loss.py, so that its @register_method classes can run; repeatable.")] = None,
):
    """Train and evaluate each (method, seed) on one dataset, then print the results table."""
    for p in plugin or []:
        load_plugin(p)
    from dmlbench.runner import run_suite
    from dmlbench.table import write_tables
    from dmlbench.trainer import set_threads

    flags = dict(methods=methods, dataset=dataset, seeds=seeds, epochs=epochs, batch_size=batch_size,
                 epoch_size=epoch_size, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                 normalize=normalize, data_seed=data_seed, knn_k=knn_k, lr_schedule=lr_schedule, embedding_dim=embedding_dim,
                 encoder=encoder, split=split, test_triplets=test_triplets, eval_margin=eval_margin, device=device,
                 threads=threads, data_dir=data_dir, out=str(out) if out else None, set=set_, suite=suite)
    base, method_list, seed_list, sets, out_dir, suite_name = resolve_suite(_read_toml(config, preset), flags)
    base.resolved().check()  # bad values fail here, before any thread pool or data is touched
    set_threads(base.threads)
    from dmlbench.runner import suite_dir

    total = len(method_list) * len(seed_list)
    done = []

    def report(r) -> None:
        done.append(r)
        head = f"[{len(done)}/{total}] {r.config.method} seed {r.config.seed}"
        if r.status == "failed":
            err(f"{head}: FAILED: {r.reason}")
        else:
            m = r.metrics
            err(f"{head}: {r.status} (triplet_acc {m.get('triplet_acc', float('nan')):.4f}, "
                f"recall@1 {m.get('recall@1', float('nan')):.4f}) {r.run_dir}")

    def start(cfg, data) -> None:
        err(f"running {', '.join(method_list)} on {cfg.dataset} ({len(data.x_train)} train / {len(data.x_test)} test, "
            f"{cfg.encoder} encoder, {cfg.epochs} epochs) with seeds {','.join(map(str, seed_list))} -> {suite_dir(out_dir, cfg.dataset, suite_name)}")

    results = run_suite(base, method_list, seed_list, sets, out_dir, on_result=report, on_start=start, suite=suite_name)
    table_dir = suite_dir(out_dir, base.dataset, suite_name)
    typer.echo(write_tables(table_dir))
    err(f"table written to {table_dir / 'table.md'} and table.csv")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        err(f"error: {len(failed)} of {len(results)} runs failed (see failed.json in their folders); "
            "fix the cause and re-run: complete runs are skipped")
        raise typer.Exit(1)


@app.command()
@user_errors
def table(
    results_dir: Annotated[Path, typer.Argument(help="A results folder (all datasets) or one dataset's folder.")] = Path("results"),
    format: Annotated[str, typer.Option("--format", help="markdown, csv or latex.")] = "markdown",
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated metric names, or 'all'. [default: triplet_acc, triplet_acc_margin, recall@1, map@r, knn_acc, svm_acc, recon_error]")] = None,
):
    """Aggregate run folders: one row per (dataset, method), mean ± std over seeds."""
    from dmlbench.evaluate import METRICS
    from dmlbench.table import aggregate, collect, format_table

    if not results_dir.is_dir():
        raise DMLBenchError(f"results folder {results_dir} does not exist; run `bench run` first or give its path")
    names = None
    if metrics:
        names = list(METRICS) if metrics == "all" else [m.strip() for m in metrics.split(",")]
        bad = [m for m in names if m not in METRICS]
        if bad:
            raise DMLBenchError(f"unknown metric(s) {', '.join(bad)}; known: {', '.join(METRICS)}")
    typer.echo(format_table(aggregate(collect(results_dir), names), format, names))


@app.command()
@user_errors
def plot(
    results_dir: Annotated[Path, typer.Argument(help="A results folder (all datasets) or one dataset's folder.")] = Path("results"),
    out: Annotated[Optional[Path], typer.Option(help="Folder for the PNGs. [default: each dataset's results folder/plots]")] = None,
    projection: Annotated[str, typer.Option(help="tsne or pca, for embeddings.png.")] = "tsne",
    threads: Annotated[Optional[int], typer.Option(help="Threads for t-SNE/BLAS. [default: all cores, at most 8]")] = None,
):
    """Draw the figures (embeddings, reconstructions, confusion matrices, loss curves, metrics, trade-off) as PNGs."""
    from dmlbench.plots import plot_results
    from dmlbench.trainer import set_threads

    set_threads(threads or 0)
    for path in plot_results(results_dir, out, projection):
        typer.echo(str(path))


@app.command()
@user_errors
def perf(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "digits",
    data_dir: Annotated[Optional[str], typer.Option(help="Folder with the dataset files. [default: $DMLBENCH_DATA_DIR, else ~/.cache/dmlbench]")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated trained methods to time. [default: all six]")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step, the same for every way.")] = DEFAULTS.batch_size,
    epoch_size: Annotated[int, typer.Option(help="Images per timed epoch; 0: the whole training set.")] = 0,
    threads: Annotated[int, typer.Option(help="Threads for torch, faiss and BLAS.")] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    encoder: Annotated[Optional[str], typer.Option(help="mlp, convnet or cifar. [default: the dataset's]")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats per way (after a warm-up); the median is reported.")] = 3,
    eval_methods: Annotated[Optional[str], typer.Option(help="Methods whose full evaluation is timed; 'none' to skip. [default: raw and the first method]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the results as CSV: a .csv file, or a folder for perf.csv (the evaluation goes beside it as *-eval.csv).")] = None,
):
    """Time one training epoch three ways (harness, bare PyTorch loop, per-sample DataLoader) and the evaluation."""
    from dmlbench.perf import format_results, run_perf, write_results

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    evals = None if eval_methods is None else [m.strip() for m in eval_methods.split(",") if m.strip() not in ("", "none")]
    train, ev = run_perf(dataset, data_dir or "", names, batch_size, epoch_size, threads, device, repeats, evals, log=err,
                         encoder=encoder or "")
    typer.echo(format_results(train, ev))
    if out is not None:
        for path in write_results(train, ev, out):
            err(f"written {path}")


@app.command("list")
@user_errors
def list_(what: Annotated[str, typer.Argument(help="methods, datasets, metrics, encoders, presets or all.")] = "all"):
    """List the registered methods, datasets, metrics, encoders and presets."""
    if what not in LIST_WHAT:
        raise DMLBenchError(f"cannot list {what!r}; use one of: {', '.join(LIST_WHAT)}")
    import json

    if what in ("methods", "all"):
        from dmlbench.methods import get_method, method_names

        typer.echo("Methods (also pml:<LossName> for any pytorch-metric-learning loss):")
        for name in method_names():
            d = get_method(name).describe()
            typer.echo(f"  {name}\n    paper:    {d['paper']}\n    loss:     {d['formula']}\n"
                       f"    defaults: {json.dumps(d['defaults'])}")
        from dmlbench.methods.pml import pml_loss_names

        typer.echo("  pml:<LossName>, LossName one of: " + ", ".join(pml_loss_names()))
    if what in ("datasets", "all"):
        from dmlbench.data import DATASETS, resolve_data_dir

        typer.echo(f"Datasets (data folder: {resolve_data_dir()}):")
        for name in DATASETS.names():
            s = DATASETS.get(name)
            typer.echo(f"  {name:14s} {s.description}\n    size {s.size}; classes {s.classes}; input {s.input_shape}; "
                       f"read from {s.where}")
    if what in ("metrics", "all"):
        from dmlbench.evaluate import METRICS

        typer.echo("Metrics:")
        for m in METRICS.values():
            typer.echo(f"  {m.name:20s} {'(lower is better) ' if not m.higher_is_better else ''}{m.description}")
    if what in ("encoders", "all"):
        from dmlbench.encoders import ENCODERS

        typer.echo("Encoders:")
        for name in ENCODERS.names():
            typer.echo(f"  {name:10s} {ENCODERS.get(name).description}")
    if what in ("presets", "all"):
        typer.echo("Presets (bench run --preset NAME):")
        for name in _preset_names():
            text = resources.files("dmlbench.presets").joinpath(f"{name}.toml").read_text()
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
