"""Loss pieces that pytorch-metric-learning does not provide, each tested against its paper's formula.

PML supplies the contrastive, hinge-triplet and N-pair losses; what is here is either a small
PML subclass (the squared Hadsell form of the contrastive loss) or written by hand (the
softmax-ratio loss of Hoffer & Ailon, and the VAE's reconstruction and KL terms). torch and PML
are imported on first use, so that method modules import without them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@functools.cache
def _hadsell_class():
    import torch.nn.functional as F
    from pytorch_metric_learning.losses import ContrastiveLoss

    class HadsellContrastiveLoss(ContrastiveLoss):
        """Hadsell, Chopra & LeCun (2006) / Liang & Li eq. 1-3: L_S = 1/2 d^2, L_D = 1/2 max(0, m - d)^2.

        PML's ContrastiveLoss uses the unsquared hinges ``relu(d - m_pos)`` and ``relu(m_neg - d)``;
        this subclass keeps PML's pair handling, distance and reducer and squares the hinges.
        With a MeanReducer the result is mean_pos(L_S) + mean_neg(L_D).
        """

        def pos_calc(self, pos_pair_dist, margin):
            return 0.5 * F.relu(self.distance.margin(pos_pair_dist, margin)) ** 2

        def neg_calc(self, neg_pair_dist, margin):
            return 0.5 * F.relu(self.distance.margin(margin, neg_pair_dist)) ** 2

    return HadsellContrastiveLoss


def hadsell_contrastive_loss(**kwargs):
    """PML's ContrastiveLoss with squared hinges (Hadsell et al. 2006), built with ``kwargs``."""
    return _hadsell_class()(**kwargs)


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The Euclidean distance between each row of ``a`` and the same row of ``b`` (at least 1e-6)."""
    # The clamp keeps the gradient of sqrt finite when two embeddings coincide.
    return (a - b).pow(2).sum(1).clamp_min(1e-12).sqrt()


def softmax_ratio_loss(d_pos: torch.Tensor, d_neg: torch.Tensor, form: str = "mse") -> torch.Tensor:
    """Hoffer & Ailon's triplet-network loss on unsquared L2 distances.

    softmax(d+, d-) = (e^{d+}, e^{d-}) / (e^{d+} + e^{d-}).
    - ``mse`` (the authors' Torch code, DistanceRatioCriterion): MSE of that vector against (0, 1),
      i.e. mean over triplets of ((s+ - 0)^2 + (s- - 1)^2) / 2 = mean(s+^2).
    - ``nll``: the paper's 2-class negative log-likelihood, -log s- = softplus(d+ - d-).
    """
    import torch
    import torch.nn.functional as F

    logits = torch.stack([d_pos, d_neg], dim=1)
    if form == "mse":
        soft = logits.softmax(dim=1)
        target = torch.zeros_like(soft)
        target[:, 1] = 1.0
        return F.mse_loss(soft, target)
    if form == "nll":
        return -logits.log_softmax(dim=1)[:, 1].mean()
    raise ValueError(f"unknown softmax-ratio form {form!r}")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample, summed over latent dims (Kingma & Welling, App. B)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def reconstruction(x: torch.Tensor, x_hat: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample reconstruction loss summed over pixels: squared L2, or Bernoulli NLL (BCE)."""
    import torch.nn.functional as F

    if kind == "l2":
        return (x_hat - x).pow(2).flatten(1).sum(1)
    if kind == "bce":
        return F.binary_cross_entropy(x_hat, x, reduction="none").flatten(1).sum(1)
    raise ValueError(f"unknown reconstruction kind {kind!r}")
