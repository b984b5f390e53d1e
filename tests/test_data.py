"""Dataset loaders (dmlbench.data): formats, values, splits, user-facing errors and the package mapping.

Datasets hold their images in the stored type (uint8, or float32 for float npz arrays) as (N, C, H, W)
numpy arrays, read through ``part.images(idx)``; ``data.scale`` maps stored values to [0, 1]. The
pixel checks below therefore compare stored values exactly and check ``scale`` separately.

Every file the tests read is written into tmp_path; only the real-MNIST test reads shared data (through
the ``mnist`` fixture, i.e. $DMLBENCH_DATA_DIR). Image-folder decoding, Zappos50K and the decode cache
are covered in depth by test_images.py; here the folder loader is checked for exact pixel values and
its one-line CLI errors.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers_data import (
    CIFAR_TEST,
    CIFAR_TRAIN,
    FOLDER_H,
    FOLDER_W,
    IDX_NAMES,
    SPECIAL,
    SystemCall,
    cifar_batch,
    folder_gray_level,
    idx_bytes,
    tiny_idx_arrays,
    write_cifar_bin,
    write_cifar_py,
    write_idx,
    write_idx_set,
    write_image_folder,
    write_zero_idx_gz,
)
from sklearn.datasets import load_digits as sk_load_digits
from sklearn.model_selection import train_test_split

from dmlbench.core.errors import DMLBenchError
from dmlbench.data import DATASETS, Data, load_dataset
from dmlbench.data.base import standardized
from dmlbench.data.cache import CACHE_DIR_ENV
from dmlbench.running.config import RunConfig
from dmlbench.running.rundata import load_data

REPO = Path(__file__).resolve().parents[1]
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NO_VERIFY = {"verify": False}


@pytest.fixture(autouse=True)
def _own_cache_dir(monkeypatch):
    """The folder loader's decode cache goes under the data_dir each test passes (its tmp_path)."""
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)


def assert_images(data: Data, part, expected_uint8: np.ndarray) -> None:
    """The part's images are the uint8 source itself (N, C, H, W), and data.scale maps them to [0, 1]."""
    x = part.images()
    assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and part.x.dtype == np.uint8
    assert x.shape == expected_uint8.shape
    assert np.array_equal(x, expected_uint8)
    assert data.scale == 1.0 / 255.0 and data.norm is None
    assert data.value_range() == (0.0, 1.0)
    f = x.astype(np.float32) * np.float32(data.scale)
    assert float(f.min()) >= 0.0 and float(f.max()) <= 1.0
    assert np.array_equal(np.round(f * 255).astype(np.uint8), expected_uint8)


# --- digits -----------------------------------------------------------------------------------------------

def test_digits_sizes_types_and_metadata(digits):
    assert (len(digits.train), len(digits.test)) == (1257, 540)
    assert len(digits.train) + len(digits.test) == 1797
    assert digits.name == "digits" and digits.split == "standard"
    assert digits.classes == tuple(str(i) for i in range(10))
    assert digits.num_classes == 10 and digits.num_train_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert digits.train.x.shape == (1257, 1, 8, 8) and digits.test.x.shape == (540, 1, 8, 8)
    # Stored as the raw integers 0..16 in uint8; scale 1/16 maps them to [0, 1].
    assert digits.scale == 1.0 / 16.0 and digits.norm is None
    for part in (digits.train, digits.test):
        x, y = part.images(), part.y
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert int(x.min()) == 0 and int(x.max()) == 16
        assert float(x.max()) * digits.scale == 1.0
        assert set(np.unique(y).tolist()) == set(range(10))
    assert digits.value_range() == (0.0, 1.0)
    info = digits.info()
    assert info["name"] == "digits" and info["classes"] == 10 and info["input_shape"] == [1, 8, 8]
    assert (info["train"], info["test"], info["split"]) == (1257, 540, "standard")
    assert (info["train_classes"], info["test_classes"], info["dtype"], info["norm"]) == (10, 10, "uint8", None)
    # All 1797 images are used once: per-class counts and the pixel total match scikit-learn's copy.
    sk = sk_load_digits()
    y_all = np.concatenate([digits.train.y, digits.test.y])
    assert np.bincount(y_all, minlength=10).tolist() == np.bincount(sk.target).tolist()
    total = int(digits.train.images().sum(dtype=np.int64) + digits.test.images().sum(dtype=np.int64))
    assert total == int(sk.images.sum())
    # Exactly scikit-learn's seeded stratified split, pixel for pixel.
    x_tr, x_te, y_tr, y_te = train_test_split(sk.images, sk.target, test_size=0.3, random_state=0, stratify=sk.target)
    assert np.array_equal(digits.train.images()[:, 0], x_tr) and np.array_equal(digits.train.y, y_tr)
    assert np.array_equal(digits.test.images()[:, 0], x_te) and np.array_equal(digits.test.y, y_te)


def test_digits_split_is_stratified_and_seeded(digits):
    counts = np.bincount(sk_load_digits().target)
    test_counts = np.bincount(digits.test.y, minlength=10)
    assert np.all(np.abs(test_counts - 0.3 * counts) <= 1), test_counts
    again = load_dataset("digits", seed=0)
    assert np.array_equal(again.train.images(), digits.train.images()) and np.array_equal(again.train.y, digits.train.y)
    assert np.array_equal(again.test.images(), digits.test.images()) and np.array_equal(again.test.y, digits.test.y)
    other = load_dataset("digits", seed=1)
    assert len(other.train) == 1257
    assert not np.array_equal(other.train.y, digits.train.y)
    assert not np.array_equal(other.test.images(), digits.test.images())
    # test_fraction is a loader option.
    half = load_dataset("digits", options={"test_fraction": 0.5})
    assert len(half.test) == 899 and len(half.train) == 898


