"""The Ray executor: one Ray task per run, on a local or remote Ray cluster.

Needs the ``ray`` extra (``pip install 'dmlbench[ray]'``). ``RAY_ADDRESS`` (or ``ray start``'s
cluster) selects the cluster; without one, a local Ray instance with this machine's cores starts.
The results folder must be on storage every node sees (a shared file system): each task writes
its own run folder there, under that folder's lock. A task lost with its node is retried
(``max_retries``) and resumes from the run's last checkpoint, so no finished epoch is lost.

``address``: ``auto`` (the cluster ``ray start`` made on this node) or ``HOST:PORT``; empty starts
a local instance. ``gpus_per_run``: a GPU fraction per task, e.g. 0.25 packs four runs on a GPU.
The workers write their run folders themselves rather than sending results to the driver: a run's
checkpoints must survive the loss of the worker's node, and the driver then only reads the table.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.runtime import default_threads, interrupts_ignored

log = logging.getLogger("dmlbench")

MAX_RETRIES = 3


def import_ray():
    try:
        import ray
    except ImportError:
        raise DMLBenchError("the ray executor needs Ray: pip install 'dmlbench[ray]'") from None
    return ray


def connect(ray, address: str, num_cpus: int, gpus_per_run: float = 0.0) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local instance; a bad address,
    or GPUs asked of a cluster that has none, is a one-line error (not a traceback, not a task that
    waits forever for a GPU)."""
    address = address or os.environ.get("RAY_ADDRESS", "")
    if not ray.is_initialized():
        _check_listening(address)
        try:
            if address:
                ray.init(address=address, log_to_driver=True)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = f"Ray cluster at {address!r}" if address else "a local Ray instance"
            raise DMLBenchError(f"cannot start or reach {where}: {first}; start one with `ray start --head` and "
                                "give --ray-address auto or HOST:PORT (or leave it out for a local instance)") from None
    if gpus_per_run > 0 and not ray.cluster_resources().get("GPU", 0):
        raise DMLBenchError(f"--gpus-per-run {gpus_per_run:g}: the Ray cluster has no GPU; give --gpus-per-run 0 "
                            "(CPU runs), or join a cluster with GPUs")


def _check_listening(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT where nothing listens: Ray would retry its connection for minutes before it
    fails, so the port is tried first (a closed port answers at once, a dead host in ``timeout``)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in address:
        return  # auto, ray://..., or a form Ray itself reports on
    if not 0 < int(port) < 65536:
        raise DMLBenchError(f"--ray-address {address}: port {port} is not a port (1-65535); give the address "
                            "`ray start --head` printed, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise DMLBenchError(f"nothing answers at the Ray address {address} ({e.strerror or type(e).__name__}); start the "
                            "head node there with `ray start --head --port "
                            f"{port}`, or give --ray-address auto or the address `ray start` printed") from None


def _task(planned, suite_dir: str, reuse_stale: bool, threads: int):
    from dmlbench.running.runner import run_one
    from dmlbench.core.runtime import set_threads

    set_threads(threads)
    return run_one(planned.config, Path(suite_dir), variant=planned.variant, reuse_stale=reuse_stale)


class RayExecutor:
    def __init__(self, workers: int = 1, threads: int | None = None, address: str = "", gpus_per_run: float = 0.0):
        self.ray = import_ray()
        self.workers = max(1, workers)
        self.threads = max(1, (threads or default_threads()) // self.workers)
        self.address = address or os.environ.get("RAY_ADDRESS", "")
        self.gpus_per_run = gpus_per_run

    def connect(self) -> None:
        connect(self.ray, self.address, self.workers * self.threads, self.gpus_per_run)

    def run(self, planned: list, suite_dir: Path, *, reuse_stale: bool = False, on_result=None, data=None) -> list:
        ray = self.ray
        self.connect()
        remote = ray.remote(num_cpus=self.threads, num_gpus=self.gpus_per_run, max_retries=MAX_RETRIES,
                            retry_exceptions=False)(_task)
        suite_dir = str(Path(suite_dir).resolve())
        refs = {remote.remote(p, suite_dir, reuse_stale, self.threads): i for i, p in enumerate(planned)}
        results: dict[int, object] = {}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                r = ray.get(done[0])
                results[refs[done[0]]] = r
                if on_result:
                    on_result(r)
        except BaseException as e:
            with interrupts_ignored(e):
                for ref in pending:
                    ray.cancel(ref, force=True)
            raise
        return [results[i] for i in range(len(planned))]
