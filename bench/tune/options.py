"""What a tune is asked for and what its workers carry: the options, per-method plans, the job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.space import Dist
from dmlbench.data.splits import FOLD_KINDS
from dmlbench.evaluation.metrics import METRICS
from dmlbench.running.config import MAX_SEED, opt
from dmlbench.running.suite import Suite

TRIALS_DIR, FOLDS_FILE, TUNED_FILE, TUNE_LOCK = "trials", "folds.json", "tuned.json", ".tune.lock"
DEFAULT_SUITE = "tune"
DEFAULT_TEST_SEEDS = [0, 1, 2, 3, 4]
EXTRA_METRICS = ("recall@1",)  # cheap, and shown next to the objective
HEARTBEAT_ENV, GRACE_ENV = "DMLBENCH_TUNE_HEARTBEAT", "DMLBENCH_TUNE_GRACE"
MAX_RETRY = 3  # a trial whose worker dies every time (out of memory) is retried this often, then FAIL
POLL_S = 5.0
FOLD_PARTS = 4  # groups of a --folds 1 partition (dmlbench.data.splits.n_partitions)
N_STARTUP = 10  # random trials before TPE models the scores (Optuna's default)


def objective_direction(name: str) -> str:
    """``maximize`` or ``minimize`` for a metric that can be an objective; refuse any other."""
    if name not in METRICS.names():
        raise DMLBenchError(f"objective {name!r} is not a metric; known: {', '.join(METRICS.names())}")
    spec = METRICS.get(name)
    if spec.kind not in ("embedding", "generative"):
        article = "an" if spec.kind[:1] in "aeiou" else "a"
        raise DMLBenchError(f"objective {name!r} is {article} {spec.kind} metric; choose a retrieval metric such as "
                            "map@r")
    if not spec.comparable:  # what the table and bench compare never rank is no objective either
        raise DMLBenchError(f"objective {name!r} depends on a setting (the embedding's scale), not on the method "
                            "alone, and is never ranked; choose a retrieval metric such as map@r")
    return "maximize" if spec.higher_is_better else "minimize"


def fmt_params(params: dict) -> str:
    """Settings as ``key=value`` pairs, floats to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


@dataclass
class TuneOptions:
    """What ``bench tune`` is asked for, beyond the suite (the flags of its own)."""

    trials: int = opt(30, "Trials per method, the same for every method (complete, pruned and failed ones count).")
    folds: int = opt(1, "Validation folds a trial averages over; 1: one fold of a 4-way partition.")
    validation: str | None = opt(None, "samples or classes folds. [default: classes where the test protocol is "
                                       "class-disjoint, else samples]")
    objective: str = opt("map@r", "The validation metric to optimise.")
    storage: str | None = opt(None, "Study storage: an SQLAlchemy URL (postgresql://...) or journal:PATH. [default: "
                                    "SQLite study.db in the suite folder]")
    space: Path | None = opt(None, "A TOML file of search spaces, one [METHOD] table each, overriding the methods' "
                                   "own (bench list methods).")
    prune: bool = opt(False, "Stop trials whose per-epoch validation score is below the median.")
    tune_seed: int = opt(0, "Seed of the folds, the sampler and the trial runs.")
    timeout: float | None = opt(None, "Seconds after which no new trial starts (running ones finish); re-running the "
                                      "command resumes the budget.")
    run_flags: dict = opt({}, "Run keys given as flags (--lr): fixed, not searched.", cli=False)

    def check(self) -> None:
        """Each option in its range, with a one-line error naming it."""
        if not 1 <= self.trials <= 100_000:
            raise DMLBenchError(f"trials={self.trials} must be between 1 and 100,000")
        if not 1 <= self.folds <= 100:
            raise DMLBenchError(f"folds={self.folds} must be between 1 and 100")
        if self.validation is not None and self.validation not in FOLD_KINDS:
            raise DMLBenchError(f"validation={self.validation!r} is not one of: {', '.join(FOLD_KINDS)}")
        if self.timeout is not None and not self.timeout > 0:
            raise DMLBenchError(f"timeout={self.timeout} must be a positive number of seconds")
        if not 0 <= self.tune_seed <= MAX_SEED:
            raise DMLBenchError(f"tune_seed={self.tune_seed} must be between 0 and {MAX_SEED}")
        objective_direction(self.objective)


@dataclass
class MethodPlan:
    """What is tuned for one method: its search space and the settings held fixed."""

    name: str
    space: dict[str, Dist]
    fixed: dict = field(default_factory=dict)  # method options (--set, or a plain value in --space)
    fixed_run: dict = field(default_factory=dict)  # run keys given a plain value in --space


@dataclass
class Job:
    """Everything a worker needs (picklable: it travels to worker processes and Ray tasks)."""

    suite: Suite
    plans: list[MethodPlan]
    opts: TuneOptions
    kind: str
    assignment: np.ndarray
    storage_url: str
    suite_dir: Path
    metrics: list[str]
    folds: list[int]
    deadline: float | None = None  # time.time() after which workers start no trial (--timeout)
    run_id: str = ""  # this tune (driver), tagged on the trials its workers run
