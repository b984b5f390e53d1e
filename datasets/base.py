"""The dataset container, the dataset registry and the data-folder setting. No torch here.

Images stay in their stored type, uint8 (N, C, H, W), in memory or memory-mapped from the decode
cache; ``scale`` turns stored values into [0, 1] and ``norm`` optionally standardises them. The
conversion to float happens batch by batch on the run's device (:mod:`dmlbench.training.inputs`), so a
dataset is never materialised as float32.

Labels are int64 class ids into ``classes``. The training labels are always 0..K-1, every one
present (:attr:`Data.num_train_classes` is the one definition of "how many classes training
sees"); test labels may include classes training never sees (class-disjoint protocols).
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.registry import Registry

DATA_DIR_ENV = "DMLBENCH_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/dmlbench").expanduser()
FINGERPRINT_FULL_BYTES = 256 * 2**20  # a part up to this size is hashed whole (MNIST: 47 MB)
FINGERPRINT_ROWS = 4096              # else this many evenly spaced images, and the labels in full


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: the ``--data-dir`` flag, else $DMLBENCH_DATA_DIR, else ~/.cache/dmlbench."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return DEFAULT_DATA_DIR


@dataclass(frozen=True)
class DatasetRef:
    """A ``--dataset`` value: a registered name, or ``name:PATH`` for user data."""

    name: str
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        """The reference ``text`` names: split at the first ``:``, both sides stripped."""
        name, _, path = text.partition(":")
        return cls(name.strip(), path.strip())

    def slug(self) -> str:
        """The results folder name: the dataset name, plus the file or folder stem for user data."""
        import re

        text = f"{self.name}-{Path(self.path).stem or Path(self.path).name}" if self.path else self.name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


@dataclass(frozen=True)
class Part:
    """One split of a dataset: images (N, C, H, W) and int64 labels (N,).

    ``rows`` selects rows of ``x`` without copying them (a validation fold of a memory-mapped
    dataset stays a view); read images through :meth:`images`.
    """

    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.dtype not in (np.uint8, np.float32):
            raise TypeError(f"images must be uint8 or float32 (N, C, H, W), got {self.x.dtype} {self.x.shape}")
        n = len(self.x) if self.rows is None else len(self.rows)
        if self.y.ndim != 1 or self.y.dtype != np.int64 or len(self.y) != n:
            raise TypeError(f"labels must be int64 (N,) matching the images, got {self.y.dtype} {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) of one image."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def nbytes(self) -> int:
        """The bytes this part's images take in their stored type (its rows only, for a view)."""
        return len(self) * int(np.prod(self.image_shape)) * self.x.dtype.itemsize

    @property
    def contiguous(self) -> bool:
        """All rows of an in-memory array, in order: torch can share it without a copy."""
        return self.rows is None and not isinstance(self.x, np.memmap)

    def images(self, idx: np.ndarray | slice | None = None) -> np.ndarray:
        """The images at ``idx`` (positions in this part), read from memory or the mapped cache."""
        if idx is None:
            idx = slice(None)
        if self.rows is not None:
            return self.x[self.rows[idx]]
        return self.x[idx]

    def release(self) -> None:
        """Drop a memory-mapped part's pages from this process (``madvise(MADV_DONTNEED)``).

        They stay in the OS page cache, so a later read maps them again without touching the disk;
        only the process's resident set shrinks. Called after each evaluation block and each
        training epoch, so a photo collection's cache is streamed rather than held (a no-op for
        in-memory arrays and where the platform lacks madvise).
        """
        self._advise("MADV_DONTNEED")

    def random_access(self) -> None:
        """Tell the OS that a memory-mapped part is read at random (``MADV_RANDOM``): training
        batches gather scattered images, and the default read-around would map in each one's
        neighbours too (on a 64x64 photo cache, most of the file within a few dozen steps)."""
        self._advise("MADV_RANDOM")

    def _advise(self, name: str) -> None:
        mm = getattr(self.x, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, name):
            return
        try:
            mm.madvise(getattr(mmap, name))
        except (OSError, ValueError):  # a closed or unusual mapping: the advice is only an optimisation
            pass

    def subset(self, idx: np.ndarray) -> Part:
        """The rows at ``idx`` (positions in this part) as a new part, a view of the same images."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self.rows is None else self.rows[idx]
        return Part(self.x, self.y[idx], rows)

    def relabel(self, mapping: np.ndarray) -> Part:
        """The same images with each label ``y`` replaced by ``mapping[y]``."""
        return Part(self.x, mapping[self.y].astype(np.int64), self.rows)


@dataclass(frozen=True)
class Data:
    """A dataset split into a training part and an evaluation part (test, or a validation fold).

    ``query``/``gallery`` (indices into ``test``) are set where the dataset defines them
    (In-Shop); otherwise every test item is a query against all the others.
    """

    name: str
    train: Part
    test: Part | None
    classes: tuple[str, ...]
    source: str = ""
    split: str = "standard"  # standard | classes | validation
    scale: float = 1.0 / 255.0
    norm: tuple[float, float] | None = None
    query: np.ndarray | None = None
    gallery: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        y = self.train.y
        present = np.unique(y)
        if len(present) and not np.array_equal(present, np.arange(len(present))):
            raise ValueError(f"{self.name}: training labels must be 0..K-1 with every class present")
        for part in (self.train, self.test):
            if part is not None and len(part) and (part.y.min() < 0 or part.y.max() >= len(self.classes)):
                raise ValueError(f"{self.name}: labels outside 0..{len(self.classes) - 1}")
        if self.test is not None and self.test.image_shape != self.train.image_shape:
            raise ValueError(f"{self.name}: train and test images differ in shape")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) of the stored images."""
        return self.train.image_shape

    @property
    def num_classes(self) -> int:
        """All classes, test-only ones included (see :attr:`num_train_classes`)."""
        return len(self.classes)

    @functools.cached_property
    def num_train_classes(self) -> int:
        """The classes training sees: its labels are exactly 0..num_train_classes-1."""
        return int(self.train.y.max()) + 1 if len(self.train) else 0

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of what results depend on: the labels, sizes, shapes and class names of both
        parts, query/gallery, and the pixels (every byte up to FINGERPRINT_FULL_BYTES a part, else
        FINGERPRINT_ROWS evenly spaced images and the last). Runs record it; a stored result whose
        data differs is not reused. Cheap enough once a process (MNIST: about 0.1 s)."""
        h = hashlib.sha256(repr((self.name, self.split, self.classes, self.scale, self.norm)).encode())
        for part in (self.train, self.test):
            if part is None:
                h.update(b"-")
                continue
            h.update(repr((len(part), part.image_shape, str(part.x.dtype))).encode())
            h.update(np.ascontiguousarray(part.y).tobytes())
            n = len(part)
            if part.nbytes <= FINGERPRINT_FULL_BYTES:
                idx = np.arange(n)
            else:
                idx = np.unique(np.r_[np.linspace(0, n - 1, FINGERPRINT_ROWS).astype(np.int64), n - 1])
            for s in range(0, len(idx), 4096):
                h.update(np.ascontiguousarray(part.images(idx[s:s + 4096])).tobytes())
        for a in (self.query, self.gallery):
            h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    @property
    def has_query_gallery(self) -> bool:
        """Whether the test part has its own query/gallery split (In-Shop)."""
        return self.query is not None

    def value_range(self) -> tuple[float, float]:
        """The range of the float values the encoder sees (after scale and norm)."""
        lo, hi = 0.0, 1.0
        if self.train.x.dtype == np.float32:
            x = self.train.images()
            lo, hi = float(x.min()) * self.scale, float(x.max()) * self.scale
        if self.norm is not None:
            m, s = self.norm
            lo, hi = (lo - m) / s, (hi - m) / s
        return lo, hi

    def info(self) -> dict:
        """A JSON-ready summary: sizes, class counts and names, shape, split, source, dtype and norm."""
        out = {
            "name": self.name, "train": len(self.train), "test": len(self.test) if self.test is not None else 0,
            "classes": self.num_classes, "train_classes": self.num_train_classes,
            "test_classes": int(len(np.unique(self.test.y))) if self.test is not None else 0,
            "input_shape": list(self.input_shape), "class_names": list(self.classes), "split": self.split,
            "source": self.source, "dtype": str(self.train.x.dtype), "norm": list(self.norm) if self.norm else None,
            "scale": float(self.scale),
        }
        if self.query is not None:
            out.update(queries=int(len(self.query)), gallery=int(len(self.gallery)))
        if self.meta.get("decode"):  # photos: how they were decoded (size, crop or stretch, colour)
            out["decode"] = self.meta["decode"]
        return out

    def without_test(self) -> Data:
        """The same data with no test part (and no query/gallery)."""
        return replace(self, test=None, query=None, gallery=None)


def standardized(data: Data) -> Data:
    """A new Data whose images are standardised with the training mean and std (Hoffer & Ailon's
    global normalisation), computed in chunks so memory-mapped images are never copied whole."""
    part = data.train
    total, sq, n = 0.0, 0.0, 0
    for s in range(0, len(part), 4096):
        chunk = np.asarray(part.images(slice(s, s + 4096)), dtype=np.float64) * data.scale
        total += chunk.sum()
        sq += np.square(chunk).sum()
        n += chunk.size
    mean = total / max(n, 1)
    std = float(np.sqrt(max(sq / max(n, 1) - mean * mean, 0.0))) or 1.0
    return replace(data, norm=(float(mean), std))


def relabel_train_first(y_train: np.ndarray, y_test: np.ndarray | None, names: list[str]
                        ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Renumber classes so that the training classes are 0..K-1 (in their old order) and
    test-only classes follow; returns the new labels and the class names in the new order."""
    train_classes = np.unique(y_train)
    others = np.setdiff1d(np.unique(y_test) if y_test is not None else np.array([], np.int64), train_classes)
    order = np.concatenate([train_classes, others]).astype(np.int64)
    mapping = np.full(max(len(names), int(order.max()) + 1 if len(order) else 0), -1, dtype=np.int64)
    mapping[order] = np.arange(len(order))
    new_names = [names[i] for i in order]
    return mapping[y_train], (mapping[y_test] if y_test is not None else None), new_names


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader, what ``bench list`` says of it, its run defaults and its shape check."""

    name: str
    loader: Callable[..., Data]
    description: str
    size: str
    classes: str
    input_shape: str
    where: str  # where the files go, for `bench list datasets` and error messages
    defaults: dict
    needs_files: bool = True
    # A function (data_dir, path, options) -> (C, H, W) | None that knows the image size without
    # decoding anything, so an encoder that cannot take it is refused before any decoding.
    shape: Callable[..., tuple[int, int, int] | None] | None = None

    def option_fields(self) -> list[tuple[str, type, object]]:
        """The loader's keyword options (``--set data.KEY=VALUE``) as (name, type, default)."""
        import inspect
        import typing

        hints = typing.get_type_hints(self.loader)
        return [(n, hints[n], p.default) for n, p in inspect.signature(self.loader).parameters.items()
                if n not in ("data_dir", "seed", "path", "with_test")]


