"""One job as several processes on this machine: the ``nproc`` ranks of one torch.distributed
world, spawned and watched by the process that runs the job (``--nproc-per-run``).

Each rank is a fresh interpreter (spawned, never forked) with its share of the job's threads; it
joins the world at a free port of this machine (:func:`dmlbench.core.distributed.join`) and runs
each job it is handed, and rank 0's result is the job's. The ranks are kept for the next job of
the same size (:class:`RankPool`: a suite's runs pay for the start, torch's import and the data's
loading once). The launching process watches them: should one die (killed, crashed) or fail alone,
it stops the others at once, and the job's ``lost(reason)`` records the run as failed with one
line naming the rank and how it ended; the next job starts new ranks. Nothing waits for a dead
rank: its sockets close, the others' next collective fails, and the watcher notices within a
fraction of a second. A rank exits with its launcher, too (a SIGKILLed launcher runs no clean-up).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from dmlbench.core import distributed
from dmlbench.core.errors import DMLBenchError
from dmlbench.executors.base import WorkerSetup

POLL_S = 0.05  # how often the launcher looks at its ranks
REPORT_GRACE_S = 2.0  # after a rank fails: what the others get to report their own errors before they are stopped
STOPPED = "the run's other processes were stopped: re-run to resume it from its last checkpoint"
EXIT_GRACE_S = 10.0  # what idle ranks get to leave their world when the launcher closes them


def job_ranks(job: Any) -> int:
    """The processes a job asks for (its ``nproc``; 1 for jobs without one, e.g. a tune's workers)."""
    return max(1, int(getattr(job, "nproc", 1) or 1))


def launches(job: Any) -> bool:
    """Whether this process must start the job's ranks: it asks for several and this process is in
    no world yet (under torchrun, or in a rank, the job runs as this process's share)."""
    return job_ranks(job) > 1 and distributed.current() is None


def exit_with_parent(ppid: int) -> None:
    """Loop until the process ``ppid`` is gone (this process was re-parented), then exit: a worker
    or rank must not run on as an orphan once its launcher is killed."""
    while True:
        time.sleep(1.0)
        if os.getppid() != ppid:
            os._exit(1)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400] if not isinstance(e, DMLBenchError) else str(e)


def _rank_main(setup: WorkerSetup, rank: int, size: int, port: int, device: str, inbox, outbox) -> None:
    """A rank's process: set up, join the world, then run each job it is handed (None: stop) and hand
    back its result, or its error (after which it exits: the world is not trusted any more)."""
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    tqdm.set_lock(threading.RLock())  # as a pool worker's (dmlbench.executors.local): no semaphore to leak
    setup.apply()
    try:
        distributed.join(rank, size, address="127.0.0.1", port=port, device=device)
        while (item := inbox.get()) is not None:
            fn, job = item
            outbox.put((rank, "result", fn(job), False))
    except BaseException as e:  # noqa: BLE001 - every way a rank ends is reported to the launcher
        outbox.put((rank, "error", _one_line(e), isinstance(e, distributed.RankLostError)))
        os._exit(130 if isinstance(e, KeyboardInterrupt) else 1)  # no clean-up that could wait for a dead peer
    distributed.leave()


def _stop(procs: list) -> None:
    """Terminate the ranks still running, then kill any that do not stop."""
    procs = [p for p in procs if p.pid is not None]  # (a start that failed leaves the rest unstarted)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def failure_reason(size: int, codes: list[int | None], errors: dict, results: dict) -> str:
    """One line on why a job of ``size`` ranks failed: a rank killed by a signal first, then a rank's
    own failure (an error, or a failed result), then a rank that lost contact with the others."""
    failed_result = {r: getattr(res, "reason", "") for r, res in results.items()
                     if getattr(res, "status", "") == "failed"}
    killed = [r for r, c in enumerate(codes) if c is not None and c < 0]
    own = [r for r, (line, lost) in errors.items() if not lost] + [r for r in failed_result if r not in errors]
    if killed:
        cause = f"rank {killed[0]} of {size} {_how(codes[killed[0]])}"
    elif own:
        r = min(own)
        cause = f"rank {r} of {size} failed: {errors[r][0] if r in errors else failed_result[r]}"
    elif errors:
        r = min(errors)
        cause = f"rank {r} of {size} failed: {errors[r][0]}"
    else:
        bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
        cause = f"rank {bad[0]} of {size} {_how(codes[bad[0]])}" if bad else f"rank 0 of {size} returned no result"
    return f"{cause}; {STOPPED}"


