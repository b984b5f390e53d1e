"""Running a tune (the studies, local or Ray workers) and its results (tuned.json, the table)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from pathlib import Path

from dmlbench.core import distributed
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import undo_if_refused, write_json
from dmlbench.core.params import apply_overrides
from dmlbench.core.runtime import echo_line, interrupts_ignored, limit_threads
from dmlbench.core.space import describe
from dmlbench.data.base import standardized
from dmlbench.data.splits import fold_assignment, n_partitions
from dmlbench.evaluation.metrics import METRICS
from dmlbench.methods import GenerativeMethod, get_method
from dmlbench.running import layout
from dmlbench.running.checks import check_before_data, check_data, warn_degenerate
from dmlbench.running.config import NOT_IN_ID
from dmlbench.running.suite import Suite
from dmlbench.tune.folds import check_fold_sizes, check_folds, choose_validation, fold_data, load_training_data
from dmlbench.tune.options import (
    DEFAULT_SUITE,
    EXTRA_METRICS,
    FOLDS_FILE,
    TUNED_FILE,
    Job,
    MethodPlan,
    TuneOptions,
    fmt_params,
    objective_direction,
)
from dmlbench.tune.spaces import method_plan, read_space_file
from dmlbench.tune.storage import (
    CREATION_LOCK_TIMEOUT_S,
    RUN_TAG,
    creation_lock,
    default_storage,
    heartbeat_settings,
    import_optuna,
    open_storage,
    redact,
    requeue_interrupted,
    requeue_orphans,
    storage_errors,
)
from dmlbench.tune.summary import budget_warnings, edge_warnings, failed_methods, other_methods, summarize
from dmlbench.tune.trial import PRUNE_STARTUP, trial_config, work

log = logging.getLogger("dmlbench")


# ----------------------------------------------------------------------------- running a tune


def plan_tune(suite: Suite, opts: TuneOptions) -> tuple[list[MethodPlan], list[str]]:
    """(plans of the tuned methods, untrained methods left out); every check before any data."""
    opts.check()
    file_space = read_space_file(opts.space)
    tuned = [m for m in suite.methods if get_method(m).trainable]
    for owner in file_space:
        if not get_method(owner).trainable:  # (a name that is no method at all is an error there)
            raise DMLBenchError(f"--space {opts.space} has a [{owner}] table, but {owner} trains nothing and is "
                                "never tuned; leave that table out")
        if owner not in tuned:
            raise DMLBenchError(f"--space {opts.space} names {owner!r}, which is not among the methods being tuned "
                                f"({', '.join(tuned)})")
    base = suite.base.resolved()
    plans = [method_plan(name, file_space.get(name), suite.method_sets.get(name, {}), opts.run_flags, base.optimizer)
             for name in tuned]
    skipped = [m for m in suite.methods if m not in tuned]
    if not plans:
        raise DMLBenchError(f"nothing to tune: {', '.join(suite.methods)} train nothing; give --methods")
    _check_objective(opts.objective, [p.name for p in plans])
    return plans, skipped


def _check_objective(objective: str, names: list[str]) -> None:
    """A generative objective (recon_error) exists only for methods that decode: every trial of
    another method would fail, so the tune is refused before it starts."""
    if METRICS.get(objective).kind != "generative":
        return
    blind = [n for n in names if not issubclass(get_method(n), GenerativeMethod)]
    if blind:
        raise DMLBenchError(f"objective {objective} is measured only for methods that reconstruct (vae, tvae); "
                            f"{', '.join(blind)} {'has' if len(blind) == 1 else 'have'} none: tune them with a "
                            "retrieval objective such as map@r, or leave them out")


def _fingerprint(job: Job, plan: MethodPlan) -> dict:
    """What must not change when a study is resumed: the equal-budget conditions."""
    base = job.suite.base.resolved()
    config = {k: v for k, v in base.to_dict().items() if k not in NOT_IN_ID + ("method", "seed", "method_params")}
    return {"dataset": base.dataset, "objective": job.opts.objective, "validation": job.kind, "folds": job.opts.folds,
            "tune_seed": job.opts.tune_seed, "space": {k: str(d) for k, d in plan.space.items()},
            "fixed": {k: str(v) for k, v in sorted(plan.fixed.items())},
            "fixed_run": {k: str(v) for k, v in sorted(plan.fixed_run.items())},
            "prune": job.opts.prune, "config": config}


SUITE_CONDITIONS = ("dataset", "objective", "validation", "folds", "tune_seed", "prune", "config")


def _diffs(have: dict, want: dict) -> list[str]:
    diffs = []
    for k in sorted(set(have) | set(want)):
        old, new = have.get(k), want.get(k)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict) and k == "config":
            diffs += [f"{c} {old.get(c)} -> {new.get(c)}" for c in sorted(set(old) | set(new)) if old.get(c) != new.get(c)]
        else:
            diffs.append(f"{k} {old} -> {new}")
    return diffs


def create_studies(job: Job) -> None:
    """Create each method's study, or check a resumed one was made under the same conditions; and
    check that every other method's study in the storage was tuned under the same suite-wide
    conditions (data, objective, folds, steps, ...), so that a later tune of some of the methods
    cannot give them another budget than the rest of the suite's."""
    optuna = import_optuna()
    storage = open_storage(job.storage_url)
    direction = objective_direction(job.opts.objective)
    wants = {p.name: json.loads(json.dumps(_fingerprint(job, p), default=str)) for p in job.plans}
    suite_want = {k: next(iter(wants.values()))[k] for k in SUITE_CONDITIONS}
    existing = {s.study_name: s.user_attrs.get("dmlbench")
                for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}

    def check_own(name: str, have) -> None:
        if have is not None and have != wants[name]:
            raise DMLBenchError(f"study {name!r} in {redact(job.storage_url)} was made under other conditions "
                                f"({'; '.join(_diffs(have, wants[name]))}); give the same options to resume it, or "
                                "another --suite/--storage for a new study")

    for name in wants:  # a resumed study first: its own message is the more precise
        check_own(name, existing.get(name))
    for name, have in existing.items():
        if name in wants or not isinstance(have, dict):
            continue
        diffs = _diffs({k: have.get(k) for k in SUITE_CONDITIONS}, suite_want)
        if diffs:
            raise DMLBenchError(f"study {name!r} in {redact(job.storage_url)} was tuned under other conditions "
                                f"({'; '.join(diffs)}); every method of a suite is tuned alike: give the same "
                                "options, or another --suite/--storage for a new comparison")
    for plan in job.plans:
        study = optuna.create_study(study_name=plan.name, storage=storage, direction=direction, load_if_exists=True)
        have = study.user_attrs.get("dmlbench")
        if have is None:
            study.set_user_attr("dmlbench", wants[plan.name])
        check_own(plan.name, have)  # (another tune may have made it since)
        if study.direction.name.lower() != direction:
            raise DMLBenchError(f"study {plan.name!r} in {redact(job.storage_url)} {study.direction.name.lower()}s, "
                                f"but {job.opts.objective} needs {direction}")


