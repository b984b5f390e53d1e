"""``triplet-hinge``: the hinge (margin) triplet loss.

Papers: Wang et al., "Learning fine-grained image similarity with deep ranking", CVPR 2014;
Ishfaq, Hoogi & Rubin, "TVAE", eq. 1.

Loss, with D(a, b) = ||f(a) - f(b)||_2 (unsquared):
    L = mean over triplets of max(0, D(a, p) - D(a, n) + m)
Triplets are drawn at random (anchor and positive of one class, negative of another), as in the
papers; ``mining=all|hard|semihard`` instead mines them from class-balanced batches (``m``
images per class) with PML's TripletMarginMiner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from dmlbench.blocks.batches import TRIPLETS, Balanced
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.space import LR, Choice, Float
from dmlbench.methods.base import Method, Params, register_method


def hinge_triplet_loss(margin: float, normalize: bool = False):
    """PML's TripletMarginLoss with ``margin`` on L2 distances, averaged over all triplets (zero ones too)."""
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.reducers import MeanReducer

    # MeanReducer: the papers average over all triplets (PML's default averages the non-zero ones).
    return TripletMarginLoss(margin=margin, reducer=MeanReducer(), distance=LpDistance(normalize_embeddings=normalize))


@dataclass
class TripletHingeParams(Params):
    """Triplet-hinge options: the margin m, how triplets are drawn or mined, images per class when mining, and L2
    normalisation."""

    margin: float = 1.0
    mining: Literal["random", "all", "hard", "semihard"] = "random"
    m: int = 4  # images per class in a batch when mining
    normalize: bool = False
    weights: dict[str, float] = field(default_factory=lambda: {"triplet": 1.0})
    space: ClassVar = {**LR, "margin": Float(0.05, 2.0, log=True), "mining": Choice(("random", "semihard", "all"))}

    def validate(self) -> None:
        """The base checks, a margin >= 0, and m at least 2."""
        super().validate()
        if not self.margin >= 0:
            raise DMLBenchError(f"triplet-hinge margin={self.margin} must be >= 0")
        if self.m < 2:
            raise DMLBenchError(f"triplet-hinge m={self.m} must be at least 2 (images per class when mining)")


@register_method("triplet-hinge")
class TripletHinge(Method):
    """The hinge triplet loss on random or mined triplets."""

    paper = "Wang et al. 2014; Ishfaq, Hoogi & Rubin (TVAE) eq. 1"
    formula = "max(0, D(a,p) − D(a,n) + m), D = ‖f(·)−f(·)‖₂"
    Params = TripletHingeParams
    terms = ("triplet",)
    data_parallel = True

    @property
    def batch_kind(self):
        """Random triplets; class-balanced batches of m images per class when mining."""
        return TRIPLETS if self.params.mining == "random" else Balanced(m=self.params.m)

    def build(self) -> None:
        """Add the hinge loss and, unless mining is ``random``, PML's TripletMarginMiner of that type."""
        p = self.params
        self.loss_fn = hinge_triplet_loss(p.margin, p.normalize)
        self.miner = None
        if p.mining != "random":
            from pytorch_metric_learning.distances import LpDistance
            from pytorch_metric_learning.miners import TripletMarginMiner

            self.miner = TripletMarginMiner(margin=p.margin, type_of_triplets=p.mining,
                                            distance=LpDistance(normalize_embeddings=p.normalize))

    def loss_terms(self, batch):
        """``triplet``: mean of max(0, D(a,p) - D(a,n) + m) over the batch's triplets, or the miner's."""
        emb = batch.gather(self.encoder(batch.x))  # the whole batch's, in any number of processes
        triplets = batch.triplets if self.miner is None else self.miner(emb, batch.y)
        return {"triplet": self.loss_fn(emb, batch.y, indices_tuple=triplets)}
