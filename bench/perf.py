"""Speed benchmark: one training epoch three ways, and the evaluation, in one process.

For each method the same model (``runner.build_method``), batch size, number of images and loss are
timed as

(a) ``harness``: :class:`dmlbench.trainer.Trainer` ``.fit()`` for one epoch, no run folder; its
    history row's ``seconds`` (the step loop; the epoch's index tensor is drawn before it);
(b) ``bare``: a minimal PyTorch loop over the same index tensor (``sampling.epoch_indices``, drawn
    before the clock starts, as in the harness): gather, loss terms, weighted sum, zero_grad,
    backward, step; nothing else;
(c) ``dataloader``: the common per-sample ``Dataset``/``DataLoader`` loop (``num_workers=0``, default
    collate): one image, pair or triplet per ``__getitem__`` drawn with Python's ``random``, or PML's
    MPerClassSampler for class-balanced batches.

Each way is warmed up with a few steps, then timed ``repeats`` times (the ways interleaved); the
median is reported. The evaluation (embedding train and test, then ``evaluate.evaluate``) is timed
for ``raw`` and for one trained method.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dmlbench.config import RunConfig
from dmlbench.data import Data
from dmlbench.errors import DMLBenchError
from dmlbench.methods import BUILTIN, get_method
from dmlbench.methods.base import Batch, Method
from dmlbench.runner import build_method, load_data
from dmlbench.sampling import ClassIndex, epoch_indices, random_triplets
from dmlbench.trainer import Trainer, batch_layout, epoch_generator, make_optimizer, resolve_device, set_threads

WARMUP_STEPS = 3


# ------------------------------------------------------------------------------------------ (c) datasets

class TripletDataset(torch.utils.data.Dataset):
    """One (anchor, positive, negative) triplet per item, drawn with Python's ``random``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, length: int):
        self.x, self.y, self.length = x, y.tolist(), length
        self.by_class: dict[int, list[int]] = {}
        for i, c in enumerate(self.y):
            self.by_class.setdefault(c, []).append(i)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        a = i % len(self.y)
        ya = self.y[a]
        p = a
        while p == a:
            p = random.choice(self.by_class[ya])
        n = random.randrange(len(self.y))
        while self.y[n] == ya:
            n = random.randrange(len(self.y))
        return self.x[a], self.x[p], self.x[n], ya, ya, self.y[n]


class PairDataset(TripletDataset):
    """One pair per item: a same-class partner or another-class one, with probability 1/2 each."""

    def __getitem__(self, i: int):
        a = i % len(self.y)
        ya = self.y[a]
        if random.random() < 0.5:
            b = a
            while b == a:
                b = random.choice(self.by_class[ya])
        else:
            b = random.randrange(len(self.y))
            while self.y[b] == ya:
                b = random.randrange(len(self.y))
        return self.x[a], self.x[b], ya, self.y[b]


class ImageDataset(torch.utils.data.Dataset):
    """One image and its label per item."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, length: int):
        self.x, self.y, self.length = x, y, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        i = i % len(self.y)
        return self.x[i], self.y[i]


def dataloader(kind: str, data: Data, per_step: int, steps: int, m: int, group: int) -> torch.utils.data.DataLoader:
    """The per-sample DataLoader giving ``steps`` batches of ``per_step`` images laid out as the method expects."""
    x, y = data.x_train, data.y_train
    dl = torch.utils.data.DataLoader
    if kind == "triplets":
        return dl(TripletDataset(x, y, steps * (per_step // 3)), batch_size=per_step // 3, shuffle=True, num_workers=0)
    if kind == "pairs":
        return dl(PairDataset(x, y, steps * (per_step // 2)), batch_size=per_step // 2, shuffle=True, num_workers=0)
    if kind == "balanced":
        from pytorch_metric_learning.samplers import MPerClassSampler

        sampler = MPerClassSampler(y.numpy(), m, batch_size=group, length_before_new_iter=steps * per_step)
        return dl(ImageDataset(x, y, len(y)), batch_size=per_step, sampler=sampler, num_workers=0)
    return dl(ImageDataset(x, y, steps * per_step), batch_size=per_step, shuffle=True, num_workers=0)


def _collate_batch(kind: str, items) -> tuple[torch.Tensor, torch.Tensor]:
    """A DataLoader batch -> (x, y) in the method's layout: [anchors; positives; negatives] or [first; second]."""
    if kind == "triplets":
        xa, xp, xn, ya, yp, yn = items
        return torch.cat([xa, xp, xn]), torch.cat([ya, yp, yn])
    if kind == "pairs":
        x1, x2, y1, y2 = items
        return torch.cat([x1, x2]), torch.cat([y1, y2])
    return items[0], items[1]


