"""MNIST and Fashion-MNIST from the four standard IDX files (gzipped or not), MD5-checked.

A file is streamed: the header is read first and checked against the sizes the dataset expects,
then exactly the bytes the header announces are read, and one byte more must not exist. A gzip
bomb (a small file inflating to gigabytes) is therefore stopped at the expected length, never
inflated whole.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import file_digest
from dmlbench.data.base import Data, Part, register_dataset, relabel_train_first

log = logging.getLogger("dmlbench")

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EXPECTED = {"train_images": (60000, 28, 28), "train_labels": (60000,),
            "test_images": (10000, 28, 28), "test_labels": (10000,)}

# The published MD5s of the decompressed MNIST files (LeCun, Cortes, Burges).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# The published MD5s of Fashion-MNIST's four .gz files (zalandoresearch/fashion-mnist).
FASHION_GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
MAX_IDX_BYTES = 2 << 30  # no IDX file of a dataset read here is larger; a header claiming more is refused


def _file_md5(path: Path) -> str:
    return file_digest(path, "md5")


def read_idx(path: Path, expected_md5: str | None = None, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (gzip detected by its magic bytes).

    ``expected_md5`` is the MD5 of the decompressed bytes; ``expected_shape`` is checked against
    the header before any image byte is read.
    """
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    h = hashlib.md5()
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08 or not 1 <= magic[3] <= 4:
                raise DMLBenchError(
                    f"{path}: not an IDX file of unsigned bytes (magic number {magic.hex() or 'missing'}); "
                    "replace it with the original file")
            ndim = magic[3]
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DMLBenchError(f"{path}: truncated IDX header; download the file again")
            dims = tuple(int.from_bytes(dims_raw[4 * i: 4 * i + 4], "big") for i in range(ndim))
            if expected_shape is not None and dims != tuple(expected_shape):
                raise DMLBenchError(f"{path}: its header says {list(dims)}, but this dataset's file holds "
                                    f"{list(expected_shape)}; the file is corrupt or a different one, download it again")
            n = int(np.prod(dims))
            if n > MAX_IDX_BYTES:
                raise DMLBenchError(f"{path}: its header claims {n:,} bytes of data, more than any dataset here; "
                                    "the file is corrupt")
            payload = f.read(n)
            if len(payload) != n:
                raise DMLBenchError(f"{path}: IDX data is {len(payload):,} bytes but its header {list(dims)} "
                                    f"implies {n:,}; the file is truncated, download it again")
            if f.read(1):
                raise DMLBenchError(f"{path}: the file holds more data than its header {list(dims)} announces; "
                                    "the file is corrupt, download it again")
    except (OSError, EOFError, zlib.error) as e:
        raise DMLBenchError(f"{path}: corrupt gzip data ({type(e).__name__}: {e}); download the file again") from None
    if expected_md5 is not None:
        h.update(magic + dims_raw + payload)
        got = h.hexdigest()
        if got != expected_md5:
            raise DMLBenchError(f"{path}: MD5 of the decompressed file is {got}, expected {expected_md5}; "
                                "the file is corrupt or not the canonical one, download it again")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _find(folder_names: list[str], data_dir: Path, bare: bool) -> dict[str, Path]:
    """Locate the four files in <data_dir>/<name>/, torchvision's <data_dir>/<Name>/raw/, or (bare)
    <data_dir> itself. Only an MD5-checked dataset may take files from a bare folder: MNIST and
    Fashion-MNIST share file names, so an unchecked one could silently read the other."""
    candidates = [data_dir / n for n in folder_names] + ([data_dir] if bare else [])
    for folder in candidates:
        found = {}
        for key, stem in FILES.items():
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == 4 or (found and {"train_images", "train_labels"} <= set(found)):
            return found
    return {}


