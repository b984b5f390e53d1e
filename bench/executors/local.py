"""The local executor: jobs run in this process (``workers=1``) or in a pool of worker processes.

Each worker gets ``threads // workers`` threads for torch, faiss and BLAS (at least one), so the
pool never oversubscribes the cores; workers load the data once each (memory-mapped photo caches
are shared through the page cache). At most one run per worker is handed out at a time, so a
Ctrl-C (to the whole terminal group or to the driver alone) stops the pool within seconds: the
driver passes the interrupt on to its workers and ends any that do not stop. Every finished run
is on disk, checkpoints and locks survive a killed worker, and a re-run resumes the rest. A
worker whose driver dies (SIGKILL) exits too, instead of running on as an orphan.

A job of several processes (``--nproc-per-run``) is launched by the process that would run it
(this one, or its worker), which spawns and watches its ranks (:mod:`dmlbench.executors.ranks`);
they share that worker's threads.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from dmlbench.core import runtime
from dmlbench.core.runtime import default_threads, echo_line, interrupts_ignored, set_threads
from dmlbench.executors.base import WorkerSetup, register_executor
from dmlbench.executors.ranks import close_ranks, exit_with_parent, launches, run_ranks

log = logging.getLogger("dmlbench")


STOP_GRACE_S = 10.0   # what a worker gets to stop after an interrupt before it is terminated
_BUSY = False        # in a worker: inside a task (an interrupt then raises there, else it exits)


def _on_interrupt(signum, frame):
    if _BUSY:
        # A terminal's Ctrl-C reaches a worker twice (the terminal's, then the driver's passed on):
        # the second must not break off what the first is saving (a tune re-queues its trial).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt
    os._exit(130)    # idle between tasks: nothing to save, and no traceback from the pool's loop


def init_worker_process(setup: WorkerSetup, slots=None, workers: int = 1) -> None:
    """A pool worker's start: its share of the threads, logging and the driver's plugins
    (``setup``), quiet interrupts, exit with its driver, and (with ``slots``, a shared counter) its
    own progress-bar line under the driver's overall bar, so N workers draw N lines, not one."""
    setup.apply()
    # tqdm's default lock is a multiprocessing one (a named semaphore per process), which a worker
    # stopped by an interrupt never unlinks: the exit would warn of leaked semaphores. A worker's
    # bars need only a thread lock.
    tqdm.set_lock(threading.RLock())
    if slots is not None:
        with slots.get_lock():
            runtime.BAR_POSITION = 1 + slots.value % max(1, workers)
            slots.value += 1
    signal.signal(signal.SIGINT, _on_interrupt)
    atexit.register(close_ranks)  # the ranks of its runs of several processes leave with the worker
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()


@contextmanager
def busy():
    """Mark a worker as inside a task: an interrupt raises KeyboardInterrupt there (so a tune's
    running trial is re-queued) instead of ending the process at once."""
    global _BUSY
    _BUSY = True
    try:
        yield
    finally:
        _BUSY = False


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: pass the interrupt on (a SIGINT to the driver alone does not reach them),
    give the workers STOP_GRACE_S to stop, terminate the rest, and cancel what is queued."""
    procs = [p for p in list(getattr(pool, "_processes", {}).values()) if p.is_alive()]
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(1.0)
    pool.shutdown(wait=False, cancel_futures=True)
    # Let the pool's manager thread close its queues (their semaphores), so that the exit does
    # not end with a "leaked semaphore objects" warning.
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:
        manager.join(5.0)


def _call(fn: Callable[[Any], Any], job: Any, threads: int = 1) -> Any:
    """A job in a pool worker: announced by its label (a worker takes a job only when it is free),
    run as ``busy`` so an interrupt raises inside it (a tune re-queues its trial; a run leaves its
    checkpoint), after which the worker exits: the driver is stopping the pool. A job of several
    processes is launched from here, sharing the worker's ``threads``."""
    label = getattr(job, "label", "")
    if label:
        echo_line(f"  started {label} (worker {os.getpid()})")
    try:
        with busy():
            return run_ranks(fn, job, threads) if launches(job) else fn(job)
    except KeyboardInterrupt:
        os._exit(130)


@register_executor("local")
class LocalExecutor:
    """This machine: jobs in this process with one worker, else in a pool of worker processes that
    share the thread budget (--workers N, --devices).

    Workers are spawned, never forked, and each gets ``threads // workers`` threads; a job of
    several processes splits its worker's threads between its ranks."""

    ranks = True

    def __init__(self, workers: int = 1, threads: int | None = None, options: Any = None):
        self.workers = max(1, workers)
        self.total = threads or default_threads()
        self.threads = max(1, self.total // self.workers)

    def start(self) -> None:
        """Nothing to reach on this machine (the Ray executor joins its cluster here)."""

    def shutdown(self) -> None:
        """Nothing to release: a pool is shut down when its jobs are done or interrupted."""

    def _fit(self, jobs: int) -> None:
        """No more workers than jobs, and the thread budget split between those that start."""
        self.workers = max(1, min(self.workers, jobs))
        self.threads = max(1, self.total // self.workers)
        if self.workers > self.total:
            log.warning("--workers %d is more than the %d threads to share (--threads, default: this machine's "
                        "cores): each worker gets 1 thread and they compete for the cores; --workers auto picks a "
                        "number for the device", self.workers, self.total)

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], *, on_result: Callable[[Any], None] | None = None,
            progress: str = "") -> list:
        """Run ``fn`` on every job, here or in the pool, one job per worker at a time, in order."""
        self._fit(len(jobs))
        if self.workers == 1:
            set_threads(self.threads)
            results = []
            try:
                for job in jobs:
                    results.append(run_ranks(fn, job, self.threads) if launches(job) else fn(job))
                    if on_result:
                        on_result(results[-1])
            finally:
                close_ranks()
            return results
        # spawn: a fresh interpreter per worker, never a fork of a process holding torch's threads.
        ctx = mp.get_context("spawn")
        results: dict[int, Any] = {}
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker_process,
                                   initargs=(WorkerSetup.here(self.threads), ctx.Value("i", 0), self.workers))
        # On a terminal only: the overall bar on the first line, each worker's job on its own below.
        bar = tqdm(total=len(jobs), desc=progress, unit="run", disable=None if progress else True, leave=False,
                   position=0)
        queue = iter(enumerate(jobs))
        running: dict = {}

        def hand_out() -> None:
            for i, job in queue:
                running[pool.submit(_call, fn, job, self.threads)] = i
                return

        try:
            # One job per worker at a time, in order: nothing waits in the pool's queue that an
            # interrupt would have to withdraw.
            for _ in range(self.workers):
                hand_out()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=running.get):
                    r = fut.result()
                    results[running.pop(fut)] = r
                    bar.update()
                    if on_result:
                        on_result(r)
                    hand_out()
        except BaseException as e:
            with interrupts_ignored(e):
                stop_pool(pool)
            raise
        finally:
            bar.close()
        pool.shutdown()
        return [results[i] for i in range(len(jobs))]
