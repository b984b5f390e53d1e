"""Batch-wise augmentation of images already on the run's device (no per-sample PIL).

- ``mlrc`` (A Metric Learning Reality Check): training, a random resized crop at the encoder's
  input size with scale 0.16-1 and aspect ratio 3/4-4/3, plus a horizontal flip (p = 0.5);
  evaluation, a resize to 256/224 of the input size, then a centre crop.
- ``flip``: a horizontal flip in training; evaluation as ``none``.
- ``none``: no training augmentation; where the encoder's input size differs from the images',
  the evaluation transform is used for training too.

Crop boxes and flips are drawn on the CPU from the epoch's augmentation generator
(:func:`dmlbench.core.runtime.epoch_generator`), so they are seeded, the same on any device, and
resume exactly; the crops of a whole batch are one ``grid_sample`` call (bilinear). Crops are
taken from the cached images (256 px for the retrieval benchmarks), so a crop is resized by at
most ~1.1x down and aliasing is negligible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "flip", "mlrc")
SCALE = (0.16, 1.0)
RATIO = (3 / 4, 4 / 3)
EVAL_RESIZE = 256 / 224


def crop_boxes(n: int, h: int, w: int, gen: torch.Generator, scale=SCALE, ratio=RATIO, attempts: int = 10
               ) -> torch.Tensor:
    """(n, 4) boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop draws
    them (area fraction uniform in ``scale``, log-uniform aspect ratio, up to ``attempts`` tries,
    then the centred box of the ratio clamped to the image), vectorised over the batch."""
    area = h * w
    target = area * torch.empty(n, attempts).uniform_(*scale, generator=gen)
    log_r = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = log_r.exp()
    cw = (target * aspect).sqrt().round()
    ch = (target / aspect).sqrt().round()
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=gen)
    rows = torch.arange(n)
    bh = ch[rows, first.clamp_min(0)]
    bw = cw[rows, first.clamp_min(0)]
    # Fallback (no attempt fits): the whole image, its ratio clamped to the range, centred.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = h, round(h * ratio[1])
    else:
        fw, fh = w, h
    bad = first < 0
    bh = torch.where(bad, torch.full_like(bh, fh), bh)
    bw = torch.where(bad, torch.full_like(bw, fw), bw)
    top = torch.where(bad, (h - bh) // 2, (u[:, 0] * (h - bh + 1)).floor())
    left = torch.where(bad, (w - bw) // 2, (u[:, 1] * (w - bw + 1)).floor())
    return torch.stack([top, left, bh, bw], dim=1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, out_hw: tuple[int, int], flip: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Each image's box resized to ``out_hw`` (bilinear), mirrored where ``flip``: one grid_sample."""
    n, _, h, w = x.shape
    b = boxes.to(x.device, torch.float32)
    top, left, bh, bw = b.unbind(1)
    sx, sy = bw / w, bh / h
    cx = (left + bw / 2) / w * 2 - 1
    cy = (top + bh / 2) / h * 2 - 1
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta, (n, x.shape[1], *out_hw), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def center_crop(x: torch.Tensor, out_hw: tuple[int, int], resize_ratio: float = EVAL_RESIZE) -> torch.Tensor:
    """Resize the shorter side to ``resize_ratio`` x the output size (antialiased), then a centre crop."""
    h, w = x.shape[-2:]
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return x
    short = round(min(oh, ow) * resize_ratio)
    s = short / min(h, w)
    nh, nw = max(oh, round(h * s)), max(ow, round(w * s))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - oh) // 2, (nw - ow) // 2
    return x[..., top:top + oh, left:left + ow]


def train_transform(x: torch.Tensor, kind: str, out_hw: tuple[int, int], gen: torch.Generator,
                    rows: torch.Tensor | None = None, total: int | None = None) -> torch.Tensor:
    """A training batch augmented by ``kind`` at size ``out_hw``, its crops and flips drawn from ``gen``.
    ``x`` may be the ``rows`` of a batch of ``total`` images (one process's share of it): the draws are
    then made for the whole batch, as one process makes them, and the rows' taken."""
    n, _, h, w = x.shape
    n_all = n if rows is None else int(total)

    def mine(t: torch.Tensor) -> torch.Tensor:
        return t if rows is None else t[rows]

    if kind == "mlrc":
        boxes = mine(crop_boxes(n_all, h, w, gen))
        flip = mine(torch.rand(n_all, generator=gen) < 0.5)
        return crop_resize(x, boxes, out_hw, flip)
    if kind == "flip":
        flip = mine(torch.rand(n_all, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return eval_transform(x, kind, out_hw)


def eval_transform(x: torch.Tensor, kind: str, out_hw: tuple[int, int]) -> torch.Tensor:
    """An evaluation batch at size ``out_hw``: unchanged if already that size, else a centre crop (after a
    resize to 256/224 of it for ``mlrc``)."""
    if tuple(x.shape[-2:]) == tuple(out_hw):
        return x
    return center_crop(x, out_hw, EVAL_RESIZE if kind == "mlrc" else 1.0)