def open_studies(job: Job) -> None:
    """Make the suite folder, folds.json and each method's study, or check those there (see
    :func:`create_studies`). Tunes started at once on a new suite take turns here, under the lock
    of a file storage (a server is retried instead, :func:`~dmlbench.tune.storage.open_storage`):
    the first makes the schema, folds.json and the studies, the others find them.

    A storage that refuses the study leaves no folder, folds.json or study file, and one refused
    never removes those another tune made (an interrupt or a crash leaves them)."""
    base = job.suite.base.resolved()
    with undo_if_refused(job.suite_dir, (FOLDS_FILE, layout.STUDY), on=DMLBenchError,
                         lock=creation_lock(job.storage_url), lock_timeout=CREATION_LOCK_TIMEOUT_S):
        Path(job.suite_dir).mkdir(parents=True, exist_ok=True)
        check_folds(job.suite_dir, job.kind, job.opts.folds, job.opts.tune_seed, job.assignment, base.dataset)
        create_studies(job)


def tune(suite: Suite, opts: TuneOptions, echo=echo_line) -> dict:
    """Tune every trained method of the suite with an equal budget; write and return tuned.json."""
    t_start = time.perf_counter()
    if not suite.name:
        suite = dataclasses.replace(suite, name=DEFAULT_SUITE)
    if suite.base.nproc_per_run > 1 or (distributed.torchrun_env() or {}).get("WORLD_SIZE", 1) > 1:
        raise DMLBenchError("bench tune makes each trial as one process; --nproc-per-run and torchrun apply to "
                            "bench run (tune with more --workers instead)")
    plans, skipped = plan_tune(suite, opts)
    check_before_data(suite)
    base = suite.base.resolved()
    limit_threads(base.threads)  # torch's threads are set where trials run: a pool's driver imports no torch
    import_optuna()  # a missing extra stops the tune before it writes anything
    executor = suite.make_executor()
    try:
        executor.start()  # an unreachable cluster, too
        suite_dir = suite.dir.resolve() if executor.remote else suite.dir  # remote workers need absolute paths
        storage_url = opts.storage or default_storage(suite_dir)
        with storage_errors(storage_url):  # a storage's failure, wherever met, is one line naming its cause
            return _tune(suite, opts, plans, skipped, executor, echo, t_start, suite_dir, storage_url)
    finally:
        executor.shutdown()


