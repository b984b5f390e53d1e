"""Executors (issue #10): a local worker pool and Ray give the sequential results; concurrent
`bench run` processes on one folder neither train a run twice nor lose or duplicate a result; a
run killed mid-training resumes to bitwise-equal metrics; CPU runs are deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmlbench.cli import app
from helpers_cli import run_fresh

ARGS = ["--methods", "siamese,triplet-hinge", "--steps", "6", "--epoch-size", "256", "--test-triplets", "100",
        "--threads", "2"]


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def metrics(out: Path) -> dict:
    res = {}
    for m in (out / "digits").glob("*/s*-*/metrics.json"):
        d = json.loads(m.read_text())
        res[(m.parent.parent.name, m.parent.name)] = {k: v for k, v in d.items() if not k.endswith("_seconds")}
    return res


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    r = bench("run", *ARGS, "--out", out)
    assert r.exit_code == 0, r.stderr
    return metrics(out)


def test_a_worker_pool_gives_the_sequential_metrics_and_its_driver_imports_no_torch(sequential, tmp_path):
    # The driver runs in a fresh interpreter: it must not pay a third `import torch` beside its workers'.
    run_fresh(["run", *ARGS, "--workers", "2", "--out", str(tmp_path)], forbidden=("torch",))
    assert metrics(tmp_path) == sequential  # bitwise: CPU runs are deterministic, whatever the worker
    assert len(list((tmp_path / "digits").glob("test_triplets-*.npy"))) == 1   # drawn by a worker, once


def test_ray_gives_the_sequential_metrics(sequential, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import ray

    try:
        r = bench("run", *ARGS, "--executor", "ray", "--workers", "2", "--out", tmp_path)
    finally:
        ray.shutdown()
    assert r.exit_code == 0, r.stderr
    assert metrics(tmp_path) == sequential


def _bench_process(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dmlbench.cli", "run", *ARGS, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_processes_share_one_folder(sequential, tmp_path):
    a, b = _bench_process(tmp_path), _bench_process(tmp_path)
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    assert metrics(tmp_path) == sequential  # no run lost, none corrupt, none made twice differently
    dirs = list((tmp_path / "digits").glob("*/s*-*"))
    assert len(dirs) == 3
    # Every run was trained once: by one process (done), the other skipped it.
    for run in ("siamese", "triplet-hinge", "raw"):
        states = [line for err in (err_a, err_b) for line in err.splitlines() if f"] {run} seed 0:" in line]
        assert sorted(s.split(": ")[1].split(" ")[0] for s in states) == ["done", "skipped"], states
    for out in (out_a, out_b):
        assert out.count("| digits |") == 3  # one table row per run


def test_a_killed_run_resumes_to_bitwise_equal_metrics(sequential, tmp_path):
    args = ["--methods", "siamese", "--steps", "6", "--epoch-size", "256", "--test-triplets", "100", "--threads", "2"]
    p = subprocess.Popen([sys.executable, "-m", "dmlbench.cli", "run", *args, "--out", str(tmp_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = None
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        found = list((tmp_path / "digits" / "siamese").glob("s0-*/checkpoint.pt"))
        if found:
            ckpt = found[0]
            break
        time.sleep(0.05)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait()
    if ckpt is None or (ckpt.parent / "metrics.json").exists():
        pytest.skip("the run finished before it could be killed")
    r = bench("run", *args, "--out", tmp_path)
    assert r.exit_code == 0, r.stderr
    assert metrics(tmp_path)[("siamese", ckpt.parent.name)] == sequential[("siamese", ckpt.parent.name)]


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, seconds: float = 180) -> Path | None:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        found = list(root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.05)
    return None


def test_a_killed_ray_worker_is_retried_and_resumes_to_bitwise_equal_metrics(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    # 240 steps, a checkpoint every 8: long enough to kill the worker after its first checkpoint.
    args = ["--methods", "siamese", "--steps", "240", "--epoch-size", "1024", "--test-triplets", "100",
            "--threads", "1"]
    killed = tmp_path / "ray"
    p = subprocess.Popen([sys.executable, "-m", "dmlbench.cli", "run", *args, "--executor", "ray", "--workers", "1",
                          "--out", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = _wait_for("digits/siamese/s0-*/checkpoint.pt", killed, p)
    lock = ckpt.parent / ".lock" if ckpt else None
    if ckpt is None or (ckpt.parent / "metrics.json").exists() or not lock.exists():
        p.kill()
        p.communicate()
        pytest.skip("the run finished before its worker could be killed")
    worker = int(lock.read_text().split()[0])  # the Ray worker process that runs the run holds its lock
    assert worker != p.pid
    os.kill(worker, signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    run = ckpt.parent
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 30  # every epoch once: the retry resumed from the checkpoint, none repeated
    fresh = tmp_path / "fresh"
    r = bench("run", *args, "--out", fresh)
    assert r.exit_code == 0, r.stderr
    assert metrics(killed)[("siamese", run.name)] == metrics(fresh)[("siamese", run.name)]
