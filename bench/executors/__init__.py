"""Executors: where a suite's runs and a tune's workers are made, behind one contract
(:mod:`.base`: the :class:`~.base.Executor` protocol and the registry).

- ``local`` (:mod:`.local`): in this process, or a pool of ``workers`` processes on this machine,
  the thread budget split between them.
- ``ray`` (:mod:`.ray`): a Ray cluster (``pip install 'dmlbench[ray]'``); a task that dies on a
  lost node is retried, and resumes from its checkpoint.

A new executor is one module with a class registered by :func:`~.base.register_executor`
(imported below, or through the ``dmlbench.executors`` entry-point group); see docs/add-executor.md.
"""

from __future__ import annotations

from dmlbench.executors import local, ray  # noqa: F401  (registers the built-in executors)
from dmlbench.executors.base import EXECUTORS, Executor, executor_options, get_executor, option_keys, register_executor

__all__ = ["EXECUTORS", "Executor", "executor_options", "get_executor", "option_keys", "register_executor"]
