"""The one trainer, in the manner of minGPT's: it knows no method.

A method declares its batch kind (:mod:`dmlbench.blocks.batches`) and returns named loss terms; the
trainer draws each epoch's indices in one vectorised call, gathers the uint8 images by index on the
run's device, turns them into float there (:mod:`dmlbench.training.inputs`), sums the terms with the
method's weights and steps the optimiser.

The budget is a number of optimiser steps, the same for every method (``cfg.steps``). It is cut
into epochs of ``epoch_size // batch_size`` steps; after each one the trainer logs every term,
writes a checkpoint (weights-only loadable), and calls its callbacks. A run whose checkpoint is
unreadable or belongs to another config starts afresh, saying why. A NaN or inf loss stops the
run with a one-line error naming the term.

A run of several processes (``--nproc-per-run``, :mod:`dmlbench.core.distributed`) trains as one
process does: every process draws the whole step's batch from the same generator and takes its
shard of whole tuples (:meth:`~dmlbench.blocks.batches.BatchKind.shard_rows`); the method's terms
see the whole batch's embeddings (``batch.gather``), and the gradients and loss terms are averaged
over the processes in one all-reduce before the optimiser steps, the same on each. Rank 0 alone
writes the checkpoints; on resume it decides whether the checkpoint is good, and the others then
read it too.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from dmlbench.blocks.encoders import is_timm
from dmlbench.blocks.sampling import ClassIndex
from dmlbench.core import distributed, runtime
from dmlbench.core.errors import DMLBenchError, NonFiniteLossError, exception_line
from dmlbench.core.io import CorruptFileError, torch_load, torch_save
from dmlbench.core.runtime import epoch_generator
from dmlbench.data.base import Data
from dmlbench.training.config import TrainConfig, epoch_plan
from dmlbench.training.inputs import DeviceImages, InputPipeline

if TYPE_CHECKING:
    from dmlbench.methods.base import Method

log = logging.getLogger("dmlbench")
RELEASE_EVERY = 64  # steps between handing a memory-mapped dataset's pages back (Part.release)

CHECKPOINT = "checkpoint.pt"


def make_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    """One optimiser; a pretrained trunk gets its own learning rate (``trunk_lr``) as a param group."""
    trunk_ids: set[int] = set()
    trunk = getattr(method.encoder, "trunk_parameters", None)
    groups = []
    if trunk is not None and cfg.trunk_lr is not None:
        trunk_params = [p for p in trunk() if p.requires_grad]
        trunk_ids = {id(p) for p in trunk_params}
        groups.append({"params": trunk_params, "lr": cfg.trunk_lr, "name": "trunk"})
    rest = [p for p in method.parameters() if p.requires_grad and id(p) not in trunk_ids]
    groups.insert(0, {"params": rest, "lr": cfg.lr, "name": "main"})
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise DMLBenchError(f"{method.name}: nothing to train (every parameter is frozen)")
    kw = {"weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **kw)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, **kw)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **kw)
    return torch.optim.Adam(groups, lr=cfg.lr, **kw)


def lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier after ``step`` steps: constant, or cosine annealed to 0 per step."""
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return lambda step: 1.0


