"""One evaluation suite for every method: it loops over the metric registry (:mod:`dmlbench.evaluation.metrics`).

It only calls ``method.embed`` (and, for a :class:`~dmlbench.methods.GenerativeMethod`, its
reconstruction metrics). Embedding passes run blockwise on the run's device from the uint8 images;
neighbour search is exact L2 (:mod:`dmlbench.evaluation.exact_search`: faiss on the CPU, blocked torch on a GPU);
the SVM is :mod:`dmlbench.evaluation.probe`. Work shared by several metrics is done once per evaluation.

In a run of several processes (:mod:`dmlbench.core.distributed`), each embeds an equal run of the
embedding blocks of the test part (and of the training part, where a classification metric will
need it), and rank 0 gathers them and computes every metric: the blocks are the ones a single
process embeds, so the embeddings, neighbour lists and metrics are the one-process ones.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from dmlbench.core import distributed, runtime
from dmlbench.data import Data, Part
from dmlbench.evaluation.config import EvalConfig
from dmlbench.evaluation.metrics import METRICS, RECALL_KS
from dmlbench.evaluation.neighbors import knn_classify, retrieval_metrics
from dmlbench.evaluation.probe import linear_probe
from dmlbench.methods.base import GenerativeMethod, Method
from dmlbench.training.inputs import DeviceImages, InputPipeline

log = logging.getLogger("dmlbench")

# Images of 28 x 28 per embedding pass. On the CPU a block of 512 keeps the layers' activations in
# cache: the MNIST convnet embeds 20% faster than with 1,024 (benchmarks/speed.py), with the same bits.
EMBED_BLOCK = {"cpu": 512, "cuda": 1024}
_BLOCK_PIXELS = 28 * 28


def embed_block(device, image_shape: tuple[int, ...] | None = None) -> int:
    """Images per embedding pass on ``device``'s type (:data:`EMBED_BLOCK`; a GPU's size for other
    types), fewer for images larger than 28 x 28: a convolution's activations grow with the pixels, and
    512 photos at 64 x 64 held 1.3 GB of them (the whole run's peak), where 98 hold what 512 digits do."""
    block = EMBED_BLOCK.get(torch.device(device).type, EMBED_BLOCK["cuda"])
    if image_shape is not None and len(image_shape) >= 2:
        pixels = int(image_shape[-1]) * int(image_shape[-2])
        block = max(16, block * _BLOCK_PIXELS // max(pixels, _BLOCK_PIXELS))
    return block


@torch.inference_mode()
def embed_part(method: Method, part: Part, pipeline: InputPipeline, device, block: int | None = None,
               world: distributed.World | None = None) -> np.ndarray | None:
    """Embeddings (N, D) float32 of every image of ``part``, in order (``block`` images at a time;
    default :func:`embed_block`). With a ``world`` of several processes, each embeds an equal run of
    the blocks and rank 0 gets every embedding (the others None)."""
    method.eval()
    block = block or embed_block(device, method.input_shape)
    images = DeviceImages(part, device)
    starts = list(range(0, len(part), block))
    counts = None
    if world is not None and world.size > 1:
        spans = np.array_split(np.arange(len(starts)), world.size)
        counts = [sum(min(block, len(part) - starts[i]) for i in span) for span in spans]
        starts = [starts[i] for i in spans[world.rank]]
    out = []
    for s in starts:
        xb = images.take(torch.arange(s, min(s + block, len(part))))
        out.append(method.embed(pipeline.eval(xb)).float().cpu())
        part.release()  # a mapped cache is streamed: its pages go back to the page cache
    emb = torch.cat(out) if out else torch.zeros((0, method.embedding_dim))
    if counts is not None:
        emb = distributed.gather_rows(emb, counts, world)
        if emb is None:
            return None
    return emb.numpy() if len(emb) else np.zeros((0, method.embedding_dim), np.float32)


def triplet_accuracy(emb: np.ndarray, triplets: np.ndarray, margin: float) -> tuple[dict[str, float], np.ndarray]:
    """The share of (anchor, positive, negative) rows with d(a, p) < d(a, n), and with d(a, p) + margin <= d(a, n);
    also each triplet's correctness (the first test)."""
    a, p, n = (emb[triplets[:, i]] for i in range(3))
    d_ap = np.linalg.norm(a - p, axis=1)
    d_an = np.linalg.norm(a - n, axis=1)
    correct = d_ap < d_an
    return {"triplet_acc": float(np.mean(correct)),
            "triplet_acc_margin": float(np.mean(d_ap - d_an + margin <= 0))}, correct


def _once(fn):
    """Cache a no-argument method's result on the instance (freed with it, unlike functools.cache)."""

    @functools.wraps(fn)
    def wrapper(self):
        cache = self.__dict__.setdefault("_cache", {})
        if fn.__name__ not in cache:
            cache[fn.__name__] = fn(self)
        return cache[fn.__name__]

    return wrapper


@dataclass
class EvalContext:
    """What the metrics of one run share; each part is computed on first use."""

    method: Method
    data: Data
    cfg: EvalConfig
    triplet_rows: np.ndarray
    device: torch.device
    pipeline: InputPipeline
    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    results: dict[str, float] = field(default_factory=dict)

    @_once
    def test_emb(self) -> np.ndarray:
        """Embeddings of the test part, in order."""
        return embed_part(self.method, self.data.test, self.pipeline, self.device)

    @_once
    def train_emb(self) -> np.ndarray:
        """Embeddings of the training part, in order."""
        return embed_part(self.method, self.data.train, self.pipeline, self.device)

    @property
    def classifies(self) -> bool:
        """Classification probes need every test class among the training classes."""
        return self.data.split != "classes" and bool(np.all(self.data.test.y < self.data.num_train_classes))

    @_once
    def triplets(self) -> dict[str, float]:
        """Triplet accuracy, plain and with the margin, on the test triplets; per-triplet correctness goes to
        ``per_query``."""
        out, correct = triplet_accuracy(self.test_emb(), self.triplet_rows, self.cfg.margin)
        self.per_query["triplet_correct"] = correct
        return out

    @_once
    def retrieval(self) -> dict[str, float]:
        """Retrieval metrics of the test embeddings (query against gallery where the data set has them,
        leave-one-out otherwise); per-query values go to ``per_query``."""
        emb, y = self.test_emb(), self.data.test.y
        if self.data.has_query_gallery:
            q, g = self.data.query, self.data.gallery
            summary, per = retrieval_metrics(emb[q], y[q], emb[g], y[g], ks=RECALL_KS, device=str(self.device))
        else:
            summary, per = retrieval_metrics(emb, y, ks=RECALL_KS, device=str(self.device))
        for k, v in per.items():
            self.per_query[f"retrieval_{k}"] = v
        self.extras["queries_without_positive"] = summary.get("queries_without_positive", 0)
        return summary

    @_once
    def knn(self):
        """k-NN classification accuracy of the test rows against the training rows; None where it cannot classify."""
        if not self.classifies:
            return None

        acc, correct = knn_classify(self.train_emb(), self.data.train.y, self.test_emb(), self.data.test.y,
                                    self.cfg.knn_k, device=str(self.device))
        self.per_query["knn_correct"] = correct
        return acc

    @_once
    def probe(self):
        """Test accuracy of the linear probe trained on the training embeddings; None where it cannot classify."""
        if not self.classifies:
            return None

        r = linear_probe(self.train_emb(), self.data.train.y, self.test_emb(), self.data.test.y,
                         seed=self.cfg.seed, threads=torch.get_num_threads(), device=str(self.device))
        self.per_query["svm_correct"] = r.correct
        self.extras.update(confusion=r.confusion, svm_lambda=r.lam, svm_lambda_edge=r.lam_edge)
        return r.accuracy

    @_once
    def generative(self) -> dict[str, float]:
        """The test-set means of a generative method's metrics; empty for any other method."""
        if not isinstance(self.method, GenerativeMethod):
            return {}
        return generative_metrics(self.method, self.data.test, self.pipeline, self.device)


@torch.inference_mode()
def generative_metrics(method: GenerativeMethod, part: Part, pipeline: InputPipeline, device,
                       block: int | None = None) -> dict[str, float]:
    """The mean over ``part`` of each of ``method``'s per-image generative metrics, ``block`` images at a time."""
    method.eval()
    block = block or embed_block(device, method.input_shape)
    sums: dict[str, float] = {}
    for _, xb in DeviceImages(part, device).blocks(block):
        for k, v in method.generative_metrics(pipeline.eval(xb)).items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    return {k: v / len(part) for k, v in sums.items()}


def share_embeddings(ctx: EvalContext, names: list[str], world: distributed.World) -> bool:
    """Embed the test part, and the training part where a classification metric among ``names`` will
    need it, in shards over the processes; rank 0 keeps them in ``ctx``. Returns whether this is rank 0."""
    needs_train = ctx.classifies and any(METRICS.get(n).kind == "classification" for n in names)
    cache = ctx.__dict__.setdefault("_cache", {})  # what EvalContext's _once methods return from then on
    for key, part in [("test_emb", ctx.data.test)] + ([("train_emb", ctx.data.train)] if needs_train else []):
        emb = embed_part(ctx.method, part, ctx.pipeline, ctx.device, world=world)
        if world.main:
            cache[key] = emb
    return world.main


def evaluate(method: Method, data: Data, cfg: EvalConfig, triplets: np.ndarray, device="cpu",
             metrics: list[str] | None = None, world: distributed.World | None = None) -> EvalContext | None:
    """Every registered metric (or ``metrics``) of ``method`` on ``data.test``; returns the context,
    whose ``results`` hold the values and ``per_query`` the per-item arrays. With a ``world`` of
    several processes, every process embeds its shards and rank 0 alone computes the metrics (the
    others get None)."""
    device = torch.device(device)
    pipeline = InputPipeline(data, cfg.augment or "none", method.input_shape[1:])
    ctx = EvalContext(method, data, cfg, triplets, device, pipeline)
    results: dict[str, float] = {}
    timings: dict[str, float] = {}
    names = metrics or METRICS.names()
    shared = world is not None and world.size > 1
    if shared and not share_embeddings(ctx, names, world):
        return None
    threads = torch.get_num_threads()
    if shared:  # the other ranks on this machine are done with their share: rank 0 takes their threads
        runtime.set_threads(threads * world.local_size)
    try:
        # On a terminal, a bar through the metrics (the first pays for the embedding passes).
        bar = tqdm(names, desc=f"eval {method.name}", unit="metric", disable=None, file=sys.stderr, leave=False,
                   dynamic_ncols=True, position=runtime.BAR_POSITION)
        for name in bar:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            value = METRICS.get(name).fn(ctx)
            timings[name] = time.perf_counter() - t0
            if value is None:
                continue
            if isinstance(value, tuple):
                value, per = value
                ctx.per_query[name] = per
            results[name] = float(value)
        bar.close()
    finally:
        if shared:
            runtime.set_threads(threads)
    ctx.extras["timings"] = timings
    ctx.results = results
    return ctx
