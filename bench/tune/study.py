"""Running a tune (the studies, local or Ray workers) and its results (tuned.json, the table)."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from pathlib import Path

from dmlbench.running import layout
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import undo_if_refused, write_json
from dmlbench.core.runtime import interrupts_ignored
from dmlbench.core.space import describe
from dmlbench.running.suite import Suite
from dmlbench.tune.folds import check_fold_sizes, check_folds, choose_validation, fold_data, load_training_data
from dmlbench.tune.options import (
    DEFAULT_SUITE, EXTRA_METRICS, FOLDS_FILE, MAX_RETRY, TUNED_FILE, Job, MethodPlan, TuneOptions,
)
from dmlbench.tune.spaces import method_plan, read_space_file
from dmlbench.tune.storage import (
    _optuna, default_storage, heartbeat_settings, objective_direction, open_storage, redact,
)
from dmlbench.tune.summary import _other_methods, budget_warnings, failed_methods, summarize
from dmlbench.tune.trial import PRUNE_STARTUP, _echo, _fmt_params, _work_entry, trial_config, work

log = logging.getLogger("dmlbench")


# ----------------------------------------------------------------------------- running a tune


def plan_tune(suite: Suite, opts: TuneOptions) -> tuple[list[MethodPlan], list[str]]:
    """(plans of the tuned methods, untrained methods left out); every check before any data."""
    from dmlbench.methods import get_method

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
    from dmlbench.methods import GenerativeMethod, get_method
    from dmlbench.evaluation.metrics import METRICS

    if METRICS.get(objective).kind != "generative":
        return
    blind = [n for n in names if not issubclass(get_method(n), GenerativeMethod)]
    if blind:
        raise DMLBenchError(f"objective {objective} is measured only for methods that reconstruct (vae, tvae); "
                            f"{', '.join(blind)} {'has' if len(blind) == 1 else 'have'} none: tune them with a "
                            "retrieval objective such as map@r, or leave them out")


def _fingerprint(job: Job, plan: MethodPlan) -> dict:
    """What must not change when a study is resumed: the equal-budget conditions."""
    from dmlbench.running.config import NOT_IN_ID

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
    import json

    optuna = _optuna()
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


def tune(suite: Suite, opts: TuneOptions, echo=_echo) -> dict:
    """Tune every trained method of the suite with an equal budget; write and return tuned.json."""
    from dmlbench.data.base import standardized
    from dmlbench.data.splits import fold_assignment, n_partitions
    from dmlbench.training.encoders import check_input
    from dmlbench.methods import GenerativeMethod, get_method
    from dmlbench.running.runner import input_shape
    from dmlbench.core.runtime import default_threads, limit_threads
    from dmlbench.core.params import apply_overrides
    from dmlbench.running.suite import check_batch_sizes, check_before_data

    t_start = time.perf_counter()
    if not suite.name:
        suite = dataclasses.replace(suite, name=DEFAULT_SUITE)
    plans, skipped = plan_tune(suite, opts)
    check_before_data(suite)
    base = suite.base.resolved()
    base.check()
    if suite.executor not in ("local", "ray"):
        raise DMLBenchError(f"executor {suite.executor!r} is not one of: local, ray")
    limit_threads(base.threads)  # torch's threads are set where trials run: a pool's driver imports no torch
    _optuna()  # a missing extra, or an unreachable cluster, stops the tune before it writes anything
    workers = max(1, suite.workers)
    threads = max(1, (base.threads or default_threads()) // workers)
    if suite.executor == "ray":
        from dmlbench.executors.ray import connect, import_ray

        connect(import_ray(), suite.ray_address, workers * threads, suite.gpus_per_run)
    suite_dir = suite.dir
    storage_url = opts.storage or default_storage(suite_dir)

    data = load_training_data(base)
    check_input(base.encoder, input_shape(base, data.input_shape))
    generative = [p.name for p in plans if issubclass(get_method(p.name), GenerativeMethod)]
    lo, hi = (standardized(data) if base.normalize == "standard" else data).value_range()
    if generative and (lo < 0 or hi > 1):
        raise DMLBenchError(f"{', '.join(generative)} decode pixels in [0, 1], but this data spans "
                            f"[{lo:.3g}, {hi:.3g}]; use normalize=unit or leave the generative methods out")
    check_batch_sizes(dataclasses.replace(suite, methods=[p.name for p in plans]), base.batch_size, data.train.y,
                      {p.name: apply_overrides(get_method(p.name).Params(), p.fixed, p.name) for p in plans})
    kind, why = choose_validation(data, opts.folds, opts.validation)
    assignment = fold_assignment(data, kind, opts.folds, opts.tune_seed)
    check_fold_sizes(data, kind, assignment, list(range(opts.folds)), opts.folds)
    parts = n_partitions(opts.folds)
    fold_ids = list(range(opts.folds))
    metrics = list(dict.fromkeys([opts.objective, *EXTRA_METRICS]))
    # A wall-clock deadline: workers are processes (or Ray tasks) that share the clock, not a timer.
    deadline = time.time() + opts.timeout if opts.timeout else None
    job = Job(suite, plans, opts, kind, assignment, storage_url, suite_dir, metrics, fold_ids, deadline,
              uuid.uuid4().hex)
    # A storage that refuses the study leaves no folder, folds.json or study file (an interrupt or
    # a crash, which might be another tune's race on the same folder, leaves them).
    with undo_if_refused(suite_dir, (FOLDS_FILE, layout.STUDY), on=DMLBenchError):
        suite_dir.mkdir(parents=True, exist_ok=True)
        check_folds(suite_dir, kind, opts.folds, opts.tune_seed, assignment, base.dataset)
        create_studies(job)
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
        echo(f"  {p.name}: {describe(p.space)}" + (f"; fixed {_fmt_params({**p.fixed, **p.fixed_run})}"
                                                   if p.fixed or p.fixed_run else ""))
    echo(f"study storage {redact(storage_url)} -> {suite_dir}")
    if opts.prune and opts.trials <= PRUNE_STARTUP:
        echo(f"warning: --prune compares a trial with the median of the earlier ones after {PRUNE_STARTUP} trials of "
             f"a method; with --trials {opts.trials} it prunes nothing")

    level = logging.getLogger("dmlbench").level
    try:
        if suite.executor == "ray":
            _run_ray(job, workers, threads, level)
        elif workers == 1:
            work(job, threads=threads, data=data)
        else:
            _run_local(job, workers, threads, level)
    except KeyboardInterrupt as e:
        # The workers are stopped; a trial one of them could not re-queue (a Ray task killed, a
        # worker terminated) is re-queued here, so a resume need not wait for its heartbeat to lapse.
        with interrupts_ignored(e):
            _requeue_own(job)
        raise
    doc = summarize(job, time.perf_counter() - t_start, workers)
    doc["methods"] = {**_other_methods(suite_dir / TUNED_FILE, doc), **doc["methods"]}
    write_json(suite_dir / TUNED_FILE, doc)
    for line in budget_warnings(doc, opts.trials):
        echo(f"warning: {line}")
    if failed_methods(doc):
        return doc  # the CLI reports the methods that have no setting to test
    echo(f"best settings written to {suite_dir / TUNED_FILE}; test them with: bench run --tuned {suite_dir}")
    return doc


def _requeue_orphans_of_dead_tunes(job: Job) -> None:
    """A tune killed between failing an interrupted trial and re-queuing it left that trial
    without its copy: re-queued here, once older than the heartbeat grace."""
    from dmlbench.tune.storage import requeue_orphans

    optuna = _optuna()
    storage = open_storage(job.storage_url)
    for plan in job.plans:
        requeue_orphans(optuna.load_study(study_name=plan.name, storage=storage), min_age_s=heartbeat_settings()[1])


def _requeue_own(job: Job) -> None:
    from dmlbench.tune.storage import RUN_TAG, requeue_interrupted, requeue_orphans

    optuna = _optuna()
    storage = open_storage(job.storage_url)
    for plan in job.plans:
        study = optuna.load_study(study_name=plan.name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.system_attrs.get(RUN_TAG) == job.run_id:
                requeue_interrupted(study, t._trial_id)
        # A worker terminated between failing its trial and adding the copy (when one worker
        # exits, the pool terminates the others): the copy is added here.
        requeue_orphans(study, run_id=job.run_id)


def _run_local(job: Job, workers: int, threads: int, level: int) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from dmlbench.executors.local import init_worker_process, stop_pool

    ctx = mp.get_context("spawn")  # a fresh interpreter per worker, as the local executor does
    # The local executor's worker start: interrupts re-queue the running trials, and workers exit
    # with their driver.
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker_process,
                               initargs=(threads, level, ctx.Value("i", 0), workers))
    try:
        futures = [pool.submit(_work_entry, job, threads, level) for _ in range(workers)]
        for fut in futures:
            fut.result()
    except BaseException as e:
        with interrupts_ignored(e):
            stop_pool(pool)
        raise
    pool.shutdown()


def _run_ray(job: Job, workers: int, threads: int, level: int) -> None:
    from dmlbench.executors.ray import import_ray

    ray = import_ray()
    if job.storage_url.startswith("sqlite:///") or job.storage_url.startswith("journal:"):
        log.info("ray: the study file must be on a file system every node sees")
    from dmlbench.executors.ray import connect

    gpus = job.suite.gpus_per_run
    connect(ray, job.suite.ray_address, workers * threads, gpus)
    job = dataclasses.replace(job, suite_dir=Path(job.suite_dir).resolve())
    remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=MAX_RETRY)(_work_entry)
    refs = [remote.remote(job, threads, level) for _ in range(workers)]
    try:
        ray.get(refs)
    except BaseException as e:
        with interrupts_ignored(e):
            for ref in refs:  # an interrupt in each task first: its trial re-queues itself
                ray.cancel(ref)
            ray.wait(refs, num_returns=len(refs), timeout=10)
            for ref in refs:
                ray.cancel(ref, force=True)
        raise
