"""Run a suite of (method, seed) runs on one dataset and keep every result on disk.

Each run gets a folder named from its resolved config, ``<out>/<dataset>[/<suite>]/<method>/s<seed>-<id>``:
``config.json``, ``history.csv``, ``metrics.json``, ``embeddings.npz``, ``checkpoint.pt`` (and
``confusion.csv``, ``reconstructions.npz`` where they apply). Every file is written atomically;
``metrics.json`` is written last, so its presence marks a complete run. A re-run skips complete
runs and resumes unfinished ones from their last checkpoint; a failed run records why in
``failed.json`` and the suite goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dmlbench.config import RunConfig
from dmlbench.data import Data, load_dataset
from dmlbench.encoders import check_shapes
from dmlbench.errors import DMLBenchError
from dmlbench.evaluate import evaluate
from dmlbench.io import torch_save, write_json, write_npz, write_text
from dmlbench.methods import get_method
from dmlbench.methods.base import Method
from dmlbench.params import apply_overrides
from dmlbench.sampling import random_triplets
from dmlbench.trainer import Trainer, resolve_device, seed_everything

log = logging.getLogger("dmlbench")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def dataset_slug(dataset: str) -> str:
    name, _, path = dataset.partition(":")
    return slug(f"{name}-{Path(path).stem}") if path else slug(name)


def _versions() -> dict:
    import faiss
    import pytorch_metric_learning
    import sklearn

    import dmlbench

    out = {"dmlbench": dmlbench.__version__, "torch": torch.__version__, "numpy": np.__version__,
           "pytorch_metric_learning": pytorch_metric_learning.__version__, "faiss": faiss.__version__,
           "scikit-learn": sklearn.__version__, "python": platform.python_version()}
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, text=True,
                                           capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def _loader_options(fn):
    """A dataclass instance mirroring a loader's keyword options, so ``--set data.KEY=V`` is type-checked."""
    import inspect
    import typing

    hints = typing.get_type_hints(fn)
    fields = [(n, hints[n], dataclasses.field(default=p.default)) for n, p in inspect.signature(fn).parameters.items()
              if n not in ("data_dir", "seed", "path")]
    return dataclasses.make_dataclass("DataOptions", fields)()


def load_data(cfg: RunConfig) -> Data:
    from dmlbench.data import DATASETS

    name, _, path = cfg.dataset.partition(":")
    spec = DATASETS.get(name)
    options = {}
    if cfg.data_options:
        typed = apply_overrides(_loader_options(spec.loader), cfg.data_options, "data")
        options = {k: getattr(typed, k) for k in cfg.data_options}
    if path:
        options["path"] = path
    data = load_dataset(name, data_dir=cfg.data_dir or None, split=cfg.split, seed=cfg.data_seed, **options)
    if cfg.normalize == "standard":
        # Hoffer & Ailon: a global normalisation to zero mean and unit variance (train statistics).
        mean, std = data.x_train.mean(), data.x_train.std()
        data.x_train = (data.x_train - mean) / std
        data.x_test = (data.x_test - mean) / std
    return data


def test_triplets(data: Data, cfg: RunConfig, results_dir: Path) -> np.ndarray:
    """The fixed test triplets for this dataset and split, saved so later runs reuse the same ones."""
    key = f"{cfg.split}-d{cfg.data_seed}-n{cfg.test_triplets}-s{cfg.triplet_seed}-t{len(data.y_test)}"
    if ":" in cfg.dataset or cfg.data_options:
        # User data: two files can share a name and a test size, so the key names the source.
        src = json.dumps([cfg.dataset, cfg.data_options], sort_keys=True)
        key += "-" + hashlib.sha1(src.encode()).hexdigest()[:8]
    path = results_dir / f"test_triplets-{key}.npy"
    y = data.y_test
    if path.exists():
        t = np.load(path)
        ok = t.ndim == 2 and t.shape == (cfg.test_triplets, 3) and t.max() < len(y)
        if ok:
            yt = y.numpy()[t]
            ok = bool(np.all(yt[:, 0] == yt[:, 1]) and np.all(yt[:, 0] != yt[:, 2]))
        if not ok:
            raise DMLBenchError(f"{path} does not match this dataset's test split; delete it to draw new triplets")
        return t
    gen = torch.Generator().manual_seed(cfg.triplet_seed)
    t = random_triplets(y, cfg.test_triplets, gen).numpy()
    results_dir.mkdir(parents=True, exist_ok=True)
    buf = path.with_suffix(".tmp.npy")
    np.save(buf, t)
    buf.replace(path)
    return t


def build_method(cfg: RunConfig, data: Data) -> Method:
    cls = get_method(cfg.method)
    params = cls.Params(**cfg.method_params)  # validated when the suite was resolved
    seed_everything(cfg.seed)  # the same seed gives the same initial weights
    return cls(params, input_shape=data.input_shape, embedding_dim=cfg.embedding_dim, encoder=cfg.encoder,
               num_classes=int(data.y_train.max()) + 1)


@dataclass
class RunResult:
    config: RunConfig
    run_dir: Path
    status: str  # "done", "skipped" (already complete), "failed"
    metrics: dict = field(default_factory=dict)
    reason: str = ""


def suite_dir(out: Path, dataset: str, suite: str = "") -> Path:
    """Where a suite's runs and tables live: ``<out>/<dataset>[/<suite>]``."""
    d = Path(out) / dataset_slug(dataset)
    return d / slug(suite) if suite else d


def run_dir_for(cfg: RunConfig, results_dir: Path) -> Path:
    return results_dir / slug(cfg.method) / f"s{cfg.seed}-{cfg.run_id()}"