def _tune(suite: Suite, opts: TuneOptions, plans: list[MethodPlan], skipped: list[str], executor, echo,
          t_start: float, suite_dir, storage_url: str) -> dict:
    base = suite.base.resolved()
    data = load_training_data(base)
    tuned_suite = dataclasses.replace(suite, methods=[p.name for p in plans])
    check_data(tuned_suite, data, (standardized(data) if base.normalize == "standard" else data).value_range(),
               {p.name: apply_overrides(get_method(p.name).Params(), p.fixed, p.name) for p in plans})
    warn_degenerate(tuned_suite, data)
    kind, why = choose_validation(data, opts.folds, opts.validation)
    assignment = fold_assignment(data, kind, opts.folds, opts.tune_seed)
    check_fold_sizes(data, kind, assignment, list(range(opts.folds)), opts.folds)
    parts = n_partitions(opts.folds)
    metrics = list(dict.fromkeys([opts.objective, *EXTRA_METRICS]))
    # A wall-clock deadline: workers are processes (or Ray tasks) that share the clock, not a timer.
    deadline = time.time() + opts.timeout if opts.timeout else None
    job = Job(suite, plans, opts, kind, assignment, storage_url, suite_dir, metrics, list(range(opts.folds)),
              deadline, uuid.uuid4().hex)
    open_studies(job)
    _requeue_orphans_of_dead_tunes(job)

    example = fold_data(data, kind, assignment, 0, "unit")
    steps = trial_config(base, len(example.train), plans[0], {}, opts.tune_seed, {}).steps
    named = [m for m in skipped if m != "raw"]  # raw joins every suite by itself: no news that it isn't tuned
    if named:
        echo(f"{', '.join(named)}: nothing to tune (trains nothing), left out")
    echo(f"tuning {', '.join(p.name for p in plans)} on {base.dataset}: {opts.trials} trials each, {steps} steps "
         f"per trial, {base.encoder} encoder, objective validation {opts.objective}")
    echo(f"validation: {kind} folds ({'1 fold' if opts.folds == 1 else f'{opts.folds} folds'} of a {parts}-way "
         f"partition: {len(example.train)} train / {len(example.test)} validation images), because {why}; "
         "the test set is not read")
    for p in plans:
        echo(f"  {p.name}: {describe(p.space)}" + (f"; fixed {fmt_params({**p.fixed, **p.fixed_run})}"
                                                   if p.fixed or p.fixed_run else ""))
    echo(f"study storage {redact(storage_url)} -> {suite_dir}")
    if opts.prune and opts.trials <= PRUNE_STARTUP:
        echo(f"warning: --prune compares a trial with the median of the earlier ones after {PRUNE_STARTUP} trials of "
             f"a method; with --trials {opts.trials} it prunes nothing")
    if executor.remote and (storage_url.startswith("sqlite:///") or storage_url.startswith("journal:")):
        log.info("the study file must be on a file system every node sees")
    try:
        # One worker loop per worker: each takes trials of the method furthest behind until the
        # budget is spent (the executor sets each worker's threads).
        executor.map(work, [job] * executor.workers)
    except KeyboardInterrupt as e:
        # The workers are stopped; a trial one of them could not re-queue (a Ray task killed, a
        # worker terminated) is re-queued here, so a resume need not wait for its heartbeat to lapse.
        with interrupts_ignored(e):
            _requeue_own(job)
        raise
    except DMLBenchError:
        # A worker stopped on a full disk or a failing storage: its trial is re-queued now if the
        # storage still takes it, else by the next tune once its heartbeat lapses. The error the
        # user must see is the worker's, not whatever this attempt runs into.
        try:
            _requeue_own(job)
        except Exception as e:  # noqa: BLE001 - best effort, see above
            log.debug("could not re-queue this tune's trials: %s", e)
        raise
    doc = summarize(job, time.perf_counter() - t_start, executor.workers)
    doc["methods"] = {**other_methods(suite_dir / TUNED_FILE, doc), **doc["methods"]}
    write_json(suite_dir / TUNED_FILE, doc)
    for line in budget_warnings(doc, opts.trials) + edge_warnings(doc):
        echo(f"warning: {line}")
    if failed_methods(doc):
        return doc  # the CLI reports the methods that have no setting to test
    echo(f"best settings written to {suite_dir / TUNED_FILE}; test them with: bench run --tuned {suite_dir}")
    return doc


def _requeue_orphans_of_dead_tunes(job: Job) -> None:
    """A tune killed between failing an interrupted trial and re-queuing it left that trial
    without its copy: re-queued here, once older than the heartbeat grace."""
    optuna = import_optuna()
    storage = open_storage(job.storage_url)
    for plan in job.plans:
        requeue_orphans(optuna.load_study(study_name=plan.name, storage=storage), min_age_s=heartbeat_settings()[1])


def _requeue_own(job: Job) -> None:
    """After an interrupt: this tune's trials left RUNNING, or failed without their copy, re-queued."""
    optuna = import_optuna()
    storage = open_storage(job.storage_url)
    for plan in job.plans:
        study = optuna.load_study(study_name=plan.name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.system_attrs.get(RUN_TAG) == job.run_id:
                requeue_interrupted(study, t._trial_id)
        # A worker terminated between failing its trial and adding the copy (when one worker
        # exits, the pool terminates the others): the copy is added here.
        requeue_orphans(study, run_id=job.run_id)
