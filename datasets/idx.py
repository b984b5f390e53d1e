"""MNIST and Fashion-MNIST from the four standard IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from dmlbench.data.base import Data, register_dataset, to_tensors
from dmlbench.errors import DMLBenchError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# The published MD5s of the decompressed MNIST files (LeCun, Cortes, Burges).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path, expected_md5: str | None = None) -> np.ndarray:
    """Parse one IDX file (gzip detected by its magic bytes), checking header, length and MD5."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DMLBenchError(f"{path}: corrupt gzip data ({e}); download the file again") from None
    if expected_md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != expected_md5:
            raise DMLBenchError(
                f"{path}: MD5 of the decompressed file is {got}, expected {expected_md5}; "
                "the file is corrupt or not the canonical one, download it again"
            )
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DMLBenchError(
            f"{path}: not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'}); "
            "replace it with the original file"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DMLBenchError(f"{path}: truncated IDX header; download the file again")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DMLBenchError(
            f"{path}: IDX length is {len(raw)} bytes but its header {dims} implies {expected}; "
            "the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder_names: list[str], data_dir: Path, bare: bool) -> dict[str, Path]:
    """Locate the four files in <data_dir>/<name>/, torchvision's <data_dir>/<Name>/raw/, or (bare)
    <data_dir> itself. Only an MD5-checked dataset may take files from a bare folder: MNIST and
    Fashion-MNIST share file names, so an unchecked one could silently read the other."""
    candidates = [data_dir / n for n in folder_names] + ([data_dir] if bare else [])
    for folder in candidates:
        found = {}
        for key, stem in FILES.items():
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == 4:
            return found
    return {}


def _load_idx_dataset(name: str, folder_names: list[str], data_dir: Path, md5: dict | None,
                      classes: list[str]) -> Data:
    files = _find(folder_names, data_dir, bare=md5 is not None)
    if not files:
        where = data_dir / folder_names[0]
        names = ", ".join(f"{s}.gz" for s in FILES.values())
        raise DMLBenchError(
            f"{name}: files not found in {where}; put {names} there (or set --data-dir / "
            f"$DMLBENCH_DATA_DIR), or run `bench download {name}` where torchvision is installed"
        )
    arrays = {}
    for key, path in files.items():
        stem = FILES[key]
        arrays[key] = read_idx(path, md5.get(stem) if md5 else None)
    for part in ("train", "test"):
        n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_img != n_lab:
            raise DMLBenchError(
                f"{files[part + '_images']}: {n_img} images but {files[part + '_labels']} has {n_lab} labels; "
                "the files do not belong together, download them again"
            )
    x_train, y_train = to_tensors(arrays["train_images"], arrays["train_labels"], 255.0)
    x_test, y_test = to_tensors(arrays["test_images"], arrays["test_labels"], 255.0)
    return Data(name, x_train, y_train, x_test, y_test, classes, source=str(files["train_images"].parent))


@register_dataset("mnist", description="MNIST handwritten digits (LeCun et al. 1998)", size="60,000 / 10,000",
                  classes="10", input_shape="1x28x28", where="<data-dir>/mnist/ (IDX files, MD5-checked)")
def load_mnist(data_dir: Path, seed: int = 0, verify: bool = True) -> Data:
    return _load_idx_dataset("mnist", ["mnist", "MNIST/raw"], data_dir, MNIST_MD5 if verify else None,
                             [str(i) for i in range(10)])


@register_dataset("fashion-mnist", description="Fashion-MNIST (Xiao et al. 2017)", size="60,000 / 10,000",
                  classes="10", input_shape="1x28x28", where="<data-dir>/fashion-mnist/ (IDX files)")
def load_fashion_mnist(data_dir: Path, seed: int = 0) -> Data:
    return _load_idx_dataset("fashion-mnist", ["fashion-mnist", "FashionMNIST/raw"], data_dir, None,
                             FASHION_CLASSES)


def download(name: str, data_dir: Path) -> Path:
    """Fetch MNIST / Fashion-MNIST with torchvision into torchvision's layout under data_dir."""
    try:
        import torchvision.datasets as tvd
    except Exception as e:  # torchvision is optional and often fails to import next to a CPU torch
        raise DMLBenchError(
            f"cannot download {name}: torchvision does not import here ({type(e).__name__}); "
            f"put the four IDX files into {data_dir / name} by hand"
        ) from None
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    except Exception as e:
        raise DMLBenchError(f"download of {name} failed ({e}); put the four IDX files into {data_dir / name} by hand") from None
    return data_dir