class RankPool:
    """``size`` rank processes of one world on this machine, kept for job after job (a suite's runs:
    the ranks start, import torch and load the data once), each job run by all of them at once."""

    def __init__(self, size: int, threads: int, setup: WorkerSetup, device: str):
        self.size, self.device = size, device
        self.setup = dataclasses.replace(setup, threads=max(1, threads // size))
        ctx = mp.get_context("spawn")
        self.outbox = ctx.SimpleQueue()
        self.inboxes = [ctx.SimpleQueue() for _ in range(size)]
        port = distributed.free_port("127.0.0.1")
        self.procs = [ctx.Process(target=_rank_main, args=(self.setup, r, size, port, device, self.inboxes[r],
                                                          self.outbox), name=f"dmlbench-rank{r}")
                      for r in range(size)]
        try:
            for p in self.procs:
                p.start()
        except BaseException:
            _stop(self.procs)
            raise

    def fits(self, size: int, threads: int, setup: WorkerSetup, device: str) -> bool:
        """Whether a job of ``size`` ranks on ``device`` can run here, with these threads and setup."""
        wanted = dataclasses.replace(setup, threads=max(1, threads // size))
        return self.alive and (self.size, self.device, self.setup) == (size, device, wanted)

    @property
    def alive(self) -> bool:
        """Every rank is still running (none has died or stopped after a failure)."""
        return all(p.exitcode is None for p in self.procs)

    def run(self, fn: Callable[[Any], Any], job: Any) -> Any:
        """``fn(job)`` in every rank; rank 0's result, or ``job.lost(reason)`` where a rank died or failed
        alone (the pool is then stopped)."""
        for inbox in self.inboxes:
            inbox.put((fn, job))
        results: dict[int, Any] = {}
        errors: dict[int, tuple[str, bool]] = {}

        def drain() -> None:
            while not self.outbox.empty():
                rank, kind, value, lost = self.outbox.get()
                if kind == "result":
                    results[rank] = value
                else:
                    errors[rank] = (value, lost)

        try:
            while len(results) < self.size:
                drain()
                if errors or not self.alive:
                    break
                time.sleep(POLL_S)
            else:
                return results[0]
            deadline = time.monotonic() + REPORT_GRACE_S  # the others' own errors say more than "lost contact"
            while time.monotonic() < deadline and any(p.is_alive() for p in self.procs):
                drain()
                time.sleep(POLL_S)
            self.close()
            drain()
        except BaseException:
            self.close()  # an interrupt: the ranks got it from the terminal, or get SIGTERM here
            raise
        reason = failure_reason(self.size, [p.exitcode for p in self.procs], errors, results)
        lost = getattr(job, "lost", None)
        if lost is None:
            raise DMLBenchError(reason)
        return lost(reason)

    def close(self) -> None:
        """Stop the ranks: idle ones are asked to leave their world, the rest are terminated."""
        if self.alive:
            for inbox in self.inboxes:
                inbox.put(None)
            deadline = time.monotonic() + EXIT_GRACE_S
            for p in self.procs:
                p.join(max(0.0, deadline - time.monotonic()))
        _stop(self.procs)


_POOL: list[RankPool] = []  # this process's ranks, kept between the jobs it launches


def run_ranks(fn: Callable[[Any], Any], job: Any, threads: int, setup: WorkerSetup | None = None) -> Any:
    """``fn(job)`` as ``job.nproc`` processes of one world on this machine, sharing ``threads``: rank
    0's result, or ``job.lost(reason)``. The ranks are kept for the next job of the same size and
    device (:func:`close_ranks` stops them)."""
    size, device = job_ranks(job), getattr(job, "device", "cpu")
    setup = setup or WorkerSetup.here(1)
    if _POOL and not _POOL[0].fits(size, threads, setup, device):
        close_ranks()
    if not _POOL:
        _POOL.append(RankPool(size, threads, setup, device))
    pool = _POOL[0]
    try:
        return pool.run(fn, job)
    finally:
        if not pool.alive:
            close_ranks()


def close_ranks() -> None:
    """Stop the ranks this process keeps (at the end of a suite, and as a worker exits)."""
    while _POOL:
        _POOL.pop().close()
