"""``raw``: the floor. The embedding is the input pixels themselves (no training).

Every results table gets this row: a learned embedding that does not beat raw pixels has
learned nothing useful for retrieval.
"""

from __future__ import annotations

import math

from torch import nn

from dmlbench.methods.base import Method, register_method


@register_method("raw")
class Raw(Method):
    paper = "baseline: identity embedding of the input pixels"
    formula = "no loss (not trained)"
    trainable = False

    def make_encoder(self) -> nn.Module:
        self.embedding_dim = math.prod(self.input_shape)
        return nn.Flatten()
