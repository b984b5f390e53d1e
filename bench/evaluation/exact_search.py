"""Exact nearest neighbours: the search the retrieval and k-NN metrics (:mod:`dmlbench.evaluation.neighbors`)
are built on.

Distances are squared Euclidean, computed on the embeddings centred on the references' mean. On
the CPU, faiss's ``IndexFlatL2`` matrix-product (BLAS) kernel proposes ``_REFINE_EXTRA`` candidates
beyond k; on a GPU (``device="cuda"`` or ``"cuda:N"``) a blocked matrix product and ``topk`` in torch
do, and torch is imported only there, so importing this module never imports torch. Either way the
candidates' distances are recomputed pair by pair (a sum of squared differences), and a query whose
cut a rounding bound cannot certify (:func:`_uncertain`) is compared with every reference pair by
pair: the lists are those of the pair-by-pair distances.
Queries are searched in blocks, so memory is bounded by ``block x k`` (plus ``block x n_ref``
distances on a GPU), never by ``n_query x n_ref``.

Ties: every list is ordered by (distance, reference id), and among references at the same distance
at the cut-off the lower ids are kept, so results are deterministic and copies tie exactly.
Embeddings with NaN or inf values, or norms whose squares overflow float32, are refused.
"""

from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np

from dmlbench.core.errors import NonFiniteEmbeddingError

# Bytes of search results (float32 distance + int64 id per neighbour) one block may hold.
RESULT_BUDGET = 256 * 2**20
# Float32 entries of one block of the query x reference distance matrix on a GPU.
_GPU_DIST_BUDGET = 2**28
# Queries from which a faiss exact search uses its BLAS kernel (see _faiss_search).
_FAISS_BLAS_MIN_QUERIES = 20
_FAISS_LOCK = threading.Lock()
# Candidates beyond k whose distances are recomputed pair by pair (see _blocks_faiss).
_REFINE_EXTRA = 16
# Unit roundoff of float32, of TF32 and of bfloat16 (matrix products below "highest" precision), and
# the absolute error of a float32 operation among subnormals.
_F32_UNIT = 2.0**-24
_TF32_UNIT = 2.0**-11
_BF16_UNIT = 2.0**-8
_F32_TINY = 2.0**-149
# Squared norms past this may overflow float32 in |q|^2 + |r|^2 - 2 q.r (float32's largest is 3.4e38).
_MAX_SQ_NORM = 1e37


def as_f32(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a contiguous 2-D float32 array; non-finite rows, or norms whose squares overflow, are refused."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x features), got shape {x.shape}")
    sq = _sq_norms(x)
    bad = ~np.isfinite(sq)   # NaN ranks arbitrarily against every distance (a query could come first in its own list)
    if bad.any():
        raise NonFiniteEmbeddingError(
            f"{name} has {int(bad.sum())} row(s) with NaN or infinite values (the first is row "
            f"{int(np.argmax(bad))}): the model's embeddings diverged; lower the learning rate")
    if len(sq) and sq.max() > _MAX_SQ_NORM:
        raise NonFiniteEmbeddingError(
            f"{name} row {int(np.argmax(sq))} has norm {np.sqrt(sq.max()):.3g}: squared distances overflow float32 "
            f"past norms of about {np.sqrt(_MAX_SQ_NORM):.0e}; scale the embeddings down")
    return x


def clamp_k(k: int, n_ref: int, exclude_self: bool) -> int:
    """``k`` cut to the neighbours available (one fewer with ``exclude_self``); a negative ``k`` is an error."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return max(0, min(int(k), n_ref - int(exclude_self)))


def _rows_per_block(block: int, k: int) -> int:
    """Query rows per block: at most ``block``, and fewer when k is large."""
    return max(1, min(int(block), RESULT_BUDGET // (12 * max(k, 1))))


def _canonical(d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order every row by (distance, id). Rows already in that order (after a stable sort by distance,
    all but those with ties out of id order) are left alone: only the others are sorted."""
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


