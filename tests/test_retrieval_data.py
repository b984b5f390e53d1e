"""CUB-200-2011, Cars196, Stanford Online Products and In-Shop, read from tiny replicas of their
official archives' layouts written into tmp_path (nothing is downloaded).

Each image is a solid colour whose red level is its class id (1-based, as in the annotation
files), so a loaded row can be checked against its label through its pixels (JPEG keeps a solid
colour within a few levels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmlbench.core.errors import DMLBenchError
from dmlbench.data import DATASETS, load_dataset, planned_shape
from dmlbench.data import images as images_mod
from dmlbench.data.cache import CACHE_DIR_ENV

SMALL = {"resize": 8}


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch, caplog):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    caplog.set_level(logging.INFO, logger="dmlbench")


def jpeg(path: Path, red: int, size=(16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.empty((size[1], size[0], 3), np.uint8)
    a[...] = (red % 256, (255 - red) % 256, 90)
    Image.fromarray(a).save(path, quality=95)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def check_pixels(part, class_ids: np.ndarray) -> None:
    """The red level of every row is the 1-based class id its label stands for."""
    x = part.images().astype(int)
    assert np.all(np.abs(x[:, 0] - (class_ids[part.y] % 256)[:, None, None]) <= 3)


# --- replicas -----------------------------------------------------------------------------------------------

def write_cub(data_dir: Path, per_class: int = 2) -> Path:
    """CUB_200_2011/: classes.txt, images.txt, image_class_labels.txt, train_test_split.txt, images/."""
    root = data_dir / "CUB_200_2011"
    classes, images, labels, split = [], [], [], []
    i = 0
    for c in range(1, 201):
        folder = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {folder}")
        for k in range(per_class + (c == 1)):  # class 1 has one more image
            i += 1
            rel = f"{folder}/Bird_{c}_{i:04d}_{k}.jpg"
            jpeg(root / "images" / rel, c)
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
            split.append(f"{i} {k % 2}")  # the official per-image split, which the DML protocol ignores
    for name, lines in (("classes.txt", classes), ("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split)):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


CAR_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")


def write_cars(data_dir: Path, per_class: int = 2, drop: str | None = None) -> Path:
    """cars196/cars_annos.mat (struct array `annotations` with the official fields, cell array
    `class_names`) and cars196/car_ims/000001.jpg ..."""
    from scipy.io import savemat

    root = data_dir / "cars196"
    n = 196 * per_class
    annos = np.zeros((1, n), dtype=[(f, "O") for f in CAR_FIELDS])
    for i in range(n):
        c = i // per_class + 1
        rel = f"car_ims/{i + 1:06d}.jpg"
        jpeg(root / rel, c)
        annos[0, i] = (np.array([rel]), np.array([[3]], np.uint8), np.array([[2]], np.uint8),
                       np.array([[14]], np.uint16), np.array([[10]], np.uint16), np.array([[c]], np.uint8),
                       np.array([[i % 2]], np.uint8))
    names = np.empty((1, 196), dtype=object)
    for c in range(196):
        names[0, c] = np.array([f"Make{c + 1} Model Sedan 2012"])
    content = {"annotations": annos, "class_names": names}
    if drop:
        content.pop(drop)
    savemat(root / "cars_annos.mat", content)
    return root


SOP_CATEGORIES = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa",
                  "stapler", "table", "toaster")


def write_sop(data_dir: Path, n_train: int = 8, n_test: int = 8) -> Path:
    """Stanford_Online_Products/Ebay_{train,test}.txt (header: image_id class_id super_class_id path) and
    <category>_final/<product>_<k>.JPG; train classes 1..n_train, test classes after them."""
    root = data_dir / "Stanford_Online_Products"
    image_id = 0
    for part, ids in (("train", range(1, n_train + 1)), ("test", range(n_train + 1, n_train + n_test + 1))):
        lines = ["image_id class_id super_class_id path"]
        for c in ids:
            sup = (c - 1) % len(SOP_CATEGORIES)
            for k in range(2 + c % 2):
                image_id += 1
                rel = f"{SOP_CATEGORIES[sup]}_final/{111085122800 + c}_{k}.JPG"
                jpeg(root / rel, c)
                lines.append(f"{image_id} {c} {sup + 1} {rel}")
        (root / f"Ebay_{part}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_inshop(data_dir: Path, eval_folder: bool = False) -> tuple[Path, list[tuple[str, int, str]]]:
    """inshop/list_eval_partition.txt (line 1: the count, line 2: the header) and img/<GENDER>/<Type>/<item>/*.jpg.
    4 training items x 3 images; 4 test items x (2 query + 2 gallery) images."""
    root = data_dir / "inshop"
    rows = []
    for n in range(1, 9):
        item = f"id_{n:08d}"
        gender, kind = ("WOMEN", "Dresses") if n % 2 else ("MEN", "Denim")
        statuses = ["train"] * 3 if n <= 4 else ["query", "gallery", "query", "gallery"]
        for k, status in enumerate(statuses):
            rel = f"img/{gender}/{kind}/{item}/{k + 1:02d}_{k % 4 + 1}_{('front', 'side', 'back', 'full')[k]}.jpg"
            jpeg(root / rel, n)
            rows.append((rel, n, status))
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n"
    text += "".join(f"{rel:<60} id_{n:08d}     {status}\n" for rel, n, status in rows)
    part_file = root / "Eval" / "list_eval_partition.txt" if eval_folder else root / "list_eval_partition.txt"
    part_file.parent.mkdir(parents=True, exist_ok=True)
    part_file.write_text(text)
    return root, rows


# --- CUB-200-2011 -------------------------------------------------------------------------------------------

def test_cub200_classes_1_to_100_train_101_to_200_test(tmp_path):
    root = write_cub(tmp_path)
    d = load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    assert d.split == "classes" and d.num_classes == 200 and d.num_train_classes == 100
    assert d.classes[0] == "001.Bird_1" and d.classes[99] == "100.Bird_100" and d.classes[199] == "200.Bird_200"
    assert np.bincount(d.train.y).tolist() == [3] + [2] * 99
    assert sorted(set(d.test.y.tolist())) == list(range(100, 200)) and len(d.test) == 200
    assert d.input_shape == (3, 8, 8) and d.train.x.dtype == np.uint8 and isinstance(d.train.x, np.memmap)
    assert d.train.x is d.test.x and d.train.x.shape[0] == 401
    ids = np.arange(1, 201)
    check_pixels(d.train, ids)
    check_pixels(d.test, ids)
    assert Path(d.source) == root and d.query is None
    # Its own split is already class-disjoint.
    with pytest.raises(DMLBenchError, match="already class-disjoint"):
        load_dataset("cub200", data_dir=tmp_path, split="classes", options=SMALL)
    # The tuner's load never reads the test part.
    tuned = load_dataset("cub200", data_dir=tmp_path, with_test=False, options=SMALL)
    assert tuned.test is None and tuned.num_train_classes == 100


def test_cub200_bad_files(tmp_path):
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    msg = one_line(e)
    assert str(tmp_path / "CUB_200_2011") in msg and "CUB_200_2011.tgz" in msg and "data folder" in msg
    root = write_cub(tmp_path, per_class=1)
    labels = (root / "image_class_labels.txt").read_text()
    line5 = labels.splitlines()[4] + "\n"
    assert line5 == "5 4\n"  # class 1 has two images

    (root / "image_class_labels.txt").unlink()
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    assert str(root / "image_class_labels.txt") in one_line(e)

    (root / "image_class_labels.txt").write_text(labels.replace(line5, "5 four\n"))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    assert "'four' where a number belongs" in one_line(e)

    (root / "image_class_labels.txt").write_text(labels.replace(line5, "5\n"))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    assert "line 5 has 1 field(s), expected 2" in one_line(e)

    (root / "image_class_labels.txt").write_text(labels.replace(line5, ""))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    assert "image id 5 of images.txt has no class" in one_line(e)

    (root / "image_class_labels.txt").write_text(labels)
    classes = (root / "classes.txt").read_text()
    (root / "classes.txt").write_text("\n".join(classes.splitlines()[:199]))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    assert "lists 199 classes, not 200" in one_line(e)
    (root / "classes.txt").write_text(classes)

    (root / "image_class_labels.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    assert "cannot read" in one_line(e)
    (root / "image_class_labels.txt").write_text(labels)

    gone = next((root / "images" / "150.Bird_150").iterdir())
    gone.unlink()
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    assert str(gone) in one_line(e) and "is missing" in str(e.value)


def test_cub200_unreadable_image_named_or_skipped(tmp_path, caplog):
    root = write_cub(tmp_path)
    bad = next((root / "images" / "050.Bird_50").iterdir())
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 truncated")
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cub200", data_dir=tmp_path, options=SMALL)
    msg = one_line(e)
    assert str(bad) in msg and "data.skip_bad=true" in msg
    d = load_dataset("cub200", data_dir=tmp_path, options={**SMALL, "skip_bad": True})
    assert len(d.train) == 200 and np.bincount(d.train.y)[49] == 1
    assert "left out 1 unreadable image(s)" in caplog.text
    check_pixels(d.train, np.arange(1, 201))


# --- Cars196 ------------------------------------------------------------------------------------------------

def test_cars196_classes_1_to_98_train_99_to_196_test(tmp_path):
    root = write_cars(tmp_path)
    d = load_dataset("cars196", data_dir=tmp_path, options=SMALL)
    assert d.split == "classes" and d.num_classes == 196 and d.num_train_classes == 98
    assert d.classes[0] == "Make1 Model Sedan 2012" and d.classes[195] == "Make196 Model Sedan 2012"
    assert np.bincount(d.train.y).tolist() == [2] * 98
    assert sorted(set(d.test.y.tolist())) == list(range(98, 196)) and len(d.test) == 196
    ids = np.arange(1, 197)
    check_pixels(d.train, ids)
    check_pixels(d.test, ids)
    assert Path(d.source) == root


def test_cars196_bad_annotations(tmp_path):
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cars196", data_dir=tmp_path, options=SMALL)
    assert str(tmp_path / "cars196") in one_line(e) and "cars_annos.mat" in str(e.value)
    root = write_cars(tmp_path, per_class=1, drop="class_names")
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cars196", data_dir=tmp_path, options=SMALL)
    msg = one_line(e)
    assert str(root / "cars_annos.mat") in msg and "does not parse" in msg
    (root / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file, but then garbage" + bytes(200))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cars196", data_dir=tmp_path, options=SMALL)
    assert "does not parse" in one_line(e)
    (root / "cars_annos.mat").unlink()
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cars196", data_dir=tmp_path, options=SMALL)
    assert str(root / "cars_annos.mat") in one_line(e)
    write_cars(tmp_path, per_class=1)
    (root / "car_ims" / "000007.jpg").unlink()
    with pytest.raises(DMLBenchError) as e:
        load_dataset("cars196", data_dir=tmp_path, options=SMALL)
    assert "000007.jpg" in one_line(e)


# --- Stanford Online Products -------------------------------------------------------------------------------

def test_sop_official_lists(tmp_path):
    write_sop(tmp_path)
    d = load_dataset("sop", data_dir=tmp_path)  # the default size: 256x256 stretched, as MLRC
    assert d.input_shape == (3, 256, 256) and d.meta["decode"] == "s256-stretch-RGB"
    assert d.split == "classes" and d.num_classes == 16 and d.num_train_classes == 8
    assert d.classes == tuple(str(c) for c in range(1, 17))
    assert np.bincount(d.train.y).tolist() == [3, 2, 3, 2, 3, 2, 3, 2]
    assert sorted(set(d.test.y.tolist())) == list(range(8, 16)) and len(d.test) == 20
    ids = np.arange(1, 17)
    check_pixels(d.train, ids)
    check_pixels(d.test, ids)
    # A copy of the lists without their header line reads the same.
    for part in ("train", "test"):
        f = tmp_path / "Stanford_Online_Products" / f"Ebay_{part}.txt"
        f.write_text("".join(f.read_text().splitlines(keepends=True)[1:]))
    again = load_dataset("sop", data_dir=tmp_path)
    assert np.array_equal(again.train.y, d.train.y) and np.array_equal(again.test.rows, d.test.rows)


def test_sop_bad_lists(tmp_path):
    with pytest.raises(DMLBenchError) as e:
        load_dataset("sop", data_dir=tmp_path, options=SMALL)
    assert "Stanford_Online_Products.zip" in one_line(e)
    root = write_sop(tmp_path, n_train=3, n_test=3)
    test_list = (root / "Ebay_test.txt").read_text()
    (root / "Ebay_test.txt").unlink()
    with pytest.raises(DMLBenchError) as e:
        load_dataset("sop", data_dir=tmp_path, options=SMALL)
    assert str(root / "Ebay_test.txt") in one_line(e)
    lines = test_list.splitlines()
    (root / "Ebay_test.txt").write_text("\n".join(lines[:2] + [lines[2].replace(" 4 ", " four ", 1)] + lines[3:]))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("sop", data_dir=tmp_path, options=SMALL)
    assert "'four' where a number belongs" in one_line(e) and "Ebay_test.txt" in str(e.value)
    shared = [lines[0]] + [ln.replace(" 4 ", " 1 ", 1) if ln.split()[1] == "4" else ln for ln in lines[1:]]
    (root / "Ebay_test.txt").write_text("\n".join(shared))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("sop", data_dir=tmp_path, options=SMALL)
    assert "share classes" in one_line(e)


# --- In-Shop ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eval_folder", [False, True])
def test_inshop_query_and_gallery(tmp_path, eval_folder, monkeypatch):
    root, rows = write_inshop(tmp_path, eval_folder)
    d = load_dataset("inshop", data_dir=tmp_path, options=SMALL)
    assert d.split == "classes" and d.has_query_gallery
    assert d.classes == tuple(f"id_{n:08d}" for n in range(1, 9)) and d.num_train_classes == 4
    assert np.bincount(d.train.y).tolist() == [3, 3, 3, 3] and len(d.test) == 16
    assert len(d.query) == 8 and len(d.gallery) == 8
    assert sorted(np.concatenate([d.query, d.gallery]).tolist()) == list(range(16))
    assert d.query.dtype == np.int64 and d.gallery.dtype == np.int64
    # Every query's item has its gallery images; the partition file's statuses, row for row.
    test_rows = [r for r in rows if r[2] != "train"]
    assert [test_rows[i][2] for i in d.query] == ["query"] * 8
    assert [test_rows[i][2] for i in d.gallery] == ["gallery"] * 8
    assert sorted(set(d.test.y[d.query].tolist())) == sorted(set(d.test.y[d.gallery].tolist())) == [4, 5, 6, 7]
    ids = np.arange(1, 9)
    check_pixels(d.train, ids)
    check_pixels(d.test, ids)
    info = d.info()
    assert info["queries"] == 8 and info["gallery"] == 8
    # A second load maps the cache.
    monkeypatch.setattr(images_mod, "decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    again = load_dataset("inshop", data_dir=tmp_path, options=SMALL)
    assert np.array_equal(again.query, d.query) and np.array_equal(np.asarray(again.test.images()),
                                                                   np.asarray(d.test.images()))
    assert load_dataset("inshop", data_dir=tmp_path, with_test=False, options=SMALL).query is None


def test_inshop_skip_bad_keeps_query_gallery_positions(tmp_path):
    root, rows = write_inshop(tmp_path)
    bad = [r for r in rows if r[2] == "query"][0]
    (root / bad[0]).write_bytes(b"not a jpeg")
    d = load_dataset("inshop", data_dir=tmp_path, options={**SMALL, "skip_bad": True})
    assert len(d.test) == 15 and len(d.query) == 7 and len(d.gallery) == 8
    assert sorted(np.concatenate([d.query, d.gallery]).tolist()) == list(range(15))
    check_pixels(d.test, np.arange(1, 9))


def test_inshop_bad_partition(tmp_path):
    with pytest.raises(DMLBenchError) as e:
        load_dataset("inshop", data_dir=tmp_path, options=SMALL)
    assert str(tmp_path / "inshop") in one_line(e)
    root, rows = write_inshop(tmp_path)
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(DMLBenchError) as e:
        load_dataset("inshop", data_dir=tmp_path, options=SMALL)
    assert "list_eval_partition.txt" in one_line(e)
    head = f"{len(rows)}\nimage_name item_id evaluation_status\n"
    body = "".join(f"{r} id_{n:08d} {s}\n" for r, n, s in rows)
    (root / "list_eval_partition.txt").write_text(head + body.replace("gallery", "galery", 1))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("inshop", data_dir=tmp_path, options=SMALL)
    assert "'galery'" in one_line(e)
    (root / "list_eval_partition.txt").write_text(head + body.replace("id_00000005 query", "id_00000001 query", 1))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("inshop", data_dir=tmp_path, options=SMALL)
    assert "in train and test" in one_line(e)
    (root / "list_eval_partition.txt").write_text(head + body.replace(" train\n", "\n", 1))
    with pytest.raises(DMLBenchError) as e:
        load_dataset("inshop", data_dir=tmp_path, options=SMALL)
    assert "expected 3" in one_line(e)


# --- where the files go, sizes before decoding --------------------------------------------------------------

def test_where_each_archive_goes_and_shapes_before_decoding(tmp_path):
    where = {"cub200": "CUB_200_2011", "cars196": "cars_annos.mat", "sop": "Ebay_train.txt",
             "inshop": "list_eval_partition.txt", "zappos50k": "ut-zap50k-images"}
    for name, text in where.items():
        spec = DATASETS.get(name)
        assert text in spec.where and spec.needs_files and spec.shape is not None
        # Known without any file present, so an encoder that cannot take it is refused first.
        assert planned_shape(name, tmp_path, {"resize": 96}) == (3, 96, 96)
    assert planned_shape("cub200", tmp_path, {"resize": 224, "grayscale": True}) == (1, 224, 224)
