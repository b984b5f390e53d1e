"""The retrieval and k-NN metrics, on the exact search of :mod:`dmlbench.evaluation.exact_search`.

Retrieval metrics follow the usual deep-metric-learning definitions: Recall@K (some same-class item
among the K nearest), Precision@1, R-Precision and MAP@R (Musgrave et al. 2020, "A Metric Learning
Reality Check"), with R the number of relevant items of a query. Queries without any relevant item
(R = 0) are left out of every average, as pytorch-metric-learning's ``AccuracyCalculator`` does.
Importing this module never imports torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dmlbench.evaluation import exact_search
from dmlbench.evaluation.exact_search import as_f32, check_inputs, clamp_k, search, search_blocks

__all__ = ["knn_classify", "retrieval_metrics", "search"]  # search: the exact search, public here too


def _encode(*label_sets: np.ndarray) -> list[np.ndarray]:
    """Integer codes for labels that share one vocabulary."""
    arrays = [np.asarray(y).reshape(-1) for y in label_sets]
    _, inv = np.unique(np.concatenate(arrays), return_inverse=True)
    out, s = [], 0
    for a in arrays:
        out.append(inv[s:s + len(a)].astype(np.int64))
        s += len(a)
    return out


def retrieval_metrics(query_emb: np.ndarray, query_y: np.ndarray, gallery_emb: np.ndarray | None = None,
                      gallery_y: np.ndarray | None = None, ks: Sequence[int] = (1, 2, 4, 8),
                      device: str = "cpu") -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Recall@K, Precision@1, R-Precision and MAP@R.

    Without a gallery every query is searched against all other queries (leave-one-out); with one,
    queries are searched in the gallery (the In-Shop protocol, nothing excluded). R is the number of
    same-class items a query can retrieve; queries with R = 0 are left out of every average and
    counted in ``summary["queries_without_positive"]``.

    Returns ``(summary, per_query)``: summary has ``recall@K`` for each K, ``precision@1``,
    ``r_precision``, ``map@r`` and ``queries_without_positive``; per_query has arrays aligned with
    the queries (NaN where R = 0) for ``recall@K`` (each K, and always ``recall@1``), ``map@r`` and
    ``r_precision``.
    """
    loo = gallery_emb is None
    if loo != (gallery_y is None):
        raise ValueError("give both gallery_emb and gallery_y, or neither")
    ks = sorted({int(k) for k in ks})
    if any(k < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, got {ks}")
    query_emb = as_f32(query_emb, "query_emb")
    if len(query_emb) != len(np.asarray(query_y).reshape(-1)):
        raise ValueError("query_emb and query_y differ in length")
    if loo:
        ref, (qy,) = query_emb, _encode(query_y)
        ry = qy
    else:
        ref = as_f32(gallery_emb, "gallery_emb")
        if len(ref) != len(np.asarray(gallery_y).reshape(-1)):
            raise ValueError("gallery_emb and gallery_y differ in length")
        qy, ry = _encode(query_y, gallery_y)
    query_emb, ref = check_inputs(query_emb, ref, loo)

    n = len(query_emb)
    counts = np.bincount(ry, minlength=int(max(qy.max(initial=-1), ry.max(initial=-1))) + 1)
    r = counts[qy] - int(loo) if n else np.zeros(0, np.int64)
    valid = r > 0
    k = clamp_k(max([int(r.max(initial=0)), *ks]), len(ref), loo)

    report_ks = sorted({1, *ks})
    per = {f"recall@{K}": np.full(n, np.nan) for K in report_ks}
    per["map@r"] = np.full(n, np.nan)
    per["r_precision"] = np.full(n, np.nan)
    # ~48 bytes of working arrays per (query, neighbour) below: keep a block near the result budget.
    rows = max(1, min(4096, exact_search.RESULT_BUDGET // (48 * max(k, 1))))
    for s, _, ids in search_blocks(query_emb, ref, k, loo, device, rows):
        e = s + len(ids)
        match = ry[ids] == qy[s:e, None]                      # (b, k) bool
        rb = r[s:e]
        for K in report_ks:
            per[f"recall@{K}"][s:e] = match[:, :K].any(1)
        within_r = np.arange(match.shape[1])[None, :] < rb[:, None]
        hits = match & within_r
        cum = np.cumsum(hits, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(hits, cum / np.arange(1, match.shape[1] + 1)[None, :], 0.0)
            per["map@r"][s:e] = prec.sum(1) / rb
            per["r_precision"][s:e] = hits.sum(1) / rb
    for v in per.values():
        v[~valid] = np.nan

    def mean(x):
        return float(np.mean(x[valid])) if valid.any() else float("nan")

    summary = {f"recall@{K}": mean(per[f"recall@{K}"]) for K in ks}
    summary["precision@1"] = mean(per["recall@1"])
    summary["r_precision"] = mean(per["r_precision"])
    summary["map@r"] = mean(per["map@r"])
    summary["queries_without_positive"] = float(np.sum(~valid))
    return summary, per


def _vote(labels: np.ndarray) -> np.ndarray:
    """Majority label of every row of ``labels`` (b, k), which are ordered nearest first; a tie goes
    to the class whose nearest member is nearer."""
    b, k = labels.shape
    order = np.argsort(labels, axis=1, kind="stable")          # equal labels keep rank order
    srt = np.take_along_axis(labels, order, 1).ravel()
    new = np.ones((b, k), bool)
    new[:, 1:] = np.take_along_axis(labels, order, 1)[:, 1:] != np.take_along_axis(labels, order, 1)[:, :-1]
    starts = np.flatnonzero(new.ravel())                       # one run per (row, class)
    length = np.diff(np.append(starts, b * k))
    first_rank = order.ravel()[starts]
    score = length * (k + 1) - first_rank                     # count first, then nearness
    row_first_run = np.searchsorted(starts, np.arange(b) * k)
    best = np.maximum.reduceat(score, row_first_run)
    win = score == best[starts // k]
    pred = np.empty(b, labels.dtype)
    pred[starts[win] // k] = srt[starts[win]]
    return pred


def knn_classify(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, test_y: np.ndarray, k: int,
                 device: str = "cpu") -> tuple[float, np.ndarray]:
    """k-NN classification: each test row takes the majority class of its k nearest training rows
    (ties go to the class with the nearer neighbour). Returns accuracy and per-test-row correctness."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    test_emb, train_emb = check_inputs(test_emb, train_emb, False)
    if len(train_emb) == 0:
        raise ValueError("knn_classify needs at least one training row")
    ty, sy = _encode(train_y, test_y)
    if len(ty) != len(train_emb) or len(sy) != len(test_emb):
        raise ValueError("embeddings and labels differ in length")
    k = clamp_k(k, len(train_emb), False)
    correct = np.zeros(len(test_emb), bool)
    for s, _, ids in search_blocks(test_emb, train_emb, k, False, device, 4096):
        correct[s:s + len(ids)] = _vote(ty[ids]) == sy[s:s + len(ids)]
    acc = float(correct.mean()) if len(correct) else float("nan")
    return acc, correct
