"""The results folder layout, defined once; the runner, the table, the plots and the tuner read it.

    <out>/<dataset>[/<suite>]/<method>/s<seed>-<run id>/   one run
        config.json      the resolved config, its provenance, the data it saw (written first)
        history.csv      one row per epoch: every loss term, lr, seconds
        checkpoint.pt    weights, optimiser and RNG state (weights-only loadable)
        embeddings.npz   test (and train) embeddings and labels
        per_query.npz    per-query values of each metric, for paired statistics
        confusion.csv    the SVM probe's confusion matrix, where it applies
        reconstructions.npz  generative methods: a fixed set of test images and their reconstructions
        metrics.json     written last: its presence marks a complete run
        failed.json      why the run failed (instead of metrics.json)
    <out>/<dataset>[/<suite>]/.stale/...   complete runs made by other code, archived, never deleted
    <out>/<dataset>[/<suite>]/table.md, table.csv, plots/, study.db (bench tune; created under the
        lock .study.db.dmlbench-lock, see dmlbench.tune.storage.creation_lock)
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from dmlbench.core.io import CorruptFileError, read_metrics, read_npz
from dmlbench.data.base import DatasetRef

CONFIG, METRICS, FAILED, HISTORY = "config.json", "metrics.json", "failed.json", "history.csv"
CHECKPOINT, EMBEDDINGS, PER_QUERY = "checkpoint.pt", "embeddings.npz", "per_query.npz"
CONFUSION, RECONSTRUCTIONS, LOCK = "confusion.csv", "reconstructions.npz", ".lock"
STALE = ".stale"
TRIALS = "trials"  # bench tune's validation runs: never test results
TABLE_MD, TABLE_CSV, PLOTS, STUDY = "table.md", "table.csv", "plots", "study.db"
DEFAULT_OUT = Path("results")


def slug(text: str) -> str:
    """``text`` as a folder name: each run of characters other than letters, digits, ``_.-`` becomes one ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def suite_dir(out: Path | str, dataset: str, suite: str = "") -> Path:
    """Where a suite's runs and tables live: ``<out>/<dataset>[/<suite>]``."""
    d = Path(out) / DatasetRef.parse(dataset).slug()
    return d / slug(suite) if suite else d


def run_dir(suite: Path, method: str, seed: int, run_id: str) -> Path:
    """A run's folder: ``<suite>/<method>/s<seed>-<run id>``."""
    return Path(suite) / slug(method) / f"s{seed}-{run_id}"


def run_dirs(root: Path | str, recursive: bool = True) -> Iterator[Path]:
    """Run folders (those holding a config.json) under ``root``; ``recursive=False``: one suite's own.
    Archived stale runs and tuning trials (validation runs) are left out."""
    root = Path(root)
    paths = root.rglob(CONFIG) if recursive else root.glob(f"*/*/{CONFIG}")
    for p in sorted(paths):
        parts = p.relative_to(root).parts
        if STALE not in parts and TRIALS not in parts[:-3]:
            yield p.parent


def is_complete(run: Path) -> bool:
    """Whether the run folder holds its metrics.json, written last."""
    return (run / METRICS).is_file()


def check_outputs(run: Path) -> dict:
    """A complete run's metrics, after checking its array files can be read back (a corrupt one
    makes the run unfinished: it is re-run). Raises CorruptFileError naming the file."""
    metrics = read_metrics(run / METRICS)
    if (run / PER_QUERY).exists():
        read_npz(run / PER_QUERY)
    emb = run / EMBEDDINGS
    if emb.exists():  # up to hundreds of MB: only its zip directory is read here
        try:
            with zipfile.ZipFile(emb) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CorruptFileError(emb, f"not a .npz (zip) file ({type(e).__name__})") from None
    return metrics
