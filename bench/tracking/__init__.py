"""Tracking: a run's curves, metrics and embeddings logged to experiment trackers besides
``history.csv``, behind one contract (:mod:`.base`: the logger protocol and its registry).

- ``tensorboard`` (:mod:`.tensorboard`): event files in each run's folder, the Embedding Projector;
- ``mlflow`` (:mod:`.mlflow`): a local file store or any tracking server, runs nested per suite.
"""

from __future__ import annotations

from dmlbench.tracking import mlflow, tensorboard  # noqa: F401  (registers the built-in loggers)
from dmlbench.tracking.base import LOGGERS, Logger, Loggers, logger_names, register_logger, suite_context

__all__ = ["LOGGERS", "Logger", "Loggers", "logger_names", "register_logger", "suite_context"]