# ------------------------------------------------------------------------------------------ the three ways

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_harness(method: Method, data: Data, cfg: RunConfig) -> tuple[float, float]:
    """(seconds of the epoch's step loop from the history row, wall seconds of the whole fit() call)."""
    t0 = time.perf_counter()
    history = Trainer(method, data, dataclasses.replace(cfg, epochs=1)).fit()
    return history[-1]["seconds"], time.perf_counter() - t0


def epoch_index(method: Method, data: Data, cfg: RunConfig, per_step: int, steps: int, group: int) -> torch.Tensor:
    spec = method.batch_spec()
    index = ClassIndex(data.y_train) if spec.kind != "plain" else None
    gen = epoch_generator(cfg.seed, 0)
    return epoch_indices(spec.kind, data.y_train, per_step, steps, gen, index, spec.m, group)


def time_bare(method: Method, x: torch.Tensor, y: torch.Tensor, idx_all: torch.Tensor, cfg: RunConfig,
              group: int, device: torch.device) -> float:
    """The minimal loop: seconds for every step of ``idx_all``."""
    spec, w = method.batch_spec(), method.weights
    opt = make_optimizer(method, cfg)
    method.train()
    _sync(device)
    t0 = time.perf_counter()
    for idx in idx_all:
        loss = sum(w[k] * t for k, t in method.loss_terms(Batch(x[idx], y[idx], spec, group)).items())
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - t0


def time_dataloader(method: Method, loader, cfg: RunConfig, group: int, device: torch.device,
                    max_steps: int | None = None) -> float:
    spec, w = method.batch_spec(), method.weights
    opt = make_optimizer(method, cfg)
    method.train()
    _sync(device)
    t0 = time.perf_counter()
    for step, items in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        xb, yb = _collate_batch(spec.kind, items)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = sum(w[k] * t for k, t in method.loss_terms(Batch(xb, yb, spec, group)).items())
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ driver

def _config(base: RunConfig, name: str) -> RunConfig:
    cls = get_method(name)
    cfg = dataclasses.replace(base, method=name, method_params=dataclasses.asdict(cls.Params()))
    cls.Params(**cfg.method_params).validate()
    return cfg


