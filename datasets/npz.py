"""User arrays: ``--dataset npz:FILE`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.data.base import Data, Part, register_dataset, relabel_train_first

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
log = logging.getLogger("dmlbench")


def _shape(data_dir, path: str, options) -> tuple[int, int, int] | None:
    """x_train's sample shape from the .npy header inside the archive, without reading the data."""
    try:
        with zipfile.ZipFile(Path(path).expanduser()) as z, z.open("x_train.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, _, _ = np.lib.format._read_array_header(f, version)
    except Exception:  # noqa: BLE001 - the loader reports a bad file with its own message
        return None
    return _as_chw(shape[1:])


def _as_chw(sample: tuple) -> tuple[int, int, int]:
    if len(sample) == 1:
        return (1, 1, int(sample[0]))
    if len(sample) == 2:
        return (1, int(sample[0]), int(sample[1]))
    return tuple(int(s) for s in sample)


@register_dataset("npz", description="arrays x_train, y_train, x_test, y_test in one file (--dataset npz:FILE)",
                  size="any", classes=">= 2", input_shape="(N,H,W), (N,C,H,W) or (N,D)", where="FILE.npz",
                  defaults={"encoder": "mlp", "epochs": 20}, shape=_shape)
def load_npz(data_dir: Path | None = None, seed: int = 0, with_test: bool = True, path: str = "") -> Data:
    """The arrays of the .npz at ``path`` as a dataset: checked, labels renumbered training classes first, uint8
    images scaled to [0, 1] and float ones taken as they are."""
    if not path:
        raise DMLBenchError("npz: no file given; name it as npz:PATH/TO/FILE.npz")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DMLBenchError(f"npz: {p} does not exist; give a .npz file with arrays {', '.join(NPZ_KEYS)}")
    if not zipfile.is_zipfile(p):
        raise DMLBenchError(f"npz: {p} is not an .npz archive (not a zip file); save the arrays with numpy.savez")
    wanted = NPZ_KEYS if with_test else NPZ_KEYS[:2]
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in wanted if k not in z.files]  # a tune reads no test part: train-only files do
            if missing:
                raise DMLBenchError(f"npz: {p} lacks array(s) {', '.join(missing)}; it needs {', '.join(wanted)}"
                                    + ("" if with_test else " (bench tune reads no test arrays)"))
            arrays = {k: z[k] for k in wanted}
    except DMLBenchError:
        raise
    except ValueError as e:  # an object array needs pickle, which is refused
        raise DMLBenchError(f"npz: {p} holds an array that needs unpickling ({e}); save plain numeric arrays") from None
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt member
        raise DMLBenchError(f"npz: cannot read {p} ({type(e).__name__}: {e}); save it again with numpy.savez") from None
    parts = ("train", "test") if with_test else ("train",)
    for part in parts:
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if len(x) != len(y):
            raise DMLBenchError(f"npz: {p} has {len(x)} x_{part} rows but {len(y)} y_{part} labels; they must match")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DMLBenchError(f"npz: y_{part} in {p} must be a 1-D integer array, got {y.dtype} {y.shape}")
        if x.ndim not in (2, 3, 4) or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise DMLBenchError(f"npz: x_{part} in {p} must be uint8 or float, shaped (N,D), (N,H,W) or (N,C,H,W); "
                                f"got {x.dtype} {x.shape}")
        if 0 in x.shape[1:]:
            raise DMLBenchError(f"npz: x_{part} in {p} has shape {x.shape}: its samples hold no values")
    if with_test and arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DMLBenchError(f"npz: x_train and x_test in {p} have different sample shapes "
                            f"{arrays['x_train'].shape[1:]} and {arrays['x_test'].shape[1:]}")
    # Labels become 0..C-1, training classes first, so every loss and sampler sees contiguous ids.
    values = np.unique(np.concatenate([arrays[f"y_{part}"] for part in parts]))
    if len(np.unique(arrays["y_train"])) < 2:
        raise DMLBenchError(f"npz: y_train in {p} has {len(np.unique(arrays['y_train']))} class; it needs at least 2")
    y_tr = np.searchsorted(values, arrays["y_train"])
    y_te = np.searchsorted(values, arrays["y_test"]) if with_test else None
    y_tr, y_te, names = relabel_train_first(y_tr, y_te, [str(v) for v in values])

    if with_test:
        arrays["x_test"] = _like_train(arrays["x_train"], arrays["x_test"], p)

    def prep(x: np.ndarray) -> np.ndarray:
        x = x.reshape((len(x),) + _as_chw(x.shape[1:]))
        return np.ascontiguousarray(x if x.dtype == np.uint8 else x.astype(np.float32))

    # uint8 images are scaled to [0, 1]; float arrays are taken as they are.
    scale = 1.0 / 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    train = Part(prep(arrays["x_train"]), y_tr.astype(np.int64))
    test = Part(prep(arrays["x_test"]), y_te.astype(np.int64)) if with_test else None
    return Data("npz", train, test, names, source=str(p), scale=scale)


def _like_train(x_train: np.ndarray, x_test: np.ndarray, p: Path) -> np.ndarray:
    """x_test in x_train's kind (uint8 or float), so both parts share one ``scale``.

    uint8 training images take a float x_test only if it holds whole numbers 0..255 (anything
    else would be silently rescaled); float training images take a uint8 x_test as the same
    numbers in float (floats are used as they are, so a warning says the test part is not scaled).
    """
    train_u8, test_u8 = x_train.dtype == np.uint8, x_test.dtype == np.uint8
    if train_u8 == test_u8:
        return x_test  # both uint8, or both float (each becomes float32)
    if train_u8:
        if not (np.all(np.isfinite(x_test)) and np.all(x_test == np.round(x_test))
                and (x_test.size == 0 or (x_test.min() >= 0 and x_test.max() <= 255))):
            raise DMLBenchError(f"npz: x_train in {p} is uint8 but x_test is {x_test.dtype} with values that are not "
                                "whole numbers 0..255; save both as uint8 (0..255) or both as float")
        return x_test.astype(np.uint8)
    log.warning("npz: x_test in %s is uint8 but x_train is %s; x_test is taken as floats 0..255, unscaled, "
                "like x_train's values: save both in the same type", p, x_train.dtype)
    return x_test.astype(np.float32)
