"""Run one (dataset, method, seed) configuration and keep every result on disk.

The runner only runs: the suite (:mod:`dmlbench.running.suite`) decides what to run, the executors
(:mod:`dmlbench.executors`) decide where, the layout (:mod:`dmlbench.running.layout`) where it is kept.

A run is done under its folder's lock, so two processes (two terminals, two Ray workers) never
train the same run at once. A complete run is skipped, unless it was made by other code or on
another kind of device or other numeric libraries (:mod:`dmlbench.running.provenance`): then it is
archived under ``.stale/`` and re-run, saying why (``reuse_stale=True`` keeps it). An unfinished
run resumes from its checkpoint. Every failure, in training, evaluation or writing the artefacts,
is recorded in ``failed.json`` (as one line) and the suite goes on; a full disk also sets the
result's ``full_disk``, on which the suite stops (:mod:`.execute`): every later run would fail alike.

A run of several processes (``--nproc-per-run``) calls :func:`run_one` in each of its ranks: rank
0 does all of the above, the others train and embed their shares (docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmlbench.core import distributed
from dmlbench.core.errors import DiskFullError, DMLBenchError, is_disk_full
from dmlbench.core.io import CorruptFileError, read_json, write_json, write_npz, write_text
from dmlbench.core.locks import Lock
from dmlbench.core.runtime import resolve_device, seed_everything, set_determinism
from dmlbench.methods import EncoderChoice, GenerativeMethod, get_method
from dmlbench.running import layout
from dmlbench.running.config import RunConfig, untrained
from dmlbench.running.provenance import differences, provenance
from dmlbench.running.rundata import input_shape, load_data, test_triplets
from dmlbench.tracking import Loggers, logger_names

log = logging.getLogger("dmlbench")


@dataclass
class RunResult:
    """How one run ended: ``done``, ``skipped`` (already complete) or ``failed`` (with the reason)."""

    config: RunConfig
    run_dir: Path
    status: str  # done | skipped (already complete) | failed
    metrics: dict = field(default_factory=dict)
    reason: str = ""
    full_disk: DiskFullError | None = None  # set where the run failed for want of disk space


@dataclass
class Planned:
    """One run of a suite: its config and the label of its method variant (what differs from defaults)."""

    config: RunConfig
    variant: str = ""


@dataclass
class RunJob:
    """One run as an executor's job: what to run, and the suite folder it goes into."""

    config: RunConfig
    suite_dir: Path
    variant: str = ""
    reuse_stale: bool = False
    tracking: dict = field(default_factory=dict)  # what the suite's loggers share (an MLflow parent run)

    @property
    def label(self) -> str:
        """How a worker announces the job as it starts."""
        procs = f" ({self.nproc} processes)" if self.nproc > 1 else ""
        return f"{self.config.method} seed {self.config.seed} on {self.config.device}{procs}"

    @property
    def nproc(self) -> int:
        """The processes the run is made by (``--nproc-per-run``): an executor starts that many ranks."""
        return self.config.nproc_per_run

    @property
    def device(self) -> str:
        """The run's device, from which each rank takes its own (and its world's backend)."""
        return self.config.device

    def lost(self, reason: str) -> RunResult:
        """The job's result where one of its processes died or failed alone (the executor stopped the
        others): the run failed, ``reason`` recorded in its failed.json."""
        cfg = self.config
        return _failed(cfg, layout.run_dir(self.suite_dir, cfg.method, cfg.seed, cfg.run_id()), DMLBenchError(reason))


def run_job(job: RunJob) -> RunResult:
    """An executor's entry point for ``bench run``: :func:`run_one` of the job."""
    return run_one(job.config, job.suite_dir, variant=job.variant, reuse_stale=job.reuse_stale, tracking=job.tracking)


def build_method(cfg: RunConfig, data):
    """The run's method, its networks built for the data's input shape, seeded by the run's seed."""
    cls = get_method(cfg.method)
    params = cls.Params(**cfg.method_params)
    params.validate()
    seed_everything(cfg.seed)  # the same seed gives the same initial weights
    choice = EncoderChoice(cfg.encoder, cfg.embedder, cfg.pretrained, cfg.weights, cfg.freeze_bn)
    return cls(params, input_shape=input_shape(cfg, data.input_shape), embedding_dim=cfg.embedding_dim or 1,
               encoder=choice, num_classes=data.num_train_classes)


# ----------------------------------------------------------------------------- one run


def _stale(run: Path, prov: dict) -> list[str]:
    """Why a complete run's result may not be reused (empty: it may)."""
    try:
        old = read_json(run / layout.CONFIG).get("provenance") or {}
    except CorruptFileError as e:
        return [str(e)]
    return differences(old, prov)


