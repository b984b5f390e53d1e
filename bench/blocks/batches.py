"""Batch kinds: the one owner of how a method's batches are drawn and laid out.

A kind (:class:`Plain`, :class:`Pairs`, :class:`Triplets`, :class:`Balanced`) knows

- its :class:`Layout` for a batch size: images per step, and the size of an independent group;
- an epoch's indices, drawn vectorised and seeded in one tensor (steps, images per step);
- the tuples it yields to the method (:class:`Batch`): pair, triplet or group indices into the
  batch, or just the labels (PML's losses form their own tuples from labels).

A method declares its kind and reads ``batch.pairs``, ``batch.triplets`` or ``batch.groups``; it
never slices the batch by position. The trainer and the perf benchmark both go through here.

A run of several processes (``--nproc-per-run``) draws every step's whole batch on each of them,
as one process does, and each takes a shard of whole tuples (:meth:`BatchKind.shard_rows`): its
images in ``batch.x``, while ``batch.y`` and the tuples stay the whole batch's. A method embeds its
images and calls ``batch.gather`` on the result to get the whole batch's embeddings (in one
process, the same tensor); :func:`check_shards` refuses a batch the processes cannot share.

This module imports no torch (the draws live in :mod:`dmlbench.blocks.sampling` and are imported when a
run draws), so a driver that starts no training checks every method's batch size against its
kind before any run or trial starts (:func:`check_batch_size`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dmlbench.core.errors import DMLBenchError

if TYPE_CHECKING:
    import torch

    from dmlbench.blocks.sampling import ClassIndex


@dataclass
class Batch:
    """What a method gets each step.

    - ``x``: images (B, C, H, W), float on the run's device; ``y``: labels (B,).
    - ``pairs``: (first, second) row indices into x, for :class:`Pairs`.
    - ``triplets``: (anchor, positive, negative) row indices, for :class:`Triplets`.
    - ``groups``: (n_groups, group_size) row indices of independent class-balanced groups, for
      :class:`Balanced`.
    - ``shard``: in a run of several processes, this process's rows of the batch (a
      :class:`dmlbench.core.distributed.RowShard`): ``x`` holds only them, while ``y`` and the
      tuples index the whole batch. None in one process.
    """

    x: torch.Tensor
    y: torch.Tensor
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None
    triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    groups: torch.Tensor | None = None
    shard: Any = None

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The whole batch's rows of ``t`` (computed from ``x``: this process's rows), in the batch's order,
        with gradients: what a loss over the batch's tuples takes. ``t`` itself in one process."""
        return t if self.shard is None else self.shard.gather(t)

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of ``t``, a tensor of the whole batch (noise drawn for all of it, so that
        every process draws what one process would). ``t`` itself in one process."""
        return t if self.shard is None else self.shard.local(t)

    @property
    def size(self) -> int:
        """Images in the whole batch (``len(x)`` in one process)."""
        return len(self.y)


@dataclass(frozen=True)
class Layout:
    """How a kind lays out a step for a batch size: images per step, and per independent group."""

    per_step: int  # images per step
    group: int = 0  # images per independent class-balanced group (Balanced only)


class BatchKind:
    """Base of the batch kinds: a frozen dataclass of its options."""

    name: ClassVar[str] = ""
    parts: ClassVar[tuple[str, ...]] = ("image",)  # the per-sample items a DataLoader would yield, in layout order
    needs_index: ClassVar[bool] = True
    unit: ClassVar[str] = "image"  # what a process of a data-parallel run takes whole (a tuple)

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        """The layout of a step for ``batch_size`` and ``n_classes`` usable classes (per_step 0: no full step)."""
        raise NotImplementedError

    def epoch_indices(self, index: ClassIndex | None, n: int, layout: Layout, steps: int,
                      gen: torch.Generator) -> torch.Tensor:
        """An epoch's image indices, (steps, layout.per_step), drawn from ``gen`` among ``n`` training images."""
        raise NotImplementedError

    def batch(self, x: torch.Tensor, y: torch.Tensor, layout: Layout) -> Batch:
        """The :class:`Batch` of a step's images and labels; here with no tuples."""
        return Batch(x, y)

    def describe(self) -> str:
        """The kind's name as messages show it."""
        return self.name

    def tuples(self, layout: Layout) -> int:
        """Whole tuples (:attr:`unit`) in a step; here its images."""
        return layout.per_step

    def tuple_rows(self, layout: Layout) -> torch.Tensor:
        """(tuples, images per tuple): each tuple's rows in a step; here one image each."""
        import torch

        return torch.arange(layout.per_step).view(-1, 1)

    def shard_problem(self, layout: Layout, size: int) -> str | None:
        """Why ``size`` processes cannot share a step's tuples equally, each taking whole ones; None if they can."""
        n = self.tuples(layout)
        if size <= 1 or (n and n % size == 0):
            return None
        what = f"{n} {self.unit}{'' if n == 1 else 's'}"
        if n < size:
            return f"a step holds {what}, fewer than the {size} processes (each takes whole {self.unit}s)"
        return f"a step holds {what}, which {size} processes cannot share equally (each takes whole {self.unit}s)"

    def shard_rows(self, layout: Layout, size: int) -> torch.Tensor:
        """(size, rows per process): the rows of a step each of ``size`` processes takes, whole tuples each
        (process r the r-th equal run of tuples), in ascending order."""
        why = self.shard_problem(layout, size)
        if why:
            raise DMLBenchError(f"{self.describe()} batches: {why}")
        rows = self.tuple_rows(layout)
        return rows.reshape(size, -1).sort(dim=1).values