DATASETS: Registry[DatasetSpec] = Registry("dataset")

DIGIT_DEFAULTS = {"encoder": "convnet", "epochs": 5, "embedding_dim": 20, "augment": "none"}
PHOTO_DEFAULTS = {"encoder": "convnet", "epochs": 20, "embedding_dim": 64, "augment": "mlrc"}


def register_dataset(name: str, *, description: str, size: str, classes: str, input_shape: str, where: str,
                     defaults: dict | None = None, needs_files: bool = True, shape=None):
    """A decorator that registers its loader as dataset ``name`` (run defaults over the digit ones); the loader
    is unchanged."""
    def decorator(fn: Callable[..., Data]) -> Callable[..., Data]:
        DATASETS.add(name, DatasetSpec(name, fn, description, size, classes, input_shape, where,
                                       {**DIGIT_DEFAULTS, **(defaults or {})}, needs_files, shape))
        return fn

    return decorator


def check_split_sizes(data: Data) -> Data:
    """``data`` unchanged, once its training part has 2+ classes and its test part (if any) 2+ classes."""
    if data.num_train_classes < 2:
        raise DMLBenchError(f"{data.name}: the training part has {data.num_train_classes} class; "
                            "metric learning needs at least 2")
    if data.test is not None:
        n_test = len(np.unique(data.test.y))
        if n_test < 2:
            raise DMLBenchError(f"{data.name}: the test part has {len(data.test)} image(s) of {n_test} class(es); "
                                "retrieval and triplet accuracy need at least 2 test classes")
    return data
