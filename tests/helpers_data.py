"""Writers for tiny dataset files in the on-disk formats that dmlbench.data reads (used by test_data.py)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian uint32 dims, the bytes."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
    return header + a.tobytes()


def write_idx(path: Path, array: np.ndarray | bytes, gz: bool) -> Path:
    raw = array if isinstance(array, bytes) else idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw, mtime=0))
    else:
        path.write_bytes(raw)
    return path


def tiny_idx_arrays(n_train: int = 10, n_test: int = 4, h: int = 5, w: int = 4) -> dict[str, np.ndarray]:
    """Small non-square images with a known pixel pattern (values 0..255 all reachable) and labels.

    With the default n_train=10 the training labels (3i mod 10) hold every class once, so a loader
    keeps them as they are; fewer training images leave classes out."""
    def images(n: int, offset: int) -> np.ndarray:
        i, r, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
        return ((offset + 37 * i + 7 * r + c) % 256).astype(np.uint8)

    x_tr = images(n_train, 0)
    x_tr[0, 0, 0] = 255  # a full-intensity pixel -> exactly 1.0
    x_tr[0, 0, 1] = 0
    return {
        "train_images": x_tr,
        "train_labels": (np.arange(n_train) * 3 % 10).astype(np.uint8),
        "test_images": images(n_test, 100),
        "test_labels": (np.arange(n_test) * 7 % 10).astype(np.uint8),
    }


def write_idx_set(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> dict[str, Path]:
    return {key: write_idx(folder / IDX_NAMES[key], arrays[key], gz) for key in IDX_NAMES}


def write_zero_idx_gz(path: Path, shape: tuple[int, ...]) -> Path:
    """A gzipped IDX file of zeros with the given header shape (e.g. MNIST's full 60000x28x28, which
    passes the header check and fails the MD5 check); level 1 keeps writing it fast."""
    header = bytes([0, 0, 0x08, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)
    path = path.with_name(path.name + ".gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + bytes(int(np.prod(shape))), compresslevel=1, mtime=0))
    return path


# --- CIFAR-10 ---------------------------------------------------------------------------------------

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"


def cifar_batch(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """n CIFAR rows (N, 3072) uint8 with a known pattern, and labels 0..9."""
    data = ((np.arange(n)[:, None] * 11 + np.arange(3072)[None, :] + offset) % 256).astype(np.uint8)
    labels = ((np.arange(n) + offset) % 10).astype(np.int64)
    return data, labels


def write_cifar_bin(folder: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        rec = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(rec.tobytes())


def _short_or_binstring(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _pint(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    return b"J" + struct.pack("<i", n)


def py2_cifar_pickle(data: np.ndarray, labels: np.ndarray) -> bytes:
    """A pickle laid out like the official Python 2 cPickle batches (protocol 2, py2 str as BINSTRING)."""
    n = data.shape[0]
    dtype = (b"cnumpy\ndtype\n" + _short_or_binstring(b"u1") + _pint(0) + _pint(1) + b"\x87R"
             + b"(" + _pint(3) + _short_or_binstring(b"|") + b"NNN" + struct.pack("<ci", b"J", -1)
             + struct.pack("<ci", b"J", -1) + _pint(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _pint(0) + b"\x85"
             + _short_or_binstring(b"b") + b"\x87R"
             + b"(" + _pint(1) + _pint(n) + _pint(3072) + b"\x86" + dtype + b"\x89"
             + _short_or_binstring(np.ascontiguousarray(data, dtype=np.uint8).tobytes()) + b"tb")
    label_list = b"](" + b"".join(_pint(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + _short_or_binstring(b"batch_label") + _short_or_binstring(b"training batch")
            + _short_or_binstring(b"labels") + label_list
            + _short_or_binstring(b"data") + array + b"u.")


def write_cifar_py(folder: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]], protocol) -> None:
    """Python-version batches: 'py2' for the official layout, or an int pickle protocol (Python 3)."""
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        if protocol == "py2":
            blob = py2_cifar_pickle(data, labels)
        else:
            blob = pickle.dumps({b"batch_label": b"batch", b"labels": [int(v) for v in labels], b"data": data},
                                protocol=protocol)
        (folder / name).write_bytes(blob)


class SystemCall:
    """Unpickling this object calls os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


# --- image folders ---------------------------------------------------------------------------------

FOLDER_H, FOLDER_W = 5, 6
SPECIAL = (2, 3)  # (row, col) of a white pixel in every image


def folder_gray_level(class_index: int, k: int) -> int:
    """The background grey level of image k of class class_index (distinct per image; class recoverable)."""
    return 40 * class_index + 10 + k


def write_image_folder(root: Path, classes: list[str], per_class: int = 3) -> None:
    """PNG images (RGB, H=5, W=6) with background (v, v, v) and one white pixel at SPECIAL."""
    from PIL import Image

    for ci, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            v = folder_gray_level(ci, k)
            a = np.full((FOLDER_H, FOLDER_W, 3), v, dtype=np.uint8)
            a[SPECIAL] = 255
            Image.fromarray(a, "RGB").save(root / cls / f"img{k}.png")
