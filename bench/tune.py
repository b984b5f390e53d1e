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
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import platform
import sys
import threading
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmlbench import layout
from dmlbench.config import RunConfig
from dmlbench.errors import DMLBenchError
from dmlbench.io import CorruptFileError, read_json, write_json
from dmlbench.space import RUN_KEYS, Choice, Dist, Float, Int, describe, from_value
from dmlbench.suite import Suite

log = logging.getLogger("dmlbench")

TRIALS_DIR, FOLDS_FILE, TUNED_FILE, TUNE_LOCK = "trials", "folds.json", "tuned.json", ".tune.lock"
DEFAULT_SUITE = "tune"
DEFAULT_TEST_SEEDS = [0, 1, 2, 3, 4]
EXTRA_METRICS = ("recall@1",)  # cheap, and shown next to the objective
HEARTBEAT_ENV, GRACE_ENV = "DMLBENCH_TUNE_HEARTBEAT", "DMLBENCH_TUNE_GRACE"
MAX_RETRY = 3  # a trial whose worker dies every time (out of memory) is retried this often, then FAIL
POLL_S = 5.0
FOLD_PARTS = 4  # groups of a --folds 1 partition (dmlbench.data.splits.n_partitions)
N_STARTUP = 10  # random trials before TPE models the scores (Optuna's default)


@dataclass
class TuneOptions:
    trials: int = 30
    folds: int = 1
    validation: str | None = None  # samples | classes | None: by the dataset's test protocol
    objective: str = "map@r"
    storage: str | None = None
    space: Path | None = None
    prune: bool = False
    tune_seed: int = 0

    def check(self) -> None:
        from dmlbench.config import MAX_SEED
        from dmlbench.data.splits import FOLD_KINDS

        if not 1 <= self.trials <= 100_000:
            raise DMLBenchError(f"trials={self.trials} must be between 1 and 100,000")
        if not 1 <= self.folds <= 100:
            raise DMLBenchError(f"folds={self.folds} must be between 1 and 100")
        if self.validation is not None and self.validation not in FOLD_KINDS:
            raise DMLBenchError(f"validation={self.validation!r} is not one of: {', '.join(FOLD_KINDS)}")
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


# ----------------------------------------------------------------------------- optuna plumbing


def _optuna():
    try:
        import optuna
    except ImportError:
        raise DMLBenchError("bench tune needs Optuna: pip install 'dmlbench[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def objective_direction(name: str) -> str:
    from dmlbench.metrics import METRICS

    if name not in METRICS.names():
        raise DMLBenchError(f"objective {name!r} is not a metric; known: {', '.join(METRICS.names())}")
    spec = METRICS.get(name)
    if spec.kind not in ("embedding", "generative"):
        raise DMLBenchError(f"objective {name!r} is a {spec.kind} metric; choose a retrieval metric such as map@r")
    return "maximize" if spec.higher_is_better else "minimize"


def trial_seed(seed: int, method: str, number: int) -> int:
    digest = hashlib.sha256(f"{seed}/{method}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(seed: int, method: str):
    """TPE whose random state is re-seeded from (seed, method, trial number) before every trial.

    Its first ``N_STARTUP`` trials are random, whatever the budget, so that a study extended with
    a larger ``--trials`` proposes what a fresh one with that budget would."""
    optuna = _optuna()

    class SeededTPESampler(optuna.samplers.TPESampler):
        def before_trial(self, study, trial):
            s = trial_seed(seed, method, trial.number)
            try:
                self._rng.rng.seed(s)
                self._random_sampler._rng.rng.seed(s)
            except AttributeError:
                raise DMLBenchError(f"this Optuna ({optuna.__version__}) has another TPESampler inside; "
                                    "bench tune's reproducible sampler needs optuna 3.4-5.x") from None
            super().before_trial(study, trial)

    return SeededTPESampler(seed=trial_seed(seed, method, -1), n_startup_trials=N_STARTUP)


def _retry_callback():
    from optuna import storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return cls(max_retry=MAX_RETRY)


def _env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
    except ValueError:
        raise DMLBenchError(f"${name}={raw!r} must be a whole number of seconds >= 1") from None
    return value


def heartbeat_settings() -> tuple[int, int]:
    return _env_seconds(HEARTBEAT_ENV, 60), _env_seconds(GRACE_ENV, 120)


def default_storage(suite_dir: Path) -> str:
    return f"sqlite:///{(Path(suite_dir) / layout.STUDY).resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password (for tuned.json and messages)."""
    if url.startswith("journal:") or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by the storage itself
        return url.split("://")[0] + "://***"


def open_storage(url: str):
    """An Optuna storage: RDB (heartbeat + retry of stale trials) or ``journal:PATH``."""
    optuna = _optuna()
    heartbeat, grace = heartbeat_settings()
    try:
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage

            path = Path(url[len("journal:"):]).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from optuna.storages.journal import JournalFileBackend
            except ImportError:  # optuna < 4
                from optuna.storages import JournalFileStorage as JournalFileBackend
            return JournalStorage(JournalFileBackend(str(path)))
        kw = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                              heartbeat_stale_trial_callback=_retry_callback(), **kw)
        except TypeError:  # optuna < 4.9 names the callback failed_trial_callback
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                              failed_trial_callback=_retry_callback(), **kw)
    except DMLBenchError:
        raise
    except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable server
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DMLBenchError(f"cannot open the study storage {redact(url)}: {type(e).__name__}: {first}") from None


