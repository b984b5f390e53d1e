"""The local executor: runs in this process (``workers=1``) or in a pool of worker processes.

Each worker gets ``threads // workers`` threads for torch, faiss and BLAS (at least one), so the
pool never oversubscribes the cores; workers load the data once each (memory-mapped photo caches
are shared through the page cache). Ctrl-C stops the pool; every finished run is on disk and a
re-run resumes the rest.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from dmlbench.runtime import default_threads

log = logging.getLogger("dmlbench")


def _init_worker(threads: int, level: int) -> None:
    from dmlbench.runtime import log_to_stderr, set_threads

    set_threads(threads)
    log_to_stderr(level)


def _run(planned, suite_dir: Path, reuse_stale: bool):
    import os
    import sys

    from dmlbench.runner import run_one

    cfg = planned.config
    # One line per run as a worker takes it up; the driver prints one as each finishes.
    print(f"  started {cfg.method} seed {cfg.seed} (worker {os.getpid()}, {cfg.device})", file=sys.stderr, flush=True)
    return run_one(cfg, suite_dir, variant=planned.variant, reuse_stale=reuse_stale)


class LocalExecutor:
    def __init__(self, workers: int = 1, threads: int | None = None):
        self.workers = max(1, workers)
        total = threads or default_threads()
        self.threads = max(1, total // self.workers)
        if self.workers > total:
            log.warning("%d workers on %d threads: each worker gets 1 thread and the cores are oversubscribed",
                        self.workers, total)

    def run(self, planned: list, suite_dir: Path, *, reuse_stale: bool = False, on_result=None, data=None) -> list:
        from dmlbench.runner import run_one
        from dmlbench.runtime import set_threads

        if self.workers == 1 or len(planned) == 1:
            set_threads(self.threads)
            results = []
            for p in planned:
                r = run_one(p.config, suite_dir, variant=p.variant, reuse_stale=reuse_stale, data=data)
                results.append(r)
                if on_result:
                    on_result(r)
            return results
        # spawn: a fresh interpreter per worker, never a fork of a process holding torch's threads.
        ctx = mp.get_context("spawn")
        results: dict[int, object] = {}
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(self.threads, logging.getLogger("dmlbench").level))
        from tqdm import tqdm

        bar = tqdm(total=len(planned), desc="suite", unit="run", disable=None, leave=False)  # on a terminal only
        try:
            futures = {pool.submit(_run, p, suite_dir, reuse_stale): i for i, p in enumerate(planned)}
            for fut in as_completed(futures):
                r = fut.result()
                results[futures[fut]] = r
                bar.update()
                if on_result:
                    on_result(r)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown()
        return [results[i] for i in range(len(planned))]
