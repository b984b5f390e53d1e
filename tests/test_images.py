"""Image folders, Zappos50K and the decode cache, on tiny replicas written into tmp_path.

Every image is a solid colour that encodes where it lies in the tree (category -> red, subcategory
-> green), so a loaded row can be checked against its label; JPEG keeps solid colours within a few
levels. Nothing here downloads anything or imports torch into the loaders.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmlbench.core.errors import DMLBenchError
from dmlbench.data import DATASETS, load_dataset, planned_shape, validation_fold
from dmlbench.data import images as images_mod
from dmlbench.data.cache import CACHE_DIR_ENV, ImageCache, cache_dir
from dmlbench.data.images import DecodeOptions, decode, decode_into, scan
from dmlbench.data.splits import fold_assignment

# The official UT-Zappos50K tree: 4 categories, 21 subcategories.
ZAPPOS = {
    "Boots": ["Ankle", "Knee High", "Mid-Calf", "Over the Knee", "Prewalker Boots"],
    "Sandals": ["Athletic", "Flat", "Heel"],
    "Shoes": ["Boat Shoes", "Clogs and Mules", "Crib Shoes", "Firstwalker", "Flats", "Heels", "Loafers", "Oxfords",
              "Prewalker", "Sneakers and Athletic Shoes"],
    "Slippers": ["Boot", "Slipper Flats", "Slipper Heels"],
}
BRANDS = ["Dr. Scholl's", "Nike"]  # a brand folder with a dot and a space is not hidden
W, H = 32, 24  # Zappos's 136x102 aspect, small


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch, caplog):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    caplog.set_level(logging.INFO, logger="dmlbench")


def solid(path: Path, rgb, size=(W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.empty((size[1], size[0], 3), dtype=np.uint8)
    a[...] = rgb
    Image.fromarray(a, "RGB").save(path, quality=95)
    return path


def colour(cat: int, sub: int) -> tuple[int, int, int]:
    return (30 + 60 * cat, 20 + 10 * sub, 128)


def write_zappos(data_dir: Path, per_sub: int = 3) -> Path:
    """<data_dir>/ut-zap50k-images/<Category>/<Subcategory>/<Brand>/<id>.<id>.jpg, ``per_sub`` images per
    subcategory spread over the brands."""
    root = data_dir / "ut-zap50k-images"
    n = 0
    for ci, (cat, subs) in enumerate(ZAPPOS.items()):
        for si, sub in enumerate(subs):
            for k in range(per_sub):
                solid(root / cat / sub / BRANDS[k % 2] / f"{7000000 + n}.{n}.jpg", colour(ci, si))
                n += 1
    return root


def row_colour(part, i) -> np.ndarray:
    return part.images(np.array([i]))[0].reshape(3, -1).mean(axis=1)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# --- folder scanning and labels -----------------------------------------------------------------------------

def test_zappos_depth1_categories_and_depth2_subcategories(tmp_path, monkeypatch):
    write_zappos(tmp_path)
    d1 = load_dataset("zappos50k", data_dir=tmp_path)
    assert d1.classes == tuple(ZAPPOS)
    assert d1.input_shape == (3, 64, 64)  # the default size
    n = 3 * 21
    assert len(d1.train) + len(d1.test) == n
    assert len(d1.test) == 13  # ceil(0.2 * 63), stratified
    counts = np.bincount(np.concatenate([d1.train.y, d1.test.y]), minlength=4)
    assert counts.tolist() == [3 * len(s) for s in ZAPPOS.values()]
    assert set(d1.test.y.tolist()) == {0, 1, 2, 3}  # stratified
    for part in (d1.train, d1.test):
        assert isinstance(part.x, np.memmap) and part.x.dtype == np.uint8 and part.x.shape == (n, 3, 64, 64)
        for i in range(len(part)):  # the red level names the category, so the label must match the pixels
            r = row_colour(part, i)[0]
            assert abs(r - (30 + 60 * part.y[i])) <= 4
    assert sorted(np.concatenate([d1.train.rows, d1.test.rows]).tolist()) == list(range(n))

    # Depth 2 reads the same files: the cache is reused, nothing is decoded again.
    monkeypatch.setattr(images_mod, "decode", _no_decode)
    d2 = load_dataset("zappos50k", data_dir=tmp_path, options={"label_depth": 2, "test_fraction": 0.4})
    assert len(d2.classes) == 21
    assert d2.classes[:5] == ("Boots/Ankle", "Boots/Knee High", "Boots/Mid-Calf", "Boots/Over the Knee",
                              "Boots/Prewalker Boots")
    assert set(d2.test.y.tolist()) == set(range(21))
    assert np.bincount(np.concatenate([d2.train.y, d2.test.y])).tolist() == [3] * 21
    names = list(d2.classes)
    subs = [(ci, si) for ci, (c, s) in enumerate(ZAPPOS.items()) for si in range(len(s))]
    for part in (d2.train, d2.test):
        for i in range(len(part)):
            ci, si = subs[int(part.y[i])]
            assert names[part.y[i]].split("/")[0] == list(ZAPPOS)[ci]
            assert np.all(np.abs(row_colour(part, i) - colour(ci, si)) <= 4)
    assert d2.meta["cache"] == d1.meta["cache"]


def _no_decode(*a, **k):
    raise AssertionError("decoded although the cache is valid")


def test_label_depth_too_deep_or_zero(tmp_path):
    write_zappos(tmp_path, per_sub=2)
    with pytest.raises(DMLBenchError) as e:
        load_dataset("zappos50k", data_dir=tmp_path, options={"label_depth": 4})
    msg = one_line(e)
    assert "label_depth=4" in msg and "deeper than the tree" in msg and "3 folder(s) down" in msg
    with pytest.raises(DMLBenchError, match="label_depth=0 must be at least 1"):
        load_dataset("zappos50k", data_dir=tmp_path, options={"label_depth": 0})


def test_hidden_and_non_image_files_skipped_with_counts(tmp_path, caplog):
    root = tmp_path / "imgs"
    for c in range(2):
        for k in range(4):
            solid(root / f"c{c}" / f"{k}.png", (40 * c + 10, k, 0))
    (root / "c0" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    solid(root / "c0" / "._0.png", (255, 255, 255))  # an AppleDouble shadow file
    solid(root / ".thumbnails" / "a.png", (1, 1, 1))  # a hidden folder: both images inside count
    solid(root / ".thumbnails" / "sub" / "b.png", (1, 1, 1))
    solid(root / "c1" / ".git" / "x.jpg", (1, 1, 1))
    (root / "c0" / "notes.txt").write_text("not an image")
    (root / "c1" / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "c1" / "labels.csv").write_text("a,b\n")
    (root / "README").write_text("top-level non-image")
    found = scan(root)
    assert (len(found.files), found.hidden, found.not_images) == (8, 5, 4)
    data = load_dataset(f"folder:{root}", data_dir=tmp_path)
    assert data.classes == ("c0", "c1")
    assert len(data.train) + len(data.test) == 8
    assert "skipped 5 hidden file(s) and 4 non-image file(s)" in caplog.text
    # Native size, PNG: exact pixels; the red level names the class.
    assert data.input_shape == (3, H, W)
    for part in (data.train, data.test):
        x = part.images()
        assert np.array_equal(x[:, 0, 0, 0], 40 * part.y + 10)


def test_uppercase_suffixes_and_formats(tmp_path):
    root = tmp_path / "imgs"
    solid(root / "a" / "1.JPG", (10, 10, 10))
    solid(root / "a" / "2.Jpeg", (10, 10, 10))
    (root / "b").mkdir()
    Image.fromarray(np.full((H, W), 200, np.uint8), "L").save(root / "b" / "1.png")
    Image.fromarray(np.full((H, W, 4), 200, np.uint8), "RGBA").save(root / "b" / "2.PNG")
    Image.fromarray(np.full((H, W), 200, np.uint8), "L").convert("P").save(root / "b" / "3.gif")
    Image.fromarray(np.full((H, W, 3), 10, np.uint8)).save(root / "a" / "3.bmp")
    data = load_dataset(f"folder:{root}", data_dir=tmp_path, options={"test_fraction": 0.34})
    assert len(data.train) + len(data.test) == 6
    for part in (data.train, data.test):  # grey, palette and RGBA all become RGB
        x = part.images().astype(int)
        assert np.all(np.abs(x - np.where(part.y == 0, 10, 200)[:, None, None, None]) <= 3)


def test_images_above_label_depth_are_skipped(tmp_path, caplog):
    root = tmp_path / "imgs"
    for c in ("x", "y"):
        for k in range(3):
            solid(root / c / "deeper" / f"{k}.png", (0, 0, 0))
    solid(root / "loose.png", (0, 0, 0))
    solid(root / "x" / "shallow.png", (0, 0, 0))
    d = load_dataset(f"folder:{root}", data_dir=tmp_path, options={"label_depth": 2, "test_fraction": 0.5})
    assert d.classes == ("x/deeper", "y/deeper") and len(d.train) + len(d.test) == 6
    assert "skipped 2 image(s) less than 2 folder(s) below" in caplog.text
    d1 = load_dataset(f"folder:{root}", data_dir=tmp_path, options={"test_fraction": 0.5})
    assert np.bincount(np.concatenate([d1.train.y, d1.test.y])).tolist() == [4, 3]
    assert "skipped 1 image(s) less than 1 folder(s) below" in caplog.text
    # Both depths read one cache of every image found: choosing files is no reason to decode again.
    assert caplog.text.count("decoded 8 images") == 1 and "rebuilding" not in caplog.text
    assert d1.meta["cache"] == d.meta["cache"] and d1.train.x.shape[0] == 8


def test_class_with_one_image(tmp_path, caplog):
    root = tmp_path / "imgs"
    for c, n in (("a", 4), ("b", 4), ("c", 4), ("lonely", 1)):
        for k in range(n):
            solid(root / c / f"{k}.png", (k, k, k))
    with pytest.raises(DMLBenchError) as e:
        load_dataset(f"folder:{root}", data_dir=tmp_path)
    msg = one_line(e)
    assert "'lonely' has 1 image" in msg and "data.min_class_size=2" in msg
    d = load_dataset(f"folder:{root}", data_dir=tmp_path, options={"min_class_size": 2, "test_fraction": 0.25})
    assert d.classes == ("a", "b", "c") and len(d.train) + len(d.test) == 12
    assert "left out 1 class(es) with fewer than 2 images" in caplog.text
    assert "decoded 13 images" in caplog.text  # the cache holds every image found
    caplog.clear()
    d = load_dataset(f"folder:{root}", data_dir=tmp_path, options={"min_class_size": 1, "test_fraction": 0.25})
    assert d.classes == ("a", "b", "c")
    assert "fewer than 2 images" in caplog.text  # the effective threshold: a split needs 2
    assert "decoded" not in caplog.text and "rebuilding" not in caplog.text
    # An unreadable image in a class that is left out is no error.
    (root / "lonely" / "0.png").write_bytes(b"broken")
    d = load_dataset(f"folder:{root}", data_dir=tmp_path, options={"min_class_size": 2, "test_fraction": 0.25})
    assert len(d.train) + len(d.test) == 12


def test_folder_bad_paths(tmp_path):
    with pytest.raises(DMLBenchError, match="is not a folder"):
        load_dataset(f"folder:{tmp_path / 'nope'}", data_dir=tmp_path)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "x.txt").write_text("")
    with pytest.raises(DMLBenchError) as e:
        load_dataset(f"folder:{tmp_path / 'empty'}", data_dir=tmp_path)
    one_line(e)
    solid(tmp_path / "one" / "a" / "1.png", (0, 0, 0))
    solid(tmp_path / "one" / "a" / "2.png", (0, 0, 0))
    with pytest.raises(DMLBenchError, match="1 class folder"):
        load_dataset(f"folder:{tmp_path / 'one'}", data_dir=tmp_path)


def test_zappos_missing_names_where_files_go(tmp_path):
    with pytest.raises(DMLBenchError) as e:
        load_dataset("zappos50k", data_dir=tmp_path)
    msg = one_line(e)
    assert str(tmp_path / "ut-zap50k-images") in msg and "<Category>/<Subcategory>/<Brand>/*.jpg" in msg
    assert "ut-zap50k-images" in DATASETS.get("zappos50k").where
    # The square variant of the archive is found too.
    write_zappos(tmp_path, per_sub=2)
    (tmp_path / "ut-zap50k-images").rename(tmp_path / "ut-zap50k-images-square")
    d = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8})
    assert d.source == str(tmp_path / "ut-zap50k-images-square") and d.input_shape == (3, 8, 8)


# --- sizes, known before decoding ---------------------------------------------------------------------------

def test_planned_shape_without_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "decode", _no_decode)
    assert planned_shape("zappos50k", tmp_path, {}) == (3, 64, 64)
    assert planned_shape("zappos50k", tmp_path, {"resize": 48, "grayscale": True}) == (1, 48, 48)
    root = tmp_path / "imgs"
    solid(root / "a" / "1.jpg", (0, 0, 0), size=(136, 102))
    assert planned_shape(f"folder:{root}", tmp_path, {}) == (3, 102, 136)  # from the file header
    assert planned_shape(f"folder:{root}", tmp_path, {"resize": 32}) == (3, 32, 32)
    assert planned_shape(f"folder:{tmp_path / 'missing'}", tmp_path, {}) is None
    # zappos50k at its native size: known from the first file's header once the archive is there.
    solid(tmp_path / "ut-zap50k-images" / "Boots" / "Ankle" / "A" / "1.jpg", (0, 0, 0), size=(136, 102))
    assert planned_shape("zappos50k", tmp_path, {"resize": 0}) == (3, 102, 136)
    for name in ("cub200", "cars196", "sop", "inshop"):
        assert planned_shape(name, tmp_path, {}) == (3, 256, 256)
        assert planned_shape(name, tmp_path, {"resize": 224}) == (3, 224, 224)
    with pytest.raises(DMLBenchError):
        planned_shape("zappos50k", tmp_path, {"resize": "big"})


def test_native_size_mismatch_names_the_file(tmp_path, monkeypatch):
    """A size the header sample did not see (one of many thousands) stops the decode, naming the
    file and the fix; by default, a sample that sees two sizes resizes them all."""
    root = tmp_path / "imgs"
    for c in "ab":
        for k in range(3):
            solid(root / c / f"{k}.png", (1, 2, 3))
    odd = solid(root / "b" / "odd.png", (1, 2, 3), size=(W + 2, H))
    assert load_dataset(f"folder:{root}", data_dir=tmp_path, options={"test_fraction": 0.5}).input_shape[1] == \
        max(16, min(H, W) // 8 * 8)
    monkeypatch.setattr("dmlbench.data.photos.SIZE_SAMPLE", 1)  # the sample sees the first image only
    with pytest.raises(DMLBenchError) as e:
        load_dataset(f"folder:{root}", data_dir=tmp_path, options={"test_fraction": 0.5})
    msg = one_line(e)
    assert str(odd) in msg and "data.resize" in msg
    d = load_dataset(f"folder:{root}", data_dir=tmp_path, options={"test_fraction": 0.5, "resize": 8})
    assert d.input_shape == (3, 8, 8) and len(d.train) + len(d.test) == 7


def test_resize_modes_crop_and_stretch(tmp_path):
    # 32 x 16: red quarter | green half | blue quarter.
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :8, 0] = 255
    a[:, 8:24, 1] = 255
    a[:, 24:, 2] = 255
    p = tmp_path / "stripes.png"
    Image.fromarray(a).save(p)
    crop = decode(p, DecodeOptions(16, "crop"))
    assert crop.shape == (3, 16, 16) and crop.dtype == np.uint8
    assert np.all(crop[1] == 255) and np.all(crop[[0, 2]] == 0)  # the centre square is all green
    stretch = decode(p, DecodeOptions(16, "stretch"))
    assert stretch.shape == (3, 16, 16)
    assert stretch[0, :, 0].min() > 200 and stretch[2, :, -1].min() > 200  # both sides kept, squeezed
    gray = decode(p, DecodeOptions(8, "stretch", grayscale=True))
    assert gray.shape == (1, 8, 8)
    native = decode(p, DecodeOptions())
    assert native.shape == (3, 16, 32) and np.array_equal(native, a.transpose(2, 0, 1))
    # Portrait: the shorter side is the width.
    tall = decode(solid(tmp_path / "tall.jpg", (0, 0, 0), size=(20, 50)), DecodeOptions(10))
    assert tall.shape == (3, 10, 10)
    with pytest.raises(DMLBenchError, match="resize_mode='fit'"):
        DecodeOptions(16, "fit")
    with pytest.raises(DMLBenchError):
        load_dataset("zappos50k", data_dir=tmp_path, options={"resize": -1})


def test_grayscale_and_stretch_options_through_the_loader(tmp_path):
    write_zappos(tmp_path, per_sub=2)
    d = load_dataset("zappos50k", data_dir=tmp_path, options={"grayscale": True, "resize": 12,
                                                             "resize_mode": "stretch"})
    assert d.input_shape == (1, 12, 12) and d.train.x.dtype == np.uint8
    assert d.meta["decode"] == "s12-stretch-L"


# --- the decode cache ---------------------------------------------------------------------------------------

def _cache_files(data_dir: Path) -> tuple[Path, Path]:
    (npy,) = sorted(cache_dir().glob("*.npy"))
    return npy, npy.with_suffix(".json")


def _all_rows(d) -> np.ndarray:
    return np.asarray(d.train.x)


def test_cache_is_built_once_then_mapped(tmp_path, monkeypatch, caplog):
    write_zappos(tmp_path, per_sub=2)
    first = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 16})
    assert "decoded 42 images" in caplog.text
    npy, header = _cache_files(tmp_path)
    assert npy.name.startswith("zappos50k-s16-crop-RGB-")
    h = json.loads(header.read_text())
    assert h["format"] == "dmlbench-image-cache/1" and h["files"] == 42 and h["shape"] == [3, 16, 16]
    assert h["bad"] == [] and len(h["content_key"]) == 64
    assert first.meta["cache"] == str(npy)
    arr = np.load(npy, mmap_mode="r")
    assert arr.dtype == np.uint8 and arr.shape == (42, 3, 16, 16)
    assert not list(cache_dir().glob("*.tmp"))

    caplog.clear()
    monkeypatch.setattr(images_mod, "decode", _no_decode)
    again = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 16})
    assert "decoded" not in caplog.text and "rebuilding" not in caplog.text
    assert isinstance(again.train.x, np.memmap) and str(again.train.x.filename) == str(npy)
    assert np.array_equal(_all_rows(again), _all_rows(first))
    assert np.array_equal(again.train.y, first.train.y) and np.array_equal(again.test.rows, first.test.rows)
    # Other decode options are another cache.
    calls = []
    monkeypatch.setattr(images_mod, "decode", lambda p, o: calls.append(p) or np.zeros((3, 8, 8), np.uint8))
    load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8})
    assert len(calls) == 42 and len(list(cache_dir().glob("*.npy"))) == 2


def test_the_cache_goes_to_the_users_cache_folder_and_a_read_only_data_folder_works(tmp_path, monkeypatch):
    """The data folder is only read: the cache goes under $XDG_CACHE_HOME/dmlbench/decoded, and a
    read-only data folder (files and folders without write permission) loads, twice."""
    import os
    import stat

    data = tmp_path / "data"
    write_zappos(data, per_sub=2)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir(data) == tmp_path / "xdg" / "dmlbench" / "decoded"
    before = sorted(str(p) for p in data.rglob("*"))
    modes = {}
    for p in [data, *data.rglob("*")]:
        modes[p] = p.stat().st_mode
        os.chmod(p, modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        first = load_dataset("zappos50k", data_dir=data, options={"resize": 8})
        again = load_dataset("zappos50k", data_dir=data, options={"resize": 8})
    finally:
        for p, mode in sorted(modes.items(), key=lambda kv: -len(kv[0].parts)):
            os.chmod(p, mode)
    assert sorted(str(p) for p in data.rglob("*")) == before  # nothing written into the data folder
    assert len(list((tmp_path / "xdg" / "dmlbench" / "decoded").glob("zappos50k-*.npy"))) == 1
    assert np.array_equal(_all_rows(first), _all_rows(again))


def test_cache_folder_from_environment(tmp_path, monkeypatch):
    write_zappos(tmp_path / "data", per_sub=2)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert cache_dir(tmp_path / "data") == tmp_path / "elsewhere"
    load_dataset("zappos50k", data_dir=tmp_path / "data", options={"resize": 8})
    assert len(list((tmp_path / "elsewhere").glob("zappos50k-*.npy"))) == 1
    assert not (tmp_path / "data" / "dmlbench-cache").exists()


def test_cache_rebuilt_when_a_file_changes_or_is_added(tmp_path, caplog):
    root = write_zappos(tmp_path, per_sub=2)
    opts = {"resize": 16, "label_depth": 2, "test_fraction": 0.5}
    load_dataset("zappos50k", data_dir=tmp_path, options=opts)
    victim = sorted((root / "Boots" / "Ankle").rglob("*.jpg"))[0]
    solid(victim, (250, 250, 250))  # same name, new content (and size and mtime)
    caplog.clear()
    d = load_dataset("zappos50k", data_dir=tmp_path, options=opts)
    assert "rebuilding the decode cache" in caplog.text and "changed since it was built" in caplog.text
    x = np.asarray(d.train.x)
    assert (x.reshape(len(x), -1).mean(axis=1) > 240).sum() == 1  # the new pixels, not the stale ones

    solid(root / "Shoes" / "Flats" / "Nike" / "new.jpg", colour(2, 4))
    caplog.clear()
    d = load_dataset("zappos50k", data_dir=tmp_path, options=opts)
    assert "rebuilding" in caplog.text
    assert d.train.x.shape[0] == 43 and len(d.train) + len(d.test) == 43
    npy, header = _cache_files(tmp_path)
    assert json.loads(header.read_text())["files"] == 43

    (root / "Shoes" / "Flats" / "Nike" / "new.jpg").unlink()
    caplog.clear()
    d = load_dataset("zappos50k", data_dir=tmp_path, options=opts)
    assert "rebuilding" in caplog.text and d.train.x.shape[0] == 42


def test_cache_cut_off_is_rebuilt(tmp_path, caplog):
    write_zappos(tmp_path, per_sub=2)
    first = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 16})
    npy, header = _cache_files(tmp_path)
    expected = np.asarray(first.train.x).copy()
    del first
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    caplog.clear()
    d = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 16})
    assert "rebuilding the decode cache" in caplog.text and "cut off" in caplog.text
    assert np.array_equal(np.asarray(d.train.x), expected)
    # An image file without its header (killed before the header was written): rebuilt silently.
    del d
    header.unlink()
    caplog.clear()
    d = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 16})
    assert "decoded 42 images" in caplog.text and header.is_file()
    # The .npy gone but the header left: rebuilt.
    del d
    npy.unlink()
    caplog.clear()
    d = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 16})
    assert "image file is missing" in caplog.text and np.array_equal(np.asarray(d.train.x), expected)


def test_cache_garbage_npy_is_rebuilt_and_unwritable_folder_is_one_line(tmp_path, monkeypatch, caplog):
    write_zappos(tmp_path, per_sub=2)
    load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8})
    npy, _ = _cache_files(tmp_path)
    from dmlbench.core.io import UMASK

    assert npy.stat().st_mode & 0o777 == 0o666 & ~UMASK  # as the umask allows (mkstemp alone gives 0600)
    size = npy.stat().st_size
    npy.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    caplog.clear()
    d = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8})
    assert "unreadable" in caplog.text and d.train.x.shape == (42, 3, 8, 8)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "a-file" / "cache"))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8})
    msg = one_line(e)
    assert "cannot write the decode cache" in msg and CACHE_DIR_ENV in msg and str(tmp_path / "a-file") in msg


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b'{"format": "someone-else/3"}', b"[1, 2]"])
def test_corrupt_or_foreign_cache_header_is_one_line_error(tmp_path, content):
    write_zappos(tmp_path, per_sub=2)
    load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8})
    npy, header = _cache_files(tmp_path)
    header.write_bytes(content)
    with pytest.raises(DMLBenchError) as e:
        load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8})
    msg = one_line(e)
    assert str(header) in msg and "delete it" in msg
    assert header.read_bytes() == content  # not ours to overwrite


def test_corrupt_image_named_or_skipped(tmp_path, caplog, monkeypatch):
    root = write_zappos(tmp_path, per_sub=2)
    bad = root / "Sandals" / "Flat" / "Nike" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = sorted((root / "Shoes" / "Heels").rglob("*.jpg"))[0]
    cut = root / "Shoes" / "Heels" / "Nike" / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:200])  # a truncated JPEG
    with pytest.raises(DMLBenchError) as e:
        load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8})
    msg = one_line(e)
    assert str(bad) in msg and "(and 1 more)" in msg and "data.skip_bad=true" in msg
    # The cache recorded them: skipping reads it without decoding again.
    monkeypatch.setattr(images_mod, "decode", _no_decode)
    caplog.clear()
    d = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8, "skip_bad": True})
    assert len(d.train) + len(d.test) == 42 and d.train.x.shape[0] == 44
    assert "left out 2 unreadable image(s)" in caplog.text
    bad_rows = set(range(44)) - set(d.train.rows.tolist()) - set(d.test.rows.tolist())
    assert len(bad_rows) == 2


def test_skip_bad_that_empties_a_training_class_keeps_labels_contiguous(tmp_path):
    root = tmp_path / "imgs"
    red = {"a": 30, "b": 60, "c": 90}
    for c in red:
        for k in range(4):
            solid(root / c / f"{k}.png", (red[c], 0, 0))
    for k in range(4):
        (root / "b" / f"{k}.png").write_bytes(b"garbage")
    # With b unreadable the split still has b in its classes; training labels must stay 0..K-1.
    d = load_dataset(f"folder:{root}", data_dir=tmp_path, options={"skip_bad": True, "test_fraction": 0.5})
    assert d.num_train_classes == 2 and set(d.train.y.tolist()) == {0, 1}
    for part in (d.train, d.test):
        for i in range(len(part)):
            assert red[d.classes[part.y[i]]] == part.images(np.array([i]))[0, 0, 0, 0]


def test_cache_with_relative_or_linked_data_dir(tmp_path, monkeypatch):
    write_zappos(tmp_path / "real", per_sub=2)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    a = load_dataset("zappos50k", data_dir="real", options={"resize": 8})
    b = load_dataset("zappos50k", data_dir="link", options={"resize": 8})
    assert np.array_equal(np.asarray(a.train.x), np.asarray(b.train.x))
    c = load_dataset(f"folder:{Path('link') / 'ut-zap50k-images'}", data_dir="link", options={"resize": 8})
    assert len(c.classes) == 4


def test_two_loaders_build_the_cache_once(tmp_path, monkeypatch):
    write_zappos(tmp_path, per_sub=2)
    calls = []
    real = images_mod.decode

    def slow(path, opts):
        calls.append(path)
        threading.Event().wait(0.002)
        return real(path, opts)

    monkeypatch.setattr(images_mod, "decode", slow)
    out, errors = [], []

    def load():
        try:
            out.append(load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8}))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 2
    assert len(calls) == 42  # the second waited on the lock, then mapped the finished cache
    assert np.array_equal(np.asarray(out[0].train.x), np.asarray(out[1].train.x))


def test_process_pool_decodes_the_same_pixels(tmp_path):
    files = []
    for k in range(150):
        files.append(solid(tmp_path / "imgs" / f"{k:03d}.png", (k, 255 - k, k // 2)))
    out = {}
    for n in (1, 2):
        path = tmp_path / f"out{n}.npy"
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(150, 3, 8, 8))
        bad = decode_into(path, files, DecodeOptions(8), n_workers=n)
        assert bad == []
        out[n] = np.load(path)
    assert np.array_equal(out[1], out[2])
    assert out[2][:, 0, 0, 0].tolist() == list(range(150))


def test_image_cache_direct_bad_reasons(tmp_path):
    root = tmp_path / "r"
    files = [solid(root / f"{k}.png", (k, k, k)) for k in range(3)]
    (root / "x.png").write_bytes(b"nope")
    files.append(root / "x.png")
    cache = ImageCache("t", root, DecodeOptions(4), tmp_path / "c")
    with pytest.raises(DMLBenchError, match=r"cannot read image .*x\.png \(UnidentifiedImageError"):
        cache.load(files, (3, 4, 4))
    images, ok = cache.load(files, (3, 4, 4), skip_bad=True)
    assert ok.tolist() == [True, True, True, False] and images.shape == (4, 3, 4, 4)
    assert images[:3, 0, 0, 0].tolist() == [0, 1, 2]


# --- splits on a mapped dataset -----------------------------------------------------------------------------

def test_class_disjoint_split_of_a_folder_stays_a_view(tmp_path):
    write_zappos(tmp_path, per_sub=2)
    # (the loader's own stratified split comes first, then train and test are pooled)
    opts = {"resize": 8, "label_depth": 2, "test_fraction": 0.5}
    d = load_dataset("zappos50k", data_dir=tmp_path, split="classes", options=opts)
    assert d.split == "classes" and d.num_classes == 21 and d.num_train_classes == 10
    assert set(d.train.y.tolist()) == set(range(10)) and set(d.test.y.tolist()) == set(range(10, 21))
    assert len(d.train) == 20 and len(d.test) == 22
    assert d.train.x is d.test.x and isinstance(d.train.x, np.memmap)
    assert d.meta["train_classes"] == list(d.classes[:10])
    assert d.classes[:5] == ("Boots/Ankle", "Boots/Knee High", "Boots/Mid-Calf", "Boots/Over the Knee",
                             "Boots/Prewalker Boots")
    # Pixels still match labels: green names the subcategory.
    subs = {f"{c}/{s}": (ci, si) for ci, (c, ss) in enumerate(ZAPPOS.items()) for si, s in enumerate(ss)}
    for part in (d.train, d.test):
        for i in range(len(part)):
            assert np.all(np.abs(row_colour(part, i) - colour(*subs[d.classes[part.y[i]]])) <= 4)
    tuned = load_dataset("zappos50k", data_dir=tmp_path, split="classes", with_test=False, options=opts)
    assert tuned.test is None and tuned.num_train_classes == 10
    with pytest.raises(DMLBenchError, match="at least 4 classes"):
        load_dataset("folder:" + str(tmp_path / "ut-zap50k-images" / "Sandals"), data_dir=tmp_path,
                     split="classes", options={"resize": 8, "test_fraction": 0.5})


def test_validation_folds_and_standardize_on_a_mapped_dataset(tmp_path):
    write_zappos(tmp_path, per_sub=3)
    d = load_dataset("zappos50k", data_dir=tmp_path, options={"resize": 8, "label_depth": 2, "test_fraction": 0.4},
                     normalize="standard",
                     with_test=False)
    assert d.test is None and d.norm is not None and 0 < d.norm[0] < 1
    fold = validation_fold(d, "classes", fold_assignment(d, "classes", 4, 0), 0)
    assert fold.train.x is d.train.x and isinstance(fold.test.x, np.memmap)
    assert set(fold.train.y.tolist()) == set(range(fold.num_train_classes))
    assert not set(fold.train.y.tolist()) & set(fold.test.y.tolist())


# --- no torch in the data package ---------------------------------------------------------------------------

def test_data_package_does_not_import_torch(tmp_path):
    write_zappos(tmp_path, per_sub=2)
    code = ("import sys; from dmlbench.data import load_dataset; "
            f"d = load_dataset('zappos50k', data_dir={str(tmp_path)!r}, options={{'resize': 8}}); "
            "assert len(d.train) + len(d.test) == 42; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the seeded stratified split of a folder ----------------------------------------------------------------

def test_stratified_split_sizes_and_seeding():
    from dmlbench.data.photos import stratified_split

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(21), rng.integers(2, 40, 21))
    rng.shuffle(labels)
    for frac in (0.1, 0.2, 0.5, 0.9):
        train = stratified_split(labels, frac, seed=0)
        n_test = int((~train).sum())
        assert n_test == int(np.ceil(frac * len(labels) - 1e-9))
        assert set(labels[train]) == set(labels[~train]) == set(range(21))  # every class on both sides
        share = np.bincount(labels[~train], minlength=21) / np.bincount(labels)
        assert np.all(np.abs(share - n_test / len(labels)) < 0.5)
    a, b, c = (stratified_split(labels, 0.2, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # Labels with gaps (a class left out) and classes of two.
    gappy = np.array([0, 0, 3, 3, 3, 5, 5])
    m = stratified_split(gappy, 0.4, 0)
    assert set(gappy[m]) == set(gappy[~m]) == {0, 3, 5}
    for bad in (0.0, 1.0, 0.05):
        with pytest.raises(ValueError):
            stratified_split(labels, bad, 0)  # 0.05: fewer test images than classes
    with pytest.raises(ValueError):
        stratified_split(np.array([0, 0, 1]), 0.5, 0)


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status here")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_release_drops_a_mapped_parts_pages_and_keeps_its_data(tmp_path):
    from dmlbench.data.base import Part

    n = 2048
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(n, 3, 64, 64))
    x[:] = np.arange(n, dtype=np.uint8)[:, None, None, None]
    x.flush()
    del x
    part = Part(np.load(tmp_path / "x.npy", mmap_mode="r"), np.zeros(n, np.int64))
    before = _rss_file_kib()
    total = int(part.images().sum(dtype=np.int64))           # every page read: ~24 MiB mapped in
    read = _rss_file_kib()
    part.release()
    after = _rss_file_kib()
    assert read - before > 16_000 and read - after > 16_000, (before, read, after)
    assert int(part.images().sum(dtype=np.int64)) == total   # the data reads back the same
    Part(np.zeros((2, 1, 2, 2), np.uint8), np.zeros(2, np.int64)).release()  # in memory: a no-op


def test_a_folder_of_mixed_sizes_is_resized_by_default_and_runs(tmp_path, caplog):
    """Photos of several sizes are the normal case: by default each is resized (shorter side, then
    centre crop) to a square of the median shorter side, said in one line and recorded in the run's
    config; one size keeps its native size."""
    from helpers_data import FOLDER_H, FOLDER_W, write_image_folder
    from PIL import Image
    from typer.testing import CliRunner

    from dmlbench.cli import app

    root = tmp_path / "photos"
    for ci, cls in enumerate(["cats", "dogs", "owls"]):
        (root / cls).mkdir(parents=True)
        for k, (w, h) in enumerate([(640, 480), (480, 640), (512, 512), (300, 200)] * 3):
            Image.fromarray(np.full((h, w, 3), 40 * ci + 5 * k, np.uint8)).save(root / cls / f"{k}.jpg")
    d = load_dataset(f"folder:{root}")
    assert d.input_shape == (3, 256, 256) and d.meta["decode"] == "s256-crop-RGB"  # median shorter side 480 -> 256
    assert "images of 4 sizes" in caplog.text and "resized to 256x256 (shorter side, centre crop)" in caplog.text
    r = CliRunner().invoke(app, ["run", "--dataset", f"folder:{root}", "--methods", "siamese", "--steps", "2",
                                 "--test-triplets", "20", "--threads", "1", "--out", str(tmp_path / "out"),
                                 "--image-size", "32", "--batch-size", "8"])
    assert r.exit_code == 0, r.stderr
    (cfg,) = (tmp_path / "out").rglob("siamese/*/config.json")
    assert json.loads(cfg.read_text())["data"]["decode"] == "s256-crop-RGB"
    same = tmp_path / "same"
    write_image_folder(same, ["a", "b"], per_class=3)
    assert load_dataset(f"folder:{same}").input_shape == (3, FOLDER_H, FOLDER_W)  # one size: native
