"""Issue #35: a full disk (ENOSPC) or a spent quota (EDQUOT) is one line wherever it strikes: a
checkpoint, metrics, embeddings, history.csv (the training log), the table, a plot, the decode
cache, a tuning study. Each case checks the single line (exit status 2, no traceback), that no
temp file is left, that complete runs are intact, and that a re-run once space is freed completes
and skips what was done. And a grid that will not fit is warned of before it starts.

The full disk is simulated where the OS reports it for real: ``fsync`` (or ``posix_fallocate``) of
the file being written raises ``OSError(ENOSPC)``, after the data went into the temp file, as
on a file system that allocates late (NFS, XFS, ext4 with delayed allocation). The file is found
by its descriptor (/proc/self/fd), so the test needs Linux.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmlbench.cli import app
from dmlbench.core.errors import DiskFullError
from dmlbench.data.cache import cache_dir

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds a written file by /proc/self/fd")

FAST = ["--threads", "1", "--test-triplets", "60", "--steps", "3"]


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_disk_full_line(result, path_part: str, quota: bool = False) -> str:
    """Exit 2, and stderr's last line is the one-line error naming the file; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and "OSError" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    what = "disk quota exceeded" if quota else "no space left on device"
    assert line.startswith(f"error: {what} writing ") and path_part in line, line
    assert "free space" in line and "re-run" in line, line
    return line


def temp_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*.tmp")]


