"""Executors: where a suite's runs are made. They sit beside the runner and call
:func:`dmlbench.running.runner.run_one` for each planned run; the run folder's lock makes any two of them
(two terminals, two machines on shared storage) safe to point at one results folder.

- ``local`` (:mod:`.local`): in this process, or a pool of ``workers`` processes on this machine,
  the thread budget split between them.
- ``ray`` (:mod:`.ray`): a Ray cluster (``pip install 'dmlbench[ray]'``); a task that dies on a
  lost node is retried, and resumes from its checkpoint.
"""

from __future__ import annotations

from dmlbench.core.errors import DMLBenchError

EXECUTORS = ("local", "ray")


def get_executor(name: str, *, workers: int = 1, threads: int | None = None, address: str = "",
                 gpus_per_run: float = 0.0):
    if name == "local":
        from dmlbench.executors.local import LocalExecutor

        return LocalExecutor(workers=workers, threads=threads)
    if name == "ray":
        from dmlbench.executors.ray import RayExecutor

        return RayExecutor(workers=workers, threads=threads, address=address, gpus_per_run=gpus_per_run)
    raise DMLBenchError(f"executor {name!r} is not one of: {', '.join(EXECUTORS)}")
