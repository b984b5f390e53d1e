"""The method contract and the method registry.

A method owns its networks and a loss. The trainer asks for its :attr:`Method.batch_kind`, hands
it each :class:`~dmlbench.blocks.batches.Batch`, and gets back a dict of named loss terms
(:meth:`Method.loss_terms`), which it sums with ``params.weights``. Evaluation calls only
:meth:`Method.embed` (and, for a :class:`GenerativeMethod`, :meth:`~GenerativeMethod.reconstruct`
and :meth:`~GenerativeMethod.generative_metrics`).

A method is a plain class, not an ``nn.Module``: its networks live in ``self.net`` (an
``nn.ModuleDict`` that attribute assignment fills, so ``self.head = nn.Linear(...)`` works as in a
module). That keeps a method's description, ``Params`` and search space importable without torch,
for ``bench list``; torch is imported when a method is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from dmlbench.blocks.batches import PLAIN
from dmlbench.blocks.encoders import build_encoder
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.registry import Registry
from dmlbench.core.space import LR, Dist

if TYPE_CHECKING:
    import torch

    from dmlbench.blocks.batches import Batch, BatchKind


@dataclass
class Params:
    """Hyperparameters of a method; subclasses add fields. ``weights`` holds one weight per loss term.

    ``space`` (a ClassVar) is the method's search space for ``bench tune``: option keys of this
    class, or run keys such as ``lr`` (:mod:`dmlbench.core.space`).
    """

    weights: dict[str, float] = field(default_factory=dict)
    space: ClassVar[dict[str, Dist]] = LR

    def validate(self) -> None:
        """Refuse a loss weight that is not a finite number >= 0; subclasses check their own fields too."""
        for k, v in self.weights.items():
            if not math.isfinite(v) or v < 0:
                raise DMLBenchError(f"weights.{k}={v} must be a finite number >= 0")


@dataclass(frozen=True)
class EncoderChoice:
    """The shared encoder every method builds: its name and the options of a timm trunk."""

    name: str = "mlp"
    embedder: str = "linear"
    pretrained: bool = False
    weights: str = ""
    freeze_bn: bool = False


class Method:
    """Base of every method.

    Subclasses set ``paper``, ``formula``, ``Params``, ``terms`` (the names of the loss terms
    :meth:`loss_terms` returns, each with a weight in ``Params.weights``) and ``batch_kind``, and
    implement :meth:`loss_terms`. :meth:`build` adds losses or heads after the encoder exists.

    ``data_parallel = True`` declares that the method trains as several processes
    (``--nproc-per-run``): its :meth:`loss_terms` computes each term either from the whole batch's
    embeddings (``batch.gather(self.encoder(batch.x))``, the same on every process) or as a mean
    over this process's images alone, and draws any noise for the whole batch (``batch.local``).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    terms: ClassVar[tuple[str, ...]] = ()
    trainable: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = False  # trains as several processes (see the class docstring)

    def __init__(self, params: Params, *, input_shape: tuple[int, int, int], embedding_dim: int,
                 encoder: EncoderChoice | str, num_classes: int):
        from torch import nn

        object.__setattr__(self, "net", nn.ModuleDict())
        self.params = params
        self.input_shape = tuple(input_shape)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.encoder_choice = EncoderChoice(encoder) if isinstance(encoder, str) else encoder
        missing = [t for t in self.terms if t not in params.weights]
        extra = [t for t in params.weights if t not in self.terms]
        if self.trainable and (missing or extra or not self.terms):
            raise DMLBenchError(f"method {self.name}: loss terms {list(self.terms)} and weights "
                                f"{list(params.weights)} must match one to one")
        self.encoder = self.make_encoder()
        self.build()

    # --------------------------------------------------------------------- the contract

    @property
    def batch_kind(self) -> BatchKind:
        """The batches this method trains on (:mod:`dmlbench.blocks.batches`); default: plain."""
        return PLAIN

    def build(self) -> None:
        """Add losses, heads or decoders once ``self.encoder`` exists (a loss with trainable
        parameters, such as ArcFace's, is assigned to ``self`` so that it trains and checkpoints)."""

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Args: ``batch``, what :attr:`batch_kind` yields. Returns: a scalar tensor per name in
        :attr:`terms`; the trainer weights and sums them."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Args: float images (B, C, H, W) on the method's device. Returns: embeddings (B, D)."""
        return self.encoder(x)

    def make_encoder(self):
        """The shared encoder of ``encoder_choice`` for ``input_shape``, with :meth:`encoder_out_dim` outputs."""
        return build_encoder(self.encoder_choice, self.input_shape, self.encoder_out_dim())

    def encoder_out_dim(self) -> int:
        """The encoder's output width: the embedding size (a VAE's encoder also outputs log-variances)."""
        return self.embedding_dim

    # --------------------------------------------------------------------- module plumbing

    def __setattr__(self, name: str, value: Any) -> None:
        from torch import nn

        if isinstance(value, nn.Module):
            self.net[name] = value
            self.__dict__.pop(name, None)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        net = self.__dict__.get("net")
        if net is not None and name in net:
            return net[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def weights(self) -> dict[str, float]:
        """The weight of each loss term (``params.weights``)."""
        return self.params.weights

    def parameters(self):
        """The parameters of every network in ``self.net``."""
        return self.net.parameters()

    def named_modules(self):
        """(name, module) for every module in ``self.net``, as ``nn.Module.named_modules`` gives them."""
        return self.net.named_modules()

    def state_dict(self) -> dict:
        """The state of every network in ``self.net`` (what a checkpoint saves)."""
        return self.net.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict` into ``self.net``, strictly."""
        self.net.load_state_dict(state)

    def to(self, device) -> Method:
        """Move every network to ``device``; returns the method."""
        self.net.to(device)
        return self

    def train(self, mode: bool = True) -> Method:
        """Put every network in training mode (eval mode with ``mode=False``); returns the method."""
        self.net.train(mode)
        return self

    def eval(self) -> Method:
        """Put every network in eval mode; returns the method."""
        return self.train(False)

    @classmethod
    def describe(cls) -> dict:
        """What ``bench list`` shows of the method: name, paper, formula, default options and search space."""
        defaults = dataclasses.asdict(cls.Params())
        return {"name": cls.name, "paper": cls.paper, "formula": cls.formula, "defaults": defaults,
                "space": dict(cls.Params.space) if cls.trainable else {}}


class GenerativeMethod(Method):
    """A method with a decoder: evaluation adds reconstruction metrics and saves reconstructions.
    Its inputs must be pixels in [0, 1] (the decoder ends in a sigmoid)."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Args: images (B, C, H, W) in [0, 1]. Returns: their reconstructions, same shape."""
        raise NotImplementedError

    def generative_metrics(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: images (B, C, H, W). Returns: per-image values (B,) of each generative metric
        (``recon_error``, ``elbo``); evaluation averages them over the test set."""
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method", entry_point_group="dmlbench.methods")


def register_method(name: str):
    """Class decorator: ``@register_method("my-loss")``. A duplicate name raises."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        if cls.trainable and cls.terms and not cls.Params().weights:
            # A method without weights of its own: each term counts once (and --set NAME.weights.TERM
            # still reweights it).
            defaults = {t: 1.0 for t in cls.terms}
            cls.Params = dataclasses.make_dataclass(
                f"{cls.__name__}Params", [("weights", dict, field(default_factory=lambda: dict(defaults)))],
                bases=(cls.Params,))
        if cls.trainable:
            weights = set(cls.Params().weights)
            if not cls.terms or set(cls.terms) != weights:
                raise DMLBenchError(f"method {name}: declare terms = (...) naming its loss terms, each with a "
                                    f"default weight in Params.weights (terms {list(cls.terms)}, weights {sorted(weights)})")
        METHODS.add(name, cls)
        return cls

    return decorator
