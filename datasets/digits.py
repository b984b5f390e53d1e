"""scikit-learn's bundled 8x8 digits: the default dataset, needing no files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.data.base import Data, Part, register_dataset


@register_dataset("digits", description="scikit-learn's bundled 8x8 digits (UCI optdigits test set)",
                  size="1,797 (seeded stratified 70/30 split)", classes="10", input_shape="1x8x8",
                  where="bundled with scikit-learn (no files)", needs_files=False,
                  defaults={"encoder": "mlp", "epochs": 30}, shape=lambda *a: (1, 8, 8))
def load_digits(data_dir: Path | None = None, seed: int = 0, with_test: bool = True, test_fraction: float = 0.3) -> Data:
    """scikit-learn's 8x8 digits, split stratified by class and seeded by ``seed``, ``test_fraction`` for testing."""
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    d = sk_load()
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(d.images, d.target, test_size=test_fraction,
                                                  random_state=seed, stratify=d.target)
    except ValueError as e:  # test_fraction outside (0, 1)
        raise DMLBenchError(f"digits: cannot split with test_fraction={test_fraction} ({e})") from None

    def part(x, y) -> Part:  # pixel values are the integers 0..16: stored as uint8, scaled by 1/16
        return Part(np.ascontiguousarray(x[:, None], dtype=np.uint8), np.asarray(y, dtype=np.int64))

    return Data("digits", part(x_tr, y_tr), part(x_te, y_te) if with_test else None,
                [str(i) for i in range(10)], source="sklearn.datasets.load_digits", scale=1.0 / 16.0)
