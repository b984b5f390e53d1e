"""Datasets (``dmlbench.data``): in-memory float32 tensors in [0, 1] with int64 labels.

Each loader is registered by name; importing this package registers the built-in ones.
"""

from dmlbench.data.base import (DATA_DIR_ENV, DATASETS, Data, DatasetSpec, class_disjoint, load_dataset,
                                register_dataset, resolve_data_dir)
from dmlbench.data import cifar, digits, files, idx  # noqa: F401  (registers the built-in datasets)

__all__ = ["DATASETS", "DATA_DIR_ENV", "Data", "DatasetSpec", "class_disjoint", "load_dataset",
           "register_dataset", "resolve_data_dir"]
