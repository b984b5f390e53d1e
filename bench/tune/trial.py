"""A trial (its runs on each fold, its score, FAIL or PRUNED) and the worker loop that takes them."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DiskFullError, DMLBenchError
from dmlbench.core.locks import Lock
from dmlbench.core.params import apply_overrides
from dmlbench.core.runtime import echo_line
from dmlbench.methods import get_method
from dmlbench.running import runner
from dmlbench.running.config import RunConfig
from dmlbench.running.rundata import test_triplets
from dmlbench.training.config import epoch_plan
from dmlbench.tune.folds import fold_data, load_training_data
from dmlbench.tune.options import POLL_S, TRIALS_DIR, TUNE_LOCK, Job, MethodPlan, fmt_params
from dmlbench.tune.spaces import split_params, suggest
from dmlbench.tune.storage import (
    RUN_TAG,
    Heartbeat,
    budget,
    fail_stale_trials,
    heartbeat_settings,
    import_optuna,
    make_sampler,
    open_storage,
    requeue_interrupted,
    storage_errors,
    storage_problem,
)

log = logging.getLogger("dmlbench")
PRUNE_STARTUP = 5  # trials of a method before the median pruner compares (Optuna's default)


# ----------------------------------------------------------------------------- a trial


class TrialFailed(DMLBenchError):
    """A trial's run failed (NaN loss, crash) or gave no finite score: the trial is FAIL."""


def _pruned_error():
    optuna = import_optuna()

    class Pruned(DMLBenchError, optuna.TrialPruned):
        """Raised in the trainer's callback: a DMLBenchError so the runner records it in one line."""

    return Pruned


def trial_config(base: RunConfig, n_train: int, plan: MethodPlan, params: dict, seed: int, tuned: dict) -> RunConfig:
    """The run config of a trial: the suite's base, the budget fixed from the fold's training size,
    the sampled method keys applied like --set and the run keys (lr, ...) onto the run."""
    method_keys, run_keys = split_params(params, plan.name)
    cls = get_method(plan.name)
    method_params = apply_overrides(cls.Params(), {**plan.fixed, **method_keys}, plan.name)
    cfg = apply_overrides(base.with_budget(n_train), {**plan.fixed_run, **run_keys}, "run")
    cfg = runner.with_method(cfg, plan.name, seed, dataclasses.asdict(method_params))
    cfg = dataclasses.replace(cfg, tuned=tuned)
    cfg.check()
    return cfg


def _pruning_callback(trial, objective: str, fold, cfg: RunConfig, triplets, step0: int, state: dict):
    Pruned = _pruned_error()

    def callback(trainer, row) -> None:
        import torch

        from dmlbench.evaluation.evaluate import evaluate

        rng = torch.get_rng_state()  # evaluating must not change the training that follows
        ctx = evaluate(trainer.method, fold, cfg.eval_config(), triplets, trainer.device, metrics=[objective])
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
    optuna = import_optuna()
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
            triplets = test_triplets(fd, cfg, fold_dir)
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
        if r.full_disk is not None:  # not the method's failure: the trial is re-queued (_one_trial)
            raise copy.copy(r.full_disk)  # a copy: the run logged its traceback (under -v) already
        if r.status == "failed":
            raise TrialFailed(r.reason or "the run failed")
        value = r.metrics.get(job.opts.objective)
        if value is None or not math.isfinite(value):
            raise TrialFailed(f"the run gave no finite {job.opts.objective} ({value})")
        trial.set_user_attr(f"fold{f}", float(value))
        scores.append(float(value))
        step0 += len(epoch_plan(cfg.steps, cfg.steps_per_epoch())) if cfg.steps else 1
    return float(np.mean(scores))


