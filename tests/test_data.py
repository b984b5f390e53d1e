"""Dataset loaders (dmlbench.data): formats, values, splits, user-facing errors and the package mapping.

Every file the tests read is written into tmp_path; only the real-MNIST test reads shared data (through
the ``mnist`` fixture, i.e. $DMLBENCH_DATA_DIR).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from dmlbench.config import RunConfig
from dmlbench.data import DATASETS, load_dataset
from dmlbench.errors import DMLBenchError
from dmlbench.runner import load_data

from helpers_data import (CIFAR_TEST, CIFAR_TRAIN, FOLDER_H, FOLDER_W, IDX_NAMES, SPECIAL, SystemCall,
                          cifar_batch, folder_gray_level, idx_bytes, tiny_idx_arrays, write_cifar_bin,
                          write_cifar_py, write_idx, write_idx_set, write_image_folder)

REPO = Path(__file__).resolve().parents[1]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def assert_images(x: torch.Tensor, expected_uint8: np.ndarray) -> None:
    """x is float32 (N,C,H,W) and equals the uint8 source divided by 255."""
    assert x.dtype == torch.float32
    assert tuple(x.shape) == expected_uint8.shape
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    ref = torch.from_numpy(expected_uint8.astype(np.float32) / 255.0)
    assert torch.allclose(x, ref, atol=1e-6, rtol=0)
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(np.ascontiguousarray(expected_uint8)))


# --- digits -----------------------------------------------------------------------------------------------

def test_digits_sizes_types_and_metadata(digits):
    assert (len(digits.x_train), len(digits.x_test)) == (1257, 540)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert digits.name == "digits"
    assert digits.classes == [str(i) for i in range(10)]
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert tuple(digits.x_train.shape) == (1257, 1, 8, 8) and tuple(digits.x_test.shape) == (540, 1, 8, 8)
    for x, y in ((digits.x_train, digits.y_train), (digits.x_test, digits.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # raw values 0..16 divided by 16
        assert torch.equal(x * 16, (x * 16).round())
        assert set(y.unique().tolist()) == set(range(10))
    info = digits.info()
    assert info["name"] == "digits" and info["classes"] == 10 and info["input_shape"] == [1, 8, 8]
    assert (info["train"], info["test"], info["split"]) == (1257, 540, "standard")
    # All 1797 images are used once: per-class counts and the pixel total match scikit-learn's copy.
    sk = sk_load_digits()
    y_all = torch.cat([digits.y_train, digits.y_test])
    assert torch.bincount(y_all, minlength=10).tolist() == np.bincount(sk.target).tolist()
    total = float(torch.cat([digits.x_train, digits.x_test]).double().sum() * 16)
    assert total == pytest.approx(float(sk.images.sum()), abs=1e-3)


def test_digits_split_is_stratified_and_seeded(digits):
    counts = np.bincount(sk_load_digits().target)
    test_counts = torch.bincount(digits.y_test, minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.3 * counts) <= 1), test_counts
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_train, digits.y_train)
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_test, digits.y_test)
    other = load_dataset("digits", seed=1)
    assert len(other.x_train) == 1257
    assert not torch.equal(other.y_train, digits.y_train)
    assert not torch.equal(other.x_test, digits.x_test)


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
    options = {"verify": False} if name == "mnist" else {}
    data = load_dataset(name, data_dir=tmp_path, **options)
    assert data.name == name
    assert data.input_shape == (1, 5, 4)
    assert_images(data.x_train, arrays["train_images"][:, None])
    assert_images(data.x_test, arrays["test_images"][:, None])
    assert float(data.x_train[0, 0, 0, 0]) == 1.0 and float(data.x_train[0, 0, 0, 1]) == 0.0
    assert float(data.x_train[1, 0, 2, 3]) == pytest.approx((37 + 14 + 3) / 255, abs=1e-7)
    assert data.y_train.dtype == torch.int64 and data.y_test.dtype == torch.int64
    assert data.y_train.tolist() == arrays["train_labels"].tolist()
    assert data.y_test.tolist() == arrays["test_labels"].tolist()
    assert Path(data.source) == tmp_path / sub
    if name == "fashion-mnist":
        assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and len(data.classes) == 10
    else:
        assert data.classes == [str(i) for i in range(10)]


def test_idx_mixed_gzip_and_plain_files(tmp_path):
    arrays = tiny_idx_arrays()
    for i, key in enumerate(IDX_NAMES):
        write_idx(tmp_path / "fashion-mnist" / IDX_NAMES[key], arrays[key], gz=bool(i % 2))
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert data.y_test.tolist() == arrays["test_labels"].tolist()
    assert_images(data.x_train, arrays["train_images"][:, None])


def test_mnist_verify_option_through_runner_load_data(tmp_path):
    """--set data.verify=false reaches load_mnist as a bool through runner.load_data."""
    arrays = tiny_idx_arrays()
    write_idx_set(tmp_path / "mnist", arrays, gz=True)
    cfg = RunConfig(dataset="mnist", data_dir=str(tmp_path), data_options={"verify": "false"})
    data = load_data(cfg)
    assert data.y_train.tolist() == arrays["train_labels"].tolist()
    with pytest.raises(DMLBenchError, match="MD5"):
        load_data(RunConfig(dataset="mnist", data_dir=str(tmp_path)))


# --- the real MNIST -----------------------------------------------------------------------------------------

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.mnist
def test_real_mnist(mnist):
    assert mnist.name == "mnist"
    assert tuple(mnist.x_train.shape) == (60000, 1, 28, 28)
    assert tuple(mnist.x_test.shape) == (10000, 1, 28, 28)
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert torch.bincount(mnist.y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.y_test, minlength=10).tolist() == TEST_COUNTS
    assert float(mnist.x_train.min()) == 0.0 and float(mnist.x_train.max()) == 1.0
    assert float(mnist.x_train.mean()) == pytest.approx(0.1307, abs=5e-4)
    assert float(mnist.x_test.mean()) == pytest.approx(0.1325, abs=5e-4)
    part = mnist.x_train[:100] * 255
    assert torch.allclose(part, part.round(), atol=1e-4)  # whole uint8 values / 255


# --- CIFAR-10 ------------------------------------------------------------------------------------------------

def _cifar_batches(per_batch: int = 2) -> dict:
    batches = {name: cifar_batch(per_batch, offset=13 * i) for i, name in enumerate(CIFAR_TRAIN)}
    batches[CIFAR_TEST] = cifar_batch(3, offset=200)
    return batches


def _check_cifar(data, batches) -> None:
    x_tr = np.concatenate([batches[n][0] for n in CIFAR_TRAIN]).reshape(-1, 3, 32, 32)
    y_tr = np.concatenate([batches[n][1] for n in CIFAR_TRAIN])
    x_te, y_te = batches[CIFAR_TEST]
    assert data.name == "cifar10" and data.classes == CIFAR_CLASSES
    assert data.input_shape == (3, 32, 32)
    assert tuple(data.x_train.shape) == (10, 3, 32, 32) and tuple(data.x_test.shape) == (3, 3, 32, 32)
    assert_images(data.x_train, x_tr)
    assert_images(data.x_test, x_te.reshape(-1, 3, 32, 32))
    # Channel-major records: byte 1 + c*1024 + h*32 + w of a record is pixel (c, h, w).
    row = batches[CIFAR_TRAIN[0]][0][1]
    for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 31)):
        assert float(data.x_train[1, c, h, w]) == pytest.approx(row[c * 1024 + h * 32 + w] / 255, abs=1e-7)
    assert data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == y_tr.tolist() and data.y_test.tolist() == y_te.tolist()


def test_cifar10_binary(tmp_path):
    batches = _cifar_batches()
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", batches)
    data = load_dataset("cifar10", data_dir=tmp_path)
    _check_cifar(data, batches)
    assert Path(data.source) == tmp_path / "cifar-10-batches-bin"


@pytest.mark.parametrize("protocol", ["py2", 4, 5], ids=["official-py2-layout", "protocol4", "protocol5-default"])
def test_cifar10_python(tmp_path, protocol):
    batches = _cifar_batches()
    write_cifar_py(tmp_path / "cifar-10-batches-py", batches, protocol)
    data = load_dataset("cifar10", data_dir=tmp_path)
    _check_cifar(data, batches)
    assert Path(data.source) == tmp_path / "cifar-10-batches-py"


# --- image folders ----------------------------------------------------------------------------------------

def _check_folder_values(data, channels: int) -> None:
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        levels = (x[:, 0, 0, 0] * 255).round().long()
        # The background level identifies the image, and through it the class.
        assert ((levels - 10) // 40).tolist() == y.tolist()
        for c in range(channels):
            assert torch.equal((x[:, c, 0, 0] * 255).round().long(), levels)
        if x.shape[2] == FOLDER_H:
            assert torch.all(x[:, :, SPECIAL[0], SPECIAL[1]] == 1.0)


def test_folder_loader(tmp_path):
    write_image_folder(tmp_path / "imgs", ["cat", "dog"], per_class=5)
    (tmp_path / "imgs" / ".hidden").mkdir()
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset("folder", path=str(tmp_path / "imgs"))
    assert data.name == "folder" and data.classes == ["cat", "dog"]
    assert (len(data.x_train), len(data.x_test)) == (8, 2)
    assert tuple(data.x_train.shape) == (8, 3, FOLDER_H, FOLDER_W)
    assert data.y_train.dtype == torch.int64
    assert sorted(data.y_test.tolist()) == [0, 1]  # stratified
    _check_folder_values(data, 3)
    levels = sorted((torch.cat([data.x_train, data.x_test])[:, 0, 0, 0] * 255).round().long().tolist())
    assert levels == sorted(folder_gray_level(c, k) for c in range(2) for k in range(5))


def test_folder_resize_and_grayscale(tmp_path):
    write_image_folder(tmp_path / "imgs", ["a", "b", "c"], per_class=4)
    gray = load_dataset("folder", path=str(tmp_path / "imgs"), grayscale=True)
    assert gray.input_shape == (1, FOLDER_H, FOLDER_W)
    assert gray.classes == ["a", "b", "c"]
    _check_folder_values(gray, 1)
    small = load_dataset("folder", path=str(tmp_path / "imgs"), resize=4)
    assert small.input_shape == (3, 4, 4)
    _check_folder_values(small, 3)
    both = load_dataset("folder", path=str(tmp_path / "imgs"), resize=4, grayscale=True)
    assert both.input_shape == (1, 4, 4)
    assert len(both.x_train) + len(both.x_test) == 12


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
    data = load_dataset("npz", path=str(p))
    assert data.name == "npz" and data.classes == ["3", "7", "9"]
    assert data.input_shape == (1, 3, 4)
    assert_images(data.x_train, x_tr[:, None])
    assert_images(data.x_test, x_te[:, None])
    assert float(data.x_train[0, 0, 0, 0]) == 1.0
    assert data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == [1, 0, 1, 0, 2, 2] and data.y_test.tolist() == [0, 1, 2, 2]


def test_npz_loader_float_vectors(tmp_path):
    x_tr = np.linspace(0, 1, 4 * 5, dtype=np.float32).reshape(4, 5)
    x_te = np.full((2, 5), 0.25, dtype=np.float32)
    p = _write_npz(tmp_path / "v.npz", x_train=x_tr, y_train=np.array([0, 1, 0, 1]), x_test=x_te,
                   y_test=np.array([1, 0]))
    data = load_dataset("npz", path=str(p))
    assert data.input_shape == (1, 1, 5)
    assert torch.equal(data.x_train[:, 0, 0], torch.from_numpy(x_tr))  # floats are taken as they are
    assert torch.all(data.x_test == 0.25)
    assert data.y_test.tolist() == [1, 0]


# --- the class-disjoint split ---------------------------------------------------------------------------

def test_class_split_digits():
    data = load_dataset("digits", split="classes")
    assert data.split == "classes"
    assert set(data.y_train.unique().tolist()) == {0, 1, 2, 3, 4}
    assert set(data.y_test.unique().tolist()) == {5, 6, 7, 8, 9}
    assert len(data.x_train) + len(data.x_test) == 1797
    counts = np.bincount(sk_load_digits().target)
    assert len(data.x_train) == counts[:5].sum() and len(data.x_test) == counts[5:].sum()
    assert torch.bincount(data.y_train, minlength=10).tolist()[:5] == counts[:5].tolist()
    assert data.meta["train_classes"] == [0, 1, 2, 3, 4]
    assert data.info()["train_classes"] == 5 and data.info()["test_classes"] == 5
    assert data.classes == [str(i) for i in range(10)]


def test_class_split_npz(tmp_path):
    # 4 classes (labels 10, 20, 30, 40 -> 0..3), each with images in both files; the pixel value is the
    # original label (train) or label + 1 (test), so an image's tens digit names its class.
    y_tr = np.array([10, 20, 30, 40, 10, 20, 30, 40, 40])
    y_te = np.array([40, 30, 20, 10, 30])
    x_tr = np.broadcast_to(y_tr[:, None, None], (len(y_tr), 2, 2)).astype(np.uint8)
    x_te = np.broadcast_to(y_te[:, None, None] + 1, (len(y_te), 2, 2)).astype(np.uint8)
    p = _write_npz(tmp_path / "c.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    data = load_dataset("npz", path=str(p), split="classes")
    assert data.split == "classes"
    assert sorted(data.y_train.unique().tolist()) == [0, 1]
    assert sorted(data.y_test.unique().tolist()) == [2, 3]
    assert len(data.y_train) == 2 + 2 + 1 + 1  # classes 10 and 20, from both files
    assert len(data.y_test) == 14 - 6
    assert torch.bincount(data.y_test).tolist() == [0, 0, 4, 4]
    assert not set(data.y_train.tolist()) & set(data.y_test.tolist())
    # Images stay with their labels: the pixel's tens digit is the original label.
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        tens = ((x[:, 0, 0, 0] * 255).round().long() // 10)
        assert tens.tolist() == (y + 1).tolist()
    assert data.meta["train_classes"] == [0, 1]


def test_unknown_split_is_an_error():
    with pytest.raises(DMLBenchError, match="unknown split 'zeroshot'"):
        load_dataset("digits", split="zeroshot")


# --- bad inputs through the CLI ------------------------------------------------------------------------

def bench_run(tmp_path: Path, dataset: str, data_dir: Path | None = None, *extra: str):
    from typer.testing import CliRunner

    from dmlbench.cli import app

    args = ["run", "--dataset", dataset, "--data-dir", str(data_dir or tmp_path), "--methods", "raw",
            "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "out"), *extra]
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
@pytest.mark.parametrize("name,extra", [("fashion-mnist", ()), ("mnist", ("--set", "data.verify=false"))],
                         ids=["fashion-mnist", "mnist-noverify"])
def test_cli_truncated_idx(tmp_path, tiny_idx, name, extra, cut):
    write_idx_set(tmp_path / name, tiny_idx, gz=True)
    raw = idx_bytes(tiny_idx["test_images"])
    bad = write_idx(tmp_path / name / IDX_NAMES["test_images"], raw[:-7] if cut == "body" else raw[:9], gz=True)
    line = assert_user_error(bench_run(tmp_path, name, None, *extra), bad)
    assert ("IDX length is" in line) if cut == "body" else ("truncated IDX header" in line)


@pytest.mark.parametrize("magic", [b"\x00\x00\x0d\x03", b"\x12\x34\x08\x03", b"\x00\x00\x08\x00", b"\x00\x00"],
                         ids=["float-type", "nonzero-prefix", "zero-dims", "short"])
def test_cli_wrong_idx_magic(tmp_path, tiny_idx, magic):
    write_idx_set(tmp_path / "fashion-mnist", tiny_idx, gz=True)
    raw = magic + idx_bytes(tiny_idx["train_labels"])[4:] if len(magic) == 4 else magic
    bad = write_idx(tmp_path / "fashion-mnist" / IDX_NAMES["train_labels"], raw, gz=False)
    (tmp_path / "fashion-mnist" / (IDX_NAMES["train_labels"] + ".gz")).unlink()  # the plain file is the one found
    line = assert_user_error(bench_run(tmp_path, "fashion-mnist"), bad)
    assert "magic number" in line


def test_cli_corrupt_gzip(tmp_path, tiny_idx):
    paths = write_idx_set(tmp_path / "fashion-mnist", tiny_idx, gz=True)
    blob = bytearray(paths["train_images"].read_bytes())
    blob[10:18] = b"\xff" * 8  # damage the deflate stream right after the gzip header
    paths["train_images"].write_bytes(bytes(blob))
    line = assert_user_error(bench_run(tmp_path, "fashion-mnist"), paths["train_images"])
    assert "gzip" in line


def test_cli_images_and_labels_that_do_not_belong_together(tmp_path, tiny_idx):
    tiny_idx["train_labels"] = tiny_idx["train_labels"][:-1]
    paths = write_idx_set(tmp_path / "fashion-mnist", tiny_idx, gz=True)
    assert_user_error(bench_run(tmp_path, "fashion-mnist"), paths["train_images"], paths["train_labels"])


def test_cli_mnist_md5_mismatch(tmp_path, tiny_idx):
    paths = write_idx_set(tmp_path / "mnist", tiny_idx, gz=True)
    line = assert_user_error(bench_run(tmp_path, "mnist"), paths["train_images"], "6bbc9ace898e44ae57da46a324031adb")
    assert "MD5" in line
    # The same files are well-formed: without verification they load.
    assert len(load_dataset("mnist", data_dir=tmp_path, verify=False).y_train) == len(tiny_idx["train_labels"])


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
    assert_user_error(bench_run(tmp_path, f"folder:{tmp_path / 'imgs'}"), garbage)


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
    assert_user_error(bench_run(tmp_path, f"npz:{p}"), p)


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
