"""``pml:<LossName>``: any label-based pytorch-metric-learning loss as a method.

``--methods pml:MultiSimilarityLoss`` or ``pml:ArcFaceLoss`` trains the shared encoder with that
loss on class-balanced batches (``m_per_class`` images per class; ``batches=plain``: random
batches, every image once per pass, as a shuffled DataLoader gives them), optionally with a PML
miner (``miner=MultiSimilarityMiner``, or with its arguments,
``miner=TripletMarginMiner(margin=0.2, type_of_triplets=semihard)``) and a PML distance given to the
loss and the miner alike (``distance=CosineSimilarity``). The loss's own constructor arguments are
options: ``--set pml:ArcFaceLoss.margin=28.6``. Losses with their own weights (ArcFace,
ProxyAnchor, ...) get ``num_classes`` and ``embedding_size`` filled in, and their weights train with
the encoder.

The names and each loss's main parameters (its search space) are listed here without importing
PML, for ``bench list``; a test keeps the list equal to what the installed PML offers.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from dataclasses import field
from typing import ClassVar, Literal

from dmlbench.blocks.batches import PLAIN, Balanced
from dmlbench.core.errors import DMLBenchError, exception_line
from dmlbench.core.space import LR, Float, Int
from dmlbench.methods.base import Method, Params

PREFIX = "pml:"
_FILLED = {"num_classes", "embedding_size"}
_HARNESS = {"m_per_class", "miner", "distance", "batches", "weights"}  # the harness's own options, never a loss's
# Wrappers, abstract bases, and losses for other settings (VICReg is self-supervised: no labels).
_NOT_METHODS = {"BaseMetricLossFunction", "CrossBatchMemory", "MultipleLosses", "SelfSupervisedLoss",
                "BaseLossWrapper", "GenericPairLoss", "VICRegLoss"}

# The main parameters of each loss, tuned by `bench tune` besides the learning rate (ranges as in
# MLRC's search where it had one; angles in degrees as PML takes them).
MAIN_PARAMS: dict[str, dict] = {
    "AngularLoss": {"alpha": Float(10.0, 60.0)},
    "ArcFaceLoss": {"margin": Float(5.0, 60.0), "scale": Float(1.0, 128.0, log=True)},
    "CircleLoss": {"m": Float(0.0, 1.0), "gamma": Float(1.0, 256.0, log=True)},
    "ContrastiveLoss": {"pos_margin": Float(0.0, 1.0), "neg_margin": Float(0.2, 2.0)},
    "CosFaceLoss": {"margin": Float(0.0, 1.0), "scale": Float(1.0, 128.0, log=True)},
    "DynamicSoftMarginLoss": {"momentum": Float(0.001, 0.1, log=True)},
    "FastAPLoss": {"num_bins": Int(5, 50)},
    "GeneralizedLiftedStructureLoss": {"pos_margin": Float(0.0, 1.0), "neg_margin": Float(0.2, 2.0)},
    "HistogramLoss": {},
    "InstanceLoss": {"gamma": Float(1.0, 128.0, log=True)},
    "IntraPairVarianceLoss": {"pos_eps": Float(0.0, 0.5), "neg_eps": Float(0.0, 0.5)},
    "LargeMarginSoftmaxLoss": {"margin": Int(1, 6), "scale": Float(1.0, 64.0, log=True)},
    "LiftedStructureLoss": {"pos_margin": Float(0.0, 1.0), "neg_margin": Float(0.2, 2.0)},
    "MarginLoss": {"margin": Float(0.0, 1.0), "beta": Float(0.0, 2.0)},
    "MultiSimilarityLoss": {"alpha": Float(0.01, 20.0, log=True), "beta": Float(0.01, 100.0, log=True),
                            "base": Float(0.0, 1.0)},
    "NCALoss": {"softmax_scale": Float(0.1, 64.0, log=True)},
    "NPairsLoss": {},
    "NTXentLoss": {"temperature": Float(0.01, 1.0, log=True)},
    "NormalizedSoftmaxLoss": {"temperature": Float(0.01, 1.0, log=True)},
    "PNPLoss": {"b": Float(0.5, 4.0), "alpha": Float(0.5, 4.0)},
    "ProxyAnchorLoss": {"margin": Float(0.0, 1.0), "alpha": Float(1.0, 128.0, log=True)},
    "ProxyNCALoss": {},
    "SignalToNoiseRatioContrastiveLoss": {},
    "SmoothAPLoss": {"temperature": Float(0.001, 0.1, log=True)},
    "SoftTripleLoss": {"la": Float(1.0, 100.0, log=True), "gamma": Float(0.01, 1.0, log=True),
                       "margin": Float(0.0, 0.5)},
    "SphereFaceLoss": {"margin": Int(1, 6), "scale": Float(1.0, 64.0, log=True)},
    "SubCenterArcFaceLoss": {"margin": Float(5.0, 60.0), "scale": Float(1.0, 128.0, log=True)},
    "SupConLoss": {"temperature": Float(0.01, 1.0, log=True)},
    "ThresholdConsistentMarginLoss": {"margin_plus": Float(0.5, 1.0), "margin_minus": Float(0.0, 0.8)},
    "TripletMarginLoss": {"margin": Float(0.01, 1.0, log=True)},
    "TupletMarginLoss": {"margin": Float(0.0, 20.0), "scale": Float(1.0, 128.0, log=True)},
}


# Losses that fail at their defaults in the installed pytorch-metric-learning (2.9.0, checked on
# MNIST-sized runs): every run and every trial of theirs would fail alike, so a suite naming one is
# refused before it starts. Re-check when PML is upgraded.
FAILS = {
    "DynamicSoftMarginLoss": "its backward pass fails at the second step (\"Trying to backward through the graph "
                             "a second time\", pytorch-metric-learning issue #731)",
    "HistogramLoss": "a cosine similarity of 1 indexes past its last bin (\"index 101 is out of bounds\")",
    "TupletMarginLoss": "its loss is non-finite from the first step at its defaults",
}


def check_runnable(name: str) -> None:
    """Refuse a ``pml:`` loss known to fail at its defaults (see :data:`FAILS`)."""
    why = FAILS.get(name[len(PREFIX):]) if name.startswith(PREFIX) else None
    if why:
        raise DMLBenchError(f"{name} fails in pytorch-metric-learning 2.9: {why}; choose another loss "
                            "(bench list methods)")


def pml_loss_names() -> list[str]:
    """The losses ``pml:`` accepts (listed without importing PML)."""
    return sorted(MAIN_PARAMS)


def installed_pml_loss_names() -> list[str]:
    """The label-based losses of the installed PML whose required arguments the harness fills."""
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    return sorted(n for n, obj in vars(pml_losses).items()
                  if inspect.isclass(obj) and issubclass(obj, BaseMetricLossFunction) and n not in _NOT_METHODS
                  and _runnable(obj))


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
    return all(p.default is not inspect.Parameter.empty or name in _FILLED
               for name, p in _init_params(loss_cls).items())


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


def parse_call(text: str, option: str) -> tuple[str, dict]:
    """``Name`` or ``Name(key=value, ...)``, as PML's classes are written in Python, -> (Name, {key: value}).
    Values are Python literals (numbers, True, None, quoted strings); a bare word is a string, so
    ``type_of_triplets=semihard`` needs no quotes on a command line. No torch, no PML."""
    def value(node):
        if isinstance(node, ast.Name):
            return node.id
        return ast.literal_eval(node)

    try:
        node = ast.parse(text.strip(), mode="eval").body
        if isinstance(node, ast.Name):
            return node.id, {}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args \
                and all(k.arg for k in node.keywords):
            return node.func.id, {k.arg: value(k.value) for k in node.keywords}
    except (SyntaxError, ValueError, TypeError):
        pass
    raise DMLBenchError(f"{option}={text!r} must be a PML class name, with or without keyword arguments, e.g. "
                        f"{option}=TripletMarginMiner or {option}=TripletMarginMiner(margin=0.2, type_of_triplets=semihard)")


class PMLParamsBase(Params):
    """Base of the options of a ``pml:`` method, whose fields (the loss's arguments, ``m_per_class``,
    ``miner``, ``distance``, ``batches``) are made per loss by :func:`pml_method`."""

    def validate(self) -> None:
        """The base checks, ``m_per_class`` at least 2 (a positive pair per class), and ``miner`` and
        ``distance`` written as PML classes (whether PML has them is checked when the method is built)."""
        super().validate()
        if self.m_per_class < 2:
            raise DMLBenchError(f"m_per_class={self.m_per_class} must be at least 2 (a positive pair per class)")
        for option in ("miner", "distance"):
            if getattr(self, option):
                parse_call(getattr(self, option), option)


class PMLMethod(Method):
    """Base of the ``pml:`` methods: the shared encoder trained with one PML loss, optionally with a PML miner."""

    loss_name: ClassVar[str] = ""
    terms = ("loss",)
    data_parallel = True

    @property
    def batch_kind(self):
        """Class-balanced batches of ``m_per_class`` images per class, or plain random ones (``batches=plain``)."""
        return PLAIN if self.params.batches == "plain" else Balanced(m=self.params.m_per_class)

    def build(self) -> None:
        """Build the PML loss from the options (``num_classes`` and ``embedding_size`` filled in), the
        distance (one object, given to the loss and the miner, as PML's examples do) and the miner."""
        from pytorch_metric_learning import distances as pml_distances
        from pytorch_metric_learning import losses as pml_losses
        from pytorch_metric_learning import miners as pml_miners

        loss_cls = getattr(pml_losses, self.loss_name)
        sig = _init_params(loss_cls)
        kwargs = {name: getattr(self.params, name) for name, _, _ in _loss_options(loss_cls)}
        if "num_classes" in sig:
            kwargs["num_classes"] = self.num_classes
        if "embedding_size" in sig:
            kwargs["embedding_size"] = self.embedding_dim
        shared = {}
        if self.params.distance:
            shared["distance"] = self._make(pml_distances, "distance", self.params.distance, pml_distances.BaseDistance)
        try:
            self.loss_fn = loss_cls(**kwargs, **shared)
        except Exception as e:  # noqa: BLE001 - PML validates its own arguments with asserts and ValueErrors
            raise DMLBenchError(f"{self.name}: cannot build the loss with {kwargs} ({e}); check its options") from None
        self.miner = None
        if self.params.miner:
            self.miner = self._make(pml_miners, "miner", self.params.miner, pml_miners.BaseMiner, **shared)

    def _make(self, module, option: str, spec: str, base: type, **defaults):
        """The PML object ``spec`` names (``Name`` or ``Name(key=value, ...)``), a ``base`` of ``module``;
        ``defaults`` are given where the spec does not set them."""
        name, kwargs = parse_call(spec, option)
        known = sorted(n for n, obj in vars(module).items()
                       if inspect.isclass(obj) and issubclass(obj, base) and not n.startswith("Base"))
        if name not in known:
            raise DMLBenchError(f"{self.name}: unknown PML {option} {name!r}; known: {', '.join(known)}")
        try:
            return getattr(module, name)(**{**defaults, **kwargs})
        except Exception as e:  # noqa: BLE001 - PML checks its arguments with asserts, TypeErrors and ValueErrors
            raise DMLBenchError(f"{self.name}: cannot build {option} {spec!r} ({exception_line(e)}); check its "
                                "arguments") from None

    def loss_terms(self, batch):
        """``loss``: the PML loss of the batch's embeddings and labels, on the miner's tuples if there is a miner
        (else every tuple the loss forms)."""
        # The whole batch's embeddings on every process: the loss and the miner see what they see in one
        # process, in the same order (PML's DistributedLossWrapper puts each process's own rows first, and
        # scales by the world size, which DDP's averaging turns into N times a loss's own parameters' gradient).
        emb = batch.gather(self.encoder(batch.x))
        indices = self.miner(emb, batch.y) if self.miner is not None else None
        return {"loss": self.loss_fn(emb, batch.y, indices_tuple=indices)}


_CACHE: dict[str, type[Method]] = {}


def pml_method(name: str) -> type[Method]:
    """The method class for ``pml:<LossName>``, made on first use (this imports PML)."""
    if name in _CACHE:
        return _CACHE[name]
    loss_name = name[len(PREFIX):]
    if loss_name not in MAIN_PARAMS:
        raise DMLBenchError(f"unknown pytorch-metric-learning loss {loss_name!r}; known: {', '.join(pml_loss_names())}")
    from pytorch_metric_learning import losses as pml_losses

    loss_cls = getattr(pml_losses, loss_name, None)
    if loss_cls is None or not _runnable(loss_cls):
        raise DMLBenchError(f"pml:{loss_name} is not available in the installed pytorch-metric-learning")
    fields = [(n, t, field(default=d)) for n, t, d in _loss_options(loss_cls)]
    fields += [("m_per_class", int, field(default=4)), ("miner", str, field(default="")),
               ("distance", str, field(default="")),
               ("batches", Literal["balanced", "plain"], field(default="balanced")),
               ("weights", dict[str, float], field(default_factory=lambda: {"loss": 1.0}))]
    params_cls = dataclasses.make_dataclass(f"{loss_name}Params", fields, bases=(PMLParamsBase,))
    params_cls.space = {**LR, **MAIN_PARAMS[loss_name]}
    doc = (loss_cls.__doc__ or "").strip().splitlines()
    cls = type(loss_name + "Method", (PMLMethod,), {
        "name": name, "loss_name": loss_name, "Params": params_cls,
        "paper": f"pytorch-metric-learning {loss_name}", "formula": doc[0] if doc else f"PML {loss_name}",
    })
    _CACHE[name] = cls
    return cls
