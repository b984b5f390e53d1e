"""The battery of issue #12: bad values, bad output folders, corrupt and stale result files, a gzip
bomb. Each must end in one line naming the file or value (exit 2, no traceback) or in a re-run,
and never in a silently shorter table. This file grows with each new case.

Runs use the bundled digits with ``--methods raw`` or a few steps, so each costs a second or two.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlbench.cli import app


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


FAST = ["--threads", "1", "--test-triplets", "60"]


@pytest.mark.parametrize("args, needle", [
    (["--epochs", "0"], "epochs=0"),
    (["--embedding-dim", "0"], "embedding_dim=0"),
    (["--embedding-dim", "1000000000"], "embedding_dim=1000000000 is too large"),
    (["--seeds", "4294967296"], "seed=4294967296"),
    (["--seeds", "-1"], "seeds must be integers >= 0"),
    (["--seeds", "0,1,0"], "seeds repeat (0); give each seed once"),
    (["--set", "nonsense.key=1"], "unknown method 'nonsense'"),
    (["--lr", "nan"], "lr=nan must be a finite number"),
    (["--steps", "5", "--epochs", "2"], "steps or epochs, not both"),
    (["--device", "tpu"], "device='tpu'"),
    (["--batch-size", "0"], "batch_size=0"),
])
def test_bad_values_are_refused_before_anything_runs(tmp_path, args, needle):
    result = bench("run", "--methods", "siamese", "--out", tmp_path / "r", *FAST, *args)
    assert_one_line_error(result, needle)
    assert not list((tmp_path / "r").rglob("metrics.json"))


def test_bench_table_on_a_file_says_it_is_a_file(tmp_path):
    f = tmp_path / "afile.txt"
    f.write_text("x")
    assert_one_line_error(bench("table", f), "is a file, not a results folder")


def test_out_pointing_at_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    assert_one_line_error(bench("run", "--methods", "raw", "--out", f, *FAST), "is a file", "another out folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_out_in_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert_one_line_error(bench("run", "--methods", "raw", "--out", ro / "r", *FAST), str(ro))
    finally:
        ro.chmod(0o700)


@pytest.fixture
def done_suite(tmp_path):
    out = tmp_path / "r"
    result = bench("run", "--methods", "siamese", "--steps", "3", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    runs = {p.parent.name: p for p in (out / "digits").glob("*/s0-*")}
    assert set(runs) == {"siamese", "raw"}
    return out, runs


def test_corrupt_metrics_json_reruns_that_run(done_suite):
    out, runs = done_suite
    (runs["raw"] / "metrics.json").write_text('{"triplet_acc": 0.9')
    result = bench("run", "--methods", "siamese", "--steps", "3", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "metrics.json" in result.stderr and "raw seed 0: done" in result.stderr
    assert "siamese seed 0: skipped" in result.stderr
    json.loads((runs["raw"] / "metrics.json").read_text())  # whole again


def test_corrupt_config_json_is_reported_by_name_not_dropped(done_suite):
    out, runs = done_suite
    (runs["siamese"] / "config.json").write_bytes(b"\x00\x01garbage")
    result = bench("table", out)
    assert result.exit_code == 0
    assert str(runs["siamese"] / "config.json") in result.stderr
    assert "siamese" in result.stdout and "Runs left out" in result.stdout  # listed, not silently gone


def test_corrupt_failed_json_and_checkpoint(done_suite):
    out, runs = done_suite
    run = runs["siamese"]
    (run / "metrics.json").unlink()
    (run / "failed.json").write_text("{not json")
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    result = bench("table", out)
    assert "failed.json" in result.stderr  # reported by name
    result = bench("run", "--methods", "siamese", "--steps", "3", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "checkpoint.pt" in result.stderr and "afresh" in result.stderr
    assert (run / "metrics.json").is_file() and not (run / "failed.json").exists()


def test_corrupt_test_triplets_file_is_a_one_line_error(done_suite):
    out, _ = done_suite
    (npy,) = (out / "digits").glob("test_triplets-*.npy")
    npy.write_bytes(b"\x93NUMPY garbage")
    assert_one_line_error(bench("run", "--methods", "raw", "--out", out, *FAST), npy.name)


def test_test_triplets_that_are_not_an_npy_file_say_so_and_the_fix(done_suite):
    out, _ = done_suite
    (npy,) = (out / "digits").glob("test_triplets-*.npy")
    npy.write_text("garbage")
    result = bench("run", "--methods", "raw", "--out", out, *FAST)
    assert_one_line_error(result, npy.name, "not a .npy file", "delete it to draw new triplets")
    assert "pickle" not in result.stderr  # numpy's message talks of unpickling, which never happens here


@pytest.mark.parametrize("content, why", [("{}", "holds no metrics"), ('{"map@r": "abc"}', "'map@r' not a number")])
def test_metrics_json_without_numbers_is_corrupt_and_rerun(done_suite, content, why):
    out, runs = done_suite
    (runs["raw"] / "metrics.json").write_text(content)
    table = bench("table", out)
    assert table.exit_code == 0 and why in table.stderr and "Runs left out" in table.stdout
    result = bench("run", "--methods", "siamese", "--steps", "3", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert why in result.stderr and "raw seed 0: done" in result.stderr


@pytest.mark.parametrize("name", ["per_query.npz", "embeddings.npz"])
def test_a_corrupt_array_file_of_a_complete_run_makes_it_rerun(done_suite, name):
    out, runs = done_suite
    (runs["siamese"] / name).write_text("garbage")
    plot = bench("plot", out, "--projection", "pca")
    assert plot.exit_code == 0 and f"{name} is corrupt" in plot.stderr and "not a .npz (zip) file" in plot.stderr
    result = bench("run", "--methods", "siamese", "--steps", "3", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "siamese seed 0: done" in result.stderr and "pickle" not in result.stderr
    np.load(runs["siamese"] / name).close()   # made again


def test_an_npz_missing_its_arrays_is_one_line_under_bench_plot(done_suite):
    out, runs = done_suite
    np.savez(runs["siamese"] / "embeddings.npz", other=np.zeros(3))
    assert_one_line_error(bench("plot", out, "--projection", "pca"), "embeddings.npz", "no test_emb, test_y array")


def test_a_checkpoint_that_is_not_one_restarts_the_run(done_suite):
    out, runs = done_suite
    run = runs["siamese"]
    (run / "metrics.json").unlink()
    (run / "checkpoint.pt").write_text("junk")
    result = bench("run", "--methods", "siamese", "--steps", "3", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "checkpoint.pt" in result.stderr and "afresh" in result.stderr and "Traceback" not in result.stderr


def test_an_unusable_device_moves_no_result(done_suite):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the device is usable")
    out, runs = done_suite
    before = {k: (v / "metrics.json").read_bytes() for k, v in runs.items()}
    assert_one_line_error(bench("run", "--methods", "siamese", "--steps", "3", "--device", "cuda", "--out", out, *FAST),
                          "CUDA is not available")
    assert {k: (v / "metrics.json").read_bytes() for k, v in runs.items()} == before
    assert not (out / "digits" / ".stale").exists()


def test_changed_images_make_a_stored_result_stale(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "img"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    args = ["run", "--dataset", f"folder:{root}", "--methods", "raw", "--set", "data.resize=8", "--out",
            tmp_path / "r", *FAST]
    first = bench(*args)
    assert first.exit_code == 0, first.stderr
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "cat" / "0.png")   # same names, other pixels
    os.utime(root / "cat" / "0.png", (time.time() + 5, time.time() + 5))
    from dmlbench.running import rundata

    rundata._load.cache_clear()   # each bench command is a fresh process; here they share one
    result = bench(*args)
    assert result.exit_code == 0, result.stderr
    assert "cannot be reused (data " in result.stderr and "raw seed 0: done" in result.stderr
    assert "raw seed 0: skipped" in bench(*args).stderr   # unchanged data: reused


def test_replaced_test_triplets_make_stored_results_stale(done_suite):
    out, runs = done_suite
    (npy,) = (out / "digits").glob("test_triplets-*.npy")
    t = np.load(npy)
    np.save(npy, t[::-1].copy())   # other, still valid triplets
    result = bench("run", "--methods", "raw", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "cannot be reused (test triplets " in result.stderr and "raw seed 0: done" in result.stderr


def test_planted_pickle_checkpoint_is_refused_not_executed(done_suite, tmp_path):
    import pickle

    out, runs = done_suite
    run = runs["siamese"]
    (run / "metrics.json").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"epoch": 1, "evil": Evil()}, run / "checkpoint.pt", pickle_module=pickle)
    result = bench("run", "--methods", "siamese", "--steps", "3", "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert not marker.exists()
    assert "checkpoint.pt" in result.stderr


def test_stale_result_is_archived_and_rerun_or_kept_with_reuse_stale(done_suite):
    out, runs = done_suite
    cfg_path = runs["raw"] / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["provenance"]["code_hash"] = "0123456789abcdef"
    cfg_path.write_text(json.dumps(cfg))
    kept = bench("run", "--methods", "raw", "--out", out, "--reuse-stale", *FAST)
    assert kept.exit_code == 0 and "raw seed 0: skipped" in kept.stderr and "reuse_stale is set" in kept.stderr
    rerun = bench("run", "--methods", "raw", "--out", out, *FAST)
    assert rerun.exit_code == 0, rerun.stderr
    assert "raw seed 0: done" in rerun.stderr and "code 01234567 ->" in rerun.stderr
    archived = list((out / "digits" / ".stale" / "raw").glob("s0-*"))
    assert len(archived) == 1 and (archived[0] / "metrics.json").is_file()
    # The archived run is not in the table, the new one is.
    new = json.loads(cfg_path.read_text())["provenance"]["code_hash"]
    assert new != "0123456789abcdef"


def test_another_device_kind_is_stale(done_suite):
    out, runs = done_suite
    cfg_path = runs["raw"] / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["provenance"]["device"] = {"device": "cuda", "gpu": "NVIDIA H100"}
    cfg_path.write_text(json.dumps(cfg))
    rerun = bench("run", "--methods", "raw", "--out", out, *FAST)
    assert rerun.exit_code == 0 and "device cuda:NVIDIA H100 -> cpu" in rerun.stderr


def test_orphan_temp_files_are_cleaned(done_suite):
    out, runs = done_suite
    orphan = runs["raw"] / ".metrics.json.deadbeef.tmp"
    orphan.write_text("{}")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    fresh = runs["raw"] / ".history.csv.cafe.tmp"  # a live writer's: left alone
    fresh.write_text("")
    assert bench("run", "--methods", "raw", "--out", out, *FAST).exit_code == 0
    assert not orphan.exists() and fresh.exists()


def test_gzip_bomb_stops_at_the_announced_length(tmp_path):
    """An IDX .gz that announces 10 images but inflates to 64 MiB is refused without inflating it all."""
    from dmlbench.core.errors import DMLBenchError

    folder = tmp_path / "mnist"
    folder.mkdir()
    header = struct.pack(">IIII", 0x803, 10, 28, 28)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(header)
        zeros = bytes(1 << 20)
        for _ in range(64):
            f.write(zeros)
    assert (folder / "train-images-idx3-ubyte.gz").stat().st_size < 1 << 20
    from dmlbench.data.idx import read_idx

    t0 = time.perf_counter()
    with pytest.raises(DMLBenchError, match="train-images-idx3-ubyte.gz"):
        read_idx(folder / "train-images-idx3-ubyte.gz")
    assert time.perf_counter() - t0 < 0.5  # inflating 64 MiB would take longer; it stops after 7,841 bytes


def test_uint8_images_stay_uint8(tmp_path):
    from dmlbench.data import load_dataset

    d = load_dataset("digits")
    assert d.train.x.dtype == np.uint8 and d.scale == pytest.approx(1 / 16)


def test_bench_compare_lists_the_runs_it_left_out(done_suite):
    out, runs = done_suite
    (runs["raw"] / "metrics.json").write_text("{broken")
    result = bench("compare", out, "--metric", "map@r")
    assert result.exit_code == 0, result.stderr
    assert "Runs left out" in result.stdout
    assert f"raw seed 0: {runs['raw'] / 'metrics.json'} is corrupt" in result.stdout


def test_a_suite_that_cannot_load_its_data_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "new" / "results"
    assert_one_line_error(bench("run", "--dataset", "cub200", "--data-dir", tmp_path / "nowhere", "--out", out, *FAST),
                          "CUB_200_2011")
    assert not (tmp_path / "new").exists() and tmp_path.exists()