def time_training(name: str, data: Data, base: RunConfig, repeats: int,
                  log: Callable[[str], None]) -> tuple[dict, Method]:
    """One row of timings for ``name``, and the model (trained for the warm-up and the timed epochs)."""
    cfg = _config(base, name)
    method = build_method(cfg, data)
    if not method.trainable:
        raise DMLBenchError(f"{name} is not trained; leave it out of --methods (it is timed in the evaluation)")
    device = resolve_device(cfg.device)
    method.to(device)
    spec = method.batch_spec()
    n_classes = int(data.y_train.unique().numel())
    per_step, group = batch_layout(method, cfg, n_classes)
    if per_step <= 0:
        raise DMLBenchError(f"{name}: --batch-size {cfg.batch_size} is too small for {spec.kind} batches")
    steps = max(1, (cfg.epoch_size or len(data.y_train)) // per_step)
    images = steps * per_step
    x, y = data.x_train.to(device), data.y_train.to(device)
    t0 = time.perf_counter()
    idx_all = epoch_index(method, data, cfg, per_step, steps, group).to(device)
    sample_s = time.perf_counter() - t0
    loader = dataloader(spec.kind, data, per_step, steps, spec.m, group)
    if len(loader) != steps:
        raise RuntimeError(f"{name}: the DataLoader gives {len(loader)} batches, the harness {steps}")

    # Warm-up: a few steps each way (allocator, lazy init, caches).
    warm = min(WARMUP_STEPS, steps)
    time_harness(method, data, dataclasses.replace(cfg, epoch_size=warm * per_step))
    time_bare(method, x, y, idx_all[:warm], cfg, group, device)
    time_dataloader(method, loader, cfg, group, device, max_steps=warm)

    harness, wall, bare, dl = [], [], [], []
    for r in range(repeats):
        h, hw = time_harness(method, data, cfg)
        harness.append(h)
        wall.append(hw)
        bare.append(time_bare(method, x, y, idx_all, cfg, group, device))
        dl.append(time_dataloader(method, loader, cfg, group, device))
        log(f"  {name} repeat {r + 1}/{repeats}: harness {h:.3f}s, bare {bare[-1]:.3f}s, dataloader {dl[-1]:.3f}s")
    # The headline harness time is the whole fit() call (its vectorised sampling, optimiser set-up,
    # finiteness checks and logging included); the bare loop gets its indices for free.
    loop, h, b, d = (statistics.median(v) for v in (harness, wall, bare, dl))
    return ({"method": name, "batch_kind": spec.kind, "steps": steps, "images_per_step": per_step, "images": images,
            "harness_s": h, "harness_step_loop_s": loop, "sample_s": sample_s, "bare_s": b,
            "dataloader_s": d, "harness_over_bare": h / b, "dataloader_over_harness": d / h,
            "harness_images_per_s": images / h, "bare_images_per_s": images / b, "dataloader_images_per_s": images / d,
            "repeats": repeats}, method)


def time_evaluation(name: str, data: Data, base: RunConfig, triplets: np.ndarray, log: Callable[[str], None],
                    method: Method | None = None) -> dict:
    from dmlbench.evaluate import embed, evaluate

    cfg = _config(base, name)
    device = resolve_device(cfg.device)
    method = (method or build_method(cfg, data)).to(device)
    embed(method, data.x_test[:64], device)  # warm-up
    t0 = time.perf_counter()
    embed(method, data.x_train, device)
    embed(method, data.x_test, device)
    _sync(device)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluate(method, data, cfg, triplets, device)  # embeds train and test again, then every metric
    total = time.perf_counter() - t0
    log(f"  evaluation of {name}: {total:.2f}s (embedding {embed_s:.2f}s)")
    return {"method": name, "embedding_dim": int(ev.test_emb.shape[1]), "train": len(data.y_train),
            "test": len(data.y_test), "embed_s": embed_s, "evaluate_s": total, "metrics_s": max(total - embed_s, 0.0),
            "triplet_acc": ev.metrics.get("triplet_acc"), "recall@1": ev.metrics.get("recall@1")}


def run_perf(dataset: str = "digits", data_dir: str = "", methods: list[str] | None = None, batch_size: int = 128,
             epoch_size: int = 0, threads: int = 2, device: str = "cpu", repeats: int = 3,
             eval_methods: list[str] | None = None, log: Callable[[str], None] = print,
             encoder: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time one epoch per method three ways, then the evaluation; returns (training table, evaluation table).

    ``eval_methods``: methods whose evaluation is timed; default ``raw`` and the first trained method
    (with the weights it has after the timed epochs). An empty list skips the evaluation.
    """
    if repeats < 1:
        raise DMLBenchError(f"--repeats must be at least 1, got {repeats}")
    methods = list(methods or [m for m in BUILTIN])
    n = set_threads(threads)
    base = RunConfig(dataset=dataset, data_dir=data_dir or "", batch_size=batch_size, epoch_size=epoch_size,
                     device=device, threads=n, epochs=1, encoder=encoder).resolved()
    base.check()
    resolve_device(device)
    for name in methods:  # unknown or untrained names fail before any timing
        if not get_method(name).trainable:
            raise DMLBenchError(f"{name} is not trained; leave it out of --methods (it is timed in the evaluation)")
    t0 = time.perf_counter()
    data = load_data(base)
    log(f"dataset {data.name}: {len(data.y_train)} train / {len(data.y_test)} test images {list(data.input_shape)}, "
        f"loaded in {time.perf_counter() - t0:.2f}s; encoder {base.encoder}, batch size {batch_size}, "
        f"threads {n}, device {device}, torch {torch.__version__}, {repeats} repeat(s), median reported")
    rows = []
    trained: dict[str, Method] = {}
    for name in methods:
        row, trained[name] = time_training(name, data, base, repeats, log)
        rows.append(row)
    train = pd.DataFrame(rows)
    if eval_methods is None:
        eval_methods = ["raw"] + methods[:1]
    ev_rows = []
    if eval_methods:
        gen = torch.Generator().manual_seed(base.triplet_seed)
        triplets = random_triplets(data.y_test, base.test_triplets, gen).numpy()
        for name in eval_methods:
            ev_rows.append(time_evaluation(name, data, base, triplets, log, trained.get(name)))
    return train, pd.DataFrame(ev_rows)


def format_results(train: pd.DataFrame, ev: pd.DataFrame) -> str:
    lines = []
    if len(train):
        t = pd.DataFrame({
            "method": train["method"], "kind": train["batch_kind"], "images": train["images"],
            "harness s": train["harness_s"].map("{:.3f}".format), "bare s": train["bare_s"].map("{:.3f}".format),
            "dataloader s": train["dataloader_s"].map("{:.3f}".format),
            "harness/bare": train["harness_over_bare"].map("{:.2f}x".format),
            "dataloader/harness": train["dataloader_over_harness"].map("{:.1f}x".format),
            "images/s (harness)": train["harness_images_per_s"].map("{:,.0f}".format),
            "images/s (bare)": train["bare_images_per_s"].map("{:,.0f}".format),
            "images/s (dataloader)": train["dataloader_images_per_s"].map("{:,.0f}".format),
        })
        lines += ["One training epoch (median over repeats); harness s = the whole Trainer.fit() call, sampling included; "
                  "dataloader/harness = the harness's speed-up over a per-sample DataLoader:", t.to_string(index=False)]
        lines.append("epoch index sampling (outside both timed loops): " + ", ".join(
            f"{m} {s:.3f}s" for m, s in zip(train["method"], train["sample_s"])))
    if len(ev):
        e = pd.DataFrame({
            "method": ev["method"], "dim": ev["embedding_dim"],
            "embed train+test s": ev["embed_s"].map("{:.2f}".format),
            "evaluate s (incl. embedding)": ev["evaluate_s"].map("{:.2f}".format),
            "metrics s": ev["metrics_s"].map("{:.2f}".format),
        })
        lines += ["", "Full evaluation (embed train and test + evaluate: triplets, faiss retrieval, k-NN, linear SVM):",
                  e.to_string(index=False)]
    return "\n".join(lines)


def write_results(train: pd.DataFrame, ev: pd.DataFrame, out: Path) -> list[Path]:
    """The training table to ``out`` (a .csv file, or perf.csv inside a folder), the evaluation beside it."""
    from dmlbench.io import write_text

    out = Path(out)
    if out.suffix != ".csv":
        out = out / "perf.csv"
    written = [out]
    write_text(out, train.to_csv(index=False))
    if len(ev):
        ev_path = out.with_name(out.stem + "-eval.csv")
        write_text(ev_path, ev.to_csv(index=False))
        written.append(ev_path)
    return written
