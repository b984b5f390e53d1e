"""``npair``: Sohn's multi-class N-pair loss with an L2 penalty on the embeddings.

Papers: Sohn, "Improved deep metric learning with multi-class N-pair loss objective", NeurIPS
2016; Liang & Li, "Experiments on metric learning methods" (the L2-penalised n-tuple network).

For N pairs (x_i, x_i+) of N distinct classes, with f_i = f(x_i):
    L = 1/N sum_i log(1 + sum_{j != i} exp(f_i.f_j+ - f_i.f_i+))  +  λ/(2N) sum_i (|f_i|^2 + |f_i+|^2)
The first term is PML's NPairsLoss (cross-entropy over the dot-product similarity matrix); the
second is PML's LpRegularizer(p=2, power=2), i.e. λ * mean |f|^2, and λ is ``weights.l2``.
(Liang & Li's eq. 7 puts the sum over j inside the exponent, a typo: Sohn's form is used.)
Batches are groups of N classes x 2 images (class-balanced, m=2, every training class in each
group); a batch of B images holds B / 2N independent N-pair tuples, whose losses are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dmlbench.methods.base import Method, Params, register_method
from dmlbench.space import LR, Float


@dataclass
class NPairParams(Params):
    weights: dict[str, float] = field(default_factory=lambda: {"npair": 1.0, "l2": 0.002})
    space: ClassVar = {**LR, "weights.l2": Float(1e-4, 0.1, log=True)}


@register_method("npair")
class NPair(Method):
    paper = "Sohn 2016 (multi-class N-pair); Liang & Li (with L2 penalty)"
    formula = "1/N Σᵢ log(1 + Σ_{j≠i} exp(fᵢ·fⱼ⁺ − fᵢ·fᵢ⁺)) + λ/(2N) Σᵢ(‖fᵢ‖² + ‖fᵢ⁺‖²)"
    Params = NPairParams
    terms = ("npair", "l2")

    @property
    def batch_kind(self):
        from dmlbench.sampling import Balanced

        return Balanced(m=2, classes_per_group=-1)  # every training class in each tuple

    def build(self) -> None:
        from pytorch_metric_learning.distances import DotProductSimilarity
        from pytorch_metric_learning.losses import NPairsLoss
        from pytorch_metric_learning.regularizers import LpRegularizer

        # Sohn's f_i.f_j are plain inner products: PML's default similarity L2-normalises first.
        self.loss_fn = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
        self.l2 = LpRegularizer(p=2, power=2)

    def loss_terms(self, batch):
        import torch

        emb = self.encoder(batch.x)
        losses = [self.loss_fn(emb[g], batch.y[g]) for g in batch.groups]
        return {"npair": torch.stack(losses).mean(), "l2": self.l2(emb)}
