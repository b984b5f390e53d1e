"""Exact nearest neighbours and the retrieval / k-NN metrics built on them.

Distances are squared Euclidean. On the CPU the search is faiss's exact ``IndexFlatL2`` (its BLAS
kernel, refined by ``IndexRefineFlat`` to the pair-by-pair distances: see ``_blocks_faiss``); on a GPU
(``device="cuda"`` or ``"cuda:N"``) it is a blocked matrix product and ``topk`` in torch, which is
imported only there, so importing this module never imports torch. Queries are searched in blocks,
so memory is bounded by ``block x k`` (plus ``block x n_ref`` distances on a GPU), never by
``n_query x n_ref``.

Ties: every list is ordered by (distance, reference id), and among references at the same distance
at the cut-off the lower ids are kept (faiss's heaps already break ties by id; the torch path does
the same explicitly), so results are deterministic.

Retrieval metrics follow the usual deep-metric-learning definitions: Recall@K (some same-class item
among the K nearest), Precision@1, R-Precision and MAP@R (Musgrave et al. 2020, "A Metric Learning
Reality Check"), with R the number of relevant items of a query. Queries without any relevant item
(R = 0) are left out of every average, as pytorch-metric-learning's ``AccuracyCalculator`` does.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

# Bytes of search results (float32 distance + int64 id per neighbour) one block may hold.
_RESULT_BUDGET = 256 * 2**20
# Float32 entries of one block of the query x reference distance matrix on a GPU.
_GPU_DIST_BUDGET = 2**28
# Queries from which a faiss exact search uses its BLAS kernel (see _faiss_blas_search).
_FAISS_BLAS_MIN_QUERIES = 20
# Candidates beyond k whose distances faiss recomputes exactly (see _blocks_faiss).
_REFINE_EXTRA = 16


def _as_f32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x features), got shape {x.shape}")
    return x


def _clamp_k(k: int, n_ref: int, exclude_self: bool) -> int:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return max(0, min(int(k), n_ref - int(exclude_self)))


def _rows_per_block(block: int, k: int) -> int:
    """Query rows per block: at most ``block``, and fewer when k is large."""
    return max(1, min(int(block), _RESULT_BUDGET // (12 * max(k, 1))))


def _canonical(d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order every row by (distance, id). Rows already in that order (faiss's usually are) are left
    alone: only the others are sorted."""
    if d.shape[1] < 2:
        return d, i
    dl, dr = d[:, :-1], d[:, 1:]
    # Cheap test first (one pass each for order and ties), the row-wise check only when it fails:
    # this runs on every block of a k = R search (10,000 x 1,135 on MNIST).
    eq = dr == dl
    if not (dr < dl).any() and not (i[:, 1:][eq] < i[:, :-1][eq]).any():
        return d, i
    bad = ((dr < dl) | (eq & (i[:, 1:] < i[:, :-1]))).any(1)
    rows = np.flatnonzero(bad)
    order = np.lexsort((i[rows], d[rows]), axis=-1)
    d, i = d.copy(), i.copy()
    d[rows] = np.take_along_axis(d[rows], order, 1)
    i[rows] = np.take_along_axis(i[rows], order, 1)
    return d, i


