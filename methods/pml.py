"""``pml:<LossName>``: any pytorch-metric-learning loss as a method.

``--methods pml:MultiSimilarityLoss`` or ``pml:ArcFaceLoss`` trains the shared encoder with that
loss on class-balanced batches (``m_per_class`` images per class), optionally with a PML miner
(``miner=MultiSimilarityMiner``). The loss's own constructor arguments are options:
``--set pml:ArcFaceLoss.margin=28.6``. Losses with their own weights (ArcFace, ProxyAnchor, ...)
get ``num_classes`` and ``embedding_size`` filled in, and their weights are trained with the encoder.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import field
from typing import ClassVar

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.losses import BaseMetricLossFunction

from dmlbench.errors import DMLBenchError
from dmlbench.methods.base import Batch, BatchSpec, Method, Params

PREFIX = "pml:"
_FILLED = {"num_classes", "embedding_size"}
_HARNESS = {"m_per_class", "miner", "weights"}  # the harness's own options, never a loss's
# Wrappers, abstract bases, and losses for other settings (VICReg is self-supervised: no labels).
_NOT_METHODS = {"BaseMetricLossFunction", "CrossBatchMemory", "MultipleLosses", "SelfSupervisedLoss",
                "BaseLossWrapper", "GenericPairLoss", "VICRegLoss"}


def _init_params(loss_cls) -> dict[str, inspect.Parameter]:
    """Constructor arguments, following a parent's only where ``*args`` forwards them
    (CosFaceLoss(*args, margin, scale, **kwargs) takes ArcFaceLoss's num_classes, embedding_size)."""
    params: dict[str, inspect.Parameter] = {}
    for cls in loss_cls.__mro__:
        if cls is object or "__init__" not in vars(cls):
            continue
        forwards = False
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if p.kind == p.VAR_POSITIONAL:
                forwards = True
            elif name != "self" and p.kind != p.VAR_KEYWORD:
                params.setdefault(name, p)
        if not forwards:
            break
    return params


def _runnable(loss_cls) -> bool:
    """Every required argument is one the harness fills in."""
    return all(p.default is not inspect.Parameter.empty or name in _FILLED
               for name, p in _init_params(loss_cls).items())


def pml_loss_names() -> list[str]:
    return sorted(
        n for n, obj in vars(pml_losses).items()
        if inspect.isclass(obj) and issubclass(obj, BaseMetricLossFunction) and n not in _NOT_METHODS
        and _runnable(obj)
    )


def _loss_options(loss_cls) -> list[tuple[str, type, object]]:
    """The loss's constructor arguments with plain-typed defaults, as dataclass fields."""
    out = []
    for name, p in _init_params(loss_cls).items():
        if name in _FILLED or name in _HARNESS or p.default is inspect.Parameter.empty:
            continue
        d = p.default
        if isinstance(d, bool):
            out.append((name, bool, d))
        elif isinstance(d, int):
            out.append((name, typing.Union[int, float], d))
        elif isinstance(d, (float, str)):
            out.append((name, type(d), d))
    return out


class PMLMethod(Method):
    loss_name: ClassVar[str] = ""

    def __init__(self, params: Params, **kw):
        super().__init__(params, **kw)
        loss_cls = getattr(pml_losses, self.loss_name)
        sig = _init_params(loss_cls)
        kwargs = {name: getattr(params, name) for name, _, _ in _loss_options(loss_cls)}
        if "num_classes" in sig:
            kwargs["num_classes"] = self.num_classes
        if "embedding_size" in sig:
            kwargs["embedding_size"] = self.embedding_dim
        try:
            self.loss_fn = loss_cls(**kwargs)
        except Exception as e:
            raise DMLBenchError(f"{self.name}: cannot build the loss with {kwargs} ({e}); check its --set options") from None
        self.miner = None
        if params.miner:
            if not hasattr(pml_miners, params.miner):
                known = ", ".join(n for n in dir(pml_miners) if n.endswith("Miner") and not n.startswith("Base"))
                raise DMLBenchError(f"{self.name}: unknown PML miner {params.miner!r}; known: {known}")
            self.miner = getattr(pml_miners, params.miner)()

    def batch_spec(self) -> BatchSpec:
        return BatchSpec("balanced", m=self.params.m_per_class)

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        emb = self.encoder(batch.x)
        indices = self.miner(emb, batch.y) if self.miner is not None else None
        return {"loss": self.loss_fn(emb, batch.y, indices_tuple=indices)}


_CACHE: dict[str, type[Method]] = {}


def pml_method(name: str) -> type[Method]:
    """The method class for ``pml:<LossName>``, made on first use."""
    if name in _CACHE:
        return _CACHE[name]
    loss_name = name[len(PREFIX):]
    known = pml_loss_names()
    if loss_name not in known:
        raise DMLBenchError(f"unknown pytorch-metric-learning loss {loss_name!r}; known: {', '.join(known)}")
    loss_cls = getattr(pml_losses, loss_name)
    fields = [(n, t, field(default=d)) for n, t, d in _loss_options(loss_cls)]
    fields += [("m_per_class", int, field(default=4)), ("miner", str, field(default="")),
               ("weights", dict[str, float], field(default_factory=lambda: {"loss": 1.0}))]
    params_cls = dataclasses.make_dataclass(f"{loss_name}Params", fields, bases=(Params,))
    doc = (loss_cls.__doc__ or "").strip().splitlines()
    cls = type(loss_name + "Method", (PMLMethod,), {
        "name": name, "loss_name": loss_name, "Params": params_cls,
        "paper": f"pytorch-metric-learning {loss_name}", "formula": doc[0] if doc else f"PML {loss_name}",
    })
    _CACHE[name] = cls
    return cls
