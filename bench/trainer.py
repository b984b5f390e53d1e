"""The one trainer. It imports no method: a method declares its batches and returns loss terms.

Per step: gather a batch by index from in-memory tensors, ask the method for its named loss
terms, sum them with the method's weights, step the optimiser. Per epoch: log every term, write a
checkpoint, and stop with a clear error if a loss became NaN or inf.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dmlbench.config import RunConfig
from dmlbench.data import Data
from dmlbench.errors import DMLBenchError, NonFiniteLossError
from dmlbench.io import torch_save
from dmlbench.methods.base import Batch, Method
from dmlbench.sampling import ClassIndex, epoch_indices

log = logging.getLogger("dmlbench")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int = 0) -> int:
    """One thread budget for torch, faiss and BLAS, so they do not oversubscribe a small machine."""
    n = n or min(os.cpu_count() or 1, 8)
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    return n


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DMLBenchError(f"--device {name}: CUDA is not available in this torch build "
                            f"({torch.__version__}); use --device cpu or install a CUDA build of torch")
    return torch.device(name)


def batch_layout(method: Method, cfg: RunConfig, n_classes: int) -> tuple[int, int]:
    """(images per step, images per class-balanced group) for the method's batch kind."""
    spec = method.batch_spec()
    b = cfg.batch_size
    if spec.kind == "pairs":
        return (b // 2) * 2, 0
    if spec.kind == "triplets":
        return (b // 3) * 3, 0
    if spec.kind == "balanced":
        if spec.classes_per_group == -1:
            group = spec.m * n_classes
            if group > b:
                raise DMLBenchError(f"{method.name}: --batch-size {b} is smaller than one group of "
                                    f"{n_classes} classes x {spec.m}; use --batch-size {group} or more")
        else:
            per = spec.classes_per_group or n_classes
            group = spec.m * min(per, n_classes, max(b // spec.m, 1))
        return (b // group) * group, group
    return b, 0


def make_optimizer(method: Method, cfg: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The sampling RNG of one epoch: a function of (seed, epoch) alone, so a resumed run draws
    the same batches as an uninterrupted one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    def __init__(self, method: Method, data: Data, cfg: RunConfig, run_dir: Path | None = None):
        self.method = method
        self.data = data
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.device = resolve_device(cfg.device)

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoint.pt" if self.run_dir else None

    def _resume(self, opt, sched) -> tuple[int, list[dict]]:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return 0, []
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        self.method.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"].cpu())  # map_location moved it; the CPU generator wants it back
        if self.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), self.device)
        log.info("resuming %s from epoch %d", self.run_dir, ckpt["epoch"])
        return ckpt["epoch"], ckpt["history"]

    def _save(self, epoch: int, history: list[dict], opt, sched) -> None:
        if self.checkpoint_path is None:
            return
        torch_save(self.checkpoint_path, {
            "epoch": epoch, "model": self.method.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "history": history,
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "config": self.cfg.to_dict(),
        })

    def _check_finite(self, sums: torch.Tensor, names: list[str], epoch: int, step: int) -> None:
        if bool(torch.isfinite(sums).all()):
            return
        bad = [k for k, v in zip(names + ["total"], sums.tolist()) if not np.isfinite(v)]
        raise NonFiniteLossError(
            f"{self.method.name} seed {self.cfg.seed}: loss term(s) {', '.join(bad)} became non-finite at "
            f"epoch {epoch + 1} step {step + 1}; lower --lr or the term's weight"
        )

    def fit(self, on_epoch=None) -> list[dict]:
        method, cfg = self.method.to(self.device), self.cfg
        if not method.trainable:
            return []
        x = self.data.x_train.to(self.device)
        y = self.data.y_train.to(self.device)
        spec = method.batch_spec()
        n_classes = int(self.data.y_train.unique().numel())
        per_step, group = batch_layout(method, cfg, n_classes)
        if per_step <= 0:
            raise DMLBenchError(f"{method.name}: --batch-size {cfg.batch_size} is too small for {spec.kind} batches")
        steps = max(1, (cfg.epoch_size or len(x)) // per_step)
        index = ClassIndex(self.data.y_train) if spec.kind != "plain" else None
        opt = make_optimizer(method, cfg)
        # A NaN check is a host sync: every step on CPU (free), every few steps on a GPU. The
        # running sums carry a NaN forward, so none is missed, and no NaN epoch is checkpointed.
        check_every = 1 if self.device.type == "cpu" else 25
        if cfg.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
        start, history = self._resume(opt, sched)
        names: list[str] | None = None
        bar = tqdm(total=cfg.epochs * steps, initial=start * steps, disable=None, file=sys.stderr, leave=False,
                   desc=f"{method.name} s{cfg.seed}", unit="step", dynamic_ncols=True)
        try:
            for epoch in range(start, cfg.epochs):
                method.train()
                gen = epoch_generator(cfg.seed, epoch)
                idx_all = epoch_indices(spec.kind, self.data.y_train, per_step, steps, gen, index, spec.m, group)
                idx_all = idx_all.to(self.device, non_blocking=True)
                sums = None
                t0 = time.perf_counter()
                for step in range(steps):
                    idx = idx_all[step]
                    terms = method.loss_terms(Batch(x[idx], y[idx], spec, group))
                    if names is None:
                        names = list(terms)
                        missing = [k for k in names if k not in method.weights]
                        if missing:
                            raise ValueError(f"method {method.name} returned loss terms {missing} without weights")
                    total = sum(method.weights[k] * v for k, v in terms.items())
                    vals = torch.stack([v.detach() for v in terms.values()] + [total.detach()])
                    sums = vals if sums is None else sums + vals
                    if (step + 1) % check_every == 0 or step + 1 == steps:
                        self._check_finite(sums, names, epoch, step)
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    opt.step()
                    bar.update()
                lr = opt.param_groups[0]["lr"]  # the rate this epoch trained at, before the schedule moves it
                sched.step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                means = (sums / steps).tolist()
                row = {"epoch": epoch + 1, **dict(zip(names + ["loss"], means)), "lr": lr,
                       "seconds": seconds, "images_per_s": steps * per_step / seconds}
                history.append(row)
                self._save(epoch + 1, history, opt, sched)
                bar.set_postfix(loss=f"{row['loss']:.4g}", ips=f"{row['images_per_s']:.0f}")
                log.info("%s s%d epoch %d/%d  %s  (%.1fs, %.0f img/s)", method.name, cfg.seed, epoch + 1, cfg.epochs,
                         "  ".join(f"{k}={row[k]:.4g}" for k in names + ["loss"]), seconds, row["images_per_s"])
                if on_epoch is not None:
                    on_epoch(history)
        finally:
            bar.close()
        return history