def archive_run(run: Path) -> Path:
    """Move a run folder under the suite's ``.stale/`` (never deleted; left out of tables)."""
    suite = run.parent.parent
    dest = suite / layout.STALE / run.parent.name / f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    run.replace(dest)
    return dest


def archive_superseded(suite_dir: Path, tuned: dict[str, dict]) -> list[Path]:
    """Test runs of a tuned method made with tuned settings other than its current best (the study
    went on and another trial won, or another tune of the method was given) are moved to the
    suite's ``.stale/``, never deleted, so the table has one row per method: its current best.
    Runs of the current best and untuned runs are kept; a run another process holds is left alone.
    ``tuned``: per method, where its current settings came from (study, trial, params)."""
    moved = []
    for method, info in tuned.items():
        for run in sorted((Path(suite_dir) / layout.slug(method)).glob("s*-*")):
            if not run.is_dir() or not layout.is_complete(run):
                continue
            try:
                old = read_json(run / layout.CONFIG).get("tuned") or {}
            except CorruptFileError:
                continue  # the run itself reports its corrupt file when it is reached
            if old.get("study") != info.get("study") or (old.get("trial"), old.get("params")) == \
                    (info.get("trial"), info.get("params")):
                continue
            lock = Lock(run / layout.LOCK)
            if not lock.acquire(blocking=False):
                continue
            try:
                dest = archive_run(run)
            finally:
                lock.release()
            log.warning("%s: made with %s's earlier best settings (trial %s); the best is now trial %s: "
                        "archived to %s", run, method, old.get("trial"), info.get("trial"), dest)
            moved.append(dest)
    return moved


def _archive(run: Path, why: list[str]) -> Path:
    dest = archive_run(run)
    log.warning("%s cannot be reused (%s): archived to %s and re-run", run, "; ".join(why), dest)
    return dest


def _lock(run: Path) -> Lock:
    """The run folder's lock; where another process holds it, wait for that process to finish (the
    run is then complete and skipped, or resumed if it died: the OS releases a dead holder's lock)."""
    lock = Lock(run / layout.LOCK)
    if not lock.acquire(blocking=False):
        log.warning("%s is being run by another process; waiting for it", run)
        lock.acquire()
    return lock


def run_one(cfg: RunConfig, suite: Path, *, variant: str = "", reuse_stale: bool = False, data=None,
            callbacks: tuple = (), metrics: list[str] | None = None, tracking: dict | None = None) -> RunResult:
    """Train and evaluate one config into its run folder; never raises for a failed run.

    ``data``: the loaded Data (else loaded from the config, once per process); ``callbacks``: the
    trainer's per-epoch callbacks; ``metrics``: evaluate only these (default: every registered one).

    In a process of a run's world (``--nproc-per-run``, :mod:`dmlbench.core.distributed`), rank 0
    alone holds the folder's lock, decides (skip, archive, train) and writes; the others follow its
    verdict, train and embed their shares, and return. A rank lost mid-run raises
    :class:`~dmlbench.core.distributed.RankLostError` (after rank 0 records it): the world is broken.
    """
    run = layout.run_dir(suite, cfg.method, cfg.seed, cfg.run_id())
    world = distributed.current()
    world = world if world is not None and world.size > 1 else None
    if world is not None and cfg.nproc_per_run == 1:  # (a run that trains nothing, under torchrun): rank 0's alone
        if not world.main:
            return RunResult(cfg, run, "skipped", reason="made by rank 0 alone")
        world = None
    if (world.size if world else 1) != cfg.nproc_per_run:
        return RunResult(cfg, run, "failed", reason=(
            f"nproc_per_run={cfg.nproc_per_run}, but this process is one of {world.size if world else 1}; a run of "
            "several processes is started by an executor (bench run, dmlbench.run) or torchrun"))
    main = world is None or world.main
    try:  # a device this process cannot use fails the run before its folder (or an old result) is touched
        device = resolve_device(distributed.rank_device(cfg.device, world))
    except DMLBenchError as e:
        return RunResult(cfg, run, "failed", reason=str(e))
    lock, claim = _claim(cfg, run, reuse_stale, data) if main else (None, None)
    try:
        if world is not None:
            if not main:  # loaded while rank 0 decides
                data = data if data is not None else load_data(cfg)
            try:  # rank 0's verdict: a result (skipped, failed), or go with its test triplets and provenance
                verdict = distributed.broadcast(claim if isinstance(claim, RunResult) or claim is None else claim[1:])
            except Exception as e:  # noqa: BLE001 - a peer lost before training
                _stop_if_lost(e, cfg, run, world)
                raise
            claim = claim if main else verdict if isinstance(verdict, RunResult) else (data, *verdict)
        if isinstance(claim, RunResult):
            return claim
        data, triplets, prov = claim
        try:
            if main:
                (run / layout.FAILED).unlink(missing_ok=True)
                # Written first, so that a run that fails before its data is loaded is still listed.
                write_json(run / layout.CONFIG, {**cfg.to_dict(), "run_id": cfg.run_id(), "group_id": cfg.group_id(),
                                                 "variant": variant, "provenance": prov})
            return _train_and_evaluate(cfg, run, variant, prov, data, triplets, callbacks, metrics, tracking or {},
                                       device, world)
        except Exception as e:  # noqa: BLE001 - one broken run must not take the suite down with it
            _stop_if_lost(e, cfg, run, world)
            return _failed(cfg, run, e, record=main)
    finally:
        if lock is not None:
            lock.release()


