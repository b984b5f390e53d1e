"""The in-memory dataset container, the dataset registry and the data-folder setting."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dmlbench.errors import DMLBenchError
from dmlbench.registry import Registry

DATA_DIR_ENV = "DMLBENCH_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/dmlbench").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: the ``--data-dir`` flag, else $DMLBENCH_DATA_DIR, else ~/.cache/dmlbench."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return DEFAULT_DATA_DIR


@dataclass
class Data:
    """A dataset held in memory: float32 images (N, C, H, W) in [0, 1] and int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    source: str = ""
    split: str = "standard"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.dtype != torch.float32 or y.dtype != torch.int64 or x.ndim != 4 or len(x) != len(y):
                raise TypeError(f"{self.name}: {part} must be float32 (N,C,H,W) and int64 (N,)")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self) -> dict:
        return {
            "name": self.name,
            "train": len(self.x_train),
            "test": len(self.x_test),
            "classes": self.num_classes,
            "train_classes": int(self.y_train.unique().numel()),
            "test_classes": int(self.y_test.unique().numel()),
            "input_shape": list(self.input_shape),
            "class_names": list(self.classes),
            "split": self.split,
            "source": self.source,
        }


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: Callable[..., Data]
    description: str
    size: str
    classes: str
    input_shape: str
    where: str  # where the files are read from, for `bench list datasets`
    needs_files: bool = True


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(name: str, *, description: str, size: str, classes: str, input_shape: str,
                     where: str, needs_files: bool = True):
    def decorator(fn: Callable[..., Data]) -> Callable[..., Data]:
        DATASETS.add(name, DatasetSpec(name, fn, description, size, classes, input_shape, where, needs_files))
        return fn

    return decorator


def to_tensors(x: np.ndarray, y: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8/float images (N,H,W) or (N,C,H,W) -> float32 (N,C,H,W) in [0, 1]; labels -> int64."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    xt.mul_(1.0 / scale)
    return xt, torch.from_numpy(np.asarray(y, dtype=np.int64))


def class_disjoint(data: Data) -> Data:
    """The zero-shot protocol: train on the first half of the classes, test on the other half.

    Both halves use all of their classes' images (train and test files pooled), as in the
    CUB/Cars/SOP protocol of the metric-learning literature.
    """
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    labels = torch.unique(y)
    if len(labels) < 2:
        raise DMLBenchError(f"{data.name}: a class-disjoint split needs at least 2 classes, found {len(labels)}")
    first = labels[: len(labels) // 2]
    in_train = torch.isin(y, first)
    return Data(
        name=data.name,
        x_train=x[in_train].contiguous(),
        y_train=y[in_train].contiguous(),
        x_test=x[~in_train].contiguous(),
        y_test=y[~in_train].contiguous(),
        classes=data.classes,
        source=data.source,
        split="classes",
        meta={**data.meta, "train_classes": first.tolist()},
    )


SPLITS = ("standard", "classes")


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, split: str = "standard",
                 seed: int = 0, **options) -> Data:
    """Load a registered dataset by name, then apply the split ('standard' or 'classes')."""
    spec = DATASETS.get(name)
    if split not in SPLITS:
        raise DMLBenchError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    data = spec.loader(data_dir=resolve_data_dir(data_dir), seed=seed, **options)
    return class_disjoint(data) if split == "classes" else data
