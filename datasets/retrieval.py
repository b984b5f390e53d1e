"""The metric-learning benchmarks, read from their official archives' layouts.

| name      | files under the data folder                                             | split |
| --------- | ----------------------------------------------------------------------- | ----- |
| cub200    | CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/} | classes 1-100 train, 101-200 test |
| cars196   | cars196/{cars_annos.mat, car_ims/}                                      | classes 1-98 train, 99-196 test |
| sop       | Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <category>_final/} | the two lists |
| inshop    | inshop/{list_eval_partition.txt, img/} (or Eval/list_eval_partition.txt) | train; query vs gallery |

Each protocol is class-disjoint: the test classes are never trained on. In-Shop's test set is
split into queries and a gallery; retrieval metrics then rank the gallery for each query.
Images are decoded once (default: stretched to 256x256, as MLRC's ``Resize((256, 256))``) into
the decode cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.data.base import PHOTO_DEFAULTS, register_dataset
from dmlbench.data.images import DecodeOptions
from dmlbench.data.photos import photo_data, planned_shape

BENCH_DEFAULTS = {**PHOTO_DEFAULTS, "embedding_dim": 128, "epochs": 30}


def _need(path: Path, name: str, archive: str) -> Path:
    if not path.exists():
        raise DMLBenchError(f"{name}: {path} is missing; unpack {archive} into the data folder "
                            "(--data-dir or $DMLBENCH_DATA_DIR) so that this path exists")
    return path


def _rows(path: Path, name: str, n_fields: int, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows with at least ``n_fields`` fields, each a one-line error if not."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DMLBenchError(f"{name}: cannot read {path} ({type(e).__name__}); unpack the archive again") from None
    for i, line in enumerate(lines[skip:], skip + 1):
        if not line.strip():
            continue
        f = line.split()
        if len(f) < n_fields:
            raise DMLBenchError(f"{name}: {path} line {i} has {len(f)} field(s), expected {n_fields}: {line[:80]!r}; "
                                "the annotation file is damaged, unpack the archive again")
        rows.append(f)
    return rows


def _int(text: str, path: Path, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DMLBenchError(f"{name}: {path} holds {text!r} where a number belongs; the annotation file is damaged, "
                            "unpack the archive again") from None


def _files_exist(root: Path, rel: list[str], name: str, archive: str) -> list[Path]:
    files = [root / r for r in rel]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise DMLBenchError(f"{name}: image {missing} listed in the annotations is missing; unpack {archive} again")
    return files


@dataclass
class Listing:
    """What a benchmark's annotation files say: every image, its class (0-based, training classes
    first), the class names, which images train, and for In-Shop which test images are queries and
    which the gallery."""

    files: list[Path]
    labels: np.ndarray
    names: list[str]
    train: np.ndarray
    query: np.ndarray | None = None
    gallery: np.ndarray | None = None


def _opts(o: dict) -> DecodeOptions:
    return DecodeOptions(int(o.get("resize", 256)), o.get("resize_mode", "stretch"), bool(o.get("grayscale", False)))


def _shape(data_dir, path, o):
    return planned_shape(_opts(o), None)


def benchmark(name: str, folder: str, archive: str, *, description: str, size: str, classes: str, where: str):
    """Register a benchmark: the decorated ``parse(root, name, archive) -> Listing`` reads its
    annotation files under ``<data-dir>/<folder>`` (its errors name the dataset and the archive); the loader around it (the same options for every benchmark,
    ``--set data.resize=...``) checks the folder is there and decodes the listed images."""
    def decorator(parse: Callable[[Path, str, str], Listing]) -> Callable[[Path, str, str], Listing]:
        def load(data_dir: Path, seed: int = 0, with_test: bool = True, resize: int = 256,
                 resize_mode: str = "stretch", grayscale: bool = False, skip_bad: bool = False):
            root = _need(Path(data_dir) / folder, name, archive)
            got = parse(root, name, archive)
            return photo_data(name, root, got.files, got.labels, got.names, got.train,
                              DecodeOptions(resize, resize_mode, grayscale), data_dir, with_test=with_test,
                              skip_bad=skip_bad, split="classes", query=got.query, gallery=got.gallery)

        load.__name__ = load.__qualname__ = f"load_{name.replace('-', '_')}"
        register_dataset(name, description=description, size=size, classes=classes,
                         input_shape="3x256x256 (data.resize)", where=where, defaults=BENCH_DEFAULTS, shape=_shape)(load)
        return parse

    return decorator


@benchmark("cub200", "CUB_200_2011", "CUB_200_2011.tgz",
           description="CUB-200-2011 birds (Wah et al. 2011): classes 1-100 train, 101-200 test",
           size="5,864 / 5,924 (11,788)", classes="100 / 100",
           where="<data-dir>/CUB_200_2011/ (from CUB_200_2011.tgz: images.txt, image_class_labels.txt, classes.txt, "
                 "images/)")
def cub200(root: Path, name: str, archive: str) -> Listing:
    """CUB's images.txt, image_class_labels.txt and classes.txt; classes 1-100 train."""
    images = _rows(_need(root / "images.txt", name, archive), name, 2)
    labels = dict((r[0], _int(r[1], root / "image_class_labels.txt", name))
                  for r in _rows(_need(root / "image_class_labels.txt", name, archive), name, 2))
    class_rows = _rows(_need(root / "classes.txt", name, archive), name, 2)
    names = [r[1] for r in sorted(class_rows, key=lambda r: _int(r[0], root / "classes.txt", name))]
    if len(names) != 200:
        raise DMLBenchError(f"{name}: {root / 'classes.txt'} lists {len(names)} classes, not 200; unpack {archive} again")
    missing = [r[0] for r in images if r[0] not in labels]
    if missing:
        raise DMLBenchError(f"{name}: image id {missing[0]} of images.txt has no class in image_class_labels.txt")
    files = _files_exist(root / "images", [r[1] for r in images], name, archive)
    cls = np.array([labels[r[0]] - 1 for r in images], dtype=np.int64)
    return Listing(files, cls, names, cls < 100)