def _gamma(n: int, unit: float = _F32_UNIT) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term float sum or dot product."""
    return n * unit / (1 - n * unit)


def _uncertain(approx_last, exact_kth, q_sq, dim: int, unit: float = _F32_UNIT) -> np.ndarray:
    """Rows whose candidates may miss one of the k nearest, so they are compared with every reference.

    Every reference outside a row's candidates has a matrix-product estimate at least the last
    candidate's, ``A`` (``approx_last``). The estimate |q|^2 + |r|^2 - 2 q.r of a true distance D is
    within ``gamma_(d+2) (|q| + |r|)^2 <= gamma_(d+2) (2|q| + sqrt(D))^2`` of it, whatever the
    summation order (|r| <= |q| + sqrt(D)), plus a few subnormal units. So an outside reference has
    ``D + gamma (2|q| + sqrt(D))^2 >= A``, and the left side grows with D: the row is certain when
    the bound at ``T``, the largest true distance whose pair-by-pair rounding could reach the k-th
    refined distance (``exact_kth``), stays below A. Strictly, so a tie at the cut is never decided
    outside. The bound needs only the query's norm: embeddings far from the origin relative to
    their spread widen it and come here, since the matrix product cancels most of their digits.
    """
    g_pair = _gamma(dim + 2, _F32_UNIT)
    tiny = 4 * (dim + 2) * _F32_TINY
    t = (exact_kth.astype(np.float64) + tiny) / (1 - g_pair)
    reach = t + _gamma(dim + 2, unit) * (2 * np.sqrt(q_sq) + np.sqrt(t)) ** 2 + tiny
    return ~(reach < approx_last)


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def _faiss_search(index, x: np.ndarray, k: int):
    """``index.search`` through faiss's matrix-product (BLAS) kernel from 20 queries on.

    faiss 1.15 takes that kernel only when ``n_query x dim`` reaches 128,000 and scans otherwise:
    for 20-d embeddings any block under 6,400 queries, about 3x slower at small k (10,000 test rows
    against 60,000 training rows, k = 5, two threads: 1.5 s against 0.6 s). 20 queries is the
    threshold faiss used before. The setting is global to faiss: a lock keeps two threads from
    interleaving it, and it is restored after each call.
    """
    import faiss

    with _FAISS_LOCK:
        before = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = _FAISS_BLAS_MIN_QUERIES
        try:
            return index.search(x, k)
        finally:
            faiss.cvar.distance_compute_blas_threshold = before


def _pairwise(q: np.ndarray, ref: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Squared distances from each row of ``q`` to ``ref[ids[row]]``, pair by pair (faiss's
    ``fvec_L2sqr_by_idx``: a sum of squared differences, so copies tie exactly)."""
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    out = np.empty(ids.shape, np.float32)
    faiss.fvec_L2sqr_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(ref), faiss.swig_ptr(ids),
                            q.shape[1], len(q), ids.shape[1])
    return out


def _nearest_by_pairs(q: np.ndarray, ref: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k of each row's ``ids`` nearest by pair-by-pair distance, ordered by (distance, id)."""
    exact = _pairwise(q, ref, ids)
    # Candidates come nearly in order (by their estimates), all references in id order: either way
    # a stable sort is quick, and _canonical settles the ties by id.
    order = np.argsort(exact, axis=1, kind="stable")
    d, i = _canonical(np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1))
    return d[:, :k], i[:, :k]


