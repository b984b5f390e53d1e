"""``raw``: the floor. The embedding is the input pixels themselves (no training).

Every results table gets this row: a learned embedding that does not beat raw pixels has
learned nothing useful for retrieval. Images larger than ``MAX_DIM`` values (photos) are first
average-pooled to the largest grid that fits (3 x 18 x 18 for a colour image), so the floor stays
cheap to evaluate at any size: at 4,096 values its SVM probe on 40,000 Zappos images peaked at
2.8 GB. Digits and MNIST (784 values) are used as they are.
"""

from __future__ import annotations

import math

from dmlbench.methods.base import Method, register_method

MAX_DIM = 1024


def pooled_side(shape: tuple[int, int, int], max_dim: int = MAX_DIM) -> tuple[int, int] | None:
    """The (h, w) grid the pixels are pooled to, or None where they fit as they are."""
    c, h, w = shape
    if c * h * w <= max_dim:
        return None
    f = math.sqrt(max_dim / (c * h * w))
    return max(1, int(h * f)), max(1, int(w * f))


@register_method("raw")
class Raw(Method):
    """The untrained floor: the input pixels, average-pooled where they exceed ``MAX_DIM`` values."""

    paper = "baseline: identity embedding of the input pixels"
    formula = f"no loss (not trained); pixels average-pooled to at most {MAX_DIM} values"
    trainable = False

    def make_encoder(self):
        """A flatten, after an adaptive average pool to :func:`pooled_side` where needed; sets ``embedding_dim``."""
        from torch import nn

        grid = pooled_side(self.input_shape)
        if grid is None:
            self.embedding_dim = math.prod(self.input_shape)
            return nn.Flatten()
        self.embedding_dim = self.input_shape[0] * grid[0] * grid[1]
        return nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Flatten())