@dataclass(frozen=True)
class Plain(BatchKind):
    """Images in random order, every image once per pass."""

    name: ClassVar[str] = "plain"
    needs_index: ClassVar[bool] = False

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        """The whole batch size."""
        return Layout(batch_size)

    def epoch_indices(self, index, n, layout, steps, gen):
        """Permutations of all ``n`` images back to back, cut into steps."""
        from dmlbench.blocks.sampling import permutations

        return permutations(n, steps * layout.per_step, gen).view(steps, layout.per_step)


@dataclass(frozen=True)
class Pairs(BatchKind):
    """Pairs, half positive (same class) and half negative; every image a first once per pass.
    Layout [firsts; seconds]."""

    name: ClassVar[str] = "pairs"
    parts: ClassVar[tuple[str, ...]] = ("first", "second")
    unit: ClassVar[str] = "pair"

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        """The batch size rounded down to an even number."""
        return Layout((batch_size // 2) * 2)

    def epoch_indices(self, index, n, layout, steps, gen):
        """Each step's firsts (anchors, every usable image once per pass), then their partners: the first
        half of a step's pairs same-class, the rest other-class."""
        import torch

        p = layout.per_step // 2
        a = index.anchors(steps * p, gen).view(steps, p)
        positive = torch.arange(p) < (p + 1) // 2  # a balanced mix: first half positive pairs
        partner = torch.where(positive, index.same(a, gen), index.other(a, gen))
        return torch.cat([a, partner], dim=1)

    def batch(self, x, y, layout):
        """The batch with ``pairs``: row i of the first half with row i of the second."""
        from dmlbench.blocks.sampling import cached_arange

        i = cached_arange(len(y) // 2, y.device)
        return Batch(x, y, pairs=(i, i + len(i)))

    def tuples(self, layout):
        """The step's pairs."""
        return layout.per_step // 2

    def tuple_rows(self, layout):
        """Pair i: rows i and i + pairs."""
        import torch

        p = layout.per_step // 2
        return torch.stack([torch.arange(p), torch.arange(p) + p], dim=1)


@dataclass(frozen=True)
class Triplets(BatchKind):
    """Random triplets (anchor, same-class positive, other-class negative). Layout [a; p; n]."""

    name: ClassVar[str] = "triplets"
    parts: ClassVar[tuple[str, ...]] = ("anchor", "positive", "negative")
    unit: ClassVar[str] = "triplet"

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        """The batch size rounded down to a multiple of 3."""
        return Layout((batch_size // 3) * 3)

    def epoch_indices(self, index, n, layout, steps, gen):
        """Each step's anchors (every usable image once per pass), then a positive and a negative for each."""
        import torch

        t = layout.per_step // 3
        a = index.anchors(steps * t, gen).view(steps, t)
        return torch.cat([a, index.same(a, gen), index.other(a, gen)], dim=1)

    def batch(self, x, y, layout):
        """The batch with ``triplets``: row i of each third of it."""
        from dmlbench.blocks.sampling import cached_arange

        i = cached_arange(len(y) // 3, y.device)
        return Batch(x, y, triplets=(i, i + len(i), i + 2 * len(i)))

    def tuples(self, layout):
        """The step's triplets."""
        return layout.per_step // 3

    def tuple_rows(self, layout):
        """Triplet i: rows i, i + t and i + 2t of the step's t triplets."""
        import torch

        t = torch.arange(layout.per_step // 3)
        return torch.stack([t, t + len(t), t + 2 * len(t)], dim=1)


@dataclass(frozen=True)
class Balanced(BatchKind):
    """Class-balanced groups: up to ``m`` distinct images of each of several classes, PML's
    MPerClassSampler scheme, vectorised. ``classes_per_group``: 0 as many as fit in the batch; -1
    every training class in each group (N-pair tuples)."""

    name: ClassVar[str] = "balanced"
    unit: ClassVar[str] = "class-balanced group"
    m: int = 2
    classes_per_group: int = 0

    def describe(self) -> str:
        """``balanced(m=...)``, noting every class per group for N-pair tuples."""
        return f"balanced(m={self.m}" + (", every class" if self.classes_per_group == -1 else "") + ")"

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        """Whole groups of ``m`` images per class, as many per step as the batch size holds; too small a batch
        for every class in a group (``classes_per_group=-1``) is an error."""
        if self.m < 1:
            raise DMLBenchError(f"images per class m={self.m} must be at least 1")
        if self.classes_per_group == -1:
            group = self.m * n_classes
            if group > batch_size:
                raise DMLBenchError(f"batch_size={batch_size} is smaller than one group of {n_classes} classes x "
                                    f"{self.m}; use a batch size of {group} or more")
        else:
            per = self.classes_per_group or n_classes
            group = self.m * min(per, n_classes, max(batch_size // self.m, 1))
        return Layout((batch_size // group) * group, group)

    def epoch_indices(self, index, n, layout, steps, gen):
        """Class-balanced groups (:func:`~dmlbench.blocks.sampling.balanced_indices`)."""
        from dmlbench.blocks.sampling import balanced_indices

        return balanced_indices(index, steps, layout.per_step, layout.group, self.m, gen)

    def batch(self, x, y, layout):
        """The batch with ``groups``: consecutive rows, ``layout.group`` to a group."""
        from dmlbench.blocks.sampling import cached_arange

        return Batch(x, y, groups=cached_arange(len(y), y.device).view(-1, layout.group))

    def tuples(self, layout):
        """The step's independent groups."""
        return layout.per_step // layout.group if layout.group else 0

    def tuple_rows(self, layout):
        """Group i: its ``layout.group`` consecutive rows."""
        import torch

        return torch.arange(layout.per_step).view(-1, layout.group)


PLAIN, PAIRS, TRIPLETS = Plain(), Pairs(), Triplets()


def too_small(kind: BatchKind, batch_size: int, n_classes: int) -> str | None:
    """Why ``batch_size`` gives ``kind`` no full step (and the smallest that does), or None."""
    if kind.layout(batch_size, n_classes).per_step > 0:
        return None
    least = next((b for b in range(batch_size + 1, 4097) if kind.layout(b, n_classes).per_step > 0), None)
    return (f"batch_size={batch_size} is too small for {kind.describe()} batches"
            + (f"; use {least} or more" if least else ""))


def method_batch_kind(cls, params) -> BatchKind | None:
    """A method's batch kind from its options alone, without building its networks (the
    built-in methods' ``batch_kind`` reads only ``self.params``); None where a method needs more."""
    shell = object.__new__(cls)
    object.__setattr__(shell, "params", params)  # (a method's own __setattr__ files modules under .net)
    attr = getattr(cls, "batch_kind", None)
    try:
        kind = attr.fget(shell) if isinstance(attr, property) else attr
    except Exception:  # noqa: BLE001 - a plugin's kind may need its built networks: checked when it trains
        return None
    return kind if isinstance(kind, BatchKind) else None


MAX_SUGGESTED = 1 << 16  # the largest batch size check_shards searches for a fix


def usable_classes(train_labels) -> int:
    """Training classes with two images or more (the ones that can give a positive)."""
    import numpy as np

    return int((np.bincount(np.asarray(train_labels)) >= 2).sum())


def check_shards(name: str, cls, params, batch_size: int, train_labels, size: int) -> None:
    """Refuse, before any run starts, a batch that ``size`` processes cannot share in whole tuples
    (``--nproc-per-run``), naming batch sizes that they can."""
    kind = method_batch_kind(cls, params)
    if kind is None or size <= 1:
        return
    usable = usable_classes(train_labels)

    def problem(b: int) -> str | None:
        try:
            layout = kind.layout(b, usable)
        except DMLBenchError as e:
            return str(e)
        return "no full step" if layout.per_step <= 0 else kind.shard_problem(layout, size)

    why = problem(batch_size)
    if why is None:
        return
    below = next((b for b in range(batch_size - 1, 0, -1) if problem(b) is None), None)
    above = next((b for b in range(batch_size + 1, min(MAX_SUGGESTED, batch_size * size * 4) + 1)
                  if problem(b) is None), None)
    fixes = " or ".join(str(b) for b in (below, above) if b)
    raise DMLBenchError(f"{name}: --nproc-per-run {size} with batch_size={batch_size}: {why}; use "
                        + (f"--batch-size {fixes}, or " if fixes else "") + "fewer processes")


def check_batch_size(name: str, cls, params, batch_size: int, train_labels) -> None:
    """Refuse a batch size that gives method ``name`` no full step on this training set, before
    any run or trial starts (each would fail alike)."""
    kind = method_batch_kind(cls, params)
    if kind is None:
        return
    usable = usable_classes(train_labels)  # classes that can give a positive
    try:
        why = too_small(kind, batch_size, usable)
    except DMLBenchError as e:
        why = str(e)
    if why:
        raise DMLBenchError(f"{name}: {why}")
