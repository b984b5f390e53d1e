"""Data and folds: the training data without its test part, and the validation folds."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import CorruptFileError, read_json, write_json
from dmlbench.data import load_dataset
from dmlbench.data.base import standardized
from dmlbench.data.splits import n_partitions, validation_fold
from dmlbench.running.config import RunConfig
from dmlbench.tune.options import FOLD_PARTS, FOLDS_FILE


def load_training_data(base: RunConfig):
    """The dataset without its test part (never read), in [0, 1]; loaded once per process (the
    driver's checks and an in-process worker share it)."""
    return _load_training(base.dataset, base.data_dir, base.split, base.data_seed,
                          json.dumps(base.data_options, sort_keys=True))


@functools.lru_cache(maxsize=1)
def _load_training(dataset: str, data_dir: str, split: str, seed: int, options: str):
    return load_dataset(dataset, data_dir=data_dir or None, split=split, seed=seed, options=json.loads(options),
                        normalize="unit", with_test=False)


def choose_validation(data, k: int, asked: str | None) -> tuple[str, str]:
    """(fold kind, why): see the :mod:`dmlbench.tune` docstring."""
    parts = n_partitions(k)
    if asked:
        return asked, "--validation asks for them"
    n = data.num_train_classes
    if data.split == "classes":
        if n >= 2 * parts:
            return "classes", f"the test classes of {data.name} are not training classes (class-disjoint protocol)"
        return "samples", (f"the test protocol is class-disjoint, but {n} training classes are too few for {parts} "
                           "class-disjoint folds of 2 classes or more")
    return "samples", (f"the test set of {data.name} has the training classes; class-disjoint folds of its {n} "
                       f"classes would validate on {max(1, n // parts)}-{-(-n // parts)} of them, another task")


def fold_data(data, kind: str, assignment: np.ndarray, fold: int, normalize: str):
    """Fold ``fold``'s training and validation parts, standardised with its training part's
    statistics where the run asks for ``standard``."""
    d = validation_fold(data, kind, assignment, fold)
    return standardized(d) if normalize == "standard" else d  # statistics of the fold's training part


def check_folds(suite_dir: Path, kind: str, k: int, seed: int, assignment: np.ndarray, dataset: str) -> None:
    """Write folds.json, or check that a resumed tune uses the same folds."""
    path = Path(suite_dir) / FOLDS_FILE
    doc = {"kind": kind, "k": k, "partitions": FOLD_PARTS if k == 1 else k, "seed": seed, "dataset": dataset,
           "assignment": [int(a) for a in assignment]}
    if not path.exists():
        write_json(path, doc)
        return
    old = read_json(path)
    if not {"kind", "k", "seed", "assignment"} <= old.keys():
        raise CorruptFileError(path, "it lacks kind, k, seed or assignment")
    if (old["kind"], old["k"], old["seed"]) == (kind, k, seed) and old["assignment"] != doc["assignment"]:
        raise DMLBenchError(f"{path} holds folds of other data than {dataset} has now (the same options, other "
                            "images or labels): the studies there were tuned on that data; give another --suite or "
                            "--out for a new study")
    if (old["kind"], old["k"], old["seed"]) != (kind, k, seed) or old["assignment"] != doc["assignment"]:
        raise DMLBenchError(
            f"{path} holds other folds ({old['kind']}, folds={old['k']}, seed={old['seed']}) than this tune "
            f"({kind}, folds={k}, seed={seed}{', other data' if old['assignment'] != doc['assignment'] else ''}); "
            "give the same options, or another --suite or --out for a new study")


def check_fold_sizes(data, kind: str, assignment: np.ndarray, folds: list[int], k: int) -> None:
    """Refuse folds whose validation part cannot be scored before any trial runs (every trial would
    fail): retrieval needs classes with 2 validation images, and 2 classes."""
    y = data.train.y
    n_classes = data.num_train_classes
    for f in folds:
        val_classes = np.flatnonzero(assignment == f) if kind == "classes" else None
        counts = (np.bincount(y[np.isin(y, val_classes)], minlength=n_classes)[val_classes] if kind == "classes"
                  else np.bincount(y[assignment == f], minlength=n_classes))
        counts = counts[counts > 0]
        if len(counts) < 2 or (counts >= 2).sum() == 0:
            per_class = np.bincount(y, minlength=n_classes)
            most = int(per_class[per_class > 0].min()) // 2 if kind == "samples" else None
            hint = (f"use fewer --folds (at most {max(1, most)} give every class 2 validation images)"
                    if most is not None else "use fewer --folds or --validation samples")
            raise DMLBenchError(f"--folds {k}: validation fold {f} has {int(counts.sum())} image(s) of {len(counts)} "
                                f"class(es), too few to score retrieval (a class needs 2 images); {hint}")
