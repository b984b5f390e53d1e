"""CIFAR-10 from the official binary version, or the python version read without arbitrary unpickling."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.data.base import Data, Part, register_dataset, relabel_train_first

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
RECORD = 1 + 3 * 32 * 32


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise DMLBenchError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records; "
            "the file is truncated or corrupt, download it again"
        )
    rec = raw.reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DMLBenchError(f"{path}: label {labels.max()} is outside 0..9; this is not a CIFAR-10 binary file")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


class _SafeUnpickler(pickle.Unpickler):
    """Only the numpy constructors that an ndarray pickle needs; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # Pickle protocol 5 (Python 3's default) stores a contiguous ndarray as _frombuffer(buffer, ...).
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as e:
        raise DMLBenchError(f"{path}: not a CIFAR-10 python batch ({e}); download the file again") from None
    if not isinstance(d, dict):
        raise DMLBenchError(f"{path}: not a CIFAR-10 python batch (no dict inside); download the file again")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DMLBenchError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'; download the file again")
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DMLBenchError(f"{path}: CIFAR-10 batch has unreadable 'data' or 'labels' ({e}); download again") from None
    if data.dtype != np.uint8:
        raise DMLBenchError(f"{path}: CIFAR-10 data must be uint8, got {data.dtype}; download the file again")
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DMLBenchError(f"{path}: data of shape {data.shape} with {len(labels)} labels is not CIFAR-10; download again")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise DMLBenchError(f"{path}: label {bad} is outside 0..9; this is not a CIFAR-10 python batch")
    return data.reshape(-1, 3, 32, 32), labels


def _load_parts(folder: Path, names: list[str], reader, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for n in names:
        p = folder / (n + suffix)
        if not p.is_file():
            raise DMLBenchError(f"cifar10: {p} is missing; the folder must hold {', '.join(x + suffix for x in TRAIN + TEST)}")
        x, y = reader(p)
        xs.append(x)
        ys.append(y)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys).astype(np.int64)


@register_dataset("cifar10", description="CIFAR-10 (Krizhevsky 2009)", size="50,000 / 10,000", classes="10",
                  input_shape="3x32x32", where="<data-dir>/cifar-10-batches-bin/ or cifar-10-batches-py/",
                  defaults={"encoder": "cifar", "epochs": 10, "embedding_dim": 128}, shape=lambda *a: (3, 32, 32))
def load_cifar10(data_dir: Path, seed: int = 0, with_test: bool = True) -> Data:
    """CIFAR-10 from the binary or the Python batches under ``data_dir``, with its standard train/test split."""
    for sub, reader, suffix in (("cifar-10-batches-bin", _read_bin, ".bin"), ("cifar-10-batches-py", _read_py, "")):
        folder = data_dir / sub
        if folder.is_dir():
            x_tr, y_tr = _load_parts(folder, TRAIN, reader, suffix)
            x_te, y_te = _load_parts(folder, TEST, reader, suffix) if with_test else (None, None)
            # Training labels must be 0..K-1: the identity for the full dataset, a renumbering (class
            # names reordered to match) for batches that hold only some of the classes.
            y_tr, y_te, names = relabel_train_first(y_tr, y_te, CLASSES)
            train = Part(x_tr, y_tr)
            test = Part(x_te, y_te) if with_test else None
            return Data("cifar10", train, test, names, source=str(folder))
    raise DMLBenchError(
        f"cifar10: neither {data_dir / 'cifar-10-batches-bin'} nor {data_dir / 'cifar-10-batches-py'} exists; "
        "unpack cifar-10-binary.tar.gz (or cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html "
        "into the data folder (--data-dir or $DMLBENCH_DATA_DIR)"
    )
