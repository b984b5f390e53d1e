"""``triplet-softmax``: Hoffer & Ailon's triplet network (distance-ratio loss).

Paper: Hoffer & Ailon, "Deep metric learning using triplet network", ICLR workshop 2015
(also Liang & Li eq. 4-6).

With unsquared d+ = ||f(x) - f(x+)||_2 and d- = ||f(x) - f(x-)||_2, a softmax over the pair
    s+ = e^{d+} / (e^{d+} + e^{d-}),   s- = e^{d-} / (e^{d+} + e^{d-})
Loss (default, ``form=mse``, the authors' code): MSE of (s+, s-) against (0, 1) = mean(s+^2).
``form=nll``: the 2-class negative log-likelihood -log s-.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from dmlbench.blocks.batches import TRIPLETS
from dmlbench.core.space import LR, Choice
from dmlbench.methods.base import Method, Params, register_method
from dmlbench.methods.losses import l2_distance, softmax_ratio_loss


@dataclass
class TripletSoftmaxParams(Params):
    """Triplet-softmax options: the loss's form, ``mse`` (the authors' code) or ``nll`` (the paper)."""

    form: Literal["mse", "nll"] = "mse"
    weights: dict[str, float] = field(default_factory=lambda: {"ratio": 1.0})
    space: ClassVar = {**LR, "form": Choice(("mse", "nll"))}


@register_method("triplet-softmax")
class TripletSoftmax(Method):
    """Hoffer & Ailon's distance-ratio loss on random triplets."""

    paper = "Hoffer & Ailon 2015 (triplet network); Liang & Li eq. 4-6"
    formula = "‖softmax(d+, d−) − (0, 1)‖² (MSE, = s+²); or −log s− with form=nll"
    Params = TripletSoftmaxParams
    terms = ("ratio",)
    data_parallel = True

    @property
    def batch_kind(self):
        """Random triplets."""
        return TRIPLETS

    def loss_terms(self, batch):
        """``ratio``: the softmax-ratio loss of the unsquared distances d+ = D(a,p), d- = D(a,n) over the
        batch's triplets."""
        emb = batch.gather(self.encoder(batch.x))  # the whole batch's, in any number of processes
        a, p, n = (emb[i] for i in batch.triplets)
        return {"ratio": softmax_ratio_loss(l2_distance(a, p), l2_distance(a, n), self.params.form)}
