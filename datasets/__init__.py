"""Datasets (``dmlbench.data``): uint8 images, in memory or memory-mapped, with int64 labels.

Each loader is registered by name; importing this package registers the built-in ones. Nothing
here imports torch.
"""

from dmlbench.data import cifar, digits, idx, npz, photos, retrieval  # noqa: F401,I001  (registers the datasets)
from dmlbench.data.base import (
    DATA_DIR_ENV,
    DATASETS,
    Data,
    DatasetRef,
    DatasetSpec,
    Part,
    register_dataset,
    resolve_data_dir,
)
from dmlbench.data.load import load_dataset, planned_shape
from dmlbench.data.splits import class_disjoint, fold_assignment, validation_fold

__all__ = ["DATASETS", "DATA_DIR_ENV", "Data", "DatasetRef", "DatasetSpec", "Part", "class_disjoint",
           "fold_assignment", "load_dataset", "planned_shape", "register_dataset", "resolve_data_dir",
           "validation_fold"]