def _is_journal(storage) -> bool:
    return type(storage).__name__ == "JournalStorage"


class _Heartbeat:
    """Tells the storage every few seconds that a trial's worker is alive. RDB storages keep it in
    their heartbeat table; a journal file in a trial system attribute (Optuna keeps none there)."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.interval = heartbeat_settings()[0]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                if _is_journal(self.storage):
                    self.storage.set_trial_system_attr(self.trial_id, "dmlbench:heartbeat", time.time())
                else:
                    self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - a missed beat is retried at the next interval
                log.debug("heartbeat of trial %d failed: %s", self.trial_id, e)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def fail_stale_trials(study) -> None:
    """Fail RUNNING trials whose worker stopped beating, and re-queue them (same parameters)."""
    optuna = _optuna()
    storage = study._storage
    if not _is_journal(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        return
    grace = heartbeat_settings()[1]
    now = time.time()
    retry = _retry_callback()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = t.system_attrs.get("dmlbench:heartbeat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        if beat is not None and now - beat > grace:
            try:
                if storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                    retry(study, storage.get_trial(t._trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass


def budget(study) -> tuple[list, list, list]:
    """(finished trials that count, running, waiting). A trial that was failed because its worker
    died and then re-queued does not count: its re-queued copy does."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = set()
    for t in trials:
        retried.update(t.system_attrs.get("retry_history", []))
    finished = [t for t in trials if t.state.is_finished() and t.number not in retried]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    return finished, running, waiting


# ----------------------------------------------------------------------------- search spaces


def read_space_file(path: Path | None) -> dict[str, dict]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DMLBenchError(f"space file {path} does not exist; give a TOML file with one [METHOD] table per method")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DMLBenchError(f"space file {path} is not valid TOML ({e})") from None
    for key, value in data.items():
        if not isinstance(value, dict):
            raise DMLBenchError(f"space file {path}: {key} = {value!r} is not a [METHOD] table; write e.g. "
                                '[tvae] then "weights.triplet" = {low = 1, high = 300, log = true}')
    return data


def _check_run_value(key: str, value) -> None:
    from dmlbench.params import apply_overrides

    cfg = apply_overrides(RunConfig(), {key: value}, "run")
    cfg.check()


def method_plan(name: str, file_space: dict | None, set_options: dict) -> MethodPlan:
    """The method's space (its ``Params.space``, keys overridden by its [METHOD] table of --space;
    a plain value there fixes the key), checked like --set: every key an option of the method or a
    run key, every bound and choice a valid value. Keys fixed by --set leave the space."""
    from dmlbench.methods import get_method
    from dmlbench.params import apply_overrides, option_keys

    cls = get_method(name)
    space: dict[str, Dist] = dict(cls.Params.space)
    fixed, fixed_run = dict(set_options), {}
    for key, value in (file_space or {}).items():
        if isinstance(value, dict):
            space[key] = from_value(f"{name}.{key}", value)
        else:
            if key in set_options:
                raise DMLBenchError(f"{name}.{key} is fixed twice: --set {name}.{key}={set_options[key]} and "
                                    f"{key} = {value!r} in the search space; keep one")
            space.pop(key, None)
            (fixed_run if key in RUN_KEYS else fixed)[key] = value
    known = option_keys(cls.Params())
    for key in list(space) + list(fixed_run):
        if key not in RUN_KEYS and key not in known:
            raise DMLBenchError(f"unknown option {name}.{key} in the search space; {name} options are: "
                                f"{', '.join(known) or '(none)'}, and the run keys {', '.join(RUN_KEYS)}")
    for key in set_options:
        space.pop(key, None)
    apply_overrides(cls.Params(), fixed, name)
    for key, value in fixed_run.items():
        _check_run_value(key, value)
    for key, dist in space.items():
        values = dist.choices if isinstance(dist, Choice) else (dist.low, dist.high)
        for v in values:
            if key in RUN_KEYS:
                _check_run_value(key, v)
            else:
                apply_overrides(cls.Params(), {**fixed, key: v}, name)
    return MethodPlan(name, space, fixed, fixed_run)


