"""``tvae``: the triplet-based variational autoencoder.

Paper: Ishfaq, Hoogi & Rubin, "TVAE: Triplet-based variational autoencoder using metric
learning", ICLR workshop 2018, eq. 1-2.

The VAE's negative ELBO on every image of a triplet batch, plus a hinge triplet loss on the
posterior means μ:
    L = w_rec L_rec + w_kl KL + w_triplet mean max(0, ||μ_a - μ_p||_2 - ||μ_a - μ_n||_2 + m)
The reconstruction/KL scale (``reduction=sum`` or ``mean``) is left open by the paper and decides
how much the triplet term can move the latent space: with summed L2 it barely does, which is
why ``weights.triplet`` is the first thing to tune.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dmlbench.blocks.batches import TRIPLETS
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.space import LR, Float
from dmlbench.methods.base import register_method
from dmlbench.methods.triplet_hinge import hinge_triplet_loss
from dmlbench.methods.vae import VAE, VAEParams


@dataclass
class TVAEParams(VAEParams):
    """TVAE options: the VAE's, plus the triplet margin m and a ``triplet`` weight."""

    margin: float = 1.0
    weights: dict[str, float] = field(default_factory=lambda: {"recon": 1.0, "kl": 1.0, "triplet": 1.0})
    space: ClassVar = {**LR, "weights.triplet": Float(1.0, 1000.0, log=True), "margin": Float(0.1, 4.0, log=True)}

    def validate(self) -> None:
        """The base checks, and a margin >= 0."""
        super().validate()
        if not self.margin >= 0:
            raise DMLBenchError(f"tvae margin={self.margin} must be >= 0")


@register_method("tvae")
class TVAE(VAE):
    """The VAE with a hinge triplet loss on its posterior means."""

    paper = "Ishfaq, Hoogi & Rubin 2018 (TVAE) eq. 2"
    formula = "L_rec + KL + max(0, ‖μa−μp‖₂ − ‖μa−μn‖₂ + m)"
    Params = TVAEParams
    terms = ("recon", "kl", "triplet")

    @property
    def batch_kind(self):
        """Random triplets."""
        return TRIPLETS

    def build(self) -> None:
        """The VAE's decoder, plus the hinge triplet loss with margin m."""
        super().build()
        self.triplet_fn = hinge_triplet_loss(self.params.margin)

    def loss_terms(self, batch):
        """``recon`` and ``kl``: the VAE's terms on every image of the batch; ``triplet``: the mean hinge triplet
        loss on the posterior means μ of the batch's triplets."""
        terms, mu = self.elbo_terms(batch.x, batch)
        terms["triplet"] = self.triplet_fn(batch.gather(mu), batch.y, indices_tuple=batch.triplets)
        return terms