def test_digits_without_test_and_standardized(digits):
    no_test = load_dataset("digits", with_test=False)
    assert no_test.test is None and np.array_equal(no_test.train.images(), digits.train.images())
    assert no_test.info()["test"] == 0
    std = load_dataset("digits", normalize="standard")
    x = digits.train.images().astype(np.float64) * digits.scale
    mean, sd = std.norm
    assert mean == pytest.approx(float(x.mean()), rel=1e-9) and sd == pytest.approx(float(x.std()), rel=1e-9)
    assert std.train.x.dtype == np.uint8 and np.array_equal(std.train.images(), digits.train.images())
    lo, hi = std.value_range()
    assert lo == pytest.approx(-mean / sd) and hi == pytest.approx((1 - mean) / sd)
    with pytest.raises(DMLBenchError, match="normalize='zscore' is not one of: unit, standard"):
        load_dataset("digits", normalize="zscore")


def test_loader_options_are_type_checked():
    with pytest.raises(DMLBenchError, match="unknown option data.resize"):
        load_dataset("digits", options={"resize": 8})
    with pytest.raises(DMLBenchError, match="data.test_fraction"):
        load_dataset("digits", options={"test_fraction": "a lot"})
    with pytest.raises(DMLBenchError, match="test_fraction=1.5"):
        load_dataset("digits", options={"test_fraction": 1.5})


# --- MNIST / Fashion-MNIST from tiny IDX files ------------------------------------------------------------

IDX_LAYOUTS = [
    ("mnist", "mnist"),
    ("mnist", "MNIST/raw"),
    ("fashion-mnist", "fashion-mnist"),
    ("fashion-mnist", "FashionMNIST/raw"),
]


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("name,sub", IDX_LAYOUTS, ids=[f"{n}:{s}" for n, s in IDX_LAYOUTS])
def test_idx_loaders_read_tiny_files(tmp_path, name, sub, gz):
    arrays = tiny_idx_arrays()
    paths = write_idx_set(tmp_path / sub, arrays, gz)
    assert all(p.name.endswith(".gz") == gz for p in paths.values())
    # Both datasets are verified by default (MD5 and the official sizes); tiny files need verify=false.
    data = load_dataset(name, data_dir=tmp_path, options=NO_VERIFY)
    assert data.name == name
    assert data.input_shape == (1, 5, 4)
    assert_images(data, data.train, arrays["train_images"][:, None])
    assert_images(data, data.test, arrays["test_images"][:, None])
    assert int(data.train.x[0, 0, 0, 0]) * data.scale == 1.0 and int(data.train.x[0, 0, 0, 1]) == 0
    assert int(data.train.x[1, 0, 2, 3]) == 37 + 14 + 3
    assert data.train.y.dtype == np.int64 and data.test.y.dtype == np.int64
    assert data.train.y.tolist() == arrays["train_labels"].tolist()
    assert data.test.y.tolist() == arrays["test_labels"].tolist()
    assert Path(data.source) == tmp_path / sub
    if name == "fashion-mnist":
        assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and len(data.classes) == 10
    else:
        assert data.classes == tuple(str(i) for i in range(10))


def test_idx_mixed_gzip_and_plain_files(tmp_path):
    arrays = tiny_idx_arrays()
    for i, key in enumerate(IDX_NAMES):
        write_idx(tmp_path / "fashion-mnist" / IDX_NAMES[key], arrays[key], gz=bool(i % 2))
    data = load_dataset("fashion-mnist", data_dir=tmp_path, options=NO_VERIFY)
    assert data.test.y.tolist() == arrays["test_labels"].tolist()
    assert_images(data, data.train, arrays["train_images"][:, None])


def test_idx_files_with_some_classes_are_renumbered(tmp_path):
    """Training labels must be 0..K-1 (Data's invariant): files holding only some classes are renumbered,
    training classes first in their order, test-only classes after, and the class names follow."""
    arrays = tiny_idx_arrays(n_train=6)  # training labels 0, 3, 6, 9, 2, 5; test labels 0, 7, 4, 1
    write_idx_set(tmp_path / "fashion-mnist", arrays, gz=True)
    data = load_dataset("fashion-mnist", data_dir=tmp_path, options=NO_VERIFY)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert data.classes == tuple(names[i] for i in (0, 2, 3, 5, 6, 9, 1, 4, 7))  # Bag (8) is in neither part
    assert data.num_train_classes == 6
    assert data.train.y.tolist() == [0, 2, 4, 5, 1, 3] and data.test.y.tolist() == [0, 8, 7, 6]
    for part, key in ((data.train, "train_labels"), (data.test, "test_labels")):
        assert [data.classes[i] for i in part.y] == [names[v] for v in arrays[key]]
    assert_images(data, data.train, arrays["train_images"][:, None])


def test_idx_without_test_files(tmp_path):
    """with_test=False never needs (or reads) the t10k files; with the test part they are required."""
    arrays = tiny_idx_arrays()
    paths = write_idx_set(tmp_path / "mnist", arrays, gz=True)
    paths["test_images"].unlink()
    paths["test_labels"].unlink()
    data = load_dataset("mnist", data_dir=tmp_path, options=NO_VERIFY, with_test=False)
    assert data.test is None and data.train.y.tolist() == arrays["train_labels"].tolist()
    with pytest.raises(DMLBenchError, match="t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz not found"):
        load_dataset("mnist", data_dir=tmp_path, options=NO_VERIFY)


def test_mnist_verify_option_through_runner_load_data(tmp_path):
    """--set data.verify=false reaches load_mnist as a bool through rundata.load_data."""
    arrays = tiny_idx_arrays()
    write_idx_set(tmp_path / "mnist", arrays, gz=True)
    cfg = RunConfig(dataset="mnist", data_dir=str(tmp_path), data_options={"verify": "false"})
    data = load_data(cfg)
    assert data.train.y.tolist() == arrays["train_labels"].tolist()
    # Verified (the default): the tiny files' headers are refused before their bytes are read.
    with pytest.raises(DMLBenchError, match=r"header says \[10, 5, 4\].*\[60000, 28, 28\]"):
        load_data(RunConfig(dataset="mnist", data_dir=str(tmp_path)))
    with pytest.raises(DMLBenchError, match="data.verify"):
        load_data(RunConfig(dataset="mnist", data_dir=str(tmp_path), data_options={"verify": "maybe"}))


