"""Batch kinds: the one owner of how a method's batches are drawn and laid out.

A kind (:class:`Plain`, :class:`Pairs`, :class:`Triplets`, :class:`Balanced`) knows

- its :class:`Layout` for a batch size: images per step, and the size of an independent group;
- an epoch's indices, drawn vectorised and seeded in one tensor (steps, images per step);
- the tuples it yields to the method (:class:`Batch`): pair, triplet or group indices into the
  batch, or just the labels (PML's losses form their own tuples from labels).

A method declares its kind and reads ``batch.pairs``, ``batch.triplets`` or ``batch.groups``; it
never slices the batch by position. The trainer and the perf benchmark both go through here.

Classes with fewer than 2 training images can't give a positive: they are left out of anchor
and positive draws (with a warning) but still serve as negatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from dmlbench.errors import DMLBenchError

log = logging.getLogger("dmlbench")


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
    per_step: int  # images per step
    group: int = 0  # images per independent class-balanced group (Balanced only)


class ClassIndex:
    """Indices grouped by class (a sorted order plus per-class start/count) for O(1) draws."""

    def __init__(self, labels: torch.Tensor, split: str = "training"):
        labels = torch.as_tensor(labels).cpu().long()
        self.n = len(labels)
        self.order = torch.argsort(labels, stable=True)
        self.classes, self.counts = torch.unique(labels, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.slot = torch.searchsorted(self.classes, labels)
        rank = torch.empty(self.n, dtype=torch.long)
        rank[self.order] = torch.arange(self.n) - self.starts.repeat_interleave(self.counts)
        self.rank = rank
        if len(self.classes) < 2:
            raise DMLBenchError(f"the {split} split has {len(self.classes)} class; pairs and triplets need at least 2")
        # Anchors (and their positives) come from classes with a second image.
        self.usable = self.counts[self.slot] >= 2
        small = int((self.counts < 2).sum())
        if small == len(self.classes):
            raise DMLBenchError(f"no {split} class has 2 images, so no positive pair exists"
                                + ("; give more images per class" if split == "test" else ""))
        if small:
            log.warning("%d of %d %s classes have a single image: they are left out of positive draws "
                        "(they still serve as negatives)", small, len(self.classes), split)
        self.anchor_pool = torch.nonzero(self.usable).squeeze(1) if small else None

    def same(self, anchors: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A uniformly drawn other member of each anchor's class (anchors from usable classes)."""
        s = self.slot[anchors]
        count = self.counts[s]
        r = (torch.rand(anchors.shape, generator=gen) * (count - 1)).long()
        r = r + (r >= self.rank[anchors]).long()  # skip the anchor itself
        return self.order[self.starts[s] + r]

    def other(self, anchors: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A uniformly drawn sample of any other class."""
        s = self.slot[anchors]
        count, start = self.counts[s], self.starts[s]
        r = (torch.rand(anchors.shape, generator=gen) * (self.n - count)).long()
        r = r + (r >= start).long() * count  # jump over the anchor's class block
        return self.order[r]

    def anchors(self, total: int, gen: torch.Generator) -> torch.Tensor:
        """``total`` anchors: whole permutations first, so every usable image is an anchor once per pass."""
        pool = self.n if self.anchor_pool is None else len(self.anchor_pool)
        a = _permutations(pool, total, gen)
        return a if self.anchor_pool is None else self.anchor_pool[a]


def _permutations(n: int, total: int, gen: torch.Generator) -> torch.Tensor:
    reps = -(-total // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:total]


def random_triplets(labels: torch.Tensor, n: int, gen: torch.Generator, index: ClassIndex | None = None) -> torch.Tensor:
    """(n, 3) rows of (anchor, positive, negative): anchors uniform, positive same class, negative other."""
    index = index or ClassIndex(labels)
    pool = index.n if index.anchor_pool is None else len(index.anchor_pool)
    a = torch.randint(pool, (n,), generator=gen)
    if index.anchor_pool is not None:
        a = index.anchor_pool[a]
    return torch.stack([a, index.same(a, gen), index.other(a, gen)], dim=1)


class BatchKind:
    """Base of the batch kinds: a frozen dataclass of its options."""

    name: ClassVar[str] = ""
    parts: ClassVar[tuple[str, ...]] = ("image",)  # the per-sample items a DataLoader would yield, in layout order
    needs_index: ClassVar[bool] = True

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        raise NotImplementedError

    def epoch_indices(self, index: ClassIndex | None, n: int, layout: Layout, steps: int,
                      gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def batch(self, x: torch.Tensor, y: torch.Tensor, layout: Layout) -> Batch:
        return Batch(x, y)

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class Plain(BatchKind):
    """Images in random order, every image once per pass."""

    name: ClassVar[str] = "plain"
    needs_index: ClassVar[bool] = False

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        return Layout(batch_size)

    def epoch_indices(self, index, n, layout, steps, gen):
        return _permutations(n, steps * layout.per_step, gen).view(steps, layout.per_step)


@dataclass(frozen=True)
class Pairs(BatchKind):
    """Pairs, half positive (same class) and half negative; every image a first once per pass.
    Layout [firsts; seconds]."""

    name: ClassVar[str] = "pairs"
    parts: ClassVar[tuple[str, ...]] = ("first", "second")

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        return Layout((batch_size // 2) * 2)

    def epoch_indices(self, index, n, layout, steps, gen):
        p = layout.per_step // 2
        a = index.anchors(steps * p, gen).view(steps, p)
        positive = torch.arange(p) < (p + 1) // 2  # a balanced mix: first half positive pairs
        partner = torch.where(positive, index.same(a, gen), index.other(a, gen))
        return torch.cat([a, partner], dim=1)

    def batch(self, x, y, layout):
        i = _arange(len(x) // 2, x.device)
        return Batch(x, y, pairs=(i, i + len(i)))


@dataclass(frozen=True)
class Triplets(BatchKind):
    """Random triplets (anchor, same-class positive, other-class negative). Layout [a; p; n]."""

    name: ClassVar[str] = "triplets"
    parts: ClassVar[tuple[str, ...]] = ("anchor", "positive", "negative")

    def layout(self, batch_size: int, n_classes: int) -> Layout:
        return Layout((batch_size // 3) * 3)

    def epoch_indices(self, index, n, layout, steps, gen):
        t = layout.per_step // 3
        a = index.anchors(steps * t, gen).view(steps, t)
        return torch.cat([a, index.same(a, gen), index.other(a, gen)], dim=1)

    def batch(self, x, y, layout):
        i = _arange(len(x) // 3, x.device)
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
        return f"balanced(m={self.m}" + (", every class" if self.classes_per_group == -1 else "") + ")"

    def layout(self, batch_size: int, n_classes: int) -> Layout:
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
        return balanced_indices(index, steps, layout.per_step, layout.group, self.m, gen)

    def batch(self, x, y, layout):
        return Batch(x, y, groups=_arange(len(x), x.device).view(-1, layout.group))


PLAIN, PAIRS, TRIPLETS = Plain(), Pairs(), Triplets()

_ARANGE: dict = {}


def _arange(n: int, device) -> torch.Tensor:
    """A cached arange per (n, device): the tuple indices of a layout are the same every step."""
    key = (n, str(device))
    if key not in _ARANGE:
        _ARANGE[key] = torch.arange(n, device=device)
    return _ARANGE[key]


def balanced_indices(index: ClassIndex, steps: int, per_step: int, group: int, m: int,
                     gen: torch.Generator) -> torch.Tensor:
    """Class-balanced batches: groups of ``group // m`` distinct classes, each with ``m`` images.

    Classes are drawn without replacement within a group, images without replacement within a
    class. A class with fewer than ``m`` images gives all of them, and the group is topped up with
    further classes, so no image repeats inside a group (a repeat is a zero-distance positive).
    Classes with a single image are never drawn. Layout: each group's classes in turn, each
    class's images consecutive.
    """
    usable = torch.nonzero(index.counts >= 2).squeeze(1)
    n_cls = group // m
    groups = steps * (per_step // group)
    counts = index.counts[usable]
    full = bool((counts >= m).all())
    # Enough candidate classes per group to fill it even with small classes (each gives >= 2).
    cand = n_cls if full else min(len(usable), -(-group // 2))
    if cand > len(usable) or (full and n_cls > len(usable)):
        raise DMLBenchError(f"a class-balanced group needs {n_cls} classes with 2+ images, but training has "
                            f"{len(usable)}; lower the batch size or m")
    slots = usable[torch.rand(groups, len(usable), generator=gen).argsort(dim=1)[:, :cand]]  # distinct classes
    count = index.counts[slots]  # (groups, cand)
    picks: list[torch.Tensor] = []
    for j in range(m):
        # Draw among the members not yet picked (Floyd-style insertion keeps them distinct).
        room = (count - j).clamp_min(1)
        r = (torch.rand(count.shape, generator=gen) * room).long()
        for prev in _sorted(picks):
            r = r + (r >= prev).long()
        picks.append(r)
    rank = torch.stack(picks, dim=-1)  # (groups, cand, m)
    idx = index.order[index.starts[slots].unsqueeze(-1) + rank.clamp_max((count - 1).unsqueeze(-1))]
    if full:
        return idx.reshape(steps, per_step)
    # Keep min(count, m) images of each candidate class, in order, and the first `group` of them.
    take = torch.arange(m).view(1, 1, m) < count.clamp_max(m).unsqueeze(-1)
    flat = idx.reshape(groups, -1)
    keep = take.reshape(groups, -1)
    pos = torch.cumsum(keep.long(), dim=1) - 1
    sel = keep & (pos < group)
    if bool((sel.sum(1) < group).any()):
        raise DMLBenchError(f"the training classes hold too few images to fill a class-balanced group of {group}; "
                            "lower the batch size")
    out = torch.empty(groups, group, dtype=torch.long)
    rows = torch.arange(groups).unsqueeze(1).expand_as(sel)
    out[rows[sel], pos[sel]] = flat[sel]
    return out.reshape(steps, per_step)


def _sorted(picks: list[torch.Tensor]) -> list[torch.Tensor]:
    """The earlier picks of each (group, class) cell in ascending order, one tensor per position."""
    if not picks:
        return []
    return list(torch.stack(picks, dim=-1).sort(dim=-1).values.unbind(-1))
