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
from typing import ClassVar

from dmlbench.blocks.batches import PAIRS
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.space import LR, Float
from dmlbench.methods.base import Method, Params, register_method
from dmlbench.methods.losses import hadsell_contrastive_loss


@dataclass
class SiameseParams(Params):
    """Siamese options: the negative margin m, squared (Hadsell) or plain hinges, and L2 normalisation."""

    margin: float = 1.0
    squared: bool = True
    normalize: bool = False  # L2-normalise embeddings before the distance
    weights: dict[str, float] = field(default_factory=lambda: {"contrastive": 1.0})
    space: ClassVar = {**LR, "margin": Float(0.1, 4.0, log=True)}

    def validate(self) -> None:
        """The base checks, and a positive margin."""
        super().validate()
        if not self.margin > 0:
            raise DMLBenchError(f"siamese margin={self.margin} must be positive")


@register_method("siamese")
class Siamese(Method):
    """The contrastive loss of Hadsell et al. on same-class and other-class pairs."""

    paper = "Hadsell, Chopra & LeCun 2006; Liang & Li eq. 1-3"
    formula = "(1-S)·½d² + S·½max(0, m−d)², d = ‖f(x1)−f(x2)‖₂"
    Params = SiameseParams
    terms = ("contrastive",)
    data_parallel = True

    @property
    def batch_kind(self):
        """Pairs, half positive and half negative."""
        return PAIRS

    def build(self) -> None:
        """Add the contrastive loss (squared hinges or PML's plain ones) with margin m, a mean reducer and L2
        distance."""
        from pytorch_metric_learning.distances import LpDistance
        from pytorch_metric_learning.losses import ContrastiveLoss
        from pytorch_metric_learning.reducers import MeanReducer

        p = self.params
        make = hadsell_contrastive_loss if p.squared else ContrastiveLoss
        self.loss_fn = make(pos_margin=0.0, neg_margin=p.margin, reducer=MeanReducer(),
                            distance=LpDistance(normalize_embeddings=p.normalize))

    def loss_terms(self, batch):
        """``contrastive``: the mean loss over the batch's same-class pairs plus the mean over its other-class
        pairs (sameness from the labels)."""
        emb = batch.gather(self.encoder(batch.x))  # the whole batch's, in any number of processes
        i, j = batch.pairs
        same = batch.y[i] == batch.y[j]
        # PML's indices_tuple for pairs: (anchor, positive, anchor, negative).
        return {"contrastive": self.loss_fn(emb, batch.y, indices_tuple=(i[same], j[same], i[~same], j[~same]))}
