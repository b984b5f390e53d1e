"""The Ray executor: one Ray task per job (a run, or a tune's worker), on a local or remote Ray cluster.

Needs the ``ray`` extra (``pip install 'dmlbench[ray]'``). ``RAY_ADDRESS`` (or ``ray start``'s
cluster) selects the cluster; without one, a local Ray instance with this machine's cores starts.
The results folder must be on storage every node sees (a shared file system): each task writes
its own run folder there, under that folder's lock. A task lost with its node is retried
(``max_retries``) and resumes from the run's last checkpoint, so no finished epoch is lost.

``address``: ``auto`` (the cluster ``ray start`` made on this node) or ``HOST:PORT``; empty starts
a local instance. ``gpus_per_run``: a GPU fraction per task, e.g. 0.25 packs four runs on a GPU.
The workers write their run folders themselves rather than sending results to the driver: a run's
checkpoints must survive the loss of the worker's node, and the driver then only reads the table.

A run of several processes (``--nproc-per-run N``) is a placement group of N bundles (the task's
CPUs split between them, ``gpus_per_run`` GPUs each), packed on as few nodes as hold it: rank 0's
node gives the address and port, and each rank is a task on its bundle that joins the world
(:func:`dmlbench.core.distributed.join`). A coordinating task (no CPU of its own) watches them: a
rank that fails or dies ends the others, and the run is failed with one line (not retried: a
re-run resumes it from its checkpoint). Tested with CPU ranks and gloo on one machine only.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from dmlbench.core import distributed
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.runtime import default_threads, interrupts_ignored
from dmlbench.executors.base import WorkerSetup, executor_option, register_executor
from dmlbench.executors.ranks import REPORT_GRACE_S, STOPPED, failure_reason, job_ranks

log = logging.getLogger("dmlbench")

MAX_RETRIES = 3  # a task lost with its node (or killed) runs again, resuming from its checkpoint
CANCEL_GRACE_S = 10.0  # after an interrupt: what a task gets to stop (a tune re-queues its trial) before a kill


def import_ray():
    """The ray module, or a one-line install hint."""
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


def _task(fn: Callable[[Any], Any], job: Any, setup: WorkerSetup) -> Any:
    """A job in a Ray task: its share of the threads, the driver's log level and plugins (their
    files must be on a path every node sees), then ``fn(job)``."""
    setup.apply()
    return fn(job)


def _address() -> tuple[str, int]:
    """Rank 0's node address and a port free there (run on rank 0's bundle)."""
    return distributed.node_address(), distributed.free_port()


def _rank(fn: Callable[[Any], Any], job: Any, setup: WorkerSetup, rank: int, size: int, address: str, port: int,
          shared_gpu: bool) -> Any:
    """One rank of a job, in a Ray task on its bundle: join the world, run the job, leave."""
    setup.apply()
    # local_rank 0: Ray shows each task its own GPUs only, from cuda:0; local_size 1: a rank keeps to its bundle.
    distributed.join(rank, size, address=address, port=port, device=getattr(job, "device", "cpu"), local_rank=0,
                     local_size=1, launcher="ray", shared_gpu=shared_gpu)
    try:
        return fn(job)
    finally:
        distributed.leave()


def _collect(done: list, refs: list, results: dict, errors: dict, died: list) -> bool:
    """File the finished rank tasks ``done`` under their ranks: results, errors (one line, and whether it
    only says a peer was lost), ranks whose process died. Whether all of them succeeded."""
    import ray

    ok = True
    for ref in done:
        r = refs.index(ref)
        try:
            results[r] = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - a rank's failure, whatever Ray wraps it in
            ok = False
            cause = getattr(e, "cause", None) or e
            if type(e).__name__ in ("WorkerCrashedError", "NodeDiedError", "ActorDiedError"):
                died.append(r)
            text = str(cause).strip().splitlines()
            line = str(cause) if isinstance(cause, DMLBenchError) else f"{type(cause).__name__}: {text[0] if text else ''}"
            errors[r] = (line, isinstance(cause, distributed.RankLostError))
    return ok


def _group(fn: Callable[[Any], Any], job: Any, setup: WorkerSetup, size: int, cpus: int, gpus: float) -> Any:
    """A job of ``size`` ranks on the cluster (a coordinating task): its placement group, rank 0's
    address, the rank tasks; rank 0's result, or ``job.lost(reason)`` where a rank failed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    pg = placement_group([bundle] * size, strategy="PACK")
    refs: list = []
    try:
        ray.get(pg.ready())

        def on(i: int):
            return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)

        address, port = ray.get(ray.remote(_address).options(num_cpus=0, scheduling_strategy=on(0)).remote())
        rank_task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False)(_rank)
        refs = [rank_task.options(scheduling_strategy=on(r)).remote(fn, job, setup, r, size, address, port, gpus < 1)
                for r in range(size)]
        results: dict = {}
        errors: dict = {}
        died: list = []
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            if _collect(done, refs, results, errors, died):
                continue
            # The others' own errors say more than "lost contact": a moment for them, then stop them.
            late, pending = ray.wait(pending, num_returns=len(pending), timeout=REPORT_GRACE_S)
            _collect(late, refs, results, errors, died)
            for ref in pending:
                ray.cancel(ref, force=True)
            reason = (f"rank {died[0]} of {size}: its process died (killed, out of memory, or its node lost); {STOPPED}"
                      if died else failure_reason(size, [None] * size, errors, results))
            if not hasattr(job, "lost"):
                raise DMLBenchError(reason)
            return job.lost(reason)
        return results[0]
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        remove_placement_group(pg)