def _blocks_faiss(query, ref, k, exclude_self, block) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """faiss's BLAS kernel proposes ``_REFINE_EXTRA`` more candidates than asked; their distances are
    recomputed pair by pair and the k nearest kept by (distance, id). Rows the rounding bound of
    :func:`_uncertain` cannot certify are compared with every reference pair by pair. Why: the BLAS
    kernel's distances carry rounding that differs from pair to pair (copies no longer tie;
    near-ties at the cut swap) and lose the digits of embeddings far from the origin to
    cancellation; the lists here are those of the pair-by-pair distances."""
    import faiss

    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(ref)
    kk = k + int(exclude_self)
    k_base = min(kk + _REFINE_EXTRA, len(ref))
    step = _rows_per_block(block, k_base)
    # Rows compared with every reference at once: ids, distances, their order and the sorted copies
    # take about 40 bytes a (row, reference).
    every = max(1, min(step, RESULT_BUDGET // (40 * len(ref))))
    for s in range(0, len(query), step):
        qb = query[s:s + step]
        approx, ids = _faiss_search(index, qb, k_base)
        d, i = _nearest_by_pairs(qb, ref, ids, kk)
        if k_base < len(ref):
            redo = np.flatnonzero(_uncertain(approx[:, -1].astype(np.float64), d[:, -1], _sq_norms(qb), qb.shape[1]))
            if len(redo):
                d, i = np.array(d), np.array(i)
                for c in range(0, len(redo), every):
                    rows = redo[c:c + every]
                    all_ids = np.broadcast_to(np.arange(len(ref), dtype=np.int64), (len(rows), len(ref)))
                    d[rows], i[rows] = _nearest_by_pairs(qb[rows], ref, all_ids, kk)
        if exclude_self:
            d, i = _drop_self(d, i, s, k)
        yield s, d, i


def _exact_rows_torch(torch, q, r, ids, self_ids=None):
    """Distances pair by pair (sum of squared differences) from each row of ``q`` to ``r[ids]`` (one id
    row per query), or to all of ``r`` when ``ids`` is None; each query's own reference
    (``self_ids``, one per row, with ``ids`` None) is set to infinity."""
    width = r.shape[0] if ids is None else ids.shape[1]
    chunk = max(1, _GPU_DIST_BUDGET // 16 // max(width * r.shape[1], 1))   # 64 MiB a temporary
    out = []
    for c in range(0, len(q), chunk):
        other = r[None, :, :] if ids is None else r[ids[c:c + chunk]]
        out.append(((q[c:c + chunk, None, :] - other) ** 2).sum(-1))
    exact = torch.cat(out)
    if self_ids is not None:
        exact[torch.arange(len(q), device=q.device), self_ids] = float("inf")
    return exact


def _matmul_unit(torch) -> float:
    """Unit roundoff of torch's float32 matrix products under the current precision setting."""
    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "1":     # cuBLAS uses TF32 whatever torch reports
        return _TF32_UNIT
    try:
        precision = torch.get_float32_matmul_precision()
    except RuntimeError:   # set per backend (torch.backends.*.fp32_precision): assume the least precise
        precision = "medium"
    return {"highest": _F32_UNIT, "high": _TF32_UNIT}.get(precision, _BF16_UNIT)


def _blocks_torch(query, ref, k, exclude_self, block, device) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """A blocked matrix product proposes ``_REFINE_EXTRA`` more candidates than asked, whose distances
    are recomputed pair by pair, with rows the bound cannot certify computed pair by pair in full:
    as :func:`_blocks_faiss`, for the same reasons."""
    import torch

    dev = torch.device(device)
    r = torch.from_numpy(ref).to(dev)
    r_sq = (r * r).sum(1)
    unit = _matmul_unit(torch)
    n_ref = len(ref)
    kb = min(k + _REFINE_EXTRA, n_ref - int(exclude_self))
    step = max(1, min(_rows_per_block(block, kb), _GPU_DIST_BUDGET // max(n_ref, 1)))
    with torch.inference_mode():
        for s in range(0, len(query), step):
            qb = query[s:s + step]
            q = torch.from_numpy(qb).to(dev)
            dist = torch.addmm(r_sq[None, :], q, r.T, beta=1.0, alpha=-2.0)
            dist.add_((q * q).sum(1, keepdim=True)).clamp_(min=0)
            rows = torch.arange(len(q), device=dev)
            if exclude_self:
                dist[rows, rows + s] = float("inf")
            approx, ids = torch.topk(dist, kb, dim=1, largest=False, sorted=True)
            del dist
            ids, _ = torch.sort(ids, dim=1)          # by id, so the stable sort below breaks ties by id
            exact = _exact_rows_torch(torch, q, r, ids)
            vals, order = torch.sort(exact, dim=1, stable=True)
            vals, ids = vals[:, :k], torch.gather(ids, 1, order[:, :k])
            if kb < n_ref - int(exclude_self):
                redo = np.flatnonzero(_uncertain(approx[:, -1].double().cpu().numpy(), vals[:, -1].cpu().numpy(),
                                                 _sq_norms(qb), qb.shape[1], unit))
                for c in range(0, len(redo), 256):
                    rs = torch.from_numpy(redo[c:c + 256]).to(dev)
                    full = _exact_rows_torch(torch, q[rs], r, None, (rs + s) if exclude_self else None)
                    v2, i2 = torch.sort(full, dim=1, stable=True)
                    vals[rs], ids[rs] = v2[:, :k], i2[:, :k]
            d, i = _canonical(vals.cpu().numpy(), ids.cpu().numpy().astype(np.int64, copy=False))
            yield s, d, i


def search_blocks(query, ref, k, exclude_self, device, block) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start_row, distances, ids)`` for consecutive query blocks (k already clamped)."""
    if len(query) == 0 or k == 0:
        for s in range(0, len(query), max(1, block)):
            e = min(len(query), s + max(1, block))
            yield s, np.zeros((e - s, 0), np.float32), np.zeros((e - s, 0), np.int64)
        return
    # Distances do not change under a shift, but the matrix product's rounding does: centred on the
    # references' mean, |q|^2 + |r|^2 - 2 q.r cancels far fewer digits for embeddings far from the
    # origin, and more queries pass the certificate without the full pair-by-pair scan.
    shift = ref.mean(axis=0, dtype=np.float64).astype(np.float32)
    ref_c = ref - shift
    query = ref_c if query is ref else query - shift
    ref = ref_c
    if str(device) == "cpu":
        yield from _blocks_faiss(query, ref, k, exclude_self, block)
    else:
        yield from _blocks_torch(query, ref, k, exclude_self, block, device)


def check_inputs(query, ref, exclude_self):
    """``query`` and ``ref`` as float32 (see :func:`as_f32`), checked to share a width, and a length with
    ``exclude_self``."""
    query, ref = as_f32(query, "query"), as_f32(ref, "ref")
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
    query, ref = check_inputs(query, ref, exclude_self)
    k = clamp_k(k, len(ref), exclude_self)
    dist = np.empty((len(query), k), np.float32)
    ids = np.empty((len(query), k), np.int64)
    for s, d, i in search_blocks(query, ref, k, exclude_self, device, block):
        dist[s:s + len(d)], ids[s:s + len(i)] = d, i
    return dist, ids