def test_fashion_mnist_verifies_the_gz_md5_by_default(tmp_path, caplog):
    """New: Fashion-MNIST checks the published MD5s of its .gz files (uncompressed files: the sizes)."""
    arrays = tiny_idx_arrays()
    paths = write_idx_set(tmp_path / "fashion-mnist", arrays, gz=True)
    with pytest.raises(DMLBenchError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert str(paths["train_images"]) in msg and "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in msg and "MD5" in msg
    plain = write_idx_set(tmp_path / "plain" / "fashion-mnist", arrays, gz=False)
    caplog.set_level(logging.WARNING, logger="dmlbench")
    with pytest.raises(DMLBenchError, match=r"header says \[10, 5, 4\]"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "plain")
    assert f"{plain['train_images']}: only the .gz files' MD5s are published" in caplog.text


# --- the real MNIST -----------------------------------------------------------------------------------------

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.mnist
def test_real_mnist(mnist):
    assert mnist.name == "mnist"
    assert mnist.train.x.shape == (60000, 1, 28, 28)
    assert mnist.test.x.shape == (10000, 1, 28, 28)
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.train.y.dtype == np.int64 and mnist.test.y.dtype == np.int64
    assert np.bincount(mnist.train.y, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.test.y, minlength=10).tolist() == TEST_COUNTS
    x = mnist.train.images()
    assert int(x.min()) == 0 and int(x.max()) == 255 and mnist.scale == 1.0 / 255.0
    assert float(x.mean(dtype=np.float64)) * mnist.scale == pytest.approx(0.1307, abs=5e-4)
    assert float(mnist.test.images().mean(dtype=np.float64)) * mnist.scale == pytest.approx(0.1325, abs=5e-4)
    # Hoffer & Ailon's global normalisation from the training images, computed without a float copy.
    std = standardized(mnist)
    assert std.norm == pytest.approx((0.1307, 0.3081), abs=5e-4)
    assert std.train.x is mnist.train.x


@pytest.mark.mnist
def test_real_mnist_stays_uint8(mnist):
    """The 47 MB of training images are held once, as uint8: never converted to a float32 copy."""
    for part, n in ((mnist.train, 60000), (mnist.test, 10000)):
        assert part.x.dtype == np.uint8 and part.images().dtype == np.uint8
        assert part.x.nbytes == n * 28 * 28  # one byte a pixel
        assert part.rows is None and part.contiguous and part.x.flags.c_contiguous
        assert not part.x.flags.owndata  # a view of the decompressed file bytes, no copy
    assert mnist.info()["dtype"] == "uint8"


# --- CIFAR-10 ------------------------------------------------------------------------------------------------

def _cifar_batches(per_batch: int = 2, step: int = 2) -> dict:
    """With the defaults the training batches hold labels 0..9 (two per batch); step=13 leaves 5 and 8 out."""
    batches = {name: cifar_batch(per_batch, offset=step * i) for i, name in enumerate(CIFAR_TRAIN)}
    batches[CIFAR_TEST] = cifar_batch(3, offset=200)
    return batches


def _check_cifar(data, batches) -> None:
    x_tr = np.concatenate([batches[n][0] for n in CIFAR_TRAIN]).reshape(-1, 3, 32, 32)
    y_tr = np.concatenate([batches[n][1] for n in CIFAR_TRAIN])
    x_te, y_te = batches[CIFAR_TEST]
    assert data.name == "cifar10" and data.classes == CIFAR_CLASSES
    assert data.input_shape == (3, 32, 32)
    assert data.train.x.shape == (10, 3, 32, 32) and data.test.x.shape == (3, 3, 32, 32)
    assert_images(data, data.train, x_tr)
    assert_images(data, data.test, x_te.reshape(-1, 3, 32, 32))
    # Channel-major records: byte 1 + c*1024 + h*32 + w of a record is pixel (c, h, w).
    row = batches[CIFAR_TRAIN[0]][0][1]
    for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 31)):
        assert int(data.train.images()[1, c, h, w]) == int(row[c * 1024 + h * 32 + w])
    assert data.train.y.dtype == np.int64 and data.test.y.dtype == np.int64
    assert data.train.y.tolist() == y_tr.tolist() and data.test.y.tolist() == y_te.tolist()


def test_cifar10_binary(tmp_path):
    batches = _cifar_batches()
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", batches)
    data = load_dataset("cifar10", data_dir=tmp_path)
    _check_cifar(data, batches)
    assert Path(data.source) == tmp_path / "cifar-10-batches-bin"
    assert load_dataset("cifar10", data_dir=tmp_path, with_test=False).test is None


def test_cifar10_batches_with_some_classes_are_renumbered(tmp_path):
    batches = _cifar_batches(step=13)  # training labels 0, 1, 3, 4, 6, 7, 9, 0, 2, 3: no 5 (dog) or 8 (ship)
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", batches)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.classes == tuple(CIFAR_CLASSES[i] for i in (0, 1, 2, 3, 4, 6, 7, 9))
    assert data.num_train_classes == 8
    y_tr = np.concatenate([batches[n][1] for n in CIFAR_TRAIN])
    assert [data.classes[i] for i in data.train.y] == [CIFAR_CLASSES[v] for v in y_tr]
    assert [data.classes[i] for i in data.test.y] == [CIFAR_CLASSES[v] for v in batches[CIFAR_TEST][1]]
    x_tr = np.concatenate([batches[n][0] for n in CIFAR_TRAIN]).reshape(-1, 3, 32, 32)
    assert_images(data, data.train, x_tr)


