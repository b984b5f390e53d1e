"""The executor contract: where a list of jobs runs, written down once.

``bench run`` and ``bench tune`` both hand their work to an executor: ``bench run`` one job per
(method, seed) run (:func:`dmlbench.running.runner.run_job`), ``bench tune`` one worker loop per
worker (:func:`dmlbench.tune.trial.work`), each taking trials until the budget is spent. An
executor decides only *where* each job runs; the run folder's lock makes any two executors safe
on one results folder.

A new executor is one module with one class, registered with :func:`register_executor` (or
through the ``dmlbench.executors`` entry-point group); ``docs/add-executor.md`` shows one. The
class satisfies :class:`Executor`:

- it is made with ``workers`` (jobs at once), ``threads`` (the thread budget to share between
  them; None: this machine's cores, at most 8) and its ``Options``;
- :meth:`~Executor.start` reaches what it needs (a cluster) and refuses, with a one-line
  :class:`~dmlbench.core.errors.DMLBenchError`, before any results folder is made;
- :meth:`~Executor.map` runs ``fn(job)`` for every job, each in a process set up by a
  :class:`WorkerSetup` (torch, faiss and BLAS threads set to its share, the caller's log level,
  the caller's plugins imported), calls ``on_result`` in the driver as each finishes, and returns the
  results in the jobs' order. ``fn`` and the jobs are picklable (workers may be other processes
  or machines); a job with a ``label`` is announced as it starts;
- an interrupt (KeyboardInterrupt in the driver) stops every job within seconds and is
  re-raised; where it can, a job gets the KeyboardInterrupt inside ``fn`` (a tune then
  re-queues its trial), and unfinished runs resume from their checkpoints next time;
- ``remote`` is True where jobs may run on other machines: the caller then gives them absolute
  paths (on a file system every node sees);
- ``ranks`` is True where the executor runs a job whose ``nproc`` is above 1 (``--nproc-per-run``)
  as that many processes of one torch.distributed world, each joined with
  :func:`dmlbench.core.distributed.join` before ``fn(job)`` runs in it: rank 0's result is the
  job's, and where a rank dies the others are stopped and ``job.lost(reason)`` is the result (the
  local executor spawns them, :mod:`dmlbench.executors.ranks`; the Ray executor places them);
- :meth:`~Executor.shutdown` releases what :meth:`~Executor.start` took; it is called once, also
  after an interrupt.

``Options`` is a dataclass whose fields are the executor's own settings. Each field's
``metadata`` gives its suite key (``key``: the TOML key and, for built-in executors, the
``--flag``) and ``help``; :func:`executor_option` writes such a field. Values arrive type-checked
(:func:`dmlbench.core.params.apply_overrides`), and ``Options.validate()``, where defined, checks them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.params import apply_overrides
from dmlbench.core.registry import LOADED_PLUGINS, Registry, load_plugin
from dmlbench.core.runtime import log_to_stderr, set_threads


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process needs before its first job: its threads, the driver's log level and
    the plugins the driver imported (so their methods, encoders and metrics exist there too)."""

    threads: int
    level: int
    plugins: tuple[str, ...] = ()

    @classmethod
    def here(cls, threads: int) -> WorkerSetup:
        """The setup of this (driver) process, for workers with ``threads`` threads each."""
        return cls(threads, logging.getLogger("dmlbench").level, tuple(LOADED_PLUGINS))

    def apply(self) -> None:
        """Set the threads and the log level, and import the plugins (once per process)."""
        set_threads(self.threads)
        log_to_stderr(self.level)
        for spec in self.plugins:
            load_plugin(spec)


def executor_option(default, help: str, *, key: str, hint: str = ""):
    """A field of an executor's ``Options``: ``key`` is its suite key (TOML) and, for the
    built-in executors, its ``--flag``; ``hint`` says what to do instead where it does not apply."""
    return field(default=default, metadata={"help": help, "key": key, "hint": hint})


@dataclass
class NoOptions:
    """An executor without options of its own."""


@runtime_checkable
class Executor(Protocol):
    """Runs a list of jobs and shuts down (the contract above)."""

    name: ClassVar[str]
    Options: ClassVar[type]
    remote: ClassVar[bool]  # jobs may run on other machines: the caller gives them absolute paths
    ranks: ClassVar[bool]  # runs a job of several processes (its nproc) as one world
    workers: int

    def __init__(self, workers: int = 1, threads: int | None = None, options: Any = None) -> None: ...

    def start(self) -> None:
        """Reach what the jobs need; refuse with a one-line DMLBenchError before anything is written."""

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], *, on_result: Callable[[Any], None] | None = None,
            progress: str = "") -> list:
        """``[fn(job) for job in jobs]``, run where this executor runs jobs; ``on_result`` is called in
        this process as each finishes; ``progress``: a label for an overall progress bar (none if empty)."""

    def shutdown(self) -> None:
        """Release what :meth:`start` took (called once, also after an interrupt)."""


EXECUTORS: Registry[type[Executor]] = Registry("executor", entry_point_group="dmlbench.executors")


def register_executor(name: str):
    """Class decorator: register an executor under ``name`` (``--executor NAME``)."""
    def decorator(cls):
        cls.name = name
        if not hasattr(cls, "Options"):
            cls.Options = NoOptions
        if not hasattr(cls, "remote"):
            cls.remote = False
        if not hasattr(cls, "ranks"):
            cls.ranks = False
        EXECUTORS.add(name, cls)
        return cls

    return decorator


def option_keys() -> dict[str, tuple[str, dataclasses.Field]]:
    """{suite key: (executor name, field)} over every registered executor's options."""
    out = {}
    for name in EXECUTORS.names():
        for f in dataclasses.fields(EXECUTORS.get(name).Options):
            out[f.metadata.get("key", f.name)] = (name, f)
    return out


def executor_options(name: str, values: dict) -> Any:
    """The ``Options`` of executor ``name`` from suite keys (``ray_address`` ...), type-checked and
    validated; a key of another executor's options is refused with its own hint."""
    cls = EXECUTORS.get(name)
    keys = option_keys()
    mine = {}
    for key, value in values.items():
        owner, f = keys[key]
        if owner != name:
            hint = f.metadata.get("hint")
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            raise DMLBenchError(f"{key}={shown} applies to --executor {owner} only" + (f"; {hint}" if hint else ""))
        mine[f.name] = value
    return apply_overrides(cls.Options(), mine, f"executor {name}")


def get_executor(name: str, *, workers: int = 1, threads: int | None = None, options: dict | None = None) -> Executor:
    """An executor of the registered kind ``name``, with its options (suite keys) checked."""
    opts = executor_options(name, options or {})
    return EXECUTORS.get(name)(workers=workers, threads=threads, options=opts)
