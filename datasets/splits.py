"""Splits that make a new Data from a loaded one: the class-disjoint protocol, and validation folds.

Validation folds never read the test part: the tuner loads a dataset without it.

- ``classes`` folds (MLRC): the training classes are dealt into ``k`` seeded groups; fold i
  validates on group i and trains on the rest (3/4 : 1/4 for k = 4).
- ``samples`` folds: a seeded stratified k-fold split of the training images, for datasets whose
  test protocol has the same classes as training (MNIST, the digits): there a class-disjoint fold
  of 10 digits would validate on 2-3 classes and measure another task than the test does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.data.base import Data, Part

FOLD_KINDS = ("samples", "classes")


def _pool(a: Part, b: Part) -> Part:
    """Both parts as one: a view when they share their (memory-mapped) image array, else a copy."""
    y = np.concatenate([a.y, b.y])
    if a.x is b.x and a.rows is not None and b.rows is not None:
        return Part(a.x, y, np.concatenate([a.rows, b.rows]))
    return Part(np.concatenate([a.images(), b.images()]), y)


def n_partitions(k: int) -> int:
    """--folds 1 scores one fold of a 4-way partition (1/4 validation), as MLRC's folds are."""
    return 4 if k == 1 else k


def class_disjoint(data: Data) -> Data:
    """The zero-shot protocol: train on the first half of the classes, test on the other half.

    Both halves use all of their classes' images (train and test files pooled), as in the
    CUB/Cars/SOP protocol of the metric-learning literature.
    """
    if data.split == "classes":
        raise DMLBenchError(f"{data.name}: its own split is already class-disjoint; leave out split=classes")
    if data.test is None:
        raise DMLBenchError(f"{data.name}: a class-disjoint split needs the test part too")
    pooled = _pool(data.train, data.test)
    labels = np.unique(pooled.y)
    if len(labels) < 4:
        raise DMLBenchError(f"{data.name}: a class-disjoint split needs at least 4 classes (2 to train on, 2 to test "
                            f"on), but the dataset has {len(labels)}; use split=standard")
    first = labels[: len(labels) // 2]
    in_train = np.isin(pooled.y, first)
    # Training labels become 0..K-1; test labels follow (they are never trained on).
    order = np.concatenate([first, labels[len(labels) // 2:]])
    mapping = np.empty(int(labels.max()) + 1, dtype=np.int64)
    mapping[order] = np.arange(len(order))
    classes = [data.classes[i] for i in order]
    train = pooled.subset(np.flatnonzero(in_train)).relabel(mapping)
    test = pooled.subset(np.flatnonzero(~in_train)).relabel(mapping)
    return replace(data, train=train, test=test, classes=classes, split="classes",
                   meta={**data.meta, "train_classes": [data.classes[i] for i in first]})


def fold_assignment(data: Data, kind: str, k: int, seed: int) -> np.ndarray:
    """A fold id per training image (``samples``) or per training class (``classes``), seeded."""
    if kind not in FOLD_KINDS:
        raise DMLBenchError(f"validation={kind!r} is not one of: {', '.join(FOLD_KINDS)}")
    if k < 1:
        raise DMLBenchError(f"folds={k} must be at least 1")
    rng = np.random.default_rng(seed)
    y = data.train.y
    parts = n_partitions(k)
    if kind == "classes":
        n = data.num_train_classes
        if n < 2 * parts:
            raise DMLBenchError(f"{data.name}: {n} training classes are too few for {parts} class-disjoint folds "
                                "(each needs 2 classes to validate on); use --validation samples")
        fold = np.empty(n, dtype=np.int64)
        fold[rng.permutation(n)] = np.arange(n) % parts
        return fold
    fold = np.empty(len(y), dtype=np.int64)
    for c in range(data.num_train_classes):  # stratified: each class dealt round-robin in a seeded order
        idx = np.flatnonzero(y == c)
        fold[rng.permutation(idx)] = (np.arange(len(idx)) + rng.integers(parts)) % parts
    return fold


def validation_fold(data: Data, kind: str, assignment: np.ndarray, fold: int) -> Data:
    """The training part split into a training fold and a validation fold, as a new Data whose
    evaluation part is the validation fold (the test part is dropped)."""
    y = data.train.y
    if kind == "samples":
        val = assignment == fold
        train = data.train.subset(np.flatnonzero(~val))
        valid = data.train.subset(np.flatnonzero(val))
        return replace(data, train=train, test=valid, split="validation", query=None, gallery=None,
                       meta={**data.meta, "fold": fold, "validation": kind})
    val_cls = np.flatnonzero(assignment == fold)
    tr_cls = np.flatnonzero(assignment != fold)
    mapping = np.empty(len(assignment), dtype=np.int64)
    mapping[tr_cls] = np.arange(len(tr_cls))
    mapping[val_cls] = np.arange(len(tr_cls), len(assignment))
    is_val = np.isin(y, val_cls)
    classes = [data.classes[i] for i in np.concatenate([tr_cls, val_cls])] + list(data.classes[len(assignment):])
    train = data.train.subset(np.flatnonzero(~is_val)).relabel(mapping)
    valid = data.train.subset(np.flatnonzero(is_val)).relabel(mapping)
    return replace(data, train=train, test=valid, classes=classes, split="validation", query=None, gallery=None,
                   meta={**data.meta, "fold": fold, "validation": kind})
