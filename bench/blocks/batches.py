"""Batch kinds: the one owner of how a method's batches are drawn and laid out.

A kind (:class:`Plain`, :class:`Pairs`, :class:`Triplets`, :class:`Balanced`) knows

- its :class:`Layout` for a batch size: images per step, and the size of an independent group;
- an epoch's indices, drawn vectorised and seeded in one tensor (steps, images per step);
- the tuples it yields to the method (:class:`Batch`): pair, triplet or group indices into the
  batch, or just the labels (PML's losses form their own tuples from labels).

A method declares its kind and reads ``batch.pairs``, ``batch.triplets`` or ``batch.groups``; it
never slices the batch by position. The trainer and the perf benchmark both go through here.

This module imports no torch (the draws live in :mod:`dmlbench.blocks.sampling` and are imported when a
run draws), so a driver that starts no training checks every method's batch size against its
kind before any run or trial starts (:func:`check_batch_size`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

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
    """

    x: torch.Tensor
    y: torch.Tensor
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None
    triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    groups: torch.Tensor | None = None


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

        i = cached_arange(len(x) // 2, x.device)
        return Batch(x, y, pairs=(i, i + len(i)))


@dataclass(frozen=True)
class Triplets(BatchKind):
    """Random triplets (anchor, same-class positive, other-class negative). Layout [a; p; n]."""

    name: ClassVar[str] = "triplets"
    parts: ClassVar[tuple[str, ...]] = ("anchor", "positive", "negative")

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

        i = cached_arange(len(x) // 3, x.device)
        return Batch(x, y, triplets=(i, i + len(i), i + 2 * len(i)))


@dataclass(frozen=True)
class Balanced(BatchKind):
    """Class-balanced groups: up to ``m`` distinct images of each of several classes, PML's
    MPerClassSampler scheme, vectorised. ``classes_per_group``: 0 as many as fit in the batch; -1
    every training class in each group (N-pair tuples)."""

    name: ClassVar[str] = "balanced"
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

        return Batch(x, y, groups=cached_arange(len(x), x.device).view(-1, layout.group))


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


def check_batch_size(name: str, cls, params, batch_size: int, train_labels) -> None:
    """Refuse a batch size that gives method ``name`` no full step on this training set, before
    any run or trial starts (each would fail alike)."""
    import numpy as np

    kind = method_batch_kind(cls, params)
    if kind is None:
        return
    usable = int((np.bincount(np.asarray(train_labels)) >= 2).sum())  # classes that can give a positive
    try:
        why = too_small(kind, batch_size, usable)
    except DMLBenchError as e:
        why = str(e)
    if why:
        raise DMLBenchError(f"{name}: {why}")