def _claim(cfg: RunConfig, run: Path, reuse_stale: bool, data) -> tuple[Lock | None, RunResult | tuple]:
    """What rank 0 (or the one process) does before training: take the run folder's lock, load the
    data and the fixed test triplets, and skip a complete run or archive a stale one. Returns the
    lock held (or None), and a RunResult where nothing is to train, else (data, triplets, provenance)."""
    try:
        run.mkdir(parents=True, exist_ok=True)
        lock = _lock(run)
    except (OSError, DiskFullError) as e:
        if not (isinstance(e, DiskFullError) or is_disk_full(e)):
            raise
        return None, _failed(cfg, run, e, record=False)
    import torch

    try:  # the data and the fixed test triplets are part of what a stored result must match
        data = data if data is not None else load_data(cfg)
        triplets = test_triplets(data, cfg, run.parent.parent)
    except Exception as e:  # noqa: BLE001 - reported as this run's failure, like a crash in training
        return lock, _failed(cfg, run, e, record=not layout.is_complete(run), crash_log=False)
    prov = {**provenance(cfg.device, torch.get_num_threads()), "data": data.fingerprint,
            "test_triplets": hashlib.sha256(np.ascontiguousarray(triplets).tobytes()).hexdigest()[:16]}
    if layout.is_complete(run):
        why = _stale(run, prov)
        try:
            stored = layout.check_outputs(run)
        except CorruptFileError as e:  # a corrupt result is no result: the run is made again
            log.warning("%s; re-running this run", e)
            why, stored = [str(e)], None
        if stored is not None and (not why or reuse_stale):
            if why:
                log.warning("%s: reusing a result made by other code (%s) because reuse_stale is set", run, "; ".join(why))
            return lock, RunResult(cfg, run, "skipped", stored)
        lock.release()
        _archive(run, why)
        run.mkdir(parents=True, exist_ok=True)
        lock = _lock(run)
    return lock, (data, triplets, prov)


def _stop_if_lost(e: BaseException, cfg: RunConfig, run: Path, world) -> None:
    """Where ``e`` says another rank is gone, rank 0 records it and every rank raises it (the world is
    broken: nothing more can run in it); otherwise return."""
    lost = distributed.lost_error(e) if world is not None else None
    if lost is None:
        return
    if world.main:
        _failed(cfg, run, lost)
    raise lost from None


def _failed(cfg: RunConfig, run: Path, e: Exception, record: bool = True, crash_log: bool = True) -> RunResult:
    """The result of a run that raised ``e``: its one-line reason, recorded in failed.json where
    ``record`` and the disk allow. A crash (not a DMLBenchError) logs its traceback if
    ``crash_log``; a full disk is one line, its traceback logged only under ``bench -v``."""
    full = e if isinstance(e, DiskFullError) else None
    if full is None and is_disk_full(e):  # a writer that does not name its file itself
        full = DiskFullError.of(e, e.filename or run)
    if full is not None:
        log.info("%s seed %d stopped: %s", cfg.method, cfg.seed, full, exc_info=e)
        reason = str(full)
    else:
        reason = str(e) if isinstance(e, DMLBenchError) else f"{type(e).__name__}: {e}"
        if crash_log and not isinstance(e, DMLBenchError):
            log.exception("run %s seed %d crashed", cfg.method, cfg.seed)
    if record:
        try:
            write_json(run / layout.FAILED, {"reason": reason, "type": type(full or e).__name__})
        except DiskFullError as again:  # the disk that failed the run may not take its failed.json either
            log.info("%s", again)
    return RunResult(cfg, run, "failed", reason=reason, full_disk=full)


