"""dmlbench: compare deep metric-learning methods with one trainer and one evaluation suite.

The import package maps onto the repository's folders: ``bench/`` is ``dmlbench``,
``methods/`` is ``dmlbench.methods`` and ``datasets/`` is ``dmlbench.data`` (so nothing here
shadows Hugging Face's ``datasets``). Inside ``bench/``, one subpackage per stage: ``core``
(what every stage shares), ``training``, ``evaluation``, ``running``, ``executors``, ``tune``
and ``report``; the CLI (:mod:`dmlbench.cli`) is a thin layer over :mod:`dmlbench.api`, whose
functions are here: :func:`run`, :func:`tune`, :func:`compare`, :func:`load_results`,
:func:`export` and :func:`load_embedder`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dmlbench.core import VERSION as __version__
from dmlbench.core.errors import DMLBenchError

API = ("run", "tune", "compare", "load_results", "export", "load_embedder")

if TYPE_CHECKING:
    from dmlbench.api import compare, export, load_embedder, load_results, run, tune


def __getattr__(name: str):
    # PEP 562: the API loads on first use, so `import dmlbench.core.errors` (every module's first
    # import) stays light and `bench table` never pays for what `bench run` needs.
    if name in API:
        from dmlbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'dmlbench' has no attribute {name!r}")


__all__ = ["DMLBenchError", "__version__", *API, "compare", "load_results", "run", "tune", "export", "load_embedder"]
