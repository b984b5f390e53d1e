"""Tuning curves: for each method of a tuned suite, the best validation score found so far
against the trial number, read from the suite's Optuna study (``study.db``). Equal budgets show
as curves of equal length; a curve still rising at its end says the budget was short."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmlbench.core.io import CorruptFileError, read_json
from dmlbench.report.plots.common import figure, palette, save, style
from dmlbench.running import layout

TUNED_FILE = "tuned.json"  # (bench tune's summary; the tuner owns the name, the report only reads it)


def tuning_scores(suite_dir: Path) -> dict[str, list[tuple[int, float]]] | None:
    """Per method, (trial number, validation score) of its complete trials, from the suite's study;
    None where the suite was not tuned (no study.db) or Optuna is not installed."""
    db = Path(suite_dir) / layout.STUDY
    if not db.is_file():
        return None
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    out = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        done = [(t.number, float(t.value)) for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        out[summary.study_name] = sorted(done)
    return out


def plot_tuning_curves(suite_dir: Path, path: Path) -> Path | None:
    """Best validation score so far against the trial number, one line per method; None where the
    suite has no study."""
    scores = tuning_scores(suite_dir)
    if not scores:
        return None
    try:
        doc = read_json(Path(suite_dir) / TUNED_FILE)
    except CorruptFileError:
        doc = {}
    objective = doc.get("objective", "validation score")
    lower = doc.get("direction") == "minimize"
    fig = figure(9.0, 4.4)
    with style():
        ax = fig.subplots()
        for (name, pts), colour in zip(sorted(scores.items()), palette(len(scores))):
            if not pts:
                continue
            x = np.arange(1, len(pts) + 1)  # the k-th complete trial (re-queued copies keep the count equal)
            v = np.array([s for _, s in pts])
            best = np.minimum.accumulate(v) if lower else np.maximum.accumulate(v)
            ax.plot(x, best, color=colour, label=f"{name} ({len(pts)} trials)", linewidth=1.8)
            ax.scatter(x, v, color=colour, s=8, alpha=0.35, linewidths=0)
        ax.set_xlabel("complete trials")
        ax.set_ylabel(f"validation {objective} ({'lowest' if lower else 'best'} so far; dots: each trial)")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle("Tuning curves: the best validation score found so far, per method (equal trial budgets)")
    return save(fig, path)