@pytest.fixture
def full_disk(monkeypatch):
    """A set of name fragments: from then on, syncing or reserving a file whose name holds one
    fails as on a full disk (``full_disk.quota = True``: as on a spent quota)."""

    class Names(set):
        quota = False

    names = Names()
    real_fsync, real_fallocate = os.fsync, getattr(os, "posix_fallocate", None)

    def check(fd) -> None:
        try:
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        except OSError:
            return
        if any(n in name for n in names):
            code = errno.EDQUOT if names.quota else errno.ENOSPC
            raise OSError(code, os.strerror(code))

    def fsync(fd):
        check(fd if isinstance(fd, int) else fd.fileno())
        return real_fsync(fd)

    def fallocate(fd, offset, length):
        check(fd)
        return real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "fsync", fsync)
    if real_fallocate is not None:
        monkeypatch.setattr(os, "posix_fallocate", fallocate)
    return names


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A suite with one complete run of siamese (and raw), made before the disk fills."""
    out = tmp_path_factory.mktemp("full") / "r"
    r = bench("run", "--methods", "siamese", "--out", out, *FAST)
    assert r.exit_code == 0, r.stderr
    return out


def _copy(done: Path, tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    import shutil

    out = tmp_path / "r"
    shutil.copytree(done, out)
    complete = {p: p.read_bytes() for p in out.rglob("metrics.json")}
    return out, complete


@pytest.mark.parametrize("name", ["checkpoint.pt", "history.csv", "embeddings.npz", "metrics.json"])
def test_a_full_disk_writing_a_run_is_one_line_and_a_rerun_completes_it(done, tmp_path, full_disk, name):
    out, complete = _copy(done, tmp_path)
    full_disk.add(name)
    r = bench("run", "--methods", "siamese,triplet-hinge", "--out", out, *FAST)
    line = assert_disk_full_line(r, f"/triplet-hinge/s0-")
    assert line.split(" writing ")[1].split(";")[0].endswith(name)
    assert not temp_files(out)
    (run,) = (out / "digits" / "triplet-hinge").glob("s0-*")
    failed = json.loads((run / "failed.json").read_text())
    assert failed == {"reason": line[len("error: "):], "type": "DiskFullError"}
    assert not (run / "metrics.json").exists()
    assert {p: p.read_bytes() for p in out.rglob("metrics.json")} == complete  # complete runs untouched

    full_disk.clear()  # space freed
    again = bench("run", "--methods", "siamese,triplet-hinge", "--out", out, *FAST)
    assert again.exit_code == 0, again.stderr
    assert "siamese seed 0: skipped" in again.stderr and "raw seed 0: skipped" in again.stderr
    assert "triplet-hinge seed 0: done" in again.stderr
    assert (run / "metrics.json").is_file() and not (run / "failed.json").exists()


def test_a_spent_quota_says_so_and_v_logs_the_traceback(done, tmp_path, full_disk):
    out, _ = _copy(done, tmp_path)
    full_disk.add("checkpoint.pt")
    full_disk.quota = True
    r = CliRunner().invoke(app, ["-v", "run", "--methods", "siamese,triplet-hinge", "--out", str(out), *FAST])
    assert r.exit_code == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: disk quota exceeded writing ") and "checkpoint.pt" in line
    log = r.stderr[: r.stderr.rindex("error: ")]
    assert "Traceback" in log and "Disk quota exceeded" in log  # -v: the traceback goes to the log


def test_a_full_disk_writing_the_table_keeps_the_runs(done, tmp_path, full_disk):
    out, complete = _copy(done, tmp_path)
    (out / "digits" / "table.md").unlink()
    full_disk.add("table.md")
    r = bench("run", "--methods", "siamese", "--out", out, *FAST)
    assert_disk_full_line(r, str(out / "digits" / "table.md"))
    assert not temp_files(out) and not (out / "digits" / "table.md").exists()
    assert {p: p.read_bytes() for p in out.rglob("metrics.json")} == complete
    full_disk.clear()
    again = bench("run", "--methods", "siamese", "--out", out, *FAST)
    assert again.exit_code == 0 and "siamese seed 0: skipped" in again.stderr
    assert "siamese" in (out / "digits" / "table.md").read_text()


def test_a_full_disk_writing_a_plot(done, tmp_path, full_disk):
    out, _ = _copy(done, tmp_path)
    full_disk.add(".png")
    r = bench("plot", out / "digits", "--projection", "pca", "--threads", 1)
    assert_disk_full_line(r, str(out / "digits" / "plots"))
    assert not temp_files(out)
    full_disk.clear()
    again = bench("plot", out / "digits", "--projection", "pca", "--threads", 1)
    assert again.exit_code == 0 and list((out / "digits" / "plots").glob("*.png"))


def test_a_full_disk_building_the_decode_cache(tmp_path, full_disk):
    from helpers_data import write_image_folder

    write_image_folder(tmp_path / "imgs", ["a", "b", "c", "d"], per_class=8)
    args = ["run", "--methods", "raw", "--dataset", f"folder:{tmp_path / 'imgs'}", "--data-dir", tmp_path,
            "--out", tmp_path / "r", "--threads", "1", "--test-triplets", "60"]
    full_disk.add(".npy")
    r = bench(*args)
    line = assert_disk_full_line(r, str(cache_dir()))
    assert "DMLBENCH_CACHE_DIR" in line
    assert not temp_files(tmp_path) and not list(cache_dir().glob("*.json"))
    full_disk.clear()
    again = bench(*args)
    assert again.exit_code == 0, again.stderr
    assert len(list(cache_dir().glob("*.json"))) == 1


def test_failed_json_that_does_not_fit_either_still_gives_the_one_line(done, tmp_path, full_disk):
    out, _ = _copy(done, tmp_path)
    full_disk.update({"checkpoint.pt", "failed.json"})
    r = bench("run", "--methods", "siamese,triplet-hinge", "--out", out, *FAST)
    assert_disk_full_line(r, "checkpoint.pt")
    assert not list(out.rglob("failed.json")) and not temp_files(out)


def test_disk_full_error_survives_the_trip_from_a_worker_process():
    import pickle

    e = DiskFullError("/r/x/checkpoint.pt", quota=True, fix="do this")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is DiskFullError and str(back) == str(e) and back.path == e.path


# ----------------------------------------------------------------------------- tuning


TUNE = ["tune", "--methods", "siamese", "--dataset", "digits", "--steps", "3", "--test-triplets", "60",
        "--threads", "1"]


def _trials(suite_dir: Path) -> list:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{suite_dir / 'study.db'}")
    return optuna.load_study(study_name="siamese", storage=storage).get_trials()


def test_a_full_disk_under_a_trial_stops_the_tune_and_costs_no_trial(tmp_path, full_disk, monkeypatch):
    pytest.importorskip("optuna")
    monkeypatch.setenv("DMLBENCH_TUNE_HEARTBEAT", "1")
    ok = bench(*TUNE, "--trials", 1, "--out", tmp_path)
    assert ok.exit_code == 0, ok.stderr
    full_disk.add("checkpoint.pt")
    r = bench(*TUNE, "--trials", 2, "--out", tmp_path)
    assert_disk_full_line(r, "checkpoint.pt")
    suite_dir = tmp_path / "digits" / "tune"
    assert not temp_files(tmp_path)
    states = [t.state.name for t in _trials(suite_dir)]
    assert states.count("COMPLETE") == 1 and "RUNNING" not in states  # re-queued, not counted as FAIL
    assert all(t.user_attrs.get("fail_reason") == "interrupted" for t in _trials(suite_dir) if t.state.name == "FAIL")
    full_disk.clear()
    again = bench(*TUNE, "--trials", 2, "--out", tmp_path)
    assert again.exit_code == 0, again.stderr
    assert json.loads((suite_dir / "tuned.json").read_text())["methods"]["siamese"]["trials"] == 2


def test_a_full_disk_under_the_study_storage_is_one_line_naming_it(tmp_path, monkeypatch):
    """SQLite reports a full disk as "database or disk is full", which Optuna wraps."""
    optuna = pytest.importorskip("optuna")
    import sqlalchemy.exc

    real = optuna.trial.Trial.set_user_attr

    def full(self, key, value):
        try:
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database or disk is full"))
        except sqlalchemy.exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e

    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", full)
    r = bench(*TUNE, "--trials", 1, "--out", tmp_path)
    line = assert_disk_full_line(r, str((tmp_path / "digits" / "tune" / "study.db").resolve()))
    assert "finished trials are kept" in line
    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", real)


# ----------------------------------------------------------------------------- the early warning


def test_a_grid_larger_than_the_free_space_is_warned_of_before_it_starts(done, tmp_path, monkeypatch):
    from dmlbench.running import diskspace

    out, _ = _copy(done, tmp_path)
    monkeypatch.setattr(diskspace, "free_bytes", lambda folder: 100 * 1024)
    r = bench("run", "--methods", "siamese,triplet-hinge", "--seeds", "0,1", "--out", out, *FAST)
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ") and "free" in ln]
    assert len(warnings) == 1, r.stderr
    # siamese seed 0 and raw seed 0 are complete: 4 runs are left (siamese 1, triplet-hinge 0 and 1, raw 1).
    assert warnings[0].startswith("warning: 4 run(s) to make may write about ") and "100.0 KB are free" in warnings[0]
    assert "measured from earlier runs" in warnings[0] and "from the models' sizes" in warnings[0]
    assert r.stderr.index(warnings[0]) < r.stderr.index("[1/6]")  # before the first run
    monkeypatch.setattr(diskspace, "free_bytes", lambda folder: 10**12)
    r = bench("run", "--methods", "siamese,triplet-hinge", "--seeds", "0,1,2", "--out", out, *FAST)
    assert r.exit_code == 0 and "are free in" not in r.stderr


def test_the_estimate_is_near_what_runs_write(done, tmp_path):
    """Counted from the model (siamese) against the run folder it made: within a quarter."""
    from dmlbench.running import layout
    from dmlbench.running.diskspace import counted, folder_bytes
    from dmlbench.running.execute import prepare
    from dmlbench.running.suite import resolve_suite

    suite = resolve_suite({}, {"methods": "siamese", "dataset": "digits", "steps": 3, "test_triplets": 60,
                               "out": str(tmp_path / "r")})
    data, planned = prepare(suite)
    cfg = planned[0].config
    (run,) = (done / "digits" / "siamese").glob("s0-*")
    real = folder_bytes(run)
    assert layout.is_complete(run) and 0.75 * real < counted(cfg, data) < 1.25 * real, (counted(cfg, data), real)


def test_a_pool_without_an_estimate_measures_its_first_run(done, tmp_path, monkeypatch):
    """A pool's driver imports no torch: with nothing measured yet, the first run that completes
    sizes the rest."""
    import shutil

    from dmlbench.running import diskspace, layout
    from dmlbench.running.runner import RunResult
    from dmlbench.running.suite import resolve_suite

    suite = resolve_suite({}, {"methods": "triplet-hinge,siamese", "seeds": "0,1,2", "dataset": "digits",
                               "steps": 3, "test_triplets": 60, "out": str(tmp_path / "r")})
    from dmlbench.running.execute import prepare

    data, planned = prepare(suite)
    configs = [p.config for p in planned]
    check = diskspace.RoomCheck(suite.dir, configs, data, count=False)
    assert check.before() is None  # nothing to go by yet
    monkeypatch.setattr(diskspace, "free_bytes", lambda folder: 1000)
    (made,) = (done / "digits" / "siamese").glob("s0-*")
    cfg = next(c for c in configs if c.method == "siamese" and c.seed == 0)
    first = layout.run_dir(suite.dir, cfg.method, cfg.seed, cfg.run_id())
    shutil.copytree(made, first)  # as if the pool had just made it
    line = check.after(RunResult(cfg, first, "done"))
    assert line.startswith(f"{len(configs) - 1} run(s) to make may write about ") and "measured from the first run" in line
    assert check.after(RunResult(configs[1], first, "done")) is None  # once