def suggest(trial, space: dict[str, Dist]) -> dict:
    out = {}
    for key, d in space.items():
        if isinstance(d, Choice):
            out[key] = trial.suggest_categorical(key, list(d.choices))
        elif isinstance(d, Int):
            out[key] = trial.suggest_int(key, d.low, d.high, log=d.log)
        else:
            out[key] = trial.suggest_float(key, d.low, d.high, log=d.log)
    return out


def split_params(params: dict) -> tuple[dict, dict]:
    """(method keys, run keys) of a trial's parameters."""
    return ({k: v for k, v in params.items() if k not in RUN_KEYS}, {k: v for k, v in params.items() if k in RUN_KEYS})


# ----------------------------------------------------------------------------- data and folds


def load_training_data(base: RunConfig):
    """The dataset without its test part (never read), normalised as the run asks."""
    from dmlbench.data import load_dataset

    return load_dataset(base.dataset, data_dir=base.data_dir or None, split=base.split, seed=base.data_seed,
                        options=base.data_options, normalize="unit", with_test=False)


def choose_validation(data, k: int, asked: str | None) -> tuple[str, str]:
    """(fold kind, why): see the module docstring."""
    from dmlbench.data.splits import n_partitions

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
    from dmlbench.data.base import standardized
    from dmlbench.data.splits import validation_fold

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
    if (old["kind"], old["k"], old["seed"]) != (kind, k, seed) or old["assignment"] != doc["assignment"]:
        raise DMLBenchError(
            f"{path} holds other folds ({old['kind']}, folds={old['k']}, seed={old['seed']}) than this tune "
            f"({kind}, folds={k}, seed={seed}{', other data' if old['assignment'] != doc['assignment'] else ''}); "
            "give the same options, or another --suite or --out for a new study")


# ----------------------------------------------------------------------------- a trial


class TrialFailed(DMLBenchError):
    """A trial's run failed (NaN loss, crash) or gave no finite score: the trial is FAIL."""


def _pruned_error():
    optuna = _optuna()

    class Pruned(DMLBenchError, optuna.TrialPruned):
        """Raised in the trainer's callback: a DMLBenchError so the runner records it in one line."""

    return Pruned


def trial_config(base: RunConfig, n_train: int, plan: MethodPlan, params: dict, seed: int, tuned: dict) -> RunConfig:
    """The run config of a trial: the suite's base, the budget fixed from the fold's training size,
    the sampled method keys applied like --set and the run keys (lr, ...) onto the run."""
    from dmlbench.methods import get_method
    from dmlbench.params import apply_overrides
    from dmlbench.runner import with_method

    method_keys, run_keys = split_params(params)
    cls = get_method(plan.name)
    method_params = apply_overrides(cls.Params(), {**plan.fixed, **method_keys}, plan.name)
    cfg = apply_overrides(base.with_budget(n_train), {**plan.fixed_run, **run_keys}, "run")
    cfg = with_method(cfg, plan.name, seed, dataclasses.asdict(method_params))
    cfg = dataclasses.replace(cfg, tuned=tuned)
    cfg.check()
    return cfg


def _pruning_callback(trial, objective: str, fold, cfg: RunConfig, triplets, step0: int, state: dict):
    Pruned = _pruned_error()

    def callback(trainer, row) -> None:
        import torch

        from dmlbench.evaluate import evaluate

        rng = torch.get_rng_state()  # evaluating must not change the training that follows
        ctx = evaluate(trainer.method, fold, cfg, triplets, trainer.device, metrics=[objective])
        torch.set_rng_state(rng)
        value = ctx.results.get(objective)
        if value is None or not math.isfinite(value):
            return
        trial.report(value, step0 + int(row["epoch"]) - 1)
        if trial.should_prune():
            state["pruned"] = True
            raise Pruned(f"pruned at epoch {row['epoch']}: validation {objective} {value:.4f} below the median")

    return callback


