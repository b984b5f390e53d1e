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
from helpers_cli import run_fresh
from typer.testing import CliRunner

from dmlbench.cli import app

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


@pytest.mark.slow  # processes killed, timeouts or a Ray cluster: CI runs it with -m slow
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


@pytest.mark.slow  # processes killed, timeouts or a Ray cluster: CI runs it with -m slow
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


def sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pool_run(out: Path) -> tuple[subprocess.Popen, list[int]]:
    """A 2-worker suite long enough to interrupt (4 runs of 4,000 steps), started in its own session
    with SIGINT at its default (a test suite started with `&` from a script inherits SIGINT ignored,
    and so would the driver); returns the driver and its workers' pids once both workers have taken
    a run."""
    args = ["run", "--methods", "siamese,triplet-hinge", "--seeds", "0,1", "--steps", "4000", "--epoch-size", "256",
            "--test-triplets", "100", "--threads", "2", "--workers", "2", "--out", str(out)]
    p = subprocess.Popen([sys.executable, "-m", "dmlbench.cli", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=sigint_default)
    pids, lines = [], []
    deadline = time.time() + 120
    while len(pids) < 2 and time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "  started " in line:
            pids.append(int(line.split("(worker ")[1].split(")")[0]))
    assert len(pids) == 2, "".join(lines)
    return p, pids


def _gone(pids: list[int], seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


def test_an_interrupt_to_the_driver_alone_stops_the_pool_at_once(tmp_path):
    p, pids = _pool_run(tmp_path)
    time.sleep(1.0)
    os.kill(p.pid, signal.SIGINT)   # the driver only: it must pass the interrupt on
    t0 = time.time()
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and time.time() - t0 < 20, err
    assert "interrupted" in err and "started siamese seed 1" not in err.split("interrupted")[1]
    assert "leaked semaphore" not in err and "Traceback" not in err  # a clean stop, nothing left to clean up
    assert _gone(pids, 5)
    assert not list((tmp_path / "digits").glob("*/s*-*/metrics.json"))  # nothing ran on after the interrupt


def test_workers_of_a_killed_driver_do_not_run_on(tmp_path):
    p, pids = _pool_run(tmp_path)
    os.kill(p.pid, signal.SIGKILL)  # no cleanup in the driver
    p.wait()
    assert _gone(pids, 10)


def test_a_bad_ray_address_is_a_one_line_error(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    for cmd in ("run", "tune"):
        r = bench(cmd, "--methods", "siamese", "--executor", "ray", "--ray-address", "notahost:abc",
                  "--out", tmp_path)
        if cmd == "tune" and "dmlbench[tune]" in r.stderr:
            continue
        assert r.exit_code == 2 and "notahost:abc" in r.stderr and "ray start --head" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "error: cannot start or reach" in r.stderr.strip().splitlines()[-1]


def test_a_ray_address_where_nothing_listens_is_refused_at_once_and_leaves_no_folder(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for cmd in ("run", "tune"):
        t0 = time.monotonic()
        r = bench(cmd, "--methods", "siamese", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
                  "--out", tmp_path / "out")
        if cmd == "tune" and "dmlbench[tune]" in r.stderr:
            continue
        assert r.exit_code == 2 and time.monotonic() - t0 < 30, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: nothing answers at the Ray address 127.0.0.1:{port}") and "ray start --head" in last
        assert not (tmp_path / "out").exists()  # a refused start leaves no empty results folder


def test_a_pool_starts_no_more_workers_than_runs_and_splits_the_threads_between_them(caplog):
    from dmlbench.executors.local import LocalExecutor

    ex = LocalExecutor(workers=4, threads=8)
    ex._fit(2)
    assert (ex.workers, ex.threads) == (2, 4)
    ex = LocalExecutor(workers=999, threads=2)
    ex._fit(10)
    assert (ex.workers, ex.threads) == (10, 1)
    assert "--workers 10 is more than the 2 threads to share" in caplog.text and "--workers auto" in caplog.text


def test_an_empty_device_list_is_refused():
    r = bench("run", "--methods", "siamese", "--devices", ",,")
    assert r.exit_code == 2 and "devices=',,' names no device" in r.stderr


def _bar_position(_):
    from dmlbench.core import runtime

    time.sleep(0.5)  # both workers take a task
    return os.getpid(), runtime.BAR_POSITION


def test_each_pool_worker_draws_its_progress_on_its_own_line():
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from dmlbench.executors.base import WorkerSetup
    from dmlbench.executors.local import init_worker_process

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=init_worker_process,
                             initargs=(WorkerSetup(1, 30), ctx.Value("i", 0), 2)) as pool:
        seen = dict(pool.map(_bar_position, range(4)))
    assert sorted(seen.values()) == [1, 2]  # line 0 is the driver's overall bar


def test_an_empty_method_list_is_refused():
    r = bench("run", "--methods", "")
    assert r.exit_code == 2 and "methods='' names no method" in r.stderr


def test_losses_that_fail_in_pml_a_knn_k_over_the_training_set_and_a_bad_port_are_refused(tmp_path):
    r = bench("run", "--methods", "pml:TupletMarginLoss", "--dataset", "digits", "--out", tmp_path)
    assert r.exit_code == 2 and "pml:TupletMarginLoss fails in pytorch-metric-learning 2.9" in r.stderr
    r = bench("run", "--methods", "siamese", "--dataset", "digits", "--knn-k", "5000", "--out", tmp_path)
    assert r.exit_code == 2 and "knn_k=5000 must be below the 1257 training images" in r.stderr
    assert not any(tmp_path.iterdir())
    pytest.importorskip("ray", reason="the ray extra is not installed")
    r = bench("run", "--methods", "siamese", "--executor", "ray", "--ray-address", "127.0.0.1:99999")
    assert r.exit_code == 2 and "port 99999 is not a port (1-65535)" in r.stderr


def test_settings_that_would_do_nothing_or_diverge_are_refused(tmp_path):
    r = bench("run", "--methods", "siamese", "--gpus-per-run", "0.5")
    assert r.exit_code == 2 and "gpus_per_run=0.5 applies to --executor ray only" in r.stderr
    r = bench("run", "--methods", "siamese", "--optimizer", "sgd", "--momentum", "2")
    assert r.exit_code == 2 and "momentum" in r.stderr and "must be below 1" in r.stderr
    r = bench("run", "--methods", "siamese", "--tuned", __file__)
    assert r.exit_code == 2 and "give the suite folder of a `bench tune`" in r.stderr


def test_a_ctrl_c_during_the_clean_up_of_an_interrupt_is_ignored_only_for_that_time():
    from dmlbench.core.runtime import interrupts_ignored

    before = signal.getsignal(signal.SIGINT)
    with interrupts_ignored(KeyboardInterrupt()):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before  # children started later must get Ctrl-C again
    with interrupts_ignored(ValueError("a crash, not an interrupt")):
        assert signal.getsignal(signal.SIGINT) is before


def test_a_workers_progress_line_is_one_write_so_two_workers_lines_never_run_together(monkeypatch):
    """The pool's workers share the driver's stderr; print() writes a line's text and its newline
    apart, so two workers' "started" lines could come out as one (seen under load)."""
    import io

    from dmlbench.core.runtime import echo_line

    writes = []

    class Recorder(io.StringIO):
        def write(self, s):
            writes.append(s)
            return len(s)

    monkeypatch.setattr(sys, "stderr", Recorder())
    echo_line("  started siamese seed 0 (worker 1, cpu)")
    assert writes == ["  started siamese seed 0 (worker 1, cpu)\n"]


PLUGIN = '''
from dmlbench.methods import register_method
from dmlbench.methods.triplet_hinge import TripletHinge


@register_method("hinge-copy-{executor}")
class HingeCopy(TripletHinge):
    """triplet-hinge under another name: a plugin method."""
'''


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_plugins_methods_run_in_every_worker(tmp_path, executor):
    """--plugin is imported in each worker process (pool or Ray task), not only in the driver,
    and a pool's runs of the plugin method equal the sequential ones."""
    if executor == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    plugin = tmp_path / f"hinge_copy_{executor}.py"  # one module and method name per test: registries persist
    plugin.write_text(PLUGIN.format(executor=executor))
    args = ["run", "--plugin", plugin, "--methods", f"hinge-copy-{executor}", "--seeds", "0,1", "--steps", "3",
            "--test-triplets", "60", "--threads", "2"]
    one = bench(*args, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.stderr
    two = bench(*args, "--out", tmp_path / "two", "--workers", "2", "--executor", executor)
    assert two.exit_code == 0, two.stderr
    assert metrics(tmp_path / "two") and metrics(tmp_path / "one") == metrics(tmp_path / "two")
