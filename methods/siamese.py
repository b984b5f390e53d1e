"""``siamese``: contrastive loss on pairs.

Paper: Hadsell, Chopra & LeCun, "Dimensionality reduction by learning an invariant mapping",
CVPR 2006; as used by Liang & Li, "Experiments on metric learning methods", eq. 1-3.

Loss, with d = ||f(x1) - f(x2)||_2 and S = 0 for a same-class pair, 1 otherwise:
    L = (1 - S) * 1/2 d^2 + S * 1/2 max(0, m - d)^2
Batches hold equal numbers of positive and negative pairs; with PML's MeanReducer the loss is
mean over positive pairs + mean over negative pairs. ``squared=false`` gives PML's plain
ContrastiveLoss (unsquared hinges).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import ContrastiveLoss
from pytorch_metric_learning.reducers import MeanReducer

from dmlbench.methods.base import Batch, BatchSpec, Method, Params, register_method
from dmlbench.methods.losses import HadsellContrastiveLoss


@dataclass
class SiameseParams(Params):
    margin: float = 1.0
    squared: bool = True
    normalize: bool = False  # L2-normalise embeddings before the distance
    weights: dict[str, float] = field(default_factory=lambda: {"contrastive": 1.0})


@register_method("siamese")
class Siamese(Method):
    paper = "Hadsell, Chopra & LeCun 2006; Liang & Li eq. 1-3"
    formula = "(1-S)·½d² + S·½max(0, m−d)², d = ‖f(x1)−f(x2)‖₂"
    Params = SiameseParams

    def __init__(self, params: SiameseParams, **kw):
        super().__init__(params, **kw)
        cls = HadsellContrastiveLoss if params.squared else ContrastiveLoss
        self.loss_fn = cls(pos_margin=0.0, neg_margin=params.margin, reducer=MeanReducer(),
                           distance=LpDistance(normalize_embeddings=params.normalize))

    def batch_spec(self) -> BatchSpec:
        return BatchSpec("pairs")

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        emb = self.encoder(batch.x)
        n = len(emb) // 2
        i = torch.arange(n, device=emb.device)
        same = batch.y[:n] == batch.y[n:]
        # PML's indices_tuple for pairs: (anchor, positive, anchor, negative).
        pairs = (i[same], i[same] + n, i[~same], i[~same] + n)
        return {"contrastive": self.loss_fn(emb, batch.y, indices_tuple=pairs)}