def _drop_self(d: np.ndarray, i: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 neighbours, remove each query's own row (or, where it is absent, the last)."""
    self_ids = start + np.arange(len(i))
    if len(i) and (i[:, 0] == self_ids).all():  # the usual case, each query first in its own list: a view
        return d[:, 1:], i[:, 1:]
    own = i == self_ids[:, None]
    missing = ~own.any(1)
    own[missing, -1] = True
    keep = ~own
    return d[keep].reshape(len(d), k), i[keep].reshape(len(i), k)


@contextmanager
def _faiss_blas_search():
    """Route every faiss exact search of 20 or more queries through its BLAS kernel.

    faiss 1.15 takes the BLAS path only when ``n_query x dim`` reaches its threshold (128,000), and
    scans pair by pair below it: for the 20-d MNIST embeddings that is any block under 6,400
    queries, and the scan is about 3x slower at small k (10,000 test rows against 60,000 training
    rows, k = 5, two threads: 1.5 s against 0.55 s with the refine below). 20 is the threshold
    faiss used before, in queries. The setting is global to faiss, so it is restored.
    """
    import faiss

    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = _FAISS_BLAS_MIN_QUERIES
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def _blocks_faiss(query, ref, k, exclude_self, block) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """faiss's BLAS kernel finds ``_REFINE_EXTRA`` more candidates than asked, and ``IndexRefineFlat``
    recomputes their distances pair by pair and keeps the k nearest. Why both: the BLAS kernel's
    distances (|q|^2 + |r|^2 - 2 q.r) carry rounding that differs from pair to pair, so exact
    duplicates no longer tie at 0 and near-ties at the cut can swap; the refined distances are those
    of faiss's pair-by-pair scan (the same kernel), so the lists are the exact scan's, at the BLAS
    kernel's speed, unless more than ``_REFINE_EXTRA`` references lie within rounding of the cut."""
    import faiss

    index = faiss.IndexRefineFlat(faiss.IndexFlatL2(ref.shape[1]))
    index.add(ref)
    kk = k + int(exclude_self)
    k_base = min(kk + _REFINE_EXTRA, len(ref))
    # All k_base candidates come back refined and the cut at kk is made here, after ordering by
    # (distance, id): faiss's refine keeps its k by distance alone, so of two references at the same
    # exact distance at the cut it may keep the higher id.
    index.k_factor = 1.0
    step = _rows_per_block(block, k_base)
    for s in range(0, len(query), step):
        with _faiss_blas_search():
            d, i = index.search(query[s:s + step], k_base)
        d, i = _canonical(d, i.astype(np.int64, copy=False))
        d, i = d[:, :kk], i[:, :kk]
        if exclude_self:
            d, i = _drop_self(d, i, s, k)
        yield s, d, i


def _exact_refine(torch, q, r, ids, k):
    """The k nearest of each row's candidates ``ids`` by their distances recomputed pair by pair
    (sum of squared differences, as faiss's refine does), ordered by (distance, id)."""
    ids, _ = torch.sort(ids, dim=1)                  # by id first, so the stable sort below breaks ties by id
    chunk = max(1, _GPU_DIST_BUDGET // 16 // max(ids.shape[1] * r.shape[1], 1))   # 64 MiB a temporary
    exact = torch.cat([((q[c:c + chunk, None, :] - r[ids[c:c + chunk]]) ** 2).sum(-1)
                       for c in range(0, len(q), chunk)])
    vals, order = torch.sort(exact, dim=1, stable=True)
    return vals[:, :k], torch.gather(ids, 1, order[:, :k])


def _blocks_torch(query, ref, k, exclude_self, block, device) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """A blocked matrix product finds ``_REFINE_EXTRA`` more candidates than asked, whose distances
    are then recomputed pair by pair, as in :func:`_blocks_faiss` and for the same reason: copies tie
    exactly and the lists agree with the CPU path's."""
    import torch

    dev = torch.device(device)
    r = torch.from_numpy(ref).to(dev)
    r_sq = (r * r).sum(1)
    n_ref = len(ref)
    kb = min(k + _REFINE_EXTRA, n_ref - int(exclude_self))
    step = max(1, min(_rows_per_block(block, kb), _GPU_DIST_BUDGET // max(n_ref, 1)))
    with torch.inference_mode():
        for s in range(0, len(query), step):
            q = torch.from_numpy(query[s:s + step]).to(dev)
            dist = torch.addmm(r_sq[None, :], q, r.T, beta=1.0, alpha=-2.0)
            dist.add_((q * q).sum(1, keepdim=True)).clamp_(min=0)
            rows = torch.arange(len(q), device=dev)
            if exclude_self:
                dist[rows, rows + s] = float("inf")
            vals, ids = torch.topk(dist, kb, dim=1, largest=False, sorted=True)
            # Rows where references tied with the last candidate's distance spill over the cut: keep
            # the lowest ids (a stable sort of the full row orders equal distances by id).
            spill = (dist <= vals[:, -1:]).sum(1) > kb
            spilled = torch.nonzero(spill).flatten()
            for c in range(0, len(spilled), 256):
                rs = spilled[c:c + 256]
                v2, i2 = torch.sort(dist[rs], dim=1, stable=True)
                vals[rs], ids[rs] = v2[:, :kb], i2[:, :kb]
            del dist
            vals, ids = _exact_refine(torch, q, r, ids, k)
            d, i = _canonical(vals.cpu().numpy(), ids.cpu().numpy().astype(np.int64, copy=False))
            yield s, d, i


def _search_blocks(query, ref, k, exclude_self, device, block) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start_row, distances, ids)`` for consecutive query blocks (k already clamped)."""
    if len(query) == 0 or k == 0:
        for s in range(0, len(query), max(1, block)):
            e = min(len(query), s + max(1, block))
            yield s, np.zeros((e - s, 0), np.float32), np.zeros((e - s, 0), np.int64)
        return
    if str(device) == "cpu":
        yield from _blocks_faiss(query, ref, k, exclude_self, block)
    else:
        yield from _blocks_torch(query, ref, k, exclude_self, block, device)


def _check(query, ref, exclude_self):
    query, ref = _as_f32(query, "query"), _as_f32(ref, "ref")
    if query.shape[1] != ref.shape[1]:
        raise ValueError(f"query has {query.shape[1]} features but ref has {ref.shape[1]}")
    if exclude_self and len(query) != len(ref):
        raise ValueError("exclude_self=True needs query and ref to be the same set (same rows, same order)")
    return query, ref


def search(query: np.ndarray, ref: np.ndarray, k: int, *, exclude_self: bool = False, device: str = "cpu",
           block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of ``ref`` for every row of ``query``: squared-L2 distances (float32) and
    int64 ids, both (n_query, k), nearest first, ties ordered by id.

    ``exclude_self=True``: query and ref are the same set in the same order, and each query's own row
    is left out of its list. ``k`` is clamped to the neighbours available. ``device`` ``"cpu"`` uses
    faiss; anything else (``"cuda"``, ``"cuda:1"``) a blocked torch search on that device.
    """
    query, ref = _check(query, ref, exclude_self)
    k = _clamp_k(k, len(ref), exclude_self)
    dist = np.empty((len(query), k), np.float32)
    ids = np.empty((len(query), k), np.int64)
    for s, d, i in _search_blocks(query, ref, k, exclude_self, device, block):
        dist[s:s + len(d)], ids[s:s + len(i)] = d, i
    return dist, ids


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
    query_emb = _as_f32(query_emb, "query_emb")
    if len(query_emb) != len(np.asarray(query_y).reshape(-1)):
        raise ValueError("query_emb and query_y differ in length")
    if loo:
        ref, (qy,) = query_emb, _encode(query_y)
        ry = qy
    else:
        ref = _as_f32(gallery_emb, "gallery_emb")
        if len(ref) != len(np.asarray(gallery_y).reshape(-1)):
            raise ValueError("gallery_emb and gallery_y differ in length")
        qy, ry = _encode(query_y, gallery_y)
    query_emb, ref = _check(query_emb, ref, loo)

    n = len(query_emb)
    counts = np.bincount(ry, minlength=int(max(qy.max(initial=-1), ry.max(initial=-1))) + 1)
    r = counts[qy] - int(loo) if n else np.zeros(0, np.int64)
    valid = r > 0
    k = _clamp_k(max([int(r.max(initial=0)), *ks]), len(ref), loo)

    report_ks = sorted({1, *ks})
    per = {f"recall@{K}": np.full(n, np.nan) for K in report_ks}
    per["map@r"] = np.full(n, np.nan)
    per["r_precision"] = np.full(n, np.nan)
    # ~48 bytes of working arrays per (query, neighbour) below: keep a block near the result budget.
    rows = max(1, min(4096, _RESULT_BUDGET // (48 * max(k, 1))))
    for s, _, ids in _search_blocks(query_emb, ref, k, loo, device, rows):
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
    test_emb, train_emb = _check(test_emb, train_emb, False)
    if len(train_emb) == 0:
        raise ValueError("knn_classify needs at least one training row")
    ty, sy = _encode(train_y, test_y)
    if len(ty) != len(train_emb) or len(sy) != len(test_emb):
        raise ValueError("embeddings and labels differ in length")
    k = _clamp_k(k, len(train_emb), False)
    correct = np.zeros(len(test_emb), bool)
    for s, _, ids in _search_blocks(test_emb, train_emb, k, False, device, 4096):
        correct[s:s + len(ids)] = _vote(ty[ids]) == sy[s:s + len(ids)]
    acc = float(correct.mean()) if len(correct) else float("nan")
    return acc, correct