def run_one(cfg: RunConfig, data: Data, triplets: np.ndarray, results_dir: Path, variant: str = "") -> RunResult:
    run_dir = run_dir_for(cfg, results_dir)
    if (run_dir / "metrics.json").exists():
        return RunResult(cfg, run_dir, "skipped", json.loads((run_dir / "metrics.json").read_text()))
    (run_dir / "failed.json").unlink(missing_ok=True)
    write_json(run_dir / "config.json", {**cfg.to_dict(), "run_id": cfg.run_id(), "group_id": cfg.group_id(),
                                         "variant": variant, "data": data.info(), "versions": _versions()})
    device = resolve_device(cfg.device)

    def save_history(history: list[dict]) -> None:
        write_text(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))

    try:
        method = build_method(cfg, data)
        history = Trainer(method, data, cfg, run_dir).fit(on_epoch=save_history)
    except Exception as e:  # noqa: BLE001 - one broken run must not take the suite down with it
        reason = str(e) if isinstance(e, DMLBenchError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, DMLBenchError):
            log.exception("run %s seed %d crashed", cfg.method, cfg.seed)
        write_json(run_dir / "failed.json", {"reason": reason, "type": type(e).__name__})
        return RunResult(cfg, run_dir, "failed", reason=reason)
    train_seconds = sum(row["seconds"] for row in history)  # resumed runs count every epoch
    if not method.trainable:
        save_history([])
        torch_save(run_dir / "checkpoint.pt", {"epoch": 0, "model": method.state_dict(), "config": cfg.to_dict()})
    t0 = time.perf_counter()
    ev = evaluate(method, data, cfg, triplets, device)
    ev.metrics["train_seconds"] = round(train_seconds, 3)
    ev.metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
    write_npz(run_dir / "embeddings.npz", test_emb=ev.test_emb, test_y=data.y_test.numpy(), train_emb=ev.train_emb,
              train_y=data.y_train.numpy(), test_triplets=triplets.astype(np.int64))
    if ev.confusion is not None:
        write_text(run_dir / "confusion.csv", pd.DataFrame(ev.confusion).to_csv(index=False))
    if getattr(method, "generative", False):
        # A fixed set of test images (the first of each class) for the reconstruction grid plot.
        y = data.y_test
        first = torch.stack([torch.nonzero(y == c)[0, 0] for c in y.unique()])
        x = data.x_test[first]
        write_npz(run_dir / "reconstructions.npz", x=x.numpy(), x_hat=method.reconstruct(x.to(device)).cpu().numpy(),
                  y=y[first].numpy())
    write_json(run_dir / "metrics.json", ev.metrics)  # last: marks the run complete
    return RunResult(cfg, run_dir, "done", ev.metrics)


# Settings an untrained method never reads: held at their defaults in its config, so that `raw`
# gets one run id (one folder, one table row) whatever the training settings of the suite.
TRAINING_FIELDS = ("epochs", "batch_size", "epoch_size", "lr", "optimizer", "momentum", "weight_decay",
                   "lr_schedule", "encoder", "embedding_dim")


def untrained_config(cfg: RunConfig) -> RunConfig:
    held = {f: getattr(RunConfig(), f) for f in TRAINING_FIELDS}
    # Placeholders that pass validation; an untrained method reads none of them.
    held.update(encoder="mlp", epochs=1, embedding_dim=1)
    return dataclasses.replace(cfg, **held)


def _get_key(obj, dotted: str):
    head, _, rest = dotted.partition(".")
    value = getattr(obj, head)
    return value[rest] if rest else value


def run_suite(base: RunConfig, methods: list[str], seeds: list[int], method_sets: dict[str, dict],
              out: Path, on_result=None, on_start=None, suite: str = "") -> list[RunResult]:
    """Train and evaluate every (method, seed) on ``base.dataset``; returns one result per run."""
    for owner in method_sets:
        if owner not in methods:
            raise DMLBenchError(f"--set names {owner!r}, which is not among the methods being run ({', '.join(methods)})")
    base = base.resolved()
    base.check()
    resolve_device(base.device)
    configs = []
    generative = []
    for name in methods:
        cls = get_method(name)  # unknown names fail here, before any training
        overrides = method_sets.get(name, {})
        params = apply_overrides(cls.Params(), overrides, name)
        if cls.generative:
            generative.append(name)
        # The row label names only what differs from the method's defaults.
        defaults = cls.Params()
        variant = ",".join(f"{k}={v}" for k, v in sorted(overrides.items())
                           if _get_key(params, k) != _get_key(defaults, k))
        run_base = base if cls.trainable else untrained_config(base)
        for seed in seeds:
            configs.append((dataclasses.replace(run_base, method=name, seed=seed,
                                                method_params=dataclasses.asdict(params)), variant))
    data = load_data(base)
    if generative and (data.x_train.min() < 0 or data.x_train.max() > 1):
        raise DMLBenchError(f"{', '.join(generative)} decode pixels in [0, 1] (a sigmoid output), but this data spans "
                            f"[{data.x_train.min():.3g}, {data.x_train.max():.3g}]; use normalize = \"unit\" "
                            "or leave the generative methods out")
    check_shapes(base.encoder, data.input_shape, base.embedding_dim)
    results_dir = suite_dir(out, base.dataset, suite)
    triplets = test_triplets(data, base, results_dir)
    if on_start is not None:
        on_start(base, data)
    results = []
    for cfg, variant in configs:
        log.info("run %s seed %d -> %s", cfg.method, cfg.seed, run_dir_for(cfg, results_dir))
        r = run_one(cfg, data, triplets, results_dir, variant)
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results