def run_trial(trial, job: Job, plan: MethodPlan, folds: dict) -> float:
    """Sample, run each fold, return the mean validation objective (raise for FAIL or PRUNED)."""
    from dmlbench import runner
    from dmlbench.trainer import epoch_plan

    optuna = _optuna()
    params = suggest(trial, plan.space)
    base = job.suite.base.resolved()
    seed = job.opts.tune_seed
    scores = []
    step0 = 0
    for f in job.folds:
        fd = folds[f]
        tuned = {"role": "validation", "study": plan.name, "trial": trial.number, "fold": f, "validation": job.kind,
                 "params": params}
        cfg = trial_config(base, len(fd.train), plan, params, seed, tuned)
        fold_dir = Path(job.suite_dir) / TRIALS_DIR / f"fold{f}"
        callbacks, state = (), {}
        if job.opts.prune:
            triplets = runner.test_triplets(fd, cfg, fold_dir)
            callbacks = (_pruning_callback(trial, job.opts.objective, fd, cfg, triplets, step0, state),)
        while True:
            r = runner.run_one(cfg, fold_dir, reuse_stale=job.suite.reuse_stale, data=fd, callbacks=callbacks,
                               metrics=job.metrics)
            if r.status != "busy":  # another worker runs the very same settings: wait for its result
                break
            time.sleep(2.0)
        trial.set_user_attr(f"run_dir_fold{f}", str(r.run_dir))
        if state.get("pruned"):
            raise optuna.TrialPruned(r.reason)
        if r.status == "failed":
            raise TrialFailed(r.reason or "the run failed")
        value = r.metrics.get(job.opts.objective)
        if value is None or not math.isfinite(value):
            raise TrialFailed(f"the run gave no finite {job.opts.objective} ({value})")
        trial.set_user_attr(f"fold{f}", float(value))
        scores.append(float(value))
        step0 += len(epoch_plan(cfg.steps, cfg.steps_per_epoch())) if cfg.steps else 1
    return float(np.mean(scores))


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _one_trial(study, job: Job, plan: MethodPlan, folds: dict, trial) -> None:
    """Run a trial that was asked, with a heartbeat, and tell the study how it ended."""
    optuna = _optuna()
    TrialState = optuna.trial.TrialState
    t0 = time.perf_counter()
    name = f"{plan.name} trial {trial.number}"
    with _Heartbeat(study._storage, trial._trial_id):
        try:
            value = run_trial(trial, job, plan, folds)
        except optuna.TrialPruned as e:
            study.tell(trial, state=TrialState.PRUNED)
            _echo(f"  {name}: pruned ({e}) [{time.perf_counter() - t0:.1f} s]")
            return
        except KeyboardInterrupt:
            # Not the method's failure: failed and re-queued, so a resume runs it again.
            trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            _retry_callback()(study, study._storage.get_trial(trial._trial_id))
            raise
        except Exception as e:  # noqa: BLE001 - a failed trial is recorded as FAIL and the study goes on
            reason = str(e) if isinstance(e, DMLBenchError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, DMLBenchError):
                log.exception("%s crashed", name)
            trial.set_user_attr("fail_reason", reason[:1000])
            study.tell(trial, state=TrialState.FAIL)
            _echo(f"  {name}: FAILED: {reason} ({_fmt_params(trial.params)})")
            return
    study.tell(trial, value)
    seconds = time.perf_counter() - t0
    _echo(f"  {name}: {job.opts.objective} {value:.4f} ({_fmt_params(trial.params)}) [{seconds:.1f} s]")


def work(job: Job, threads: int | None = None, data=None, level: int | None = None) -> int:
    """A worker: take trials of every method in turn until each study has its budget. Several
    workers (processes, Ray tasks, machines) may run this on one storage at once. Returns the
    number of trials this worker ran."""
    from dmlbench.locks import Lock
    from dmlbench.runtime import set_threads

    optuna = _optuna()
    if level is not None:
        _log_to_stderr(level)
    if threads is not None:
        set_threads(threads)
    base = job.suite.base.resolved()
    if data is None:
        data = load_training_data(base)
    folds = {f: fold_data(data, job.kind, job.assignment, f, base.normalize) for f in job.folds}
    storage = open_storage(job.storage_url)
    studies = {p.name: optuna.load_study(study_name=p.name, storage=storage,
                                         sampler=make_sampler(job.opts.tune_seed, p.name),
                                         pruner=_pruner(job.opts.prune))
               for p in job.plans}
    lock = Lock(Path(job.suite_dir) / TUNE_LOCK)
    ran = 0
    announced = False
    while True:
        started = False
        busy = 0
        for plan in job.plans:
            study = studies[plan.name]
            with lock:
                fail_stale_trials(study)
                finished, running, waiting = budget(study)
                trial = None
                if waiting or len(finished) + len(running) < job.opts.trials:
                    with warnings.catch_warnings():  # "heartbeat ... with Study.optimize": this loop beats itself
                        warnings.simplefilter("ignore", UserWarning)
                        trial = study.ask()
            if trial is None:
                busy += len(running)
                continue
            started = True
            _one_trial(study, job, plan, folds, trial)
            ran += 1
        if started:
            continue
        if not busy:
            return ran
        if not announced:
            _echo(f"  waiting for {busy} running trial(s): another worker's, or left by a killed tune (re-queued "
                  f"once silent for {heartbeat_settings()[1]} s)")
            announced = True
        time.sleep(min(POLL_S, heartbeat_settings()[0]))