@register_executor("ray")
class RayExecutor:
    """A Ray cluster: one task per job, retried on a lost node (--ray-address, --gpus-per-run;
    pip install 'dmlbench[ray]').

    Tasks take ``threads // workers`` CPUs and ``gpus_per_run`` GPUs each, on the cluster at
    ``address`` (or ``$RAY_ADDRESS``), else on a local Ray instance."""

    remote = True
    ranks = True

    @dataclass
    class Options:
        """The Ray executor's options (flags --ray-address, --gpus-per-run)."""

        address: str = executor_option("", "Ray cluster: auto or HOST:PORT. [default: $RAY_ADDRESS, else a local "
                                           "Ray instance]", key="ray_address")
        gpus_per_run: float = executor_option(0.0, "GPU fraction per Ray task (0.25 packs four runs on a GPU). "
                                                   "[default: 0]", key="gpus_per_run",
                                              hint="on one machine give --workers (--workers auto packs 4 runs per GPU)")

        def validate(self) -> None:
            """A GPU fraction between 0 and 64."""
            if not 0 <= self.gpus_per_run <= 64:
                raise DMLBenchError(f"gpus_per_run={self.gpus_per_run:g} must be between 0 and 64 (0.25 packs four "
                                    "runs on a GPU)")

    def __init__(self, workers: int = 1, threads: int | None = None, options: Any = None):
        options = options or self.Options()
        self.ray = import_ray()
        self.workers = max(1, workers)
        self.threads = max(1, (threads or default_threads()) // self.workers)
        self.address = options.address or os.environ.get("RAY_ADDRESS", "")
        self.gpus_per_run = options.gpus_per_run
        self._started_ray = False

    def start(self) -> None:
        """Join the cluster (or start a local instance); a bad address or a GPU-less cluster is refused."""
        started = not self.ray.is_initialized()
        connect(self.ray, self.address, self.workers * self.threads, self.gpus_per_run)
        self._started_ray = self._started_ray or started

    def shutdown(self) -> None:
        """Stop the Ray instance this executor started (with Ctrl-C ignored: inside Ray's shutdown a
        second Ctrl-C would crash it); a cluster the caller had joined is left as it was."""
        if self._started_ray and self.ray.is_initialized():
            with interrupts_ignored():
                self.ray.shutdown()
            self._started_ray = False

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], *, on_result: Callable[[Any], None] | None = None,
            progress: str = "") -> list:
        """One task per job; on an interrupt each task first gets a KeyboardInterrupt, then is killed."""
        ray = self.ray
        self.start()
        remote = ray.remote(num_cpus=self.threads, num_gpus=self.gpus_per_run, max_retries=MAX_RETRIES,
                            retry_exceptions=False)(_task)
        # A job of several processes: a coordinating task that holds no CPU, its ranks a placement group.
        group = ray.remote(num_cpus=0, max_retries=0)(_group)
        setup = WorkerSetup.here(self.threads)

        def submit(job):
            n = job_ranks(job)
            if n == 1:
                return remote.remote(fn, job, setup)
            per = max(1, self.threads // n)
            return group.remote(fn, job, WorkerSetup.here(per), n, per, self.gpus_per_run)

        refs = {submit(job): i for i, job in enumerate(jobs)}
        results: dict[int, Any] = {}
        pending = list(refs)
        # On a terminal: one overall bar, the jobs done and the time left (the tasks draw none here).
        bar = tqdm(total=len(jobs), desc=progress, unit="run", disable=None if progress else True, leave=False)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                r = ray.get(done[0])
                results[refs[done[0]]] = r
                bar.update()
                if on_result:
                    on_result(r)
        except BaseException as e:
            with interrupts_ignored(e):
                for ref in pending:  # an interrupt in each task first: a tune's trial re-queues itself
                    ray.cancel(ref)
                if pending:
                    ray.wait(pending, num_returns=len(pending), timeout=CANCEL_GRACE_S)
                for ref in pending:
                    ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
        return [results[i] for i in range(len(jobs))]
