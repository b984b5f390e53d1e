"""Run one (dataset, method, seed) configuration and keep every result on disk.

The runner only runs: the suite (:mod:`dmlbench.running.suite`) decides what to run, the executors
(:mod:`dmlbench.executors`) decide where, the layout (:mod:`dmlbench.running.layout`) where it is kept.

A run is done under its folder's lock, so two processes (two terminals, two Ray workers) never
train the same run at once. A complete run is skipped, unless it was made by other code or on
another kind of device or other numeric libraries (:mod:`dmlbench.running.provenance`): then it is
archived under ``.stale/`` and re-run, saying why (``reuse_stale=True`` keeps it). An unfinished
run resumes from its checkpoint. Every failure, in training, evaluation or writing the artefacts,
is recorded in ``failed.json`` and the suite goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmlbench.running import layout
from dmlbench.running.config import RunConfig
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import (CorruptFileError, read_json, read_metrics, read_npy, read_npz, write_json, write_npy,
                         write_npz, write_text)
from dmlbench.core.locks import Lock

log = logging.getLogger("dmlbench")


@dataclass
class RunResult:
    config: RunConfig
    run_dir: Path
    status: str  # done | skipped (already complete) | failed
    metrics: dict = field(default_factory=dict)
    reason: str = ""


# ----------------------------------------------------------------------------- data for a run


def data_key(cfg: RunConfig) -> tuple:
    """What identifies the data a run sees (its loaded Data is shared by runs with the same key)."""
    return (cfg.dataset, cfg.data_dir, cfg.split, cfg.data_seed, json.dumps(cfg.data_options, sort_keys=True),
            cfg.normalize)


@functools.lru_cache(maxsize=2)
def _load(key: tuple):
    from dmlbench.data import load_dataset

    dataset, data_dir, split, seed, options, normalize = key
    return load_dataset(dataset, data_dir=data_dir or None, split=split, seed=seed, options=json.loads(options),
                        normalize=normalize)


def load_data(cfg: RunConfig):
    """The run's Data, loaded once per process for every run that shares it."""
    return _load(data_key(cfg))


