"""Methods (``dmlbench.methods``): a registry of metric-learning losses sharing one trainer.

Importing this package registers the built-in methods (explicit imports, no scanning) without
importing torch; methods of third-party packages arrive through the ``dmlbench.methods``
entry-point group, and ``pml:<LossName>`` wraps any pytorch-metric-learning loss.
"""

from __future__ import annotations

from dmlbench.blocks.batches import PAIRS, PLAIN, TRIPLETS, Balanced, Batch
from dmlbench.core.space import LR, Choice, Float, Int
from dmlbench.methods.base import METHODS, EncoderChoice, GenerativeMethod, Method, Params, register_method

# isort: off
# Import order is the listing order of `bench list methods` and of table rows.
from dmlbench.methods import siamese, triplet_softmax, triplet_hinge, npair, vae, tvae, raw  # noqa: F401
# isort: on
from dmlbench.methods.pml import PREFIX as PML_PREFIX
from dmlbench.methods.pml import pml_method

BUILTIN = ("siamese", "triplet-softmax", "triplet-hinge", "npair", "vae", "tvae")


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``, or a wrapper of the PML loss ``pml:<LossName>`` names."""
    if name.startswith(PML_PREFIX):
        return pml_method(name)
    return METHODS.get(name)


def method_names() -> list[str]:
    """The registered methods' names, in registry order (``pml:`` methods are made on demand, not listed)."""
    return METHODS.names()


# What a method's author imports, in one place: the contract, the batch kinds, the search spaces.
__all__ = ["BUILTIN", "LR", "METHODS", "PAIRS", "PLAIN", "TRIPLETS", "Balanced", "Batch", "Choice", "EncoderChoice",
           "Float", "GenerativeMethod", "Int", "Method", "Params", "get_method", "method_names", "register_method"]
