"""dmlbench: compare deep metric-learning methods with one trainer and one evaluation suite.

The import package maps onto the repository's folders: ``bench/`` is ``dmlbench``,
``methods/`` is ``dmlbench.methods`` and ``datasets/`` is ``dmlbench.data`` (so nothing here
shadows Hugging Face's ``datasets``).
"""

__version__ = "0.1.0"

from dmlbench.core.errors import DMLBenchError

__all__ = ["DMLBenchError", "__version__"]