def _pruner(prune: bool):
    optuna = _optuna()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()


def _log_to_stderr(level: int) -> None:
    logger = logging.getLogger("dmlbench")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


def _work_entry(job: Job, threads: int, level: int) -> int:
    return work(job, threads=threads, level=level)


# ----------------------------------------------------------------------------- running a tune


def plan_tune(suite: Suite, opts: TuneOptions) -> tuple[list[MethodPlan], list[str]]:
    """(plans of the tuned methods, untrained methods left out); every check before any data."""
    from dmlbench.methods import get_method

    opts.check()
    file_space = read_space_file(opts.space)
    for owner in file_space:
        get_method(owner)  # a name that is no method at all is an error
        if owner not in suite.methods:
            raise DMLBenchError(f"--space {opts.space} names {owner!r}, which is not among the methods being tuned "
                                f"({', '.join(suite.methods)})")
    plans, skipped = [], []
    for name in suite.methods:
        if not get_method(name).trainable:
            skipped.append(name)
            continue
        plans.append(method_plan(name, file_space.get(name), suite.method_sets.get(name, {})))
    if not plans:
        raise DMLBenchError(f"nothing to tune: {', '.join(suite.methods)} train nothing; give --methods")
    return plans, skipped


def _fingerprint(job: Job, plan: MethodPlan) -> dict:
    """What must not change when a study is resumed: the equal-budget conditions."""
    from dmlbench.config import NOT_IN_ID

    base = job.suite.base.resolved()
    config = {k: v for k, v in base.to_dict().items() if k not in NOT_IN_ID + ("method", "seed", "method_params")}
    return {"dataset": base.dataset, "objective": job.opts.objective, "validation": job.kind, "folds": job.opts.folds,
            "tune_seed": job.opts.tune_seed, "space": {k: str(d) for k, d in plan.space.items()},
            "fixed": {k: str(v) for k, v in sorted(plan.fixed.items())},
            "fixed_run": {k: str(v) for k, v in sorted(plan.fixed_run.items())},
            "prune": job.opts.prune, "config": config}


def create_studies(job: Job) -> None:
    """Create each method's study, or check a resumed one was made under the same conditions."""
    import json

    optuna = _optuna()
    storage = open_storage(job.storage_url)
    direction = objective_direction(job.opts.objective)
    for plan in job.plans:
        study = optuna.create_study(study_name=plan.name, storage=storage, direction=direction, load_if_exists=True)
        want = json.loads(json.dumps(_fingerprint(job, plan), default=str))
        have = study.user_attrs.get("dmlbench")
        if have is None:
            study.set_user_attr("dmlbench", want)
        elif have != want:
            diffs = []
            for k in sorted(set(have) | set(want)):
                old, new = have.get(k), want.get(k)
                if old == new:
                    continue
                if isinstance(old, dict) and isinstance(new, dict) and k == "config":
                    diffs += [f"{c} {old.get(c)} -> {new.get(c)}" for c in sorted(set(old) | set(new))
                              if old.get(c) != new.get(c)]
                else:
                    diffs.append(f"{k} {old} -> {new}")
            raise DMLBenchError(f"study {plan.name!r} in {redact(job.storage_url)} was made under other conditions "
                                f"({'; '.join(diffs)}); give the same options to resume it, or another "
                                "--suite/--storage for a new study")
        if study.direction.name.lower() != direction:
            raise DMLBenchError(f"study {plan.name!r} in {redact(job.storage_url)} {study.direction.name.lower()}s, "
                                f"but {job.opts.objective} needs {direction}")