def _load_idx_dataset(name: str, folder_names: list[str], data_dir: Path, classes: list[str], *, with_test: bool,
                      md5: dict | None, gz_md5: dict | None, expected: bool) -> Data:
    files = _find(folder_names, data_dir, bare=bool(md5 or gz_md5))
    needed = [k for k in FILES if with_test or k.startswith("train")]
    missing = [FILES[k] for k in needed if k not in files]
    if missing:
        where = next((p.parent for p in files.values()), data_dir / folder_names[0])
        raise DMLBenchError(
            f"{name}: {', '.join(m + '.gz' for m in missing)} not found in {where}; put the four IDX files there "
            f"(or point data_dir / $DMLBENCH_DATA_DIR at their parent), or run `bench download {name}` "
            "where torchvision is installed")
    arrays = {}
    for key in needed:
        path, stem = files[key], FILES[key]
        if gz_md5 is not None:
            if path.suffix == ".gz":
                got = _file_md5(path)
                if got != gz_md5[stem]:
                    raise DMLBenchError(f"{path}: MD5 is {got}, expected {gz_md5[stem]}; the file is corrupt or "
                                        "not the canonical one, download it again")
            else:
                log.warning("%s: only the .gz files' MD5s are published; the uncompressed file is not verified", path)
        arrays[key] = read_idx(path, md5.get(stem) if md5 else None, EXPECTED[key] if expected else None)
    labels = {}
    for part in ("train", "test") if with_test else ("train",):
        x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(x) != len(y):
            raise DMLBenchError(f"{files[part + '_images']}: {len(x)} images but {files[part + '_labels']} has "
                                f"{len(y)} labels; the files do not belong together, download them again")
        if len(y) and y.max() >= len(classes):
            raise DMLBenchError(f"{files[part + '_labels']}: label {int(y.max())} is outside 0..{len(classes) - 1}")
        labels[part] = y.astype(np.int64)
    # Training labels must be 0..K-1: the identity for the full datasets, a renumbering (with the
    # class names reordered to match) for files that hold only some of the classes.
    y_train, y_test, names = relabel_train_first(labels["train"], labels.get("test"), list(classes))
    train = Part(arrays["train_images"][:, None], y_train)
    test = Part(arrays["test_images"][:, None], y_test) if with_test else None
    return Data(name, train, test, names, source=str(files["train_images"].parent))


@register_dataset("mnist", description="MNIST handwritten digits (LeCun et al. 1998)", size="60,000 / 10,000",
                  classes="10", input_shape="1x28x28", where="<data-dir>/mnist/ (the four IDX files, .gz or not; MD5-checked)",
                  shape=lambda *a: (1, 28, 28))
def load_mnist(data_dir: Path, seed: int = 0, with_test: bool = True, verify: bool = True) -> Data:
    """MNIST from its four IDX files, MD5- and size-checked unless ``verify`` is false."""
    return _load_idx_dataset("mnist", ["mnist", "MNIST/raw"], data_dir, [str(i) for i in range(10)],
                             with_test=with_test, md5=MNIST_MD5 if verify else None, gz_md5=None, expected=verify)


@register_dataset("fashion-mnist", description="Fashion-MNIST (Xiao et al. 2017)", size="60,000 / 10,000",
                  classes="10", input_shape="1x28x28",
                  where="<data-dir>/fashion-mnist/ (the four IDX .gz files; MD5-checked)", shape=lambda *a: (1, 28, 28))
def load_fashion_mnist(data_dir: Path, seed: int = 0, with_test: bool = True, verify: bool = True) -> Data:
    """Fashion-MNIST from its four IDX files, the .gz ones MD5-checked and sizes checked unless ``verify`` is false."""
    return _load_idx_dataset("fashion-mnist", ["fashion-mnist", "FashionMNIST/raw"], data_dir, FASHION_CLASSES,
                             with_test=with_test, md5=None, gz_md5=FASHION_GZ_MD5 if verify else None, expected=verify)


def download(name: str, data_dir: Path) -> Path:
    """Fetch MNIST / Fashion-MNIST with torchvision into torchvision's layout under data_dir."""
    if name not in ("mnist", "fashion-mnist"):
        raise DMLBenchError(f"cannot download {name!r}; bench download knows mnist and fashion-mnist")
    try:
        import torchvision.datasets as tvd
    except Exception as e:  # torchvision is optional and often fails to import next to a CPU torch
        raise DMLBenchError(
            f"cannot download {name}: torchvision does not import here ({type(e).__name__}); "
            f"put the four IDX files into {data_dir / name} by hand") from None
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    except Exception as e:
        raise DMLBenchError(f"download of {name} failed ({e}); put the four IDX files into {data_dir / name} by hand") from None
    return data_dir
