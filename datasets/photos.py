"""Photo collections: image folders (``folder:PATH``, ``zappos50k``) through the decode cache.

:func:`photo_data` turns a list of image files with labels into a :class:`Data` whose parts are
views into the memory-mapped cache. The folder loaders find images recursively and take the class
from the folder ``label_depth`` levels below the root (1: the first level).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.data.base import PHOTO_DEFAULTS, Data, Part, register_dataset
from dmlbench.data.cache import ImageCache, cache_dir
from dmlbench.data.images import DecodeOptions, image_size, scan

log = logging.getLogger("dmlbench")


def planned_shape(opts: DecodeOptions, first_file: str | os.PathLike | None) -> tuple[int, int, int] | None:
    """The decoded image shape, known before decoding: from the options, else the first file's header."""
    if opts.size:
        return (opts.channels, opts.size, opts.size)
    if first_file is None:
        return None
    try:
        h, w = image_size(first_file)
    except Exception as e:  # noqa: BLE001 - a broken first file
        raise DMLBenchError(f"cannot read image {first_file} ({type(e).__name__}); remove or replace it") from None
    return (opts.channels, h, w)


def photo_data(name: str, root: Path, files: list[Path] | list[str], labels: np.ndarray, classes: list[str],
               train: np.ndarray, opts: DecodeOptions, data_dir, *, with_test: bool = True, skip_bad: bool = False,
               split: str = "standard", query: np.ndarray | None = None, gallery: np.ndarray | None = None,
               cache_files: list[Path] | list[str] | None = None, cache_rows: np.ndarray | None = None) -> Data:
    """``train``: a boolean mask over ``files``; the rest is test. ``query``/``gallery``: boolean
    masks over ``files`` (within test) where the dataset defines them. Labels of training classes
    must be 0..K-1.

    ``cache_files``/``cache_rows``: the files the decode cache holds (all images of a folder) and
    the row of each of ``files`` among them, so that options that only choose files (label_depth,
    min_class_size) share one cache instead of rebuilding it."""
    if cache_files is None:
        cache_files, cache_rows = files, np.arange(len(files), dtype=np.int64)
    shape = planned_shape(opts, files[0] if files else None)
    if shape is None:
        raise DMLBenchError(f"{name}: no images found in {root}")
    images, ok_all = ImageCache(name, root, opts, cache_dir(data_dir)).load(cache_files, shape, skip_bad=skip_bad,
                                                                           used=cache_rows)
    ok = ok_all[cache_rows]
    labels = np.asarray(labels, dtype=np.int64)
    tr = np.flatnonzero(train & ok)
    te = np.flatnonzero(~train & ok)
    if not len(tr):
        raise DMLBenchError(f"{name}: no readable training image in {root}")
    train_part = Part(images, labels[tr], cache_rows[tr])
    if len(np.unique(train_part.y)) != train_part.y.max() + 1:  # a class lost every image to skip_bad
        present = np.unique(train_part.y)
        mapping = np.full(len(classes), -1, np.int64)
        mapping[present] = np.arange(len(present))
        rest = np.setdiff1d(np.arange(len(classes)), present)
        mapping[rest] = np.arange(len(present), len(classes))
        classes = [classes[i] for i in np.argsort(mapping)]
        labels = mapping[labels]
        train_part = Part(images, labels[tr], cache_rows[tr])
    test_part = Part(images, labels[te], cache_rows[te]) if with_test else None
    q = g = None
    if with_test and query is not None:
        pos = {int(i): k for k, i in enumerate(te)}
        q = np.array([pos[i] for i in np.flatnonzero(query & ok)], dtype=np.int64)
        g = np.array([pos[i] for i in np.flatnonzero(gallery & ok)], dtype=np.int64)
    return Data(name, train_part, test_part, classes, source=str(root), split=split, query=q, gallery=g,
                meta={"cache": str(images.filename) if hasattr(images, "filename") else "", "decode": opts.key()})


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """A seeded stratified split: a mask of the training items. ceil(test_fraction * n) test items,
    shared out over the classes in proportion to their size (largest remainders first), with at
    least one item of every class on each side. Raises ValueError when that is impossible."""
    n = len(labels)
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be between 0 and 1")
    counts = np.bincount(labels)
    present = counts > 0
    k = int(present.sum())
    n_test = int(np.ceil(test_fraction * n - 1e-9))
    if counts[present].min() < 2 or n_test < k or n - n_test < k:
        raise ValueError(f"{n_test} test and {n - n_test} training images cannot both hold all {k} classes")
    rng = np.random.default_rng(seed)
    exact = counts * (n_test / n)
    alloc = np.clip(np.floor(exact), 1, np.maximum(counts - 1, 1)).astype(np.int64)
    alloc[~present] = 0
    order = np.lexsort((rng.random(len(counts)), -(exact - np.floor(exact))))  # largest remainder first
    while alloc.sum() != n_test:
        step = 1 if alloc.sum() < n_test else -1
        for c in (order if step > 0 else order[::-1]):
            if present[c] and 1 <= alloc[c] + step <= counts[c] - 1:
                alloc[c] += step
                if alloc.sum() == n_test:
                    break
    # A seeded random order within each class; its first alloc[c] items are test.
    perm = rng.permutation(n)
    perm = perm[np.argsort(labels[perm], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[perm] = np.arange(n) - starts[labels[perm]]
    return rank >= alloc[labels]


def _stratified(labels: np.ndarray, test_fraction: float, seed: int, root: Path, name: str) -> np.ndarray:
    try:
        return stratified_split(labels, test_fraction, seed)
    except ValueError as e:  # fewer test images than classes, or test_fraction outside (0, 1)
        raise DMLBenchError(f"{name}: cannot split {root} with test_fraction={test_fraction} ({e}); "
                            "add images or change data.test_fraction") from None


def folder_classes(root: Path, label_depth: int, min_class_size: int, name: str
                   ) -> tuple[list[str], np.ndarray, list[str], list[str], np.ndarray]:
    """Images below ``root`` and their class: the folder path down to ``label_depth`` levels.

    Returns the files used, their labels, the class names, every image found (what the decode
    cache holds) and the position of each used file among them."""
    if label_depth < 1:
        raise DMLBenchError(f"{name}: label_depth={label_depth} must be at least 1 (the first folder level)")
    found = scan(root)
    found.report(root)
    rel = found.parts
    deepest = max((len(p) - 1 for p in rel), default=0)
    if deepest < label_depth:
        raise DMLBenchError(f"{name}: label_depth={label_depth} is deeper than the tree: the deepest image in {root} "
                            f"is {deepest} folder(s) down; use a smaller data.label_depth")
    files, keys, rows = [], [], []
    too_shallow = 0
    for i, (f, p) in enumerate(zip(found.files, rel)):
        if len(p) - 1 < label_depth:
            too_shallow += 1
            continue
        files.append(f)
        rows.append(i)
        keys.append("/".join(p[:label_depth]))
    rows = np.asarray(rows, dtype=np.int64)
    if too_shallow:
        log.warning("%s: skipped %d image(s) less than %d folder(s) below %s (no class)", name, too_shallow,
                    label_depth, root)
    names, labels, counts = np.unique(np.array(keys, dtype=object), return_inverse=True, return_counts=True)
    need = max(min_class_size, 2)  # a class needs an image in train and one in test
    small = counts < need
    if small.any() and min_class_size == 0:
        c = int(np.argmax(small))
        raise DMLBenchError(f"{name}: class {names[c]!r} has {counts[c]} image; every class needs at least 2 to "
                            "appear in train and test (add images, or set data.min_class_size=2 to leave such "
                            f"classes out: {int(small.sum())} of {len(names)})")
    if small.any():
        log.warning("%s: left out %d class(es) with fewer than %d images (data.min_class_size=%d)", name,
                    int(small.sum()), need, min_class_size)
        keep = ~small[labels]
        files = [f for f, k in zip(files, keep) if k]
        rows = rows[keep]
        kept = np.flatnonzero(~small)
        remap = np.full(len(names), -1)
        remap[kept] = np.arange(len(kept))
        labels, names = remap[labels[keep]], names[kept]
    if len(names) < 2:
        raise DMLBenchError(f"{name}: {root} has {len(names)} class folder(s) with images at label_depth="
                            f"{label_depth}; it needs at least 2")
    return files, labels.astype(np.int64), [str(n) for n in names], found.files, rows


SIZE_SAMPLE = 2000  # image headers read to tell a folder's sizes (evenly spaced; a header costs ~0.1 ms)
AUTO_MAX = 256  # the largest side an automatic resize picks (MLRC's 256, from which 224 crops are taken)


def auto_options(files: list, opts: DecodeOptions, name: str, announce: bool = True) -> DecodeOptions:
    """``resize=0`` (automatic): images of one size keep it; images of several sizes (the normal
    case for one's own photos) are resized, shorter side then centre crop, to a square of the
    sample's median shorter side (at most 256, a multiple of 8). Said in one line when it resizes."""
    if opts.size or not files:
        return opts
    step = max(1, len(files) // SIZE_SAMPLE)
    sizes = []
    for f in files[::step][:SIZE_SAMPLE]:
        try:
            sizes.append(image_size(f))
        except Exception:  # noqa: BLE001 - a broken file is reported, named, when it is decoded
            continue
    if len(set(sizes)) <= 1:
        return opts
    side = int(np.median([min(h, w) for h, w in sizes]))
    side = max(16, min(AUTO_MAX, side) // 8 * 8)
    if announce:
        common = ", ".join(f"{w}x{h}" for (h, w) in sorted(set(sizes), key=sizes.count, reverse=True)[:3])
        log.warning("%s: images of %d sizes (%s, ...): each resized to %dx%d (shorter side, centre crop); set "
                    "data.resize=S to choose another size", name, len(set(sizes)), common, side, side)
    return DecodeOptions(side, "crop", opts.grayscale)


def _folder(name: str, root: Path, data_dir, seed: int, with_test: bool, resize: int, resize_mode: str,
            grayscale: bool, label_depth: int, test_fraction: float, skip_bad: bool, min_class_size: int) -> Data:
    files, labels, classes, found, rows = folder_classes(root, label_depth, min_class_size, name)
    opts = auto_options(found, DecodeOptions(resize, resize_mode, grayscale), name)
    train = _stratified(labels, test_fraction, seed, root, name)
    return photo_data(name, root, files, labels, classes, train, opts, data_dir, with_test=with_test, skip_bad=skip_bad,
                      cache_files=found, cache_rows=rows)


def _folder_shape(root: Path, opts: DecodeOptions) -> tuple[int, int, int] | None:
    if opts.size:
        return planned_shape(opts, None)
    if not root.is_dir():
        return None
    found = scan(root).files
    return None if not found else planned_shape(auto_options(found, opts, "folder", announce=False), found[0])


def _opts(options: dict) -> DecodeOptions:
    return DecodeOptions(int(options.get("resize", 0)), options.get("resize_mode", "crop"),
                         bool(options.get("grayscale", False)))


@register_dataset("folder", description="an image folder: the class is the folder label_depth levels down "
                                        "(--dataset folder:PATH)",
                  size="any (seeded stratified split)", classes=">= 2",
                  input_shape="as read; mixed sizes: a square of their median shorter side (at most 256); or "
                              "data.resize=S",
                  where="PATH/<class>/.../<image>", defaults=PHOTO_DEFAULTS,
                  shape=lambda data_dir, path, o: _folder_shape(Path(path).expanduser(), _opts(o)))
def load_folder(data_dir: Path | None = None, seed: int = 0, with_test: bool = True, path: str = "", resize: int = 0,
                resize_mode: str = "crop", grayscale: bool = False, label_depth: int = 1, test_fraction: float = 0.2,
                skip_bad: bool = False, min_class_size: int = 0) -> Data:
    """The images below folder ``path``, classed by the folder ``label_depth`` levels down, split stratified and
    seeded by ``seed``; decoded once into the cache."""
    if not path:
        raise DMLBenchError("folder: no path given; name it as folder:PATH/TO/IMAGES")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DMLBenchError(f"folder: {root} is not a folder; give a folder with one sub-folder per class")
    return _folder("folder", root, data_dir, seed, with_test, resize, resize_mode, grayscale, label_depth,
                   test_fraction, skip_bad, min_class_size)


ZAPPOS_DIRS = ("ut-zap50k-images", "ut-zap50k-images-square")


def _zappos_root(data_dir: Path, must_exist: bool = True) -> Path | None:
    for d in ZAPPOS_DIRS:
        if (data_dir / d).is_dir():
            return data_dir / d
    if not must_exist:
        return None
    raise DMLBenchError(f"zappos50k: {data_dir / ZAPPOS_DIRS[0]} does not exist; unzip ut-zap50k-images.zip "
                        "(UT Zappos50K, vision.cs.utexas.edu/projects/finegrained/utzap50k) into the data folder, "
                        "giving <data-dir>/ut-zap50k-images/<Category>/<Subcategory>/<Brand>/*.jpg")


def _zappos_shape(data_dir: Path, opts: DecodeOptions) -> tuple[int, int, int] | None:
    if opts.size:
        return planned_shape(opts, None)
    root = _zappos_root(Path(data_dir), must_exist=False)
    return None if root is None else _folder_shape(root, opts)


@register_dataset("zappos50k", description="UT Zappos50K shoes (Yu & Grauman 2014), the TVAE authors' second dataset; "
                                           "label_depth 1: 4 categories, 2: 21 subcategories",
                  size="50,025 (seeded stratified 80/20 split)", classes="4 (depth 1) or 21 (depth 2)",
                  input_shape="3x102x136, or data.resize=S (default 64)",
                  where="<data-dir>/ut-zap50k-images/<Category>/<Subcategory>/<Brand>/*.jpg",
                  defaults={**PHOTO_DEFAULTS, "epochs": 10},
                  shape=lambda data_dir, path, o: _zappos_shape(data_dir, _opts({"resize": 64, **o})))
def load_zappos50k(data_dir: Path, seed: int = 0, with_test: bool = True, resize: int = 64, resize_mode: str = "crop",
                   grayscale: bool = False, label_depth: int = 1, test_fraction: float = 0.2,
                   skip_bad: bool = False, min_class_size: int = 0) -> Data:
    """UT Zappos50K from the data folder, as :func:`load_folder` reads it: 4 categories at depth 1, 21
    subcategories at depth 2; images resized to 64 by default."""
    return _folder("zappos50k", _zappos_root(data_dir), data_dir, seed, with_test, resize, resize_mode, grayscale,
                   label_depth, test_fraction, skip_bad, min_class_size)