def tune(suite: Suite, opts: TuneOptions, echo=_echo) -> dict:
    """Tune every trained method of the suite with an equal budget; write and return tuned.json."""
    from dmlbench.data.base import standardized
    from dmlbench.data.splits import fold_assignment, n_partitions
    from dmlbench.encoders import check_input
    from dmlbench.methods import GenerativeMethod, get_method
    from dmlbench.runner import input_shape
    from dmlbench.runtime import default_threads, set_threads
    from dmlbench.suite import check_before_data

    t_start = time.perf_counter()
    if not suite.name:
        suite = dataclasses.replace(suite, name=DEFAULT_SUITE)
    plans, skipped = plan_tune(suite, opts)
    check_before_data(suite)
    base = suite.base.resolved()
    base.check()
    if suite.executor not in ("local", "ray"):
        raise DMLBenchError(f"executor {suite.executor!r} is not one of: local, ray")
    set_threads(base.threads)
    suite_dir = suite.dir
    suite_dir.mkdir(parents=True, exist_ok=True)
    storage_url = opts.storage or default_storage(suite_dir)

    data = load_training_data(base)
    check_input(base.encoder, input_shape(base, data.input_shape))
    generative = [p.name for p in plans if issubclass(get_method(p.name), GenerativeMethod)]
    lo, hi = (standardized(data) if base.normalize == "standard" else data).value_range()
    if generative and (lo < 0 or hi > 1):
        raise DMLBenchError(f"{', '.join(generative)} decode pixels in [0, 1], but this data spans "
                            f"[{lo:.3g}, {hi:.3g}]; use normalize=unit or leave the generative methods out")
    kind, why = choose_validation(data, opts.folds, opts.validation)
    assignment = fold_assignment(data, kind, opts.folds, opts.tune_seed)
    check_folds(suite_dir, kind, opts.folds, opts.tune_seed, assignment, base.dataset)
    parts = n_partitions(opts.folds)
    fold_ids = list(range(opts.folds))
    metrics = list(dict.fromkeys([opts.objective, *EXTRA_METRICS]))
    job = Job(suite, plans, opts, kind, assignment, storage_url, suite_dir, metrics, fold_ids)
    create_studies(job)

    example = fold_data(data, kind, assignment, 0, "unit")
    steps = trial_config(base, len(example.train), plans[0], {}, opts.tune_seed, {}).steps
    if skipped:
        echo(f"{', '.join(skipped)}: nothing to tune (trains nothing), left out")
    echo(f"tuning {', '.join(p.name for p in plans)} on {base.dataset}: {opts.trials} trials each, {steps} steps "
         f"per trial, {base.encoder} encoder, objective validation {opts.objective}")
    echo(f"validation: {kind} folds ({'1 fold' if opts.folds == 1 else f'{opts.folds} folds'} of a {parts}-way "
         f"partition: {len(example.train)} train / {len(example.test)} validation images), because {why}; "
         "the test set is not read")
    for p in plans:
        echo(f"  {p.name}: {describe(p.space)}" + (f"; fixed {_fmt_params({**p.fixed, **p.fixed_run})}"
                                                   if p.fixed or p.fixed_run else ""))
    echo(f"study storage {redact(storage_url)} -> {suite_dir}")

    workers = max(1, suite.workers)
    threads = max(1, (base.threads or default_threads()) // workers)
    level = logging.getLogger("dmlbench").level
    if suite.executor == "ray":
        _run_ray(job, workers, threads, level)
    elif workers == 1:
        work(job, data=data)
    else:
        _run_local(job, workers, threads, level)
    doc = summarize(job, time.perf_counter() - t_start, workers)
    write_json(suite_dir / TUNED_FILE, doc)
    echo(f"best settings written to {suite_dir / TUNED_FILE}; test them with: bench run --tuned {suite_dir}")
    return doc


def _run_local(job: Job, workers: int, threads: int, level: int) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # a fresh interpreter per worker, as the local executor does
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        futures = [pool.submit(_work_entry, job, threads, level) for _ in range(workers)]
        for fut in futures:
            fut.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _run_ray(job: Job, workers: int, threads: int, level: int) -> None:
    from dmlbench.executors.ray import import_ray

    ray = import_ray()
    if job.storage_url.startswith("sqlite:///") or job.storage_url.startswith("journal:"):
        log.info("ray: the study file must be on a file system every node sees")
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        else:
            ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=True)
    job = dataclasses.replace(job, suite_dir=Path(job.suite_dir).resolve())
    remote = ray.remote(num_cpus=threads, max_retries=MAX_RETRY)(_work_entry)
    refs = [remote.remote(job, threads, level) for _ in range(workers)]
    try:
        ray.get(refs)
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise


# ----------------------------------------------------------------------------- results