class Trainer:
    """Trains ``method`` on ``data.train`` for ``cfg.steps`` steps; checkpoints into ``run_dir``.

    ``callbacks``: functions ``f(trainer, row)`` called after every epoch with that epoch's history
    row (the runner saves ``history.csv`` there; a tuner reports and prunes there). ``step_hooks``:
    functions ``f(trainer, first_step, names, values, lrs)`` called after every epoch with each of its
    steps' loss terms and total (``values``, steps x (terms + 1)) and learning rates (the loggers).
    ``world``: this process's place in a run of several (None: one process).
    """

    def __init__(self, method: Method, data: Data, cfg: TrainConfig, *, device: torch.device | str = "cpu",
                 run_dir: Path | None = None, callbacks: tuple = (), step_hooks: tuple = (),
                 world: distributed.World | None = None):
        self.method, self.data, self.cfg = method, data, cfg
        self.device = torch.device(device)
        self.run_dir = Path(run_dir) if run_dir else None
        self.callbacks = list(callbacks)
        self.step_hooks = list(step_hooks)
        self.world = world if world is not None and world.size > 1 else None
        self.history: list[dict] = []
        self.steps_done = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the run's checkpoints (one process, or rank 0 of several)."""
        return self.world is None or self.world.main

    @property
    def checkpoint_path(self) -> Path | None:
        """The run folder's checkpoint.pt; None without a run folder (nothing is checkpointed)."""
        return self.run_dir / CHECKPOINT if self.run_dir else None

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> dict | None:
        """The run folder's checkpoint where it is readable and of this config, else None (saying why)."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return None
        try:
            ckpt = torch_load(path, map_location=self.device)
        except CorruptFileError as e:
            log.warning("%s; starting this run afresh", e)
            path.replace(path.with_suffix(".corrupt"))
            return None
        if ckpt.get("run_id") != self.cfg.identity:
            log.warning("%s belongs to another configuration; starting this run afresh", path)
            return None
        return ckpt

    def _resume(self, opt, sched) -> int:
        ckpt = self._checkpoint() if self.main else None
        if self.world is not None:
            # Rank 0 judges the checkpoint; the others follow its verdict and read the file it accepted.
            epoch = distributed.broadcast(int(ckpt["epoch"]) if ckpt else 0, self.world)
            if epoch and not self.main:
                ckpt = torch_load(self.checkpoint_path, map_location=self.device)
        if ckpt is None:
            return 0
        self.method.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"].cpu())  # map_location moved it; the CPU generator wants it back
        if self.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), self.device)
        self.history = list(ckpt["history"])
        if self.main:
            log.info("resuming %s at epoch %d (step %d)", self.run_dir, ckpt["epoch"], ckpt["step"])
        return int(ckpt["epoch"])

    def _save(self, epoch: int, opt, sched) -> None:
        if self.checkpoint_path is None or not self.main:
            return
        torch_save(self.checkpoint_path, {
            "epoch": epoch, "step": self.steps_done, "run_id": self.cfg.identity,
            "model": self.method.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": torch.get_rng_state(), "history": self.history,
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        })

    def _check_finite(self, sums: torch.Tensor, names: list[str], epoch: int, step: int) -> None:
        if bool(torch.isfinite(sums).all()):
            return
        bad = [k for k, v in zip(names + ["total"], sums.tolist()) if not np.isfinite(v)]
        raise NonFiniteLossError(
            f"{self.method.name} seed {self.cfg.seed}: loss term(s) {', '.join(bad)} became non-finite at "
            f"epoch {epoch + 1} step {step + 1}; lower lr or that term's weight")

    def _shard(self, kind, layout) -> distributed.RowShard | None:
        """This process's rows of every step (None in one process); a method or encoder that cannot
        train as several processes is refused in one line."""
        if self.world is None:
            return None
        method = self.method
        if not method.data_parallel:
            raise DMLBenchError(f"method {method.name} does not declare data_parallel = True (its loss would see only "
                                f"this process's images); run it with --nproc-per-run 1")
        method.train()
        norms = [name for name, m in method.named_modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
        if norms:
            # --freeze-bn holds a timm trunk's BatchNorm; a plugin encoder's own layers are its author's to change
            choice = getattr(method, "encoder_choice", None)
            fix = ("give --freeze-bn" if choice is not None and is_timm(choice.name) else
                   "use an encoder whose normalisation does not depend on the batch (GroupNorm, LayerNorm)")
            raise DMLBenchError(f"{method.name}: BatchNorm layers ({norms[0]}, ...) would normalise each process's "
                                f"share of the batch apart, unlike one process; {fix}, or --nproc-per-run 1")
        return distributed.RowShard(kind.shard_rows(layout, self.world.size), self.world)

    def _first_batch_error(self, batch, e: Exception) -> DMLBenchError:
        """What a failure of the very first training batch says: a network that passed its example
        batch (:func:`~dmlbench.blocks.encoders.check_built`) but fails at this batch size or device."""
        choice = getattr(self.method, "encoder_choice", None)
        encoder = f" with encoder {choice.name!r}" if choice is not None else ""
        return DMLBenchError(f"{self.method.name}{encoder} fails on its first training batch, {tuple(batch.x.shape)} on "
                             f"{self.device} ({exception_line(e)}); fix the encoder's forward (or the loss) for this "
                             "batch size and device")

    # ------------------------------------------------------------------ training

    def fit(self) -> list[dict]:
        """Train for the configured steps, resuming from a checkpoint of the same config and saving one per epoch;
        returns the history, one row of mean loss terms, lr and speed per epoch (empty if nothing trains)."""
        method, cfg, data = self.method.to(self.device), self.cfg, self.data
        if not method.trainable or not cfg.steps:
            return []
        kind = method.batch_kind
        index = ClassIndex(data.train.y) if kind.needs_index else None
        usable = int((index.counts >= 2).sum()) if index is not None else data.num_train_classes
        layout = kind.layout(cfg.batch_size, usable)
        if layout.per_step <= 0:
            raise DMLBenchError(f"{method.name}: batch_size={cfg.batch_size} is too small for {kind.describe()} batches")
        images = DeviceImages(data.train, self.device)
        data.train.random_access()
        pipeline = InputPipeline(data, cfg.augment or "none", method.input_shape[1:])
        plan = epoch_plan(cfg.steps, cfg.steps_per_epoch())
        opt = make_optimizer(method, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.lr_schedule, cfg.steps))
        shard = self._shard(kind, layout)
        start = self._resume(opt, sched)
        if self.world is not None:
            distributed.broadcast_tensors(method.state_dict().values(), self.world)
        params = [p for p in method.parameters() if p.requires_grad]
        self.steps_done = sum(plan[:start])
        # A NaN check is a host sync: every step on CPU (free), every few steps on a GPU. The running
        # sums carry a NaN forward, so none is missed, and no NaN epoch is checkpointed.
        check_every = 1 if self.device.type == "cpu" else 25
        names = list(method.terms)
        bar = tqdm(total=cfg.steps, initial=self.steps_done, disable=None if self.main else True, file=sys.stderr,
                   leave=False, desc=f"{method.name} s{cfg.seed}", unit="step", dynamic_ncols=True,
                   position=runtime.BAR_POSITION)
        try:
            for epoch in range(start, len(plan)):
                steps = plan[epoch]
                method.train()
                idx_all = kind.epoch_indices(index, len(data.train), layout, steps,
                                             epoch_generator(cfg.seed, epoch, 0))
                aug_gen = epoch_generator(cfg.seed, epoch, 1)
                sums = None
                lrs = [g["lr"] for g in opt.param_groups]
                per_step, step_lrs = [], []  # kept for the step hooks: handed over once an epoch, no sync a step
                first_step = self.steps_done
                t0 = time.perf_counter()
                for step in range(steps):
                    idx = idx_all[step]  # the whole step's images, drawn alike in every process
                    if shard is None:
                        x = pipeline.train(images.take(idx), aug_gen)
                    else:
                        x = pipeline.train(images.take(idx[shard.rows]), aug_gen, shard.rows, len(idx))
                    batch = kind.batch(x, images.y[idx.to(images.y.device)], layout)
                    batch.shard = shard
                    try:
                        terms = method.loss_terms(batch)
                    except DMLBenchError:
                        raise
                    except Exception as e:
                        if self.steps_done > sum(plan[:start]):
                            raise  # a later step: the method's own failure, with its traceback
                        if self.world is not None and distributed.lost_error(e) is not None:
                            raise  # another rank gone while gathering: the run's failure, not the encoder's
                        raise self._first_batch_error(batch, e) from e
                    if list(terms) != names:
                        raise DMLBenchError(f"method {method.name} returned loss terms {list(terms)}, "
                                            f"but declares terms = {tuple(names)}")
                    total = sum(method.weights[k] * v for k, v in terms.items())
                    vals = torch.stack([v.detach() for v in terms.values()] + [total.detach()])
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    if shard is not None:  # the one-process gradient and terms (see RowShard), in one all-reduce
                        distributed.average_([p.grad for p in params if p.grad is not None] + [vals], self.world)
                    sums = vals if sums is None else sums + vals
                    if self.step_hooks:
                        per_step.append(vals)
                        step_lrs.append(opt.param_groups[0]["lr"])
                    if (step + 1) % check_every == 0 or step + 1 == steps:
                        self._check_finite(sums, names, epoch, step)
                    opt.step()
                    sched.step()
                    self.steps_done += 1
                    bar.update()
                    if (step + 1) % RELEASE_EVERY == 0:
                        data.train.release()  # random reads of a mapped cache go back to the page cache
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                means = (sums / steps).tolist()
                row = {"epoch": epoch + 1, "step": self.steps_done, **dict(zip(names + ["loss"], means)),
                       "lr": lrs[0], "seconds": seconds, "images_per_s": steps * layout.per_step / seconds}
                self.history.append(row)
                data.train.release()
                # Steps are handed to the hooks before the checkpoint, so a crash between the two never
                # loses them; a resumed epoch hands them again, and the loggers skip what they have.
                if self.step_hooks:
                    matrix = torch.stack(per_step).cpu().numpy()
                    for hook in self.step_hooks:
                        hook(self, first_step, names, matrix, step_lrs)
                self._save(epoch + 1, opt, sched)
                bar.set_postfix(loss=f"{row['loss']:.4g}", ips=f"{row['images_per_s']:.0f}")
                if self.main:
                        log.info("%s s%d epoch %d/%d  %s  (%.1fs, %.0f img/s)", method.name, cfg.seed, epoch + 1,
                             len(plan), "  ".join(f"{k}={row[k]:.4g}" for k in names + ["loss"]), seconds,
                             row["images_per_s"])
                for cb in self.callbacks:
                    cb(self, row)
        finally:
            bar.close()
        return self.history