def _one_trial(study, job: Job, plan: MethodPlan, folds: dict, trial) -> None:
    """Run a trial that was asked, with a heartbeat, and tell the study how it ended."""
    optuna = import_optuna()
    TrialState = optuna.trial.TrialState
    t0 = time.perf_counter()
    name = f"{plan.name} trial {trial.number}"
    with Heartbeat(study._storage, trial._trial_id):
        try:
            value = run_trial(trial, job, plan, folds)
        except optuna.TrialPruned as e:
            study.tell(trial, state=TrialState.PRUNED)
            echo_line(f"  {name}: pruned ({e}) [{time.perf_counter() - t0:.1f} s]")
            return
        except KeyboardInterrupt:
            # Not the method's failure: failed and re-queued (no retry used up), so a resume runs it.
            requeue_interrupted(study, trial._trial_id)
            raise
        except DiskFullError:
            # Not the method's failure either, and every later trial would fail alike: the trial is
            # re-queued where the storage still takes it (else a resume re-queues it once its
            # heartbeat lapses) and the tune stops with the one line.
            with contextlib.suppress(Exception):
                requeue_interrupted(study, trial._trial_id)
            raise
        except Exception as e:  # noqa: BLE001 - a failed trial is recorded as FAIL and the study goes on
            if storage_problem(e, job.storage_url) is not None:
                raise  # the storage's failure, not the trial's: work() reports it as one line
            reason = str(e) if isinstance(e, DMLBenchError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, DMLBenchError):
                log.exception("%s crashed", name)
            trial.set_user_attr("fail_reason", reason[:1000])
            study.tell(trial, state=TrialState.FAIL)
            echo_line(f"  {name}: FAILED: {reason} ({fmt_params(trial.params)})")
            return
    study.tell(trial, value)
    seconds = time.perf_counter() - t0
    echo_line(f"  {name}: {job.opts.objective} {value:.4f} ({fmt_params(trial.params)}) [{seconds:.1f} s]")


def work(job: Job) -> int:
    """A worker (an executor's job for ``bench tune``): take trials until each study has its budget,
    always of the method with the fewest trials started (so a tune cut short by --timeout or a kill
    leaves the methods within one trial per worker of each other). Several workers (processes, Ray
    tasks, machines) may run this on one storage at once. Returns the number of trials it ran."""
    with storage_errors(job.storage_url):  # converted here: a pool hands the driver only the message
        return _work(job)


def _work(job: Job) -> int:
    optuna = import_optuna()
    base = job.suite.base.resolved()
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
        if job.deadline is not None and time.time() >= job.deadline:
            echo_line(f"  time budget (--timeout) reached: this worker starts no more trials ({ran} run)")
            return ran
        plan, trial, busy = None, None, 0
        with lock:
            # Re-queued trials first (a killed worker's), then the method furthest behind; ties in
            # the methods' order, so a single worker still alternates between them.
            candidates = []
            for i, p in enumerate(job.plans):
                study = studies[p.name]
                fail_stale_trials(study)
                finished, running, waiting = budget(study)
                started = len(finished) + len(running)
                if waiting or started < job.opts.trials:
                    candidates.append((0 if waiting else 1, started, i, p))
                else:
                    busy += len(running)
            if candidates:
                plan = min(candidates, key=lambda c: c[:3])[3]
                with warnings.catch_warnings():  # "heartbeat ... with Study.optimize": this loop beats itself
                    warnings.simplefilter("ignore", UserWarning)
                    trial = studies[plan.name].ask()
                # Which tune runs it: an interrupted driver re-queues its own running trials at once.
                storage.set_trial_system_attr(trial._trial_id, RUN_TAG, job.run_id)
        if trial is not None:
            _one_trial(studies[plan.name], job, plan, folds, trial)
            ran += 1
            continue
        if not busy:
            return ran
        if not announced:
            echo_line(f"  waiting for {busy} running trial(s): another worker's, or left by a killed tune (re-queued "
                  f"once silent for {heartbeat_settings()[1]} s)")
            announced = True
        time.sleep(min(POLL_S, heartbeat_settings()[0]))


def _pruner(prune: bool):
    optuna = import_optuna()
    return (optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP, n_warmup_steps=1) if prune
            else optuna.pruners.NopPruner())