@benchmark("cars196", "cars196", "car_ims.tgz and cars_annos.mat",
           description="Stanford Cars (Krause et al. 2013): classes 1-98 train, 99-196 test, read from cars_annos.mat",
           size="8,054 / 8,131 (16,185)", classes="98 / 98",
           where="<data-dir>/cars196/ (cars_annos.mat, and car_ims/ from car_ims.tgz)")
def cars196(root: Path, name: str, archive: str) -> Listing:
    """Stanford Cars' cars_annos.mat; classes 1-98 train."""
    from scipy.io import loadmat

    mat_path = _need(root / "cars_annos.mat", name, archive)
    try:
        mat = loadmat(mat_path, squeeze_me=True, struct_as_record=False)
        annos = np.atleast_1d(mat["annotations"])
        rel = [str(a.relative_im_path) for a in annos]
        cls = np.array([int(a.__dict__["class"]) for a in annos], dtype=np.int64) - 1
        names = [str(n) for n in np.atleast_1d(mat["class_names"])]
    except (ValueError, KeyError, AttributeError, TypeError, OSError) as e:
        raise DMLBenchError(f"{name}: {mat_path} does not parse as the Stanford Cars annotations "
                            f"({type(e).__name__}: {e}); download cars_annos.mat again") from None
    if len(names) != 196 or cls.min() < 0 or cls.max() >= 196:
        raise DMLBenchError(f"{name}: {mat_path} has {len(names)} class names and classes "
                            f"{cls.min() + 1}..{cls.max() + 1}, not 196; download cars_annos.mat again")
    return Listing(_files_exist(root, rel, name, archive), cls, names, cls < 98)


@benchmark("sop", "Stanford_Online_Products", "Stanford_Online_Products.zip",
           description="Stanford Online Products (Oh Song et al. 2016): Ebay_train.txt / Ebay_test.txt",
           size="59,551 / 60,502 (120,053)", classes="11,318 / 11,316",
           where="<data-dir>/Stanford_Online_Products/ (Ebay_train.txt, Ebay_test.txt, <category>_final/)")
def sop(root: Path, name: str, archive: str) -> Listing:
    """SOP's Ebay_train.txt and Ebay_test.txt; their classes are disjoint."""
    rows = {}
    for part in ("train", "test"):
        path = _need(root / f"Ebay_{part}.txt", name, archive)
        rows[part] = _rows(path, name, 4)
        if rows[part] and not rows[part][0][1].isdigit():  # the header: image_id class_id super_class_id path
            rows[part] = rows[part][1:]
    rel = [r[3] for p in ("train", "test") for r in rows[p]]
    class_id = np.array([_int(r[1], root / f"Ebay_{p}.txt", name) for p in ("train", "test") for r in rows[p]])
    is_train = np.array([p == "train" for p in ("train", "test") for _ in rows[p]])
    train_ids = np.unique(class_id[is_train])
    if np.isin(np.unique(class_id[~is_train]), train_ids).any():
        raise DMLBenchError(f"{name}: Ebay_train.txt and Ebay_test.txt share classes; the lists are not the official ones")
    ids = np.concatenate([train_ids, np.unique(class_id[~is_train])])
    order = {int(v): i for i, v in enumerate(ids)}
    cls = np.array([order[int(c)] for c in class_id], dtype=np.int64)
    return Listing(_files_exist(root, rel, name, archive), cls, [str(i) for i in ids], cls < len(train_ids))


@benchmark("inshop", "inshop", "In-shop Clothes Retrieval Benchmark (img.zip and Eval/list_eval_partition.txt)",
           description="DeepFashion In-Shop retrieval (Liu et al. 2016): train items; query vs gallery for test",
           size="25,882 / 14,218 queries + 12,612 gallery", classes="3,997 / 3,985 items",
           where="<data-dir>/inshop/ (list_eval_partition.txt, or Eval/list_eval_partition.txt, and img/)")
def inshop(root: Path, name: str, archive: str) -> Listing:
    """In-Shop's list_eval_partition.txt: train items, and test queries against a gallery."""
    part_file = root / "list_eval_partition.txt"
    if not part_file.is_file():
        part_file = _need(root / "Eval" / "list_eval_partition.txt", name, archive)
    rows = _rows(part_file, name, 3, skip=2)  # line 1: the count; line 2: the header
    status = np.array([r[2] for r in rows])
    bad = set(status) - {"train", "query", "gallery"}
    if bad:
        raise DMLBenchError(f"{name}: {part_file} has evaluation status {sorted(bad)[0]!r}; expected train, query "
                            "or gallery")
    items = np.array([r[1] for r in rows])
    is_train = status == "train"
    train_items = np.unique(items[is_train])
    test_items = np.unique(items[~is_train])
    if np.isin(test_items, train_items).any():
        raise DMLBenchError(f"{name}: {part_file} puts one item in train and test; it is not the official partition")
    ids = np.concatenate([train_items, test_items])
    order = {v: i for i, v in enumerate(ids)}
    cls = np.array([order[v] for v in items], dtype=np.int64)
    return Listing(_files_exist(root, [r[0] for r in rows], name, archive), cls, [str(i) for i in ids], is_train,
                   query=status == "query", gallery=status == "gallery")
