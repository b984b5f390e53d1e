"""``vae``: the variational autoencoder; its embedding is the posterior mean μ.

Paper: Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014.

With q(z|x) = N(μ(x), diag σ²(x)), z = μ + σ ⊙ ε and p(z) = N(0, I), the negative ELBO is
    L = L_rec(x, decoder(z)) + KL(q(z|x) || p(z)),   KL = -1/2 Σ_j (1 + log σ_j² - μ_j² - σ_j²)
``recon=l2``: L_rec = ||x - x̂||² (the TVAE paper's pixel-wise L2); ``recon=bce``: Bernoulli NLL.
``reduction=sum``: both terms summed over pixels / latent dims (the true ELBO scale);
``reduction=mean``: both divided by the number of pixels (a per-pixel ELBO). The choice sets how
strongly any extra term (TVAE's triplet loss) weighs against the ELBO.

On a pretrained timm trunk the VAE is refused (see :mod:`dmlbench.blocks.trunks`): its decoder would have
to rebuild the image from an ImageNet classifier's pooled features, and its KL term pulls the
pretrained features towards N(0, I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from dmlbench.blocks.encoders import build_decoder
from dmlbench.core.space import LR
from dmlbench.methods.base import GenerativeMethod, Params, register_method
from dmlbench.methods.losses import gaussian_kl, reconstruction


@dataclass
class VAEParams(Params):
    """VAE options: the reconstruction loss (``l2`` or ``bce``) and how both terms are reduced (``sum``, ``mean``)."""

    recon: Literal["l2", "bce"] = "l2"
    reduction: Literal["sum", "mean"] = "sum"
    weights: dict[str, float] = field(default_factory=lambda: {"recon": 1.0, "kl": 1.0})
    space: ClassVar = dict(LR)


@register_method("vae")
class VAE(GenerativeMethod):
    """The variational autoencoder on plain batches; its embedding is the posterior mean μ."""

    paper = "Kingma & Welling 2014 (auto-encoding variational Bayes)"
    formula = "L_rec(x, x̂) + KL(q(z|x) ‖ N(0, I)); embedding = μ"
    Params = VAEParams
    terms = ("recon", "kl")
    data_parallel = True  # both terms are means over this process's images; the noise is drawn for the batch

    def build(self) -> None:
        """Add the decoder mirroring the encoder, from the latent size to the input shape."""
        self.decoder = build_decoder(self.encoder_choice, self.input_shape, self.embedding_dim)
        self.n_pixels = math.prod(self.input_shape)

    def encoder_out_dim(self) -> int:
        """Twice the embedding size: μ and log σ²."""
        return 2 * self.embedding_dim  # μ and log σ²

    def encode(self, x):
        """(μ, log σ²) of q(z|x): the two halves of the encoder's output."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def embed(self, x):
        """The posterior mean μ."""
        return self.encode(x)[0]

    def elbo_terms(self, x, batch=None):
        """The batch means of the reconstruction loss of one sampled z and of the KL term (per pixel with
        ``reduction=mean``), and μ. With ``batch`` (whose images ``x`` are), the noise is drawn for the
        whole batch and this process's rows of it taken, so that any number of processes draws the
        noise one process draws."""
        import torch

        mu, logvar = self.encode(x)
        rows = batch.size if batch is not None else len(mu)
        noise = torch.randn((rows, mu.shape[1]), dtype=mu.dtype, device=mu.device)
        z = mu + (batch.local(noise) if batch is not None else noise) * (0.5 * logvar).exp()
        x_hat = self.decoder(z)
        scale = 1.0 / self.n_pixels if self.params.reduction == "mean" else 1.0
        terms = {"recon": reconstruction(x, x_hat, self.params.recon).mean() * scale,
                 "kl": gaussian_kl(mu, logvar).mean() * scale}
        return terms, mu

    def loss_terms(self, batch):
        """``recon`` and ``kl``: the two terms of the negative ELBO (:meth:`elbo_terms`) of the batch's images."""
        return self.elbo_terms(batch.x, batch)[0]

    def generative_metrics(self, x):
        """Per-image sums: squared L2 reconstruction error from z = μ, and a 1-sample ELBO (nats)."""
        import torch

        with torch.no_grad():
            mu, logvar = self.encode(x)
            recon_err = reconstruction(x, self.decoder(mu), "l2")
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            elbo = -(reconstruction(x, self.decoder(z), self.params.recon) + gaussian_kl(mu, logvar))
        return {"recon_error": recon_err, "elbo": elbo}

    def reconstruct(self, x):
        """The decoder's images from z = μ, without gradients."""
        import torch

        with torch.no_grad():
            return self.decoder(self.encode(x)[0])