@pytest.mark.parametrize("protocol", ["py2", 4, 5], ids=["official-py2-layout", "protocol4", "protocol5-default"])
def test_cifar10_python(tmp_path, protocol):
    batches = _cifar_batches()
    write_cifar_py(tmp_path / "cifar-10-batches-py", batches, protocol)
    data = load_dataset("cifar10", data_dir=tmp_path)
    _check_cifar(data, batches)
    assert Path(data.source) == tmp_path / "cifar-10-batches-py"


# --- image folders ----------------------------------------------------------------------------------------

def _check_folder_values(data, channels: int) -> None:
    assert data.scale == 1.0 / 255.0
    for part in (data.train, data.test):
        x, y = part.images(), part.y
        assert x.dtype == np.uint8 and y.dtype == np.int64
        levels = x[:, 0, 0, 0].astype(np.int64)
        # The background level identifies the image, and through it the class.
        assert ((levels - 10) // 40).tolist() == y.tolist()
        for c in range(channels):
            assert np.array_equal(x[:, c, 0, 0].astype(np.int64), levels)
        if x.shape[2] == FOLDER_H:
            assert np.all(x[:, :, SPECIAL[0], SPECIAL[1]] == 255)


def _folder(tmp_path: Path, root: Path, **options) -> Data:
    return load_dataset(f"folder:{root}", data_dir=tmp_path, options=options)


def test_folder_loader(tmp_path):
    write_image_folder(tmp_path / "imgs", ["cat", "dog"], per_class=5)
    (tmp_path / "imgs" / ".hidden").mkdir()
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image")
    data = _folder(tmp_path, tmp_path / "imgs")
    assert data.name == "folder" and data.classes == ("cat", "dog")
    assert (len(data.train), len(data.test)) == (8, 2)
    assert data.input_shape == (3, FOLDER_H, FOLDER_W)
    assert data.train.images().shape == (8, 3, FOLDER_H, FOLDER_W)
    assert data.train.y.dtype == np.int64
    assert sorted(data.test.y.tolist()) == [0, 1]  # stratified
    _check_folder_values(data, 3)
    levels = sorted(np.concatenate([data.train.images(), data.test.images()])[:, 0, 0, 0].tolist())
    assert levels == sorted(folder_gray_level(c, k) for c in range(2) for k in range(5))
    # Seeded: the same seed gives the same split, another seed another one.
    again = _folder(tmp_path, tmp_path / "imgs")
    assert np.array_equal(again.test.images(), data.test.images())
    other = load_dataset(f"folder:{tmp_path / 'imgs'}", data_dir=tmp_path, seed=3)
    assert sorted(other.test.images()[:, 0, 0, 0].tolist()) != sorted(data.test.images()[:, 0, 0, 0].tolist())


def test_folder_resize_and_grayscale(tmp_path):
    write_image_folder(tmp_path / "imgs", ["a", "b", "c"], per_class=4)
    gray = _folder(tmp_path, tmp_path / "imgs", grayscale=True)
    assert gray.input_shape == (1, FOLDER_H, FOLDER_W)
    assert gray.classes == ("a", "b", "c")
    _check_folder_values(gray, 1)
    small = _folder(tmp_path, tmp_path / "imgs", resize=4)  # the default resize_mode crop: 4x4
    assert small.input_shape == (3, 4, 4)
    _check_folder_values(small, 3)
    stretched = _folder(tmp_path, tmp_path / "imgs", resize=4, resize_mode="stretch")
    assert stretched.input_shape == (3, 4, 4)
    _check_folder_values(stretched, 3)
    both = _folder(tmp_path, tmp_path / "imgs", resize=4, grayscale=True)
    assert both.input_shape == (1, 4, 4)
    assert len(both.train) + len(both.test) == 12


def test_folder_scans_below_the_class_folder(tmp_path):
    """New behaviour: images are found recursively; the class is the first folder level (label_depth=1)."""
    write_image_folder(tmp_path / "imgs" / "a" / "deeper", ["x"], per_class=3)  # imgs/a/deeper/x/img*.png
    write_image_folder(tmp_path / "imgs", ["b"], per_class=3)  # imgs/b/img*.png
    data = _folder(tmp_path, tmp_path / "imgs", test_fraction=0.5)
    assert data.classes == ("a", "b") and len(data.train) + len(data.test) == 6
    for part in (data.train, data.test):  # the first writer's images are all class 0's levels (10, 11, 12)
        assert ((part.images()[:, 0, 0, 0].astype(np.int64) - 10) // 40).tolist() == [0] * len(part)
        assert sorted(set(part.y.tolist())) == [0, 1]


# --- npz ------------------------------------------------------------------------------------------------------

def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_loader_uint8_images_and_label_remap(tmp_path):
    rng = np.random.default_rng(0)
    x_tr = rng.integers(0, 256, size=(6, 3, 4), dtype=np.uint8)
    x_te = rng.integers(0, 256, size=(4, 3, 4), dtype=np.uint8)
    x_tr[0, 0, 0] = 255
    p = _write_npz(tmp_path / "d.npz", x_train=x_tr, y_train=np.array([7, 3, 7, 3, 9, 9]),
                   x_test=x_te, y_test=np.array([3, 7, 9, 9]))
    data = load_dataset(f"npz:{p}")
    assert data.name == "npz" and data.classes == ("3", "7", "9")
    assert data.input_shape == (1, 3, 4)
    assert_images(data, data.train, x_tr[:, None])
    assert_images(data, data.test, x_te[:, None])
    assert int(data.train.x[0, 0, 0, 0]) * data.scale == 1.0
    assert data.train.y.dtype == np.int64 and data.test.y.dtype == np.int64
    assert data.train.y.tolist() == [1, 0, 1, 0, 2, 2] and data.test.y.tolist() == [0, 1, 2, 2]
    assert Path(data.source) == p


def test_npz_loader_float_vectors(tmp_path):
    x_tr = np.linspace(0, 1, 4 * 5, dtype=np.float32).reshape(4, 5)
    x_te = np.full((2, 5), 0.25, dtype=np.float32)
    p = _write_npz(tmp_path / "v.npz", x_train=x_tr, y_train=np.array([0, 1, 0, 1]), x_test=x_te,
                   y_test=np.array([1, 0]))
    data = load_dataset(f"npz:{p}")
    assert data.input_shape == (1, 1, 5)
    assert data.train.x.dtype == np.float32 and data.test.x.dtype == np.float32
    assert data.scale == 1.0  # floats are taken as they are
    assert np.array_equal(data.train.images()[:, 0, 0], x_tr)
    assert np.all(data.test.images() == 0.25)
    assert data.test.y.tolist() == [1, 0]
    assert data.value_range() == (0.0, 1.0)


def test_npz_test_only_classes_come_after_the_training_classes(tmp_path):
    """New behaviour: training labels are always 0..K-1; a class only in y_test gets the next id."""
    p = _write_npz(tmp_path / "t.npz", x_train=np.zeros((4, 2, 2), np.uint8), y_train=np.array([50, 5, 50, 5]),
                   x_test=np.zeros((3, 2, 2), np.uint8), y_test=np.array([7, 5, 50]))
    data = load_dataset(f"npz:{p}")
    assert data.classes == ("5", "50", "7")
    assert data.train.y.tolist() == [1, 0, 1, 0] and data.test.y.tolist() == [2, 0, 1]
    assert data.num_train_classes == 2 and data.num_classes == 3


def test_npz_test_dtype_follows_the_training_dtype(tmp_path, caplog):
    y = dict(y_train=np.array([0, 1, 0, 1]), y_test=np.array([1, 0]))
    x_u8 = np.arange(4 * 6, dtype=np.uint8).reshape(4, 2, 3) * 10
    # uint8 train, float test holding whole numbers 0..255: the test part becomes uint8 with the same values.
    whole = np.array([[[0, 255, 3], [4, 5, 6]]] * 2, dtype=np.float64)
    data = load_dataset(f"npz:{_write_npz(tmp_path / 'a.npz', x_train=x_u8, x_test=whole, **y)}")
    assert data.train.x.dtype == np.uint8 and data.test.x.dtype == np.uint8 and data.scale == 1.0 / 255.0
    assert np.array_equal(data.test.images()[:, 0], whole.astype(np.uint8))
    # uint8 train, float test in [0, 1]: it cannot share scale 1/255, so it is refused.
    p = _write_npz(tmp_path / "b.npz", x_train=x_u8, x_test=np.full((2, 2, 3), 0.5, np.float32), **y)
    with pytest.raises(DMLBenchError, match="x_train in .* is uint8 but x_test is float32"):
        load_dataset(f"npz:{p}")
    # float train, uint8 test: the test part becomes float32, the same numbers, with a warning.
    caplog.set_level(logging.WARNING, logger="dmlbench")
    p = _write_npz(tmp_path / "c.npz", x_train=x_u8.astype(np.float64) / 255, x_test=x_u8[:2], **y)
    data = load_dataset(f"npz:{p}")
    assert data.train.x.dtype == np.float32 and data.test.x.dtype == np.float32 and data.scale == 1.0
    assert np.array_equal(data.test.images()[:, 0], x_u8[:2].astype(np.float32))
    assert "x_test" in caplog.text and "unscaled" in caplog.text


# --- the class-disjoint split ---------------------------------------------------------------------------

def test_class_split_digits():
    data = load_dataset("digits", split="classes")
    assert data.split == "classes"
    assert set(data.train.y.tolist()) == {0, 1, 2, 3, 4}
    assert set(data.test.y.tolist()) == {5, 6, 7, 8, 9}
    assert len(data.train) + len(data.test) == 1797
    counts = np.bincount(sk_load_digits().target)
    assert len(data.train) == counts[:5].sum() and len(data.test) == counts[5:].sum()
    assert np.bincount(data.train.y, minlength=10).tolist()[:5] == counts[:5].tolist()
    assert np.bincount(data.test.y, minlength=10).tolist()[5:] == counts[5:].tolist()
    assert data.meta["train_classes"] == ["0", "1", "2", "3", "4"]  # now class names (were class ids)
    assert data.num_train_classes == 5
    assert data.info()["train_classes"] == 5 and data.info()["test_classes"] == 5
    assert data.classes == tuple(str(i) for i in range(10))
    # The pooled images keep their values (uint8, scale 1/16): the pixel total is scikit-learn's.
    assert data.train.x.dtype == np.uint8 and data.scale == 1.0 / 16.0
    total = int(data.train.images().sum(dtype=np.int64) + data.test.images().sum(dtype=np.int64))
    assert total == int(sk_load_digits().images.sum())
    # The tuner's load (no test part) gets the same training half.
    train_only = load_dataset("digits", split="classes", with_test=False)
    assert train_only.test is None
    assert np.array_equal(train_only.train.images(), data.train.images())
    assert np.array_equal(train_only.train.y, data.train.y)


def test_class_split_npz(tmp_path):
    # 4 classes (labels 10, 20, 30, 40 -> 0..3), each with images in both files; the pixel value is the
    # original label (train) or label + 1 (test), so an image's tens digit names its class.
    y_tr = np.array([10, 20, 30, 40, 10, 20, 30, 40, 40])
    y_te = np.array([40, 30, 20, 10, 30])
    x_tr = np.broadcast_to(y_tr[:, None, None], (len(y_tr), 2, 2)).astype(np.uint8)
    x_te = np.broadcast_to(y_te[:, None, None] + 1, (len(y_te), 2, 2)).astype(np.uint8)
    p = _write_npz(tmp_path / "c.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    data = load_dataset(f"npz:{p}", split="classes")
    assert data.split == "classes"
    assert data.classes == ("10", "20", "30", "40")
    assert sorted(set(data.train.y.tolist())) == [0, 1]
    assert sorted(set(data.test.y.tolist())) == [2, 3]
    assert len(data.train) == 2 + 2 + 1 + 1  # classes 10 and 20, from both files
    assert len(data.test) == 14 - 6
    assert np.bincount(data.test.y).tolist() == [0, 0, 4, 4]
    assert not set(data.train.y.tolist()) & set(data.test.y.tolist())
    # Images stay with their labels: the pixel's tens digit is the original label.
    for part in (data.train, data.test):
        x = part.images()
        assert x.dtype == np.uint8
        assert (x[:, 0, 0, 0].astype(np.int64) // 10).tolist() == (part.y + 1).tolist()
    assert data.meta["train_classes"] == ["10", "20"]


def test_class_split_needs_four_classes(tmp_path):
    """New: a class-disjoint split needs 2 classes on each side."""
    p = _write_npz(tmp_path / "three.npz", x_train=np.zeros((6, 2, 2), np.uint8), y_train=np.array([0, 1, 2] * 2),
                   x_test=np.zeros((3, 2, 2), np.uint8), y_test=np.array([0, 1, 2]))
    with pytest.raises(DMLBenchError, match="at least 4 classes.*has 3"):
        load_dataset(f"npz:{p}", split="classes")


def test_unknown_split_is_an_error():
    with pytest.raises(DMLBenchError, match="split='zeroshot' is not one of: standard, classes"):
        load_dataset("digits", split="zeroshot")


# --- bad inputs through the CLI ------------------------------------------------------------------------

def bench_run(tmp_path: Path, dataset: str, data_dir: Path | None = None, *extra: str):
    from typer.testing import CliRunner

    from dmlbench.cli import app

    args = ["run", "--dataset", dataset, "--data-dir", str(data_dir or tmp_path), "--methods", "raw",
            "--steps", "2", "--threads", "1", "--out", str(tmp_path / "out"), *extra]
    return CliRunner().invoke(app, args)


def assert_user_error(result, *needles) -> str:
    """Non-zero exit via the one-line error path: no traceback, exactly one 'error:' line naming the problem."""
    out = result.output
    try:
        err = result.stderr
    except ValueError:  # click versions that mix stderr into output only
        err = out
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught exception
    assert "Traceback" not in out and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, out
    assert lines[-1] == errors[0], out
    # The only other line is the "running ..." progress line printed before the data are read.
    assert all(ln.startswith("running ") for ln in lines[:-1]), out
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


NO_VERIFY_FLAG = ("--set", "data.verify=false")


@pytest.fixture
def tiny_idx():
    return tiny_idx_arrays()


def test_cli_missing_mnist_folder(tmp_path):
    assert_user_error(bench_run(tmp_path, "mnist", tmp_path / "nowhere"), tmp_path / "nowhere" / "mnist")


def test_cli_missing_one_idx_file(tmp_path, tiny_idx):
    paths = write_idx_set(tmp_path / "fashion-mnist", tiny_idx, gz=True)
    paths["test_labels"].unlink()
    assert_user_error(bench_run(tmp_path, "fashion-mnist"), tmp_path / "fashion-mnist", "t10k-labels-idx1-ubyte")


def test_cli_missing_cifar_folder_and_batch(tmp_path):
    assert_user_error(bench_run(tmp_path, "cifar10"), "cifar-10-batches-bin", "cifar-10-batches-py")
    batches = _cifar_batches()
    del batches["data_batch_4"]
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", batches)
    assert_user_error(bench_run(tmp_path, "cifar10"), tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin")


def test_cli_missing_folder_and_npz_paths(tmp_path):
    assert_user_error(bench_run(tmp_path, f"folder:{tmp_path / 'no-images'}"), tmp_path / "no-images")
    assert_user_error(bench_run(tmp_path, f"npz:{tmp_path / 'none.npz'}"), tmp_path / "none.npz")


@pytest.mark.parametrize("cut", ["body", "header"])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"], ids=["fashion-mnist-noverify", "mnist-noverify"])
def test_cli_truncated_idx(tmp_path, tiny_idx, name, cut):
    write_idx_set(tmp_path / name, tiny_idx, gz=True)
    raw = idx_bytes(tiny_idx["test_images"])
    bad = write_idx(tmp_path / name / IDX_NAMES["test_images"], raw[:-7] if cut == "body" else raw[:9], gz=True)
    line = assert_user_error(bench_run(tmp_path, name, None, *NO_VERIFY_FLAG), bad)
    if cut == "body":
        n = len(raw) - 16
        assert f"IDX data is {n - 7:,} bytes but its header [4, 5, 4] implies {n:,}" in line and "truncated" in line
    else:
        assert "truncated IDX header" in line


def test_cli_idx_with_extra_bytes(tmp_path, tiny_idx):
    write_idx_set(tmp_path / "mnist", tiny_idx, gz=True)
    bad = write_idx(tmp_path / "mnist" / IDX_NAMES["train_labels"], idx_bytes(tiny_idx["train_labels"]) + b"\x00",
                    gz=True)
    assert_user_error(bench_run(tmp_path, "mnist", None, *NO_VERIFY_FLAG), bad, "more data than its header [10]")


@pytest.mark.parametrize("magic", [b"\x00\x00\x0d\x03", b"\x12\x34\x08\x03", b"\x00\x00\x08\x00", b"\x00\x00"],
                         ids=["float-type", "nonzero-prefix", "zero-dims", "short"])
def test_cli_wrong_idx_magic(tmp_path, tiny_idx, magic):
    write_idx_set(tmp_path / "fashion-mnist", tiny_idx, gz=True)
    raw = magic + idx_bytes(tiny_idx["train_labels"])[4:] if len(magic) == 4 else magic
    bad = write_idx(tmp_path / "fashion-mnist" / IDX_NAMES["train_labels"], raw, gz=False)
    (tmp_path / "fashion-mnist" / (IDX_NAMES["train_labels"] + ".gz")).unlink()  # the plain file is the one found
    line = assert_user_error(bench_run(tmp_path, "fashion-mnist", None, *NO_VERIFY_FLAG), bad)
    assert f"magic number {magic.hex()}" in line


def test_cli_corrupt_gzip(tmp_path, tiny_idx):
    paths = write_idx_set(tmp_path / "fashion-mnist", tiny_idx, gz=True)
    blob = bytearray(paths["train_images"].read_bytes())
    blob[10:18] = b"\xff" * 8  # damage the deflate stream right after the gzip header
    paths["train_images"].write_bytes(bytes(blob))
    line = assert_user_error(bench_run(tmp_path, "fashion-mnist", None, *NO_VERIFY_FLAG), paths["train_images"])
    assert "corrupt gzip" in line


def test_cli_images_and_labels_that_do_not_belong_together(tmp_path, tiny_idx):
    tiny_idx["train_labels"] = tiny_idx["train_labels"][:-1]
    paths = write_idx_set(tmp_path / "fashion-mnist", tiny_idx, gz=True)
    assert_user_error(bench_run(tmp_path, "fashion-mnist", None, *NO_VERIFY_FLAG), paths["train_images"],
                      paths["train_labels"], "10 images", "9 labels")


def test_cli_idx_label_outside_the_classes(tmp_path, tiny_idx):
    tiny_idx["test_labels"][1] = 12
    paths = write_idx_set(tmp_path / "mnist", tiny_idx, gz=True)
    assert_user_error(bench_run(tmp_path, "mnist", None, *NO_VERIFY_FLAG), paths["test_labels"], "label 12")


def test_cli_mnist_md5_mismatch(tmp_path, tiny_idx):
    paths = write_idx_set(tmp_path / "mnist", tiny_idx, gz=True)
    # The tiny files' headers already differ from MNIST's sizes: refused before any image byte is read.
    line = assert_user_error(bench_run(tmp_path, "mnist"), paths["train_images"], "[10, 5, 4]", "[60000, 28, 28]")
    # A file with MNIST's header but other bytes reaches the MD5 check, which names the expected digest.
    write_zero_idx_gz(tmp_path / "mnist" / IDX_NAMES["train_images"], (60000, 28, 28))
    line = assert_user_error(bench_run(tmp_path, "mnist"), paths["train_images"], "6bbc9ace898e44ae57da46a324031adb")
    assert "MD5" in line
    # The same files are well-formed: without verification they load.
    write_idx_set(tmp_path / "mnist", tiny_idx, gz=True)
    data = load_dataset("mnist", data_dir=tmp_path, options=NO_VERIFY)
    assert len(data.train) == len(tiny_idx["train_labels"])


def test_cli_fashion_mnist_md5_mismatch(tmp_path, tiny_idx):
    paths = write_idx_set(tmp_path / "fashion-mnist", tiny_idx, gz=True)
    line = assert_user_error(bench_run(tmp_path, "fashion-mnist"), paths["train_images"],
                             "8d4fb7e6c68d591d4c3dfef9ec88bf0d")
    assert "MD5" in line


def test_cli_cifar_binary_truncated_and_bad_label(tmp_path):
    batches = _cifar_batches()
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", batches)
    bad = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    bad.write_bytes(bad.read_bytes()[:-100])
    assert_user_error(bench_run(tmp_path, "cifar10"), bad, "3073-byte")
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", batches)
    blob = bytearray(bad.read_bytes())
    blob[0] = 42  # the first record's label byte
    bad.write_bytes(bytes(blob))
    assert_user_error(bench_run(tmp_path, "cifar10"), bad, "label 42")


def test_cli_cifar_python_not_a_batch(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder, _cifar_batches(), 5)
    bad = folder / "test_batch"
    bad.write_bytes(pickle.dumps([1, 2, 3], protocol=5))
    assert_user_error(bench_run(tmp_path, "cifar10"), bad, "no dict inside")
    bad.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=5))
    assert_user_error(bench_run(tmp_path, "cifar10"), bad, "lacks 'data' or 'labels'")
    bad.write_bytes(b"\x80\x05 not a pickle")
    assert_user_error(bench_run(tmp_path, "cifar10"), bad, "not a CIFAR-10 python batch")
    write_cifar_py(folder, {"test_batch": (np.zeros((2, 3072), np.uint8), np.array([3, 42]))}, 5)
    assert_user_error(bench_run(tmp_path, "cifar10"), bad, "label 42 is outside 0..9")
    write_cifar_py(folder, {"test_batch": (np.zeros((2, 3072), np.uint8), np.array([-1, 2]))}, 5)
    assert_user_error(bench_run(tmp_path, "cifar10"), bad, "label -1 is outside 0..9")


def test_cli_folder_with_fewer_than_two_classes(tmp_path):
    write_image_folder(tmp_path / "one", ["only"], per_class=3)
    (tmp_path / "one" / "empty").mkdir()  # a class folder without images does not count
    line = assert_user_error(bench_run(tmp_path, f"folder:{tmp_path / 'one'}"), tmp_path / "one")
    assert "1 class" in line


def test_cli_folder_too_small_to_split(tmp_path):
    write_image_folder(tmp_path / "imgs", ["a", "b", "c"], per_class=2)  # 6 images: 2 test images < 3 classes
    line = assert_user_error(bench_run(tmp_path, f"folder:{tmp_path / 'imgs'}"), tmp_path / "imgs", "test_fraction")
    assert "cannot split" in line
    write_image_folder(tmp_path / "ok", ["a", "b"], per_class=3)
    assert_user_error(bench_run(tmp_path, f"folder:{tmp_path / 'ok'}", None, "--set", "data.test_fraction=0"),
                      tmp_path / "ok", "test_fraction=0")


def test_cli_digits_bad_test_fraction(tmp_path):
    assert_user_error(bench_run(tmp_path, "digits", None, "--set", "data.test_fraction=1.5"), "test_fraction=1.5")


def test_cli_folder_with_unreadable_image(tmp_path):
    write_image_folder(tmp_path / "imgs", ["a", "b"], per_class=3)
    garbage = tmp_path / "imgs" / "b" / "zz-broken.png"
    garbage.write_bytes(b"this is not a PNG file at all" * 4)
    assert_user_error(bench_run(tmp_path, f"folder:{tmp_path / 'imgs'}"), garbage, "data.skip_bad=true")


def test_cli_npz_missing_key(tmp_path):
    p = _write_npz(tmp_path / "d.npz", x_train=np.zeros((4, 2, 2), np.uint8), y_train=np.array([0, 1, 0, 1]),
                   x_test=np.zeros((2, 2, 2), np.uint8))
    assert_user_error(bench_run(tmp_path, f"npz:{p}"), p, "y_test")


def test_cli_npz_mismatched_lengths(tmp_path):
    p = _write_npz(tmp_path / "d.npz", x_train=np.zeros((5, 2, 2), np.uint8), y_train=np.array([0, 1, 0, 1]),
                   x_test=np.zeros((2, 2, 2), np.uint8), y_test=np.array([0, 1]))
    assert_user_error(bench_run(tmp_path, f"npz:{p}"), p, "5 x_train", "4 y_train")


def test_cli_npz_not_a_zip(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"garbage" * 10)
    assert_user_error(bench_run(tmp_path, f"npz:{p}"), p, "not an .npz archive")


def test_cli_npz_object_array_needs_pickle(tmp_path):
    p = _write_npz(tmp_path / "o.npz", x_train=np.zeros((4, 2, 2), np.uint8), y_train=np.array([0, 1, 0, 1]),
                   x_test=np.zeros((2, 2, 2), np.uint8), y_test=np.array([0, 1], dtype=object))
    assert_user_error(bench_run(tmp_path, f"npz:{p}"), p, "unpickling")


def test_cli_npz_empty_samples(tmp_path):
    p = _write_npz(tmp_path / "z.npz", x_train=np.zeros((4, 0), np.float32), y_train=np.array([0, 1, 0, 1]),
                   x_test=np.zeros((2, 0), np.float32), y_test=np.array([0, 1]))
    assert_user_error(bench_run(tmp_path, f"npz:{p}"), p, "(4, 0)", "hold no values")


def test_cli_path_for_a_dataset_without_files_is_one_line(tmp_path):
    assert_user_error(bench_run(tmp_path, f"digits:{tmp_path / 'x'}"), "digits")


def test_cli_class_split_and_standard_normalisation(tmp_path):
    from typer.testing import CliRunner

    from dmlbench.cli import app

    r = CliRunner().invoke(app, ["run", "--dataset", "digits", "--split", "classes", "--normalize", "standard",
                                 "--methods", "raw", "--threads", "1", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, (r.output, r.exception)


def test_cli_unknown_dataset(tmp_path):
    line = assert_user_error(bench_run(tmp_path, "imagenet-9000"), "'imagenet-9000'")
    for known in DATASETS.names():
        assert known in line
    assert "digits" in line and "mnist" in line


@pytest.mark.parametrize("protocol", [2, 5])
def test_cli_cifar_pickle_calling_os_system_is_refused(tmp_path, protocol):
    import pickle

    marker = tmp_path / "PWNED"
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder, _cifar_batches(), "py2")
    evil = folder / "data_batch_3"
    evil.write_bytes(pickle.dumps({"data": SystemCall(f"touch {marker}"), "labels": [0]}, protocol=protocol))
    # The payload is live: plain pickle would run it.
    assert b"system" in evil.read_bytes()
    line = assert_user_error(bench_run(tmp_path, "cifar10"), evil)
    assert "refusing" in line and "system" in line
    assert not marker.exists()


# --- the package mapping -----------------------------------------------------------------------------------

def _python(code: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_loading_digits_does_not_import_torch(tmp_path):
    r = _python("import sys, dmlbench.data; dmlbench.data.load_dataset('digits'); print('torch' in sys.modules)",
                tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False", r.stdout


def test_package_mapping_outside_the_repo(tmp_path):
    code = """
        import importlib, sys
        import dmlbench, dmlbench.data, dmlbench.methods
        print("dmlbench", dmlbench.__file__)
        print("dmlbench.data", dmlbench.data.__file__)
        print("dmlbench.methods", dmlbench.methods.__file__)
        print("datasets-registered", "mnist" in dmlbench.data.DATASETS)
        for name in ("datasets", "methods", "bench"):
            try:
                mod = importlib.import_module(name)
            except ModuleNotFoundError:
                print(name, "MISSING")
            else:
                print(name, getattr(mod, "__file__", None) or list(getattr(mod, "__path__", [])))
    """
    r = _python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert Path(got["dmlbench"]) == REPO / "bench" / "__init__.py"
    assert Path(got["dmlbench.data"]) == REPO / "datasets" / "__init__.py"
    assert Path(got["dmlbench.methods"]) == REPO / "methods" / "__init__.py"
    assert got["datasets-registered"] == "True"
    for name in ("datasets", "methods", "bench"):
        assert got[name] == "MISSING" or str(REPO) not in got[name], (name, got[name])


def test_hf_datasets_is_not_shadowed(tmp_path):
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("IS_HF = True\n")
    code = """
        import sys
        import datasets
        import dmlbench.data
        print(datasets.IS_HF)
        print(sys.modules["datasets"] is datasets, sys.modules["datasets"].__file__)
    """
    r = _python(code, tmp_path, pythonpath=str(tmp_path / "site"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "True"
    flag, path = lines[1].split(" ", 1)
    assert flag == "True" and Path(path) == fake / "__init__.py"


# Regressions from an earlier review

def test_fashion_mnist_does_not_read_mnist_from_a_bare_folder(data_dir):
    # A bare folder is searched only with the MD5 check on, and MNIST's files fail Fashion-MNIST's MD5s.
    with pytest.raises(DMLBenchError, match="MD5") as e:
        load_dataset("fashion-mnist", data_dir=data_dir / "mnist")
    assert "train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(DMLBenchError, match="fashion-mnist: .* not found"):
        load_dataset("fashion-mnist", data_dir=data_dir / "mnist", options={"verify": False})
