"""The logger contract: where a run's curves go besides ``history.csv``, written down once.

A logger is a class registered with :func:`register_logger` (``--log NAME``; several:
``--log tensorboard,mlflow``). The runner opens one per run, in the process that trains it (a
pool worker, a Ray task), and calls it from the training and the evaluation:

- ``__init__(run_dir, config, context)``: ``config`` is the run's config (a dict), ``context`` what
  the suite shares with every run (e.g. an MLflow parent run's id), ``resume_step`` the step a
  resumed run starts from: a logger continues its curves there instead of repeating steps;
- :meth:`~Logger.log_steps`: the loss terms and the learning rate of each step, handed over once
  an epoch (no device sync per step);
- :meth:`~Logger.log_metrics`: an evaluation's metrics;
- :meth:`~Logger.log_embeddings`: the test embeddings at the end, with labels and, for images,
  thumbnails;
- :meth:`~Logger.log_files`: files a run wrote (metrics.json, history.csv);
- :meth:`~Logger.close`;
- optionally, a static ``suite_context(suite_dir, dataset) -> dict``, called once a suite in the
  driver: what every run's logger gets as ``context`` (MLflow: the suite's parent run).

A logger never stops a run: the runner catches what it raises, warns in one line and drops it
(a tracking server that cannot be reached). A missing library is refused before any run starts,
with its install hint (:meth:`Logger.check`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import read_json, write_json
from dmlbench.core.registry import Registry

log = logging.getLogger("dmlbench")
LOGGED = ".logged_step.json"  # in a run folder: the last training step handed to its loggers


@runtime_checkable
class Logger(Protocol):
    """Where a run's curves, metrics and embeddings are logged (the contract above)."""

    name: ClassVar[str]

    def __init__(self, run_dir: Path, config: dict, context: dict, resume_step: int = 0) -> None: ...

    def log_steps(self, first_step: int, names: Sequence[str], values: np.ndarray, lrs: Sequence[float]) -> None:
        """``values[i]``: the terms named ``names`` (and the weighted total, "loss") at step
        ``first_step + i + 1``; ``lrs[i]``: the learning rate at that step."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """An evaluation's metrics, at training step ``step``."""

    def log_embeddings(self, embeddings: np.ndarray, labels: np.ndarray,
                       images: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """The test embeddings (N, D), their labels and, for image data, ``images(rows)``: the uint8
        images (n, C, H, W) of those rows (a logger reads only the rows it shows)."""

    def log_files(self, paths: Sequence[Path]) -> None:
        """Files the run wrote, as artifacts."""

    def close(self) -> None:
        """Flush and release."""


LOGGERS: Registry[type] = Registry("logger", entry_point_group="dmlbench.loggers")


def register_logger(name: str):
    """Class decorator: register a logger under ``name`` (``--log NAME``)."""
    def decorator(cls):
        cls.name = name
        LOGGERS.add(name, cls)
        return cls

    return decorator


def logger_names(value: str | Sequence[str] | None) -> list[str]:
    """``--log a,b`` as names, each checked: a known logger whose library imports (else one line
    with the install hint)."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value or []) if v.strip()]
    for n in names:
        cls = LOGGERS.get(n)
        check = getattr(cls, "check", None)
        if check is not None:
            check()
    return names


def suite_context(names: Sequence[str], suite_dir: Path, dataset: str) -> tuple[dict, list[str]]:
    """What the suite's runs share, from each logger that has a ``suite_context(suite_dir, dataset)``
    (MLflow's parent run), and the loggers kept: one whose context fails (a tracking server that
    cannot be reached) is warned about once, here, and left out of every run."""
    context, kept = {}, []
    for n in names:
        hook = getattr(LOGGERS.get(n), "suite_context", None)
        try:
            if hook is not None:
                context.update(hook(Path(suite_dir), dataset))
            kept.append(n)
        except Exception as e:  # noqa: BLE001 - tracking never stops a suite
            log.warning("--log %s: cannot reach it (%s: %s); the runs go on without it", n, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "")
    return context, kept


class Loggers:
    """The loggers of one run, called together; one that raises is warned about once and dropped,
    so that tracking never costs a run. They start at the first thing logged, from its step (a
    resumed run's first step is where its checkpoint left off)."""

    def __init__(self, names: Sequence[str], run_dir: Path, config: dict, context: dict | None = None):
        self.names, self.run_dir, self.config, self.context = list(names), Path(run_dir), config, context or {}
        self.items: list[Any] | None = None
        self.marker = self.run_dir / LOGGED
        self.logged = 0  # the last step logged (kept in the run folder: a resumed epoch is not logged twice)

    def start(self, resume_step: int = 0) -> None:
        """Open every logger (once), continuing from ``resume_step``."""
        if self.items is not None:
            return
        try:
            self.logged = int(read_json(self.marker).get("step", 0)) if self.marker.is_file() else 0
        except (DMLBenchError, ValueError, TypeError):
            self.logged = 0
        self.items = []
        for n in self.names:
            try:
                self.items.append(LOGGERS.get(n)(self.run_dir, self.config, self.context, resume_step))
            except Exception as e:  # noqa: BLE001 - an unreachable server must not fail the run
                log.warning("--log %s: cannot start (%s: %s); the run goes on without it", n, type(e).__name__,
                            str(e).splitlines()[0][:200] if str(e) else "")

    def step_hook(self, trainer, first_step: int, names, values, lrs) -> None:
        """The trainer's step hook: each step of the epoch just trained."""
        self.start(first_step)
        self.log_steps(first_step, names, values, lrs)

    def _each(self, method: str, *args) -> None:
        self.start()
        for item in list(self.items):
            try:
                getattr(item, method)(*args)
            except Exception as e:  # noqa: BLE001 - see the class docstring
                log.warning("--log %s: %s failed (%s: %s); the run goes on without it", item.name, method,
                            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                self.items.remove(item)

    def log_steps(self, first_step: int, names, values, lrs) -> None:
        """See :meth:`Logger.log_steps`; steps already logged (a resumed epoch) are left out."""
        self.start(first_step)
        skip = max(0, min(len(values), self.logged - first_step))
        if skip < len(values):
            self._each("log_steps", first_step + skip, names, values[skip:], list(lrs)[skip:])
            self.logged = first_step + len(values)
            write_json(self.marker, {"step": self.logged})

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """See :meth:`Logger.log_metrics`."""
        self._each("log_metrics", step, metrics)

    def log_embeddings(self, embeddings, labels, images) -> None:
        """See :meth:`Logger.log_embeddings`."""
        self._each("log_embeddings", embeddings, labels, images)

    def log_files(self, paths) -> None:
        """See :meth:`Logger.log_files`."""
        self._each("log_files", paths)

    def close(self) -> None:
        """Close every logger (errors warned about, never raised)."""
        self._each("close")

