"""Drawing batches: the class index, random triplets and the vectorised class-balanced draw that
the batch kinds (:mod:`dmlbench.blocks.batches`) use for an epoch's indices.

Classes with fewer than 2 training images can't give a positive: they are left out of anchor
and positive draws (with a warning) but still serve as negatives.
"""

from __future__ import annotations

import logging

import torch

from dmlbench.core.errors import DMLBenchError

log = logging.getLogger("dmlbench")


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
        a = permutations(pool, total, gen)
        return a if self.anchor_pool is None else self.anchor_pool[a]


def permutations(n: int, total: int, gen: torch.Generator) -> torch.Tensor:
    """``total`` indices in [0, n): random permutations of all n back to back, the last one cut short."""
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


_ARANGE: dict = {}


def cached_arange(n: int, device) -> torch.Tensor:
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
