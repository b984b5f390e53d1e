"""scikit-learn's bundled 8x8 digits: the default dataset, needing no files."""

from __future__ import annotations

from pathlib import Path

from dmlbench.data.base import Data, register_dataset, to_tensors
from dmlbench.errors import DMLBenchError


@register_dataset("digits", description="scikit-learn's bundled 8x8 digits (UCI optdigits test set)",
                  size="1,797 (seeded stratified 70/30 split)", classes="10", input_shape="1x8x8",
                  where="bundled with scikit-learn (no files)", needs_files=False)
def load_digits(data_dir: Path | None = None, seed: int = 0, test_fraction: float = 0.3) -> Data:
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    d = sk_load()
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(d.images, d.target, test_size=test_fraction,
                                                  random_state=seed, stratify=d.target)
    except ValueError as e:  # test_fraction outside (0, 1)
        raise DMLBenchError(f"digits: cannot split with test_fraction={test_fraction} ({e})") from None
    # Pixel values are 0..16 in this dataset.
    x_train, y_train = to_tensors(x_tr, y_tr, 16.0)
    x_test, y_test = to_tensors(x_te, y_te, 16.0)
    return Data("digits", x_train, y_train, x_test, y_test, [str(i) for i in range(10)],
                source="sklearn.datasets.load_digits")
