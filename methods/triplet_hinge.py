"""``triplet-hinge``: the hinge (margin) triplet loss.

Papers: Wang et al., "Learning fine-grained image similarity with deep ranking", CVPR 2014;
Ishfaq, Hoogi & Rubin, "TVAE", eq. 1.

Loss, with D(a, b) = ||f(a) - f(b)||_2 (unsquared):
    L = mean over triplets of max(0, D(a, p) - D(a, n) + m)
Triplets are drawn at random (anchor and positive of one class, negative of another), as in the
papers; ``mining=all|hard|semihard`` instead mines them from class-balanced batches with PML's
TripletMarginMiner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import TripletMarginMiner
from pytorch_metric_learning.reducers import MeanReducer

from dmlbench.methods.base import Batch, BatchSpec, Method, Params, register_method


def hinge_triplet_loss(margin: float, normalize: bool = False) -> TripletMarginLoss:
    # MeanReducer: the papers average over all triplets (PML's default averages the non-zero ones).
    return TripletMarginLoss(margin=margin, reducer=MeanReducer(), distance=LpDistance(normalize_embeddings=normalize))


def triplet_indices(n_images: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of (anchor, positive, negative) in a batch laid out as [anchors; positives; negatives]."""
    t = n_images // 3
    i = torch.arange(t, device=device)
    return i, i + t, i + 2 * t


@dataclass
class TripletHingeParams(Params):
    margin: float = 1.0
    mining: Literal["random", "all", "hard", "semihard"] = "random"
    m: int = 4  # images per class in a batch when mining
    normalize: bool = False
    weights: dict[str, float] = field(default_factory=lambda: {"triplet": 1.0})


@register_method("triplet-hinge")
class TripletHinge(Method):
    paper = "Wang et al. 2014; Ishfaq, Hoogi & Rubin (TVAE) eq. 1"
    formula = "max(0, D(a,p) − D(a,n) + m), D = ‖f(·)−f(·)‖₂"
    Params = TripletHingeParams

    def __init__(self, params: TripletHingeParams, **kw):
        super().__init__(params, **kw)
        self.loss_fn = hinge_triplet_loss(params.margin, params.normalize)
        self.miner = None
        if params.mining != "random":
            self.miner = TripletMarginMiner(margin=params.margin, type_of_triplets=params.mining,
                                            distance=LpDistance(normalize_embeddings=params.normalize))

    def batch_spec(self) -> BatchSpec:
        return BatchSpec("triplets") if self.miner is None else BatchSpec("balanced", m=self.params.m)

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        emb = self.encoder(batch.x)
        if self.miner is None:
            triplets = triplet_indices(len(emb), emb.device)
        else:
            triplets = self.miner(emb, batch.y)
        return {"triplet": self.loss_fn(emb, batch.y, indices_tuple=triplets)}
