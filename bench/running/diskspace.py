"""Will a suite's results fit? What its runs will write, estimated, against the free space of the
results folder: a grid that cannot fit gets a one-line warning before it starts, not a full disk
at its tenth checkpoint.

A run writes its checkpoint (weights, buffers and the optimiser's state), its embeddings and
per-query values; everything else is small. Each group of runs (the same settings, other seeds)
is estimated, in order of trust, by

- measuring: the bytes of a complete run folder of the group already on disk;
- counting: the model's parameters and buffers (built on torch's meta device: no memory, no
  weights loaded) times one plus the optimiser's state per parameter, plus float32 embeddings of
  the train and test images and the per-query values. Only where the runs are made in this
  process: a pool's driver imports no torch;
- else, by measuring the first run of the suite that completes (:meth:`RoomCheck.after`).

An estimate, not a promise: compression, history and the table add a little, and other programs
fill the same disk.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from dmlbench.core.io import CorruptFileError, read_json
from dmlbench.methods import get_method
from dmlbench.running import layout
from dmlbench.running.config import RunConfig
from dmlbench.running.runner import RunResult, build_method

log = logging.getLogger("dmlbench")

OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2}  # state tensors per parameter (exp_avg, exp_avg_sq)
PER_QUERY_VALUES = 8  # float64 values per test query in per_query.npz, about


def human(n: float) -> str:
    """Bytes as ``12.3 MB`` (powers of 1024, as ``df -h``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # (not reached)


def free_bytes(folder: Path) -> int:
    """The bytes this user may still write on the file system of ``folder`` (or of its nearest
    existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def folder_bytes(folder: Path) -> int:
    """The bytes of the files in a run folder."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def measured(suite_dir: Path, cfg: RunConfig) -> int | None:
    """The bytes of the largest complete run folder with ``cfg``'s settings (any seed); None if none."""
    sizes = []
    for run in (Path(suite_dir) / layout.slug(cfg.method)).glob("s*-*"):
        if not layout.is_complete(run):
            continue
        try:
            if read_json(run / layout.CONFIG).get("group_id") == cfg.group_id():
                sizes.append(folder_bytes(run))
        except (CorruptFileError, OSError):
            continue
    return max(sizes, default=None)


def counted(cfg: RunConfig, data) -> int | None:
    """The bytes a run of ``cfg`` will write, from its model's size; None if the model cannot be
    built here (the run itself then reports why)."""
    import torch

    # embeddings.npz: float32 embeddings and int64 labels of every image, and the test triplets
    # (three int64 indices each, which compress about threefold)
    n_images = len(data.train) + len(data.test)
    outputs = (4 * (cfg.embedding_dim or 1) + 8) * n_images + 8 * cfg.test_triplets
    outputs += 8 * PER_QUERY_VALUES * len(data.test)
    if not get_method(cfg.method).trainable:
        return outputs  # no checkpoint
    try:
        with torch.device("meta"):  # shapes only: nothing allocated, no weights read
            method = build_method(dataclasses.replace(cfg, pretrained=False, weights=None), data)
    except Exception as e:  # noqa: BLE001 - an estimate is never worth failing for
        log.debug("no size estimate for %s: %s", cfg.method, e)
        return None
    state = sum(t.numel() * t.element_size() for t in method.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    slots = OPTIMIZER_SLOTS.get(cfg.optimizer, 1 if cfg.momentum else 0)
    return state + slots * trained + outputs


class RoomCheck:
    """The free-space check of one suite's runs: :meth:`before` they start (where each group has
    an estimate), else :meth:`after` the first run that completes. Each gives at most one
    warning line."""

    def __init__(self, suite_dir: Path, configs: list[RunConfig], data, count: bool):
        self.suite_dir = Path(suite_dir)
        self.pending = {str(layout.run_dir(suite_dir, c.method, c.seed, c.run_id())): c for c in configs
                        if not layout.is_complete(layout.run_dir(suite_dir, c.method, c.seed, c.run_id()))}
        self.sizes: dict[str, int | None] = {}
        self.how: set[str] = set()
        for c in self.pending.values():
            if c.group_id() in self.sizes:
                continue
            size = measured(suite_dir, c)
            if size is not None:
                self.how.add("measured from earlier runs")
            elif count:
                size = counted(c, data)
                if size is not None:
                    self.how.add("from the models' sizes")
            self.sizes[c.group_id()] = size
        self.done = False

    def _check(self) -> str | None:
        self.done = True
        need = sum(self.sizes[c.group_id()] or 0 for c in self.pending.values())
        free = free_bytes(self.suite_dir)
        if need <= free:
            return None
        return (f"{len(self.pending)} run(s) to make may write about {human(need)} ({', '.join(sorted(self.how))}), "
                f"but only {human(free)} are free in {self.suite_dir}; free space or give another --out: a full disk "
                "stops the suite (complete runs are kept)")

    def before(self) -> str | None:
        """The warning, if the estimate of every run exceeds the free space; None if it fits or
        some group has no estimate yet."""
        if not self.pending or any(s is None for s in self.sizes.values()):
            return None
        return self._check()

    def after(self, result: RunResult) -> str | None:
        """After a run ended: the first one that completed measures the groups without an estimate."""
        self.pending.pop(str(result.run_dir), None)
        if self.done or result.status != "done" or not any(s is None for s in self.sizes.values()):
            return None
        size = folder_bytes(result.run_dir)
        self.sizes = {g: size if s is None else s for g, s in self.sizes.items()}
        self.how.add("measured from the first run")
        return self._check()
