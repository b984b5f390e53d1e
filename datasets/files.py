"""User data: an image folder with one sub-folder per class (e.g. Zappos50k), or an .npz file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmlbench.data.base import Data, register_dataset, to_tensors
from dmlbench.errors import DMLBenchError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


@register_dataset("folder", description="an image folder, one sub-folder per class (--dataset folder:PATH)",
                  size="any (seeded stratified split)", classes=">= 2", input_shape="as read, or --set data.resize=S",
                  where="PATH/<class>/<image>")
def load_folder(data_dir: Path | None = None, seed: int = 0, path: str = "", resize: int = 0,
                grayscale: bool = False, test_fraction: float = 0.2) -> Data:
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise DMLBenchError("folder: no path given; use --dataset folder:PATH/TO/IMAGES")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DMLBenchError(f"folder: {root} is not a folder; give a folder with one sub-folder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for d in class_dirs}
    files = {k: v for k, v in files.items() if v}
    if len(files) < 2:
        raise DMLBenchError(f"folder: {root} has {len(files)} class sub-folder(s) with images; it needs at least 2")
    images, labels, shape = [], [], None
    mode = "L" if grayscale else None
    for label, (cls, paths) in enumerate(files.items()):
        for p in paths:
            try:
                with Image.open(p) as im:
                    im = im.convert(mode or ("L" if im.mode in ("L", "1", "I;16", "I") else "RGB"))
                    if resize:
                        im = im.resize((resize, resize), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise DMLBenchError(f"folder: cannot read image {p} ({type(e).__name__}); remove or replace it") from None
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise DMLBenchError(
                    f"folder: {p} has shape {a.shape} but earlier images have {shape}; "
                    "add --set data.resize=SIZE (and data.grayscale=true for mixed colour modes)"
                )
            images.append(a)
            labels.append(label)
    x, y = np.stack(images), np.asarray(labels)
    if np.bincount(y).min() < 2:
        raise DMLBenchError(f"folder: every class needs at least 2 images to split into train and test ({root})")
    try:
        x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed)
    except ValueError as e:  # e.g. fewer test images than classes, or test_fraction outside (0, 1)
        raise DMLBenchError(f"folder: cannot split {root} with test_fraction={test_fraction} ({e}); "
                            "add images or change --set data.test_fraction") from None
    x_train, y_train = to_tensors(x_tr, y_tr, 255.0)
    x_test, y_test = to_tensors(x_te, y_te, 255.0)
    return Data("folder", x_train, y_train, x_test, y_test, list(files), source=str(root))


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@register_dataset("npz", description="arrays x_train, y_train, x_test, y_test in one file (--dataset npz:FILE)",
                  size="any", classes=">= 2", input_shape="(N,H,W), (N,C,H,W) or (N,D)", where="FILE.npz")
def load_npz(data_dir: Path | None = None, seed: int = 0, path: str = "") -> Data:
    if not path:
        raise DMLBenchError("npz: no file given; use --dataset npz:PATH/TO/FILE.npz")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DMLBenchError(f"npz: {p} does not exist; give a .npz file with arrays {', '.join(NPZ_KEYS)}")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DMLBenchError(f"npz: cannot read {p} ({type(e).__name__}: {e}); save it with numpy.savez") from None
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DMLBenchError(f"npz: {p} lacks array(s) {', '.join(missing)}; it needs {', '.join(NPZ_KEYS)}")
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if len(x) != len(y):
            raise DMLBenchError(f"npz: {p} has {len(x)} x_{part} rows but {len(y)} y_{part} labels; they must match")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DMLBenchError(f"npz: y_{part} in {p} must be a 1-D integer array, got {y.dtype} {y.shape}")
    shapes = {arrays["x_train"].shape[1:], arrays["x_test"].shape[1:]}
    if len(shapes) != 1:
        raise DMLBenchError(f"npz: x_train and x_test in {p} have different sample shapes {sorted(shapes)}")
    # Labels become 0..C-1 so that every loss and sampler sees contiguous class ids.
    values, inverse = np.unique(np.concatenate([arrays["y_train"], arrays["y_test"]]), return_inverse=True)
    if len(values) < 2:
        raise DMLBenchError(f"npz: {p} has {len(values)} class; it needs at least 2")
    n_tr = len(arrays["y_train"])

    def prep(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 1, 1, -1) if x.ndim == 2 else x

    # uint8 images are scaled to [0, 1]; float arrays are taken as already normalised.
    scale = 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    x_train, y_train = to_tensors(prep(arrays["x_train"]), inverse[:n_tr], scale)
    x_test, y_test = to_tensors(prep(arrays["x_test"]), inverse[n_tr:], scale)
    return Data("npz", x_train, y_train, x_test, y_test, [str(v) for v in values], source=str(p))
