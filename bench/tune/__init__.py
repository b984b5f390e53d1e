"""``bench tune``: an equal tuning budget per method on validation folds of the training set.

MLRC's protocol (Musgrave, Belongie & Lim 2020), run in parallel:

- **One Optuna study per method** (the study is named after the method), TPE, seeded. Every method
  gets exactly ``--trials`` trials (COMPLETE, PRUNED and FAIL all count; a trial that was running
  when a tune was killed is re-queued and counts once), the same steps per trial, the same data and
  the same folds. A resumed tune runs only the missing trials.
- **Reproducible**: the sampler's random state is re-seeded from (tune seed, method, trial number)
  before each trial, so a fresh study with the same seed proposes the same parameters trial by
  trial, and a resumed one continues as the uninterrupted one would have (given the same scores,
  which CPU runs give; parallel workers see each other's results in a timing-dependent order).
- **The test set is never read**: the dataset is loaded with ``with_test=False``; a trial trains
  on the training part of a fold and is scored on its validation part.
- **A trial's score** is the validation ``--objective`` (default ``map@r``), the mean over the
  folds. A run that fails (a NaN loss, a crash) is recorded as FAIL, never as a score, and the
  study goes on. ``--prune`` stops a trial whose per-epoch validation score is below the median of
  the earlier trials at the same epoch (Optuna's MedianPruner).

**Validation folds** (``--validation``, seeded by ``--tune-seed``, saved in ``folds.json`` and
checked on resume). The default follows what the test measures:

- ``classes`` (MLRC: the training classes dealt into 4 class-disjoint groups, 3/4 train and 1/4
  validate) where the dataset's test protocol is class-disjoint (CUB, Cars, SOP, In-Shop, or
  ``--split classes``): the test measures retrieval of unseen classes, so validation does too.
  It needs 2 classes per group (8 training classes for 4 groups), else ``samples`` is used.
- ``samples`` (a seeded stratified split of the training images, 1/4 validation) where the test
  has the training classes (MNIST, Fashion-MNIST, CIFAR-10, the digits): there a class-disjoint fold
  would validate on 2-3 of 10 digits, another task than the one the test measures.

``--folds 1`` scores one fold of a 4-way partition; ``--folds K`` (K > 1) averages all K folds of a
K-way partition.

**Storage**: ``<suite dir>/study.db`` (SQLite) by default; ``--storage`` takes any SQLAlchemy URL
(PostgreSQL for many machines) or ``journal:PATH`` (Optuna's journal file on a shared file system).
Trials send a heartbeat (every ``$DMLBENCH_TUNE_HEARTBEAT`` s, default 60); a RUNNING trial silent
for ``$DMLBENCH_TUNE_GRACE`` s (default 120) is failed and re-queued with the same parameters
(Optuna's retry callback) by the next worker that looks, so a killed tune resumes where it stopped.
An interrupted trial is failed and re-queued by its worker; one whose worker died between the two
steps is re-queued by its driver, or by the next tune's start once older than the grace.

**Parallel**: ``--workers N`` runs N local processes on the same study storage (the thread budget
split between them, as ``bench run`` does); ``--executor ray`` runs the workers as Ray tasks
(storage and results folder on a file system every node sees, or a database URL). Workers take
trials of all methods in turn under a lock in the suite folder, so the budget is exact.

Files, in ``<out>/<dataset>/<suite, default "tune">/``::

    study.db         the Optuna studies (one per method)
    folds.json       the validation folds: kind, k, seed, assignment
    trials/fold<f>/<method>/s<seed>-<run id>/   one run per (trial settings, fold)
    tuned.json       per method: best settings, best value, trial, counts by state, seconds

``bench run --tuned DIR`` then retrains each method with its best settings on the full training
set for 5 seeds and tests it (:func:`apply_tuned`).

The package, by step:

- :mod:`.options`: the options, the per-method plan and the job a worker carries, and the constants;
- :mod:`.storage`: Optuna plumbing (seeded sampler, storages, heartbeats, the budget);
- :mod:`.spaces`: search spaces;
- :mod:`.folds`: the training data and the validation folds;
- :mod:`.trial`: a trial, and the worker loop (:func:`~.trial.work`);
- :mod:`.study`: running a tune (:func:`~.study.tune`);
- :mod:`.summary`: its results (tuned.json, the summary table, the budget's warnings);
- :mod:`.tuned`: from tuning to the table (``bench run --tuned``).
"""

from __future__ import annotations

import importlib

# Loaded on first use: ``bench table`` and the other commands that tune nothing import the CLI's
# options (dmlbench.tune.options) without the study machinery (Optuna, the runner).
_WHERE = {"TuneOptions": "options", "plan_tune": "study", "tune": "study", "budget_warnings": "summary",
          "failed_methods": "summary", "summary_table": "summary", "apply_tuned": "tuned", "read_tuned": "tuned"}

_SUBMODULES = ("folds", "options", "spaces", "storage", "study", "summary", "trial", "tuned")
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"dmlbench.tune.{_WHERE[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"dmlbench.tune.{name}")
    raise AttributeError(f"module 'dmlbench.tune' has no attribute {name!r}")