def _train_and_evaluate(cfg, run, variant, prov, data, triplets, callbacks, metrics, tracking, device,
                        world) -> RunResult:
    set_determinism(cfg.deterministic, device)
    method = build_method(cfg, data)
    main = world is None or world.main
    if main:
        write_json(run / layout.CONFIG, {**cfg.to_dict(), "run_id": cfg.run_id(), "group_id": cfg.group_id(),
                                         "variant": variant, "data": data.info(), "provenance": prov,
                                         "weights_info": getattr(method.encoder, "weights_info", None),
                                         "distributed": world.info() if world else {"world_size": 1, "backend": None}})
    loggers = Loggers(logger_names(cfg.log) if main else [], run, cfg.to_dict(), tracking)
    try:
        return _fit_and_evaluate(cfg, run, method, data, triplets, callbacks if main else (), metrics, device, loggers,
                                 world)
    finally:
        loggers.close()


def _fit_and_evaluate(cfg, run, method, data, triplets, callbacks, metrics, device, loggers, world) -> RunResult:
    # The torch side of a run: imported here, so that a pool's driver (which imports this module
    # to hand out runs) never imports torch.
    from dmlbench.evaluation.evaluate import evaluate
    from dmlbench.training.trainer import Trainer

    def save_history(trainer, row) -> None:
        import pandas as pd  # here, not at the top: the CLI's commands that train nothing import this module

        write_text(run / layout.HISTORY, pd.DataFrame(trainer.history).to_csv(index=False))

    main = world is None or world.main
    trainer = Trainer(method, data, cfg.train_config(), device=device, run_dir=run,
                      callbacks=(save_history, *callbacks) if main else (),
                      step_hooks=(loggers.step_hook,) if loggers.names else (), world=world)
    history = trainer.fit()
    if main and not history:
        write_text(run / layout.HISTORY, "")
    t0 = time.perf_counter()
    ctx = evaluate(method, data, cfg.eval_config(), triplets, device, metrics, world)
    if ctx is None:  # a rank other than 0: its share of the embeddings went to rank 0, which writes the results
        return RunResult(cfg, run, "done")
    metrics = dict(ctx.results)
    metrics["train_seconds"] = round(sum(r["seconds"] for r in history), 3)  # resumed runs count every epoch
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
    metrics["steps"] = trainer.steps_done if method.trainable else 0
    write_npz(run / layout.EMBEDDINGS, test_emb=ctx.test_emb(), test_y=data.test.y,
              **({"train_emb": ctx.train_emb(), "train_y": data.train.y} if "train_emb" in ctx.__dict__.get("_cache", {})
                 else {}), test_triplets=triplets.astype(np.int64))
    if ctx.per_query:
        write_npz(run / layout.PER_QUERY, **{k: np.asarray(v) for k, v in ctx.per_query.items()})
    if ctx.extras.get("confusion") is not None:
        import pandas as pd

        write_text(run / layout.CONFUSION, pd.DataFrame(ctx.extras["confusion"]).to_csv(index=False))
    if isinstance(method, GenerativeMethod):
        write_npz(run / layout.RECONSTRUCTIONS, **reconstructions(method, data, ctx.pipeline, device))
    metrics["svm_lambda"] = ctx.extras.get("svm_lambda")
    if ctx.extras.get("svm_lambda_edge") is not None:  # 1: the probe's lambda stayed on its widened grid's edge
        metrics["svm_lambda_edge"] = int(ctx.extras["svm_lambda_edge"])
    metrics = {k: v for k, v in metrics.items() if v is not None}
    if loggers.names:
        loggers.start(trainer.steps_done)
        loggers.log_metrics(trainer.steps_done, {k: v for k, v in ctx.results.items() if v is not None})
        loggers.log_embeddings(ctx.test_emb(), data.test.y, data.test.images)
    write_json(run / layout.METRICS, metrics)  # last: marks the run complete
    loggers.log_files([run / layout.METRICS, run / layout.CONFIG, run / layout.HISTORY])
    return RunResult(cfg, run, "done", metrics)


def reconstructions(method, data, pipeline, device) -> dict[str, np.ndarray]:
    """A fixed set of test images (the first of each class, at most 20) and their reconstructions."""
    import torch

    y = data.test.y
    first = np.array([np.flatnonzero(y == c)[0] for c in np.unique(y)[:20]])
    x = pipeline.eval(torch.from_numpy(np.ascontiguousarray(data.test.images(first))).to(device))
    method.eval()
    return {"x": x.cpu().numpy(), "x_hat": method.reconstruct(x).cpu().numpy(), "y": y[first]}


def with_method(base: RunConfig, method: str, seed: int, params: dict) -> RunConfig:
    """The config of one run of a suite: the base with the method, its parameters and the seed."""
    cfg = base if get_method(method).trainable else untrained(base)
    return dataclasses.replace(cfg, method=method, seed=seed, method_params=params)
