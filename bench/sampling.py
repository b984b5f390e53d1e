"""Vectorised, seeded batch sampling over in-memory labels.

Every function returns the index tensor for a whole epoch at once, shaped (steps, batch); the
trainer gathers images by index. There is no per-sample Python and no Dataset/DataLoader.
"""

from __future__ import annotations

import torch

from dmlbench.errors import DMLBenchError


class ClassIndex:
    """Indices grouped by class (a sorted order plus per-class start/count) for O(1) draws."""

    def __init__(self, labels: torch.Tensor):
        labels = labels.cpu()
        self.n = len(labels)
        self.order = torch.argsort(labels, stable=True)
        self.classes, self.counts = torch.unique(labels, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        # For each sample: its class slot, and its rank inside its class block.
        self.slot = torch.searchsorted(self.classes, labels)
        rank = torch.empty(self.n, dtype=torch.long)
        rank[self.order] = torch.arange(self.n) - self.starts.repeat_interleave(self.counts)
        self.rank = rank
        if len(self.classes) < 2:
            raise DMLBenchError("training needs at least 2 classes for pairs or triplets")
        if int(self.counts.min()) < 2:
            raise DMLBenchError("every class needs at least 2 training images to form a positive pair")

    def same(self, anchors: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A uniformly drawn other member of each anchor's class."""
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


def random_triplets(labels: torch.Tensor, n: int, gen: torch.Generator,
                    index: ClassIndex | None = None) -> torch.Tensor:
    """(n, 3) rows of (anchor, positive, negative): anchors uniform, positive same class, negative other."""
    index = index or ClassIndex(labels)
    a = torch.randint(index.n, (n,), generator=gen)
    return torch.stack([a, index.same(a, gen), index.other(a, gen)], dim=1)


def _anchors(n: int, total: int, gen: torch.Generator) -> torch.Tensor:
    # Whole permutations first, so every image is an anchor once per pass over the data.
    reps = -(-total // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:total]


def epoch_indices(kind: str, labels: torch.Tensor, batch_size: int, steps: int, gen: torch.Generator,
                  index: ClassIndex | None = None, m: int = 2, group: int = 0) -> torch.Tensor:
    """Index tensor (steps, images_per_step) for one epoch of the given batch kind."""
    n = len(labels)
    if kind == "plain":
        return _anchors(n, steps * batch_size, gen).view(steps, batch_size)
    if kind == "pairs":
        index = index or ClassIndex(labels)
        p = batch_size // 2
        a = _anchors(n, steps * p, gen).view(steps, p)
        positive = torch.arange(p) < (p + 1) // 2  # a balanced mix: first half positive pairs
        partner = torch.where(positive, index.same(a, gen), index.other(a, gen))
        return torch.cat([a, partner], dim=1)
    if kind == "triplets":
        index = index or ClassIndex(labels)
        t = batch_size // 3
        a = _anchors(n, steps * t, gen).view(steps, t)
        return torch.cat([a, index.same(a, gen), index.other(a, gen)], dim=1)
    if kind == "balanced":
        index = index or ClassIndex(labels)
        return balanced_indices(index, steps, (batch_size // group) * group, group, m, gen)
    raise ValueError(f"unknown batch kind {kind!r}")


def balanced_indices(index: ClassIndex, steps: int, per_step: int, group: int, m: int,
                     gen: torch.Generator) -> torch.Tensor:
    """Class-balanced batches: groups of ``group // m`` distinct classes with ``m`` images each.

    The scheme of pytorch-metric-learning's MPerClassSampler (classes drawn without replacement
    within a group, images without replacement within a class where the class has enough),
    vectorised: PML's sampler loops in Python over every class of every batch, which costs seconds
    per MNIST epoch. Layout: each group's classes in turn, each class's m images consecutive.
    """
    n_cls = group // m
    groups = steps * (per_step // group)
    slots = torch.rand(groups, len(index.classes), generator=gen).argsort(dim=1)[:, :n_cls]  # distinct classes
    count = index.counts[slots]  # (groups, n_cls)
    picks: list[torch.Tensor] = []
    for j in range(m):
        # Draw among the members not yet picked (Floyd-style insertion keeps them distinct).
        room = (count - j).clamp_min(1)
        r = (torch.rand(count.shape, generator=gen) * room).long()
        for prev in sorted_picks(picks):
            r = r + (r >= prev).long()
        r = torch.where(count > j, r, (torch.rand(count.shape, generator=gen) * count).long())  # too small: reuse
        picks.append(r)
    rank = torch.stack(picks, dim=-1)  # (groups, n_cls, m)
    idx = index.order[index.starts[slots].unsqueeze(-1) + rank]
    return idx.reshape(steps, per_step)


def sorted_picks(picks: list[torch.Tensor]) -> list[torch.Tensor]:
    """The earlier picks of each (group, class) cell in ascending order, one tensor per position."""
    if not picks:
        return []
    return list(torch.stack(picks, dim=-1).sort(dim=-1).values.unbind(-1))
