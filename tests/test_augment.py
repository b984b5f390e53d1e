"""Batch-wise augmentation on the run's device: MLRC's random resized crop + flip, its evaluation
centre crop, determinism per seed and epoch (part of the resumable state), no PIL."""

from __future__ import annotations

import numpy as np
import torch

from dmlbench.core.runtime import epoch_generator
from dmlbench.training.augment import SCALE, center_crop, crop_boxes, eval_transform, train_transform


def _images(n=16, h=40, w=48):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8).float() / 255


def test_mlrc_is_deterministic_per_seed_and_epoch():
    x = _images()
    a = train_transform(x, "mlrc", (32, 32), epoch_generator(3, 1, 1))
    b = train_transform(x, "mlrc", (32, 32), epoch_generator(3, 1, 1))
    c = train_transform(x, "mlrc", (32, 32), epoch_generator(3, 2, 1))
    assert a.shape == (16, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_crop_boxes_follow_random_resized_crop():
    h, w = 100, 120
    boxes = crop_boxes(20_000, h, w, torch.Generator().manual_seed(0))
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    frac = (bh * bw).float() / (h * w)
    # Area fractions within MLRC's scale range (rounding aside); many small and large crops.
    assert frac.min() > SCALE[0] * 0.8 and frac.max() <= 1.0
    assert (frac < 0.3).float().mean() > 0.05 and (frac > 0.8).float().mean() > 0.05
    ratio = bw.float() / bh.float()
    assert ratio.min() > 0.7 and ratio.max() < 1.42


def test_flip_flips_about_half_and_only_horizontally():
    x = _images(n=400, h=8, w=8)
    y = train_transform(x, "flip", (8, 8), torch.Generator().manual_seed(1))
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 150 < int(flipped.sum()) < 250


def test_eval_center_crop_is_resize_256_over_224_then_centre():
    x = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64)
    out = eval_transform(x, "mlrc", (56, 56))
    assert out.shape == (1, 1, 56, 56)
    # 256/224 of 56 is 64: the image itself, centre-cropped to 56 (4 px off each side).
    np.testing.assert_allclose(out[0, 0].numpy(), x[0, 0, 4:60, 4:60].numpy(), atol=1e-3)
    same = center_crop(x, (64, 64), 1.0)
    assert torch.allclose(same, x)


def test_none_only_resizes_when_the_encoder_needs_another_size():
    x = _images(h=32, w=32)
    assert torch.equal(train_transform(x, "none", (32, 32), torch.Generator()), x)
    assert train_transform(x, "none", (24, 24), torch.Generator()).shape[-2:] == (24, 24)
