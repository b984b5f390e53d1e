"""The metric registry: what each metric means, which way is better, and how it is computed.

A metric is a function of an evaluation context (:class:`dmlbench.evaluation.evaluate.EvalContext`) that
returns a float, a ``(float, per_query_array)`` pair (per-query values feed the paired
statistics of ``bench compare``), or ``None`` where it does not apply (a classification probe on a
class-disjoint split). The context computes shared work once (embeddings, the neighbour search,
the probe), so metrics that read the same search cost nothing extra.

The table, the plots and ``bench list metrics`` read this registry; importing it imports neither
torch nor faiss. Add one with::

    @register_metric("recall@16", higher_is_better=True, description="...")
    def recall16(ctx):
        return ctx.retrieval(ks=(16,))["recall@16"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dmlbench.core.registry import Registry

RECALL_KS = (1, 2, 4, 8)


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its function of the evaluation context, its direction, and how tables show it."""

    name: str
    fn: Callable
    higher_is_better: bool = True
    default: bool = False  # shown in tables by default
    comparable: bool = True  # bold-able and ranked; False for settings-dependent figures
    description: str = ""
    kind: str = "embedding"  # embedding | classification | generative | info


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(name: str, *, higher_is_better: bool = True, default: bool = False, comparable: bool = True,
                    description: str = "", kind: str = "embedding"):
    """A decorator that registers its function as metric ``name`` with these settings; the function is unchanged."""
    def decorator(fn: Callable) -> Callable:
        METRICS.add(name, MetricSpec(name, fn, higher_is_better, default, comparable, description, kind))
        return fn

    return decorator


def metric(name: str) -> MetricSpec:
    """The registered metric ``name``."""
    return METRICS.get(name)


def default_metrics() -> list[str]:
    """Names of the metrics tables show by default, in registry order."""
    return [n for n in METRICS.names() if METRICS.get(n).default]


def higher_is_better(name: str) -> bool:
    """Direction of a metric; unknown columns (timings) count as lower-is-better only if registered so."""
    try:
        return METRICS.get(name).higher_is_better
    except Exception:  # noqa: BLE001 - a column that is not a registered metric
        return True


# ----------------------------------------------------------------------------- built-in metrics


@register_metric("triplet_acc", default=True, description="fixed test triplets with d(a,p) < d(a,n)")
def triplet_acc(ctx):
    """Share of the fixed test triplets with d(a,p) < d(a,n)."""
    return ctx.triplets()["triplet_acc"]


# Not a default column: an absolute margin means something only where every model is trained
# with that margin on unnormalised distances (the TVAE paper's table, --preset tvae-paper); on
# normalised embeddings it reads 0.0000 next to ranked metrics. Asked for, it is never ranked.
@register_metric("triplet_acc_margin", default=False, comparable=False,
                 description="fixed test triplets with zero hinge loss, d(a,p) + m <= d(a,n) (TVAE paper); "
                             "depends on the embedding's scale: never ranked, shown where asked (--table-metrics)")
def triplet_acc_margin(ctx):
    """Share of the fixed test triplets with d(a,p) + margin <= d(a,n)."""
    return ctx.triplets()["triplet_acc_margin"]


def _recall(k: int):
    def fn(ctx):
        return ctx.retrieval()[f"recall@{k}"]

    fn.__name__ = f"recall_at_{k}"
    return fn


for _k in RECALL_KS:
    register_metric(f"recall@{_k}", default=_k == 1,
                    description=f"Recall@{_k}: a same-class item among the {_k} nearest (faiss, exact L2)")(_recall(_k))


@register_metric("precision@1", description="precision of the nearest neighbour (equals recall@1)")
def precision_at_1(ctx):
    """Precision of each test query's nearest neighbour, averaged."""
    return ctx.retrieval()["precision@1"]


@register_metric("r_precision", description="R-precision: same-class share of the R nearest (R = class size - 1)")
def r_precision(ctx):
    """R-precision of the test queries: the same-class share of each one's R nearest, averaged."""
    return ctx.retrieval()["r_precision"]


@register_metric("map@r", default=True, description="MAP@R (Musgrave et al. 2020)")
def map_at_r(ctx):
    """MAP@R of the test queries (Musgrave et al. 2020)."""
    return ctx.retrieval()["map@r"]


@register_metric("knn_acc", default=True, kind="classification",
                 description="k-NN classification of test items against train embeddings (majority of k)")
def knn_acc(ctx):
    """k-NN classification accuracy on the test set; None on a class-disjoint split."""
    return ctx.knn()


@register_metric("svm_acc", default=True, kind="classification",
                 description="linear SVM probe (squared hinge, one-vs-rest, lambda by 3-fold CV on train) on test")
def svm_acc(ctx):
    """Linear SVM probe accuracy on the test set; None on a class-disjoint split."""
    return ctx.probe()


@register_metric("recon_error", higher_is_better=False, default=True, kind="generative",
                 description="generative only: squared L2 reconstruction error per test image, from z = mu")
def recon_error(ctx):
    """Mean squared L2 reconstruction error per test image; None for a method that does not reconstruct."""
    return ctx.generative().get("recon_error")


@register_metric("elbo", kind="generative",
                 description="generative only: 1-sample ELBO per test image (nats; L2 as Gaussian up to constants)")
def elbo(ctx):
    """Mean 1-sample ELBO per test image; None for a method that is not generative."""
    return ctx.generative().get("elbo")


@register_metric("embedding_dim", comparable=False, kind="info", description="size of the embedding")
def embedding_dim(ctx):
    """The width of the test embeddings."""
    return int(ctx.test_emb().shape[1])