def summarize(job: Job, wall_seconds: float, workers: int) -> dict:
    """tuned.json: per method its best settings (method keys and run keys apart), value, trial,
    counts by state and seconds."""
    from optuna.trial import TrialState

    optuna = _optuna()
    storage = open_storage(job.storage_url)
    methods = {}
    for plan in job.plans:
        study = optuna.load_study(study_name=plan.name, storage=storage)
        finished, running, waiting = budget(study)
        trials = study.get_trials(deepcopy=False)
        states = {s.name: sum(t.state == s for t in finished) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                          TrialState.FAIL)}
        states.update(RUNNING=len(running), WAITING=len(waiting), RETRIED=len(trials) - len(finished) - len(running)
                      - len(waiting))
        complete = [t for t in finished if t.state == TrialState.COMPLETE]
        entry = {"study": plan.name, "storage": redact(job.storage_url), "trials": len(finished), "states": states,
                 "space": {k: str(d) for k, d in plan.space.items()}, "best_trial": None, "best_value": None,
                 "params": {}, "method_params": dict(plan.fixed), "run_params": dict(plan.fixed_run)}
        if complete:
            best = study.best_trial
            method_keys, run_keys = split_params(best.params)
            entry.update(best_trial=best.number, best_value=best.value, params=dict(best.params),
                         method_params={**plan.fixed, **method_keys}, run_params={**plan.fixed_run, **run_keys},
                         fold_values={k: v for k, v in best.user_attrs.items() if k.startswith("fold")})
        starts = [t.datetime_start for t in finished if t.datetime_start]
        ends = [t.datetime_complete for t in finished if t.datetime_complete]
        entry["trial_seconds"] = round(sum((t.datetime_complete - t.datetime_start).total_seconds()
                                           for t in finished if t.datetime_start and t.datetime_complete), 3)
        entry["wall_seconds"] = round((max(ends) - min(starts)).total_seconds(), 3) if starts and ends else 0.0
        methods[plan.name] = entry
    base = job.suite.base.resolved()
    return {
        "dataset": base.dataset, "suite_dir": str(job.suite_dir), "storage": redact(job.storage_url),
        "objective": job.opts.objective, "direction": objective_direction(job.opts.objective),
        "validation": job.kind, "folds": job.opts.folds, "trials": job.opts.trials, "tune_seed": job.opts.tune_seed,
        "prune": job.opts.prune, "config": {k: v for k, v in base.to_dict().items()
                                            if k not in ("method", "seed", "method_params", "tuned")},
        "methods": methods, "wall_seconds": round(wall_seconds, 3),
        "where": {"host": platform.node(), "executor": job.suite.executor, "workers": workers, "device": base.device},
    }


def summary_table(doc: dict) -> str:
    obj = doc["objective"]
    head = ["method", f"best {obj}", "trial", "complete", "pruned", "failed", "minutes", "best settings"]
    rows = []
    for name, m in doc["methods"].items():
        s = m["states"]
        value = "-" if m["best_value"] is None else f"{m['best_value']:.4f}"
        trial = "-" if m["best_trial"] is None else str(m["best_trial"])
        settings = ("(no complete trial)" if m["best_trial"] is None
                    else _fmt_params({**m["method_params"], **m["run_params"]}) or "(defaults)")
        rows.append([name, value, trial, str(s["COMPLETE"]), str(s["PRUNED"]), str(s["FAIL"]),
                     f"{m['wall_seconds'] / 60:.1f}", settings])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


# ----------------------------------------------------------------------------- from tuning to the table


@dataclass
class TunedSuite(Suite):
    """A suite whose methods run with tuned settings: method keys in ``method_sets`` (as --set),
    run keys (lr, ...) per method in ``run_sets``, and where they came from in ``tuned`` (for each
    run's ``RunConfig.tuned``). ``dmlbench.suite.expand`` applies ``run_sets`` and ``tuned``."""

    run_sets: dict[str, dict] = field(default_factory=dict)
    tuned: dict[str, dict] = field(default_factory=dict)


def read_tuned(tuned_dir: Path) -> tuple[Path, dict]:
    path = Path(tuned_dir)
    if path.is_dir():
        path = path / TUNED_FILE
    if not path.is_file():
        raise DMLBenchError(f"{path} does not exist; give the suite folder of a finished `bench tune` "
                            "(it holds tuned.json)")
    doc = read_json(path)
    methods = doc.get("methods")
    if not isinstance(methods, dict) or not isinstance(doc.get("dataset"), str):
        raise CorruptFileError(path, "no dataset or methods")
    for name, m in methods.items():
        if not isinstance(m, dict) or not isinstance(m.get("method_params"), dict) or \
                not isinstance(m.get("run_params"), dict) or "best_trial" not in m:
            raise CorruptFileError(path, f"method {name!r} lacks method_params, run_params or best_trial")
    return path, doc


