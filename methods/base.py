"""The method interface, the batch kinds a method can ask for, and the method registry.

A method is an ``nn.Module`` that owns its networks. The trainer asks it which batches it needs
(:meth:`Method.batch_spec`), hands it each batch, and gets back a dict of named loss terms
(:meth:`Method.loss_terms`), which it sums with the weights in ``params.weights``. Evaluation
only calls :meth:`Method.embed`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from dmlbench.encoders import build_decoder, build_encoder
from dmlbench.errors import DMLBenchError
from dmlbench.registry import Registry

BatchKind = Literal["plain", "pairs", "triplets", "balanced"]


@dataclass(frozen=True)
class BatchSpec:
    """What a method's batches look like.

    - ``plain``: images in random order.
    - ``pairs``: x = [first; second], half of the pairs positive, half negative.
    - ``triplets``: x = [anchors; positives; negatives].
    - ``balanced``: groups of ``classes_per_group`` classes x ``m`` images each (PML's MPerClassSampler).
    """

    kind: BatchKind = "plain"
    m: int = 2
    # 0: as many classes as fit in the batch; -1: every training class in each group (N-pair tuples).
    classes_per_group: int = 0


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    spec: BatchSpec
    group_size: int = 0  # balanced batches: images per independent class-balanced group


@dataclass
class Params:
    """Hyperparameters of a method; subclasses add fields. ``weights`` holds one weight per loss term."""

    weights: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        for k, v in self.weights.items():
            if v < 0:
                raise DMLBenchError(f"weight {k}={v} must be >= 0")
        for name in ("m", "m_per_class"):  # images per class in a class-balanced batch
            if getattr(self, name, 1) < 1:
                raise DMLBenchError(f"option {name}={getattr(self, name)} must be at least 1")


class Method(nn.Module):
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    generative: ClassVar[bool] = False
    trainable: ClassVar[bool] = True

    def __init__(self, params: Params, *, input_shape: tuple[int, int, int], embedding_dim: int,
                 encoder: str, num_classes: int):
        super().__init__()
        self.params = params
        self.input_shape = tuple(input_shape)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.encoder_name = encoder
        self.encoder = self.make_encoder()

    def make_encoder(self) -> nn.Module:
        return build_encoder(self.encoder_name, self.input_shape, self.encoder_out_dim())

    def encoder_out_dim(self) -> int:
        return self.embedding_dim

    def build_decoder(self) -> nn.Module:
        return build_decoder(self.encoder_name, self.input_shape, self.embedding_dim)

    def batch_spec(self) -> BatchSpec:
        return BatchSpec("plain")

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    @property
    def weights(self) -> dict[str, float]:
        return self.params.weights

    @classmethod
    def describe(cls) -> dict:
        defaults = dataclasses.asdict(cls.Params())
        return {"name": cls.name, "paper": cls.paper, "formula": cls.formula, "defaults": defaults}


METHODS: Registry[type[Method]] = Registry("method", entry_point_group="dmlbench.methods")


def register_method(name: str):
    """Class decorator: ``@register_method("my-loss")``. A duplicate name raises."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return decorator
