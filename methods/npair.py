"""``npair``: Sohn's multi-class N-pair loss with an L2 penalty on the embeddings.

Papers: Sohn, "Improved deep metric learning with multi-class N-pair loss objective", NeurIPS
2016; Liang & Li, "Experiments on metric learning methods" (the L2-penalised n-tuple network).

For N pairs (x_i, x_i+) of N distinct classes, with f_i = f(x_i):
    L = 1/N sum_i log(1 + sum_{j != i} exp(f_i.f_j+ - f_i.f_i+))  +  λ/(2N) sum_i (|f_i|^2 + |f_i+|^2)
The first term is PML's NPairsLoss (cross-entropy over the dot-product similarity matrix), computed
here for all groups of a batch at once (``npair_groups``): PML's per-group call moves labels to the
host (``np.unique``) once per group, six syncs a step that made N-pair the slowest method on a GPU
(32 ms a step on an H200 against 3-8 ms for the others). A test checks it against PML group by group
and against Sohn's formula. The second term is PML's LpRegularizer(p=2, power=2), i.e.
λ * mean |f|^2, and λ is ``weights.l2``.
(Liang & Li's eq. 7 puts the sum over j inside the exponent, a typo: Sohn's form is used.)
Batches are groups of N classes x 2 images (class-balanced, m=2, every training class in each
group); a batch of B images holds B / 2N independent N-pair tuples, whose losses are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dmlbench.blocks.batches import Balanced
from dmlbench.core.space import LR, Float
from dmlbench.methods.base import Method, Params, register_method


@dataclass
class NPairParams(Params):
    """N-pair options: the loss weights (``l2`` is the penalty λ)."""

    weights: dict[str, float] = field(default_factory=lambda: {"npair": 1.0, "l2": 0.002})
    space: ClassVar = {**LR, "weights.l2": Float(1e-4, 0.1, log=True)}


@register_method("npair")
class NPair(Method):
    """Sohn's multi-class N-pair loss with an L2 penalty on the embeddings."""

    paper = "Sohn 2016 (multi-class N-pair); Liang & Li (with L2 penalty)"
    formula = "1/N Σᵢ log(1 + Σ_{j≠i} exp(fᵢ·fⱼ⁺ − fᵢ·fᵢ⁺)) + λ/(2N) Σᵢ(‖fᵢ‖² + ‖fᵢ⁺‖²)"
    Params = NPairParams
    terms = ("npair", "l2")
    data_parallel = True

    @property
    def batch_kind(self):
        """Class-balanced groups of 2 images of every training class."""
        return Balanced(m=2, classes_per_group=-1)  # every training class in each tuple

    def build(self) -> None:
        """Add the L2 penalty, PML's LpRegularizer(p=2, power=2)."""
        from pytorch_metric_learning.regularizers import LpRegularizer

        self.l2 = LpRegularizer(p=2, power=2)

    def loss_terms(self, batch):
        """``npair``: the N-pair loss averaged over the batch's groups (:func:`npair_groups`); ``l2``: the mean
        squared norm of the embeddings."""
        emb = batch.gather(self.encoder(batch.x))  # the whole batch's, in any number of processes
        return {"npair": npair_groups(emb[batch.groups], batch.y[batch.groups]), "l2": self.l2(emb)}


def npair_groups(emb, y):
    """Mean over groups of PML's NPairsLoss with plain dot products, for (groups, n, d) embeddings
    and (groups, n) labels, without leaving the device.

    As in PML, each class with at least two images in a group gives one pair: its first image
    (anchor) and its second (positive); images past the second, and classes with one image, are
    not used. Per group: the mean over anchors i of the cross-entropy of the row
    (f_i . f_k+ over the group's anchors k) with target i. A group without a pair counts 0, as
    PML's loss of an empty group does.
    """
    import torch
    import torch.nn.functional as F

    g, n, _ = emb.shape
    same = y[:, :, None] == y[:, None, :]                                        # (g, n, n)
    later = torch.ones(n, n, dtype=torch.bool, device=y.device).triu(1)          # j > i
    earlier = same & later.T                                                     # same class, j < i
    first = ~earlier.any(-1)                                                     # first image of its class
    after = same & later                                                         # same class, j > i
    anchor = first & after.any(-1)                                               # ... with a second image
    positive = after.float().argmax(-1)                                          # its second image (first j > i)
    pos_emb = torch.gather(emb, 1, positive[:, :, None].expand_as(emb))          # f_k+ for every row k
    sim = emb @ pos_emb.transpose(1, 2)                                          # (g, n, n): f_i . f_k+
    sim = sim.masked_fill(~anchor[:, None, :], float("-inf"))                    # columns: anchors only
    rows = torch.where(anchor, torch.arange(n, device=y.device), 0)              # target: own column
    ce = F.cross_entropy(sim.reshape(g * n, n), rows.reshape(-1), reduction="none").view(g, n)
    ce = torch.where(anchor, ce, torch.zeros_like(ce))
    pairs = anchor.sum(-1)
    per_group = ce.sum(-1) / pairs.clamp(min=1)
    return per_group.mean()