def apply_tuned(suite: Suite, tuned_dir: Path, *, seeds_given: bool | None = None) -> TunedSuite:
    """The suite with each tuned method at its best validation settings (``bench run --tuned``).

    Methods of the suite that were not tuned are left out (with a warning), except untrained ones
    (the raw floor). The tuned values apply over the suite's --set. Seeds: 0-4 unless given
    (``seeds_given=None``: the suite's seeds count as not given when they are the default [0]).
    """
    from dmlbench.data import DatasetRef
    from dmlbench.methods import get_method
    from dmlbench.params import apply_overrides

    path, doc = read_tuned(tuned_dir)
    if DatasetRef.parse(doc["dataset"]).slug() != DatasetRef.parse(suite.base.dataset).slug():
        raise DMLBenchError(f"{path} was tuned on {doc['dataset']}, but this suite runs {suite.base.dataset}; "
                            f"give --dataset {doc['dataset']}")
    tuned_methods = doc["methods"]
    keep = [m for m in suite.methods if m in tuned_methods or not get_method(m).trainable]
    dropped = [m for m in suite.methods if m not in keep]
    if not any(m in tuned_methods for m in keep):
        raise DMLBenchError(f"none of {', '.join(suite.methods)} was tuned in {path} (tuned: "
                            f"{', '.join(tuned_methods)}); give --methods")
    if dropped:
        log.warning("--tuned %s: %s not tuned there, left out", path, ", ".join(dropped))
    method_sets, run_sets, tuned = dict(suite.method_sets), {}, {}
    for name in keep:
        if name not in tuned_methods:
            continue
        m = tuned_methods[name]
        if m["best_trial"] is None:
            raise DMLBenchError(f"{path}: no trial of {name} completed (states {m.get('states')}); tune it again "
                                "or leave it out with --methods")
        mine = suite.method_sets.get(name, {})
        clash = {k for k in mine if k in m["method_params"] and str(mine[k]) != str(m["method_params"][k])}
        if clash:
            log.warning("--tuned: %s's tuned %s override(s) the --set value(s)", name, ", ".join(sorted(clash)))
        overrides = {**mine, **m["method_params"]}
        apply_overrides(get_method(name).Params(), overrides, name)  # a tuned.json from other code fails here
        apply_overrides(suite.base, m["run_params"], "run")
        method_sets[name] = overrides
        run_sets[name] = dict(m["run_params"])
        tuned[name] = {"study": m.get("study", name), "trial": m["best_trial"], "value": m.get("best_value"),
                       "objective": doc.get("objective"), "params": m.get("params", {}),
                       "storage": m.get("storage", doc.get("storage")), "validation": doc.get("validation"),
                       "from": str(path)}
    cfg = doc.get("config") or {}
    here = suite.base.resolved()
    differ = [k for k in ("encoder", "embedding_dim", "epochs", "steps", "batch_size", "optimizer", "lr_schedule",
                          "augment", "normalize", "split") if k in cfg and cfg[k] != getattr(here, k)]
    if differ:
        log.warning("--tuned: tuned with other %s than this run (%s)", ", ".join(differ),
                    ", ".join(f"{k} {cfg[k]} -> {getattr(here, k)}" for k in differ))
    if seeds_given is None:
        seeds_given = suite.seeds != [0]
    seeds = list(suite.seeds) if seeds_given else list(DEFAULT_TEST_SEEDS)
    fields = {f.name: getattr(suite, f.name) for f in dataclasses.fields(Suite)}
    fields.update(methods=keep, method_sets=method_sets, seeds=seeds)
    return TunedSuite(**fields, run_sets=run_sets, tuned=tuned)


def tuned_config(suite: Suite, cfg: RunConfig) -> RunConfig:
    """A planned run's config with its method's tuned run keys and ``tuned`` record (what
    ``suite.expand`` does for a :class:`TunedSuite`; identity for any other suite)."""
    from dmlbench.params import apply_overrides

    run_keys = getattr(suite, "run_sets", {}).get(cfg.method)
    info = getattr(suite, "tuned", {}).get(cfg.method)
    if run_keys:
        cfg = apply_overrides(cfg, run_keys, "run")
    if info:
        cfg = dataclasses.replace(cfg, tuned=info)
    return cfg
