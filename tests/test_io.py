"""dmlbench.core.io: crash-safe, link-safe writes, and reads that name the corrupt file.

Writes go to an exclusively created temp file in the target folder and are renamed over the
target: a failure leaves the old file and no temp file, a link planted at the temp name or at the
target is never written through. Reads raise CorruptFileError (a one-line DMLBenchError naming
the file) instead of a json/numpy/torch traceback; checkpoints load with weights_only=True, so a
pickle that would call code is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import pytest
import torch
from helpers_data import SystemCall

from dmlbench.core import io
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import CorruptFileError


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- atomic writes


def test_atomic_writes_round_trip(tmp_path):
    io.write_text(tmp_path / "a" / "h.csv", "epoch,loss\n1,0.5\n")  # creates the folder
    io.write_json(tmp_path / "m.json", {"x": 1.5, "b": [1, 2]})
    io.write_npz(tmp_path / "e.npz", a=np.arange(6).reshape(2, 3), y=np.array([3, 1], np.int64))
    io.write_npy(tmp_path / "t.npy", np.arange(9, dtype=np.int64).reshape(3, 3))
    io.torch_save(tmp_path / "c.pt", {"epoch": 3, "w": torch.ones(2)})
    assert (tmp_path / "a" / "h.csv").read_text() == "epoch,loss\n1,0.5\n"
    assert io.read_json(tmp_path / "m.json") == {"x": 1.5, "b": [1, 2]}
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1.5, "b": [1, 2]}
    z = io.read_npz(tmp_path / "e.npz")
    np.testing.assert_array_equal(z["a"], [[0, 1, 2], [3, 4, 5]])
    assert z["y"].dtype == np.int64
    np.testing.assert_array_equal(io.read_npy(tmp_path / "t.npy"), np.arange(9).reshape(3, 3))
    ckpt = io.torch_load(tmp_path / "c.pt")
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["c.pt", "e.npz", "h.csv", "m.json", "t.npy"]


def test_written_files_are_shareable_not_owner_only(tmp_path):
    # mkstemp makes 0600 files; results are meant to be read by the group (umask decides).
    io.write_json(tmp_path / "m.json", {})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("where, exc", [("fsync", OSError("disk full")), ("replace", OSError("cross-device")),
                                        ("fsync", KeyboardInterrupt())])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, where, exc):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"recall@1": 0.5})
    old = target.read_bytes()

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(os, where, boom)
    with pytest.raises(type(exc)):
        io.write_json(target, {"recall@1": 0.9})
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert files_in(tmp_path) == ["metrics.json"]


def test_failed_binary_writes_leave_no_temp(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        io.write_npz(tmp_path / "embeddings.npz", test_emb=np.zeros((2, 3)))
    with pytest.raises(OSError):
        io.write_npy(tmp_path / "t.npy", np.zeros(3))
    with pytest.raises(OSError):
        io.torch_save(tmp_path / "checkpoint.pt", {"epoch": 1})
    assert files_in(tmp_path) == []


def test_unserialisable_value_writes_nothing(tmp_path):
    # An error before the write (here: an object array numpy refuses to save without pickle).
    with pytest.raises(ValueError):
        io.write_npy(tmp_path / "t.npy", np.array([{"a": 1}], dtype=object))
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("dangling", [False, True])
def test_link_planted_at_the_temp_name_is_not_written_through(tmp_path, monkeypatch, dangling):
    # An attacker who can guess the temp name plants a link there; the exclusive create refuses
    # it (O_EXCL never follows a link) and the writer takes the next name.
    results, outside = tmp_path / "results", tmp_path / "outside"
    results.mkdir()
    outside.mkdir()
    victim = outside / "victim.txt"
    if not dangling:
        victim.write_text("precious")
    names = iter(["planted", "fresh00", "fresh01", "fresh02"])
    used = []

    def candidates():
        for n in names:
            used.append(n)
            yield n

    monkeypatch.setattr(tempfile, "_get_candidate_names", candidates)
    link = results / ".metrics.json.planted.tmp"
    link.symlink_to(victim)
    io.write_json(results / "metrics.json", {"recall@1": 0.9})
    monkeypatch.undo()
    assert used[:2] == ["planted", "fresh00"]  # the planted name was tried, and skipped
    assert io.read_json(results / "metrics.json") == {"recall@1": 0.9}
    assert not (results / "metrics.json").is_symlink()
    if dangling:
        assert not victim.exists()  # the link's target was never created
    else:
        assert victim.read_text() == "precious"
    assert link.is_symlink()  # left alone, and no other temp file remains
    assert files_in(results) == [".metrics.json.planted.tmp", "metrics.json"]


@pytest.mark.parametrize("writer", ["json", "npz", "checkpoint"])
def test_link_planted_at_the_target_is_replaced_not_written_through(tmp_path, writer):
    # The rename replaces a link at the target's name: the result lands in its folder, the file the
    # link pointed to is untouched.
    results, outside = tmp_path / "results", tmp_path / "outside"
    results.mkdir()
    outside.mkdir()
    victim = outside / "victim.bin"
    victim.write_bytes(b"precious")
    name = {"json": "metrics.json", "npz": "embeddings.npz", "checkpoint": "checkpoint.pt"}[writer]
    target = results / name
    target.symlink_to(victim)
    if writer == "json":
        io.write_json(target, {"a": 1})
        assert io.read_json(target) == {"a": 1}
    elif writer == "npz":
        io.write_npz(target, a=np.arange(3))
        np.testing.assert_array_equal(io.read_npz(target)["a"], [0, 1, 2])
    else:
        io.torch_save(target, {"epoch": 2})
        assert io.torch_load(target) == {"epoch": 2}
    assert not target.is_symlink() and target.is_file()
    assert victim.read_bytes() == b"precious"
    assert files_in(results) == [name]


def test_clean_temp_files_removes_only_old_orphans(tmp_path):
    run = tmp_path / "digits" / "vae" / "s0-abc"
    run.mkdir(parents=True)
    old = run / ".metrics.json.x1.tmp"
    young = run / ".history.csv.x2.tmp"
    old.write_text("{}")
    young.write_text("")
    hour_ago = time.time() - 2 * 3600
    os.utime(old, (hour_ago, hour_ago))
    outside = tmp_path / "outside.tmp"
    outside.write_text("keep")
    os.utime(outside, (hour_ago, hour_ago))
    link = run / ".link.tmp"
    link.symlink_to(outside)
    keep = run / "metrics.json"
    keep.write_text("{}")
    os.utime(keep, (hour_ago, hour_ago))
    assert io.clean_temp_files(tmp_path / "digits") == 1
    assert not old.exists()
    assert young.exists() and keep.exists() and link.is_symlink() and outside.read_text() == "keep"
    assert io.clean_temp_files(tmp_path / "nowhere") == 0


# ---------------------------------------------------------------- reads that name the corrupt file


def _truncated(path, data: bytes) -> None:
    path.write_bytes(data[: len(data) // 2])


def _check_names(e: pytest.ExceptionInfo, path) -> None:
    assert isinstance(e.value, DMLBenchError)
    assert e.value.path == path
    msg = str(e.value)
    assert str(path) in msg and "corrupt" in msg and "\n" not in msg and "Traceback" not in msg


def test_truncated_json_names_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    io.write_json(path, {"recall@1": 0.5, "map@r": 0.25})
    _truncated(path, path.read_bytes())
    with pytest.raises(CorruptFileError) as e:
        io.read_json(path)
    _check_names(e, path)
    assert "JSONDecodeError" in str(e.value)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptFileError) as e:
        io.read_json(path)
    _check_names(e, path)


def test_json_of_the_wrong_type_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="holds a list, not a dict") as e:
        io.read_json(path)
    _check_names(e, path)
    assert io.read_json(path, expect=list) == [1, 2]


def test_truncated_npz_names_the_file(tmp_path):
    path = tmp_path / "embeddings.npz"
    io.write_npz(path, test_emb=np.random.default_rng(0).normal(size=(50, 8)), test_y=np.arange(50))
    _truncated(path, path.read_bytes())
    with pytest.raises(CorruptFileError) as e:
        io.read_npz(path)
    _check_names(e, path)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "embeddings.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))  # needs pickle to read
    with pytest.raises(CorruptFileError) as e:
        io.read_npz(path)
    _check_names(e, path)


def test_truncated_npy_names_the_file(tmp_path):
    path = tmp_path / "test_triplets.npy"
    io.write_npy(path, np.arange(300, dtype=np.int64).reshape(100, 3))
    _truncated(path, path.read_bytes())
    with pytest.raises(CorruptFileError) as e:
        io.read_npy(path)
    _check_names(e, path)
    path.write_bytes(b"not numpy at all")
    with pytest.raises(CorruptFileError) as e:
        io.read_npy(path)
    _check_names(e, path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    io.torch_save(path, {"epoch": 2, "model": {"w": torch.randn(64, 64)}, "history": [{"loss": 1.0}]})
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * 100}[damage])
    with pytest.raises(CorruptFileError) as e:
        io.torch_load(path)
    _check_names(e, path)


def test_torch_load_refuses_a_pickle_that_calls_code(tmp_path):
    # weights_only=True: tensors and plain types only; a global such as os.system is never called.
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "payload": SystemCall(f"touch {marker}")}, path)
    with pytest.raises(CorruptFileError) as e:
        io.torch_load(path)
    _check_names(e, path)
    assert not marker.exists()
    # What the trainer writes (tensors, the RNG state, plain types, None) loads under the same rule.
    io.torch_save(path, {"epoch": 1, "rng": torch.get_rng_state(), "history": [{"loss": 0.5, "lr": 1e-3}],
                         "cuda_rng": None, "run_id": "abc"})
    ckpt = io.torch_load(path, map_location="cpu")
    assert ckpt["epoch"] == 1 and ckpt["run_id"] == "abc" and ckpt["cuda_rng"] is None