def input_shape(cfg: RunConfig, data_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The shape the encoder sees: ``image_size``, else a timm trunk's input size, else the data's."""
    from dmlbench.training.encoders import is_timm

    c = data_shape[0]
    if cfg.image_size:
        return (c, cfg.image_size, cfg.image_size)
    if cfg.encoder and is_timm(cfg.encoder):
        from dmlbench.training.trunks import default_input_size

        return (c, *default_input_size(cfg.encoder))
    return tuple(data_shape)


def triplets_path(suite: Path, cfg: RunConfig, n_test: int) -> Path:
    key = f"{cfg.split}-d{cfg.data_seed}-n{cfg.test_triplets}-s{cfg.triplet_seed}-t{n_test}"
    if ":" in cfg.dataset or cfg.data_options:
        # User data: two files can share a name and a test size, so the key names the source.
        src = json.dumps([cfg.dataset, cfg.data_options], sort_keys=True)
        key += "-" + hashlib.sha1(src.encode()).hexdigest()[:8]
    return Path(suite) / f"test_triplets-{key}.npy"


def stored_test_triplets(data, cfg: RunConfig, suite: Path) -> np.ndarray | None:
    """The suite's stored test triplets for this dataset and split, checked against it; None when
    none are stored yet. Imports no torch (a driver checks them before handing out runs)."""
    y = data.test.y
    path = triplets_path(suite, cfg, len(y))
    if not path.exists():
        return None
    t = read_npy(path, fix="delete it to draw new triplets")
    ok = t.ndim == 2 and t.shape == (cfg.test_triplets, 3) and 0 <= t.min() and t.max() < len(y)
    if ok:
        yt = y[t]
        ok = bool(np.all(yt[:, 0] == yt[:, 1]) and np.all(yt[:, 0] != yt[:, 2]))
    if not ok:
        raise CorruptFileError(path, "does not match this dataset's test split; delete it to draw new triplets")
    return t


def test_triplets(data, cfg: RunConfig, suite: Path) -> np.ndarray:
    """The fixed test triplets of this dataset and split, stored in the suite so every run and every
    re-run scores the same triplets. The first run to need them draws them (seeded; runs that race
    write the same bytes, atomically)."""
    t = stored_test_triplets(data, cfg, suite)
    if t is not None:
        return t
    import torch

    from dmlbench.training.sampling import ClassIndex, random_triplets

    gen = torch.Generator().manual_seed(cfg.triplet_seed)
    y = torch.from_numpy(data.test.y)
    part = "validation" if data.split == "validation" else "test"  # a tune's fold scores on validation
    t = random_triplets(y, cfg.test_triplets, gen, ClassIndex(y, part)).numpy()
    write_npy(triplets_path(suite, cfg, len(data.test.y)), t)
    return t


def build_method(cfg: RunConfig, data):
    from dmlbench.methods import EncoderChoice, get_method
    from dmlbench.core.runtime import seed_everything

    cls = get_method(cfg.method)
    params = cls.Params(**cfg.method_params)
    params.validate()
    seed_everything(cfg.seed)  # the same seed gives the same initial weights
    choice = EncoderChoice(cfg.encoder, cfg.embedder, cfg.pretrained, cfg.weights, cfg.freeze_bn)
    return cls(params, input_shape=input_shape(cfg, data.input_shape), embedding_dim=cfg.embedding_dim or 1,
               encoder=choice, num_classes=data.num_train_classes)


# ----------------------------------------------------------------------------- one run


def check_outputs(run: Path) -> dict:
    """A complete run's metrics, after checking its array files can be read back (a corrupt one
    makes the run unfinished: it is re-run). Raises CorruptFileError naming the file."""
    import zipfile

    metrics = read_metrics(run / layout.METRICS)
    if (run / layout.PER_QUERY).exists():
        read_npz(run / layout.PER_QUERY)
    emb = run / layout.EMBEDDINGS
    if emb.exists():  # up to hundreds of MB: only its zip directory is read here
        try:
            with zipfile.ZipFile(emb) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CorruptFileError(emb, f"not a .npz (zip) file ({type(e).__name__})") from None
    return metrics


def _stale(run: Path, prov: dict) -> list[str]:
    """Why a complete run's result may not be reused (empty: it may)."""
    from dmlbench.running.provenance import differences

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
            callbacks: tuple = (), metrics: list[str] | None = None) -> RunResult:
    """Train and evaluate one config into its run folder; never raises for a failed run.

    ``data``: the loaded Data (else loaded from the config, once per process); ``callbacks``: the
    trainer's per-epoch callbacks; ``metrics``: evaluate only these (default: every registered one).
    """
    from dmlbench.running.provenance import provenance
    from dmlbench.core.runtime import resolve_device, set_determinism

    run = layout.run_dir(suite, cfg.method, cfg.seed, cfg.run_id())
    try:  # a device this process cannot use fails the run before its folder (or an old result) is touched
        resolve_device(cfg.device)
    except DMLBenchError as e:
        return RunResult(cfg, run, "failed", reason=str(e))
    run.mkdir(parents=True, exist_ok=True)
    lock = _lock(run)
    try:
        import torch

        try:  # the data and the fixed test triplets are part of what a stored result must match
            data = data if data is not None else load_data(cfg)
            triplets = test_triplets(data, cfg, run.parent.parent)
        except Exception as e:  # noqa: BLE001 - reported as this run's failure, like a crash in training
            reason = str(e) if isinstance(e, DMLBenchError) else f"{type(e).__name__}: {e}"
            if not layout.is_complete(run):
                write_json(run / layout.FAILED, {"reason": reason, "type": type(e).__name__})
            return RunResult(cfg, run, "failed", reason=reason)
        prov = {**provenance(cfg.device, torch.get_num_threads()), "data": data.fingerprint,
                "test_triplets": hashlib.sha256(np.ascontiguousarray(triplets).tobytes()).hexdigest()[:16]}
        if layout.is_complete(run):
            why = _stale(run, prov)
            try:
                stored = check_outputs(run)
            except CorruptFileError as e:  # a corrupt result is no result: the run is made again
                log.warning("%s; re-running this run", e)
                why, stored = [str(e)], None
            if stored is not None and (not why or reuse_stale):
                if why:
                    log.warning("%s: reusing a result made by other code (%s) because reuse_stale is set", run, "; ".join(why))
                return RunResult(cfg, run, "skipped", stored)
            lock.release()
            _archive(run, why)
            run.mkdir(parents=True, exist_ok=True)
            lock = _lock(run)
        (run / layout.FAILED).unlink(missing_ok=True)
        # Written first, so that a run that fails before its data is loaded is still listed.
        write_json(run / layout.CONFIG, {**cfg.to_dict(), "run_id": cfg.run_id(), "group_id": cfg.group_id(),
                                         "variant": variant, "provenance": prov})
        try:
            return _train_and_evaluate(cfg, run, variant, prov, data, triplets, callbacks, metrics, resolve_device,
                                       set_determinism)
        except Exception as e:  # noqa: BLE001 - one broken run must not take the suite down with it
            reason = str(e) if isinstance(e, DMLBenchError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, DMLBenchError):
                log.exception("run %s seed %d crashed", cfg.method, cfg.seed)
            write_json(run / layout.FAILED, {"reason": reason, "type": type(e).__name__})
            return RunResult(cfg, run, "failed", reason=reason)
    finally:
        lock.release()


def _train_and_evaluate(cfg, run, variant, prov, data, triplets, callbacks, metrics, resolve_device,
                        set_determinism) -> RunResult:
    import pandas as pd

    from dmlbench.evaluation.evaluate import evaluate
    from dmlbench.methods import GenerativeMethod
    from dmlbench.training.trainer import Trainer

    device = resolve_device(cfg.device)
    set_determinism(cfg.deterministic, device)
    method = build_method(cfg, data)
    write_json(run / layout.CONFIG, {**cfg.to_dict(), "run_id": cfg.run_id(), "group_id": cfg.group_id(),
                                     "variant": variant, "data": data.info(), "provenance": prov,
                                     "weights_info": getattr(method.encoder, "weights_info", None)})

    def save_history(trainer, row) -> None:
        write_text(run / layout.HISTORY, pd.DataFrame(trainer.history).to_csv(index=False))

    trainer = Trainer(method, data, cfg, device=device, run_dir=run, callbacks=(save_history, *callbacks))
    history = trainer.fit()
    if not history:
        write_text(run / layout.HISTORY, "")
    t0 = time.perf_counter()
    ctx = evaluate(method, data, cfg, triplets, device, metrics)
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
        write_text(run / layout.CONFUSION, pd.DataFrame(ctx.extras["confusion"]).to_csv(index=False))
    if isinstance(method, GenerativeMethod):
        write_npz(run / layout.RECONSTRUCTIONS, **reconstructions(method, data, ctx.pipeline, device))
    metrics["svm_lambda"] = ctx.extras.get("svm_lambda")
    metrics = {k: v for k, v in metrics.items() if v is not None}
    write_json(run / layout.METRICS, metrics)  # last: marks the run complete
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
    from dmlbench.running.config import untrained
    from dmlbench.methods import get_method

    cfg = base if get_method(method).trainable else untrained(base)
    return dataclasses.replace(cfg, method=method, seed=seed, method_params=params)
