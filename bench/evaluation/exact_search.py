"""Exact nearest neighbours: the search the retrieval and k-NN metrics (:mod:`dmlbench.evaluation.neighbors`)
are built on. Exact means: the lists of float64 brute force on the float32 embeddings, with ties by id.

1. **Scale.** Embeddings whose largest coordinate lies outside [1, 2^40] are multiplied by a power of
   two (:func:`dmlbench.evaluation.rounding.scale_exponent`): exact in binary floating point, and it
   keeps every distance's order, but squared differences no longer underflow to float32's
   subnormals (from about 1e-19) or overflow its range (from about 1e18). What no power of two can
   hold exactly is refused in one line.
2. **Propose.** On the embeddings centred on the references' mean (fewer digits lost to cancellation
   far from the origin), a matrix product proposes ``_REFINE_EXTRA`` candidates beyond k: faiss's
   ``IndexFlatL2`` (BLAS) kernel on the CPU; a blocked ``addmm`` and ``topk`` in torch on a GPU
   (``device="cuda"`` or ``"cuda:N"``; torch is imported only there).
3. **Refine.** The candidates' distances are recomputed pair by pair (a sum of squared differences of
   the uncentred embeddings) in float32; neighbours whose float32 distances are too close for their
   rounding to order (:func:`~dmlbench.evaluation.rounding.near_ties`, exact ties included) are
   ordered by float64 distances, then by id: few of them pair by pair; many (wide lists in many
   dimensions, such as the raw-pixel floor's k = R retrieval) through float64 matrix products, with
   only what those cannot separate within their bound summed pair by pair.
4. **Certify.** A row is final when the matrix product's rounding bound
   (:func:`~dmlbench.evaluation.rounding.reach`) proves that no reference left out could be as near as
   its k-th neighbour. Rows it cannot certify (ties at the cut, more copies than the margin) are
   proposed again with four times the candidates, until certified or compared with every reference.

Queries are searched in blocks, so memory is bounded by ``block x k`` (plus ``block x n_ref``
distances on a GPU), never by ``n_query x n_ref``. Embeddings with NaN or inf values are refused.
"""

from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np

from dmlbench.core.errors import NonFiniteEmbeddingError
from dmlbench.evaluation import rounding, ties64

# Bytes of search results (float32 distance + int64 id per neighbour) one block may hold.
RESULT_BUDGET = 128 * 2**20
# Bytes of working arrays one refine may hold (see _rows_refined): it sets the evaluation's peak memory.
REFINE_BUDGET = 128 * 2**20
# Float32 entries of one block of the query x reference distance matrix on a GPU.
_GPU_DIST_BUDGET = 2**28
# Queries from which a faiss exact search uses its BLAS kernel (see _faiss_search).
_FAISS_BLAS_MIN_QUERIES = 20
_FAISS_LOCK = threading.Lock()
# Candidates beyond k whose distances are recomputed pair by pair, and the factor by which they grow
# for a row the certificate cannot close.
_REFINE_EXTRA = 16
_GROWTH = 4


def as_f32(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a contiguous 2-D float32 array; rows with NaN or infinite values are refused."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x features), got shape {x.shape}")
    bad = ~np.isfinite(x).all(1) if x.size else np.zeros(len(x), bool)
    if bad.any():   # NaN ranks arbitrarily against every distance (a query could come first in its own list)
        raise NonFiniteEmbeddingError(
            f"{name} has {int(bad.sum())} row(s) with NaN or infinite values (the first is row "
            f"{int(np.argmax(bad))}): the model's embeddings diverged; lower the learning rate")
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


class _FaissPath:
    """The CPU search: faiss proposes, faiss's pair-by-pair kernel (``fvec_L2sqr_by_idx``) refines."""

    unit = rounding.F32_UNIT

    def __init__(self, ref: np.ndarray, ref_c: np.ndarray):
        import faiss

        self.ref = ref
        self.index = faiss.IndexFlatL2(ref.shape[1])
        self.index.add(ref_c)

    def propose(self, qc: np.ndarray, kb: int) -> tuple[np.ndarray, np.ndarray]:
        approx, ids = _faiss_search(self.index, qc, kb)
        return approx.astype(np.float64), ids

    def pairwise(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Float32 squared distances from each row of ``q`` to ``ref[ids[row]]``, pair by pair (a sum of
        squared differences, so copies tie exactly)."""
        import faiss

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        q = np.ascontiguousarray(q)
        out = np.empty(ids.shape, np.float32)
        faiss.fvec_L2sqr_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(self.ref),
                                faiss.swig_ptr(ids), q.shape[1], len(q), ids.shape[1])
        return out


def _matmul_unit(torch) -> float:
    """Unit roundoff of torch's float32 matrix products under the current precision setting."""
    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "1":     # cuBLAS uses TF32 whatever torch reports
        return rounding.TF32_UNIT
    try:
        precision = torch.get_float32_matmul_precision()
    except RuntimeError:   # set per backend (torch.backends.*.fp32_precision): assume the least precise
        precision = "medium"
    return {"highest": rounding.F32_UNIT, "high": rounding.TF32_UNIT}.get(precision, rounding.BF16_UNIT)


class _TorchPath:
    """The GPU search: a blocked ``addmm`` and ``topk`` propose, a gathered sum of squared differences
    refines, both on the device; results come back to the CPU per block."""

    def __init__(self, ref: np.ndarray, ref_c: np.ndarray, device: str):
        import torch

        self.torch = torch
        self.dev = torch.device(device)
        self.r = torch.from_numpy(ref).to(self.dev)
        self.r_c = torch.from_numpy(ref_c).to(self.dev)
        self.r_sq = (self.r_c * self.r_c).sum(1)
        self.unit = _matmul_unit(torch)

    def propose(self, qc: np.ndarray, kb: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        step = max(1, _GPU_DIST_BUDGET // max(len(self.r_c), 1))
        approx, ids = [], []
        with torch.inference_mode():
            for s in range(0, len(qc), step):
                q = torch.from_numpy(qc[s:s + step]).to(self.dev)
                dist = torch.addmm(self.r_sq[None, :], q, self.r_c.T, beta=1.0, alpha=-2.0)
                dist.add_((q * q).sum(1, keepdim=True)).clamp_(min=0)
                a, i = torch.topk(dist, kb, dim=1, largest=False, sorted=True)
                approx.append(a.double().cpu().numpy())
                ids.append(i.cpu().numpy().astype(np.int64, copy=False))
        return np.concatenate(approx), np.concatenate(ids)

    def pairwise(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        width, dim = ids.shape[1], self.r.shape[1]
        chunk = max(1, _GPU_DIST_BUDGET // 16 // max(width * dim, 1))   # 64 MiB a temporary
        out = []
        with torch.inference_mode():
            qt = torch.from_numpy(np.ascontiguousarray(q)).to(self.dev)
            full = ids.strides[0] == 0        # every reference (broadcast ids): no gather
            it = None if full else torch.from_numpy(np.ascontiguousarray(ids)).to(self.dev)
            for c in range(0, len(q), chunk):
                other = self.r[None, :, :] if full else self.r[it[c:c + chunk]]
                out.append(((qt[c:c + chunk, None, :] - other) ** 2).sum(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(ids.shape, np.float32)


def _make_path(ref: np.ndarray, ref_c: np.ndarray, device: str):
    """faiss on the CPU, torch anywhere else."""
    return _FaissPath(ref, ref_c) if device == "cpu" else _TorchPath(ref, ref_c, device)


def _refine(path, q: np.ndarray, ref: np.ndarray, ids: np.ndarray, kk: int):
    """The ``kk`` nearest of each row's candidates ``ids``: float64 distances, ids, and the largest
    float32 distance kept (for the certificate). Sorted by float32 distance then id; runs of near
    ties (:func:`rounding.near_ties`) reaching into the list are ordered by float64 distance then id."""
    d32 = path.pairwise(q, ids)
    # Candidates come nearly in order (by their estimates), all references in id order: either way
    # a stable sort is quick, and _canonical settles the ties by id.
    order = np.argsort(d32, axis=1, kind="stable")
    d32, ids = _canonical(np.take_along_axis(d32, order, 1), np.take_along_axis(ids, order, 1))
    if d32.shape[1] < 2 or kk == 0:
        return d32[:, :kk].astype(np.float64), ids[:, :kk], d32[:, :kk].max(1, initial=0)
    near = rounding.near_ties(d32, q.shape[1])
    group = np.zeros(d32.shape, np.int32)
    np.cumsum(~near, axis=1, out=group[:, 1:])
    run = np.zeros(d32.shape, bool)
    run[:, 1:] = near
    run[:, :-1] |= near
    need = run & (group <= group[:, kk - 1:kk])        # runs that reach into the first kk
    dist = d32[:, :kk].astype(np.float64)
    r_i, c_i = np.nonzero(need)
    if len(r_i):
        ids, d32 = ids.copy(), d32.copy()
        ref_ids = ids[r_i, c_i]
        # Positions of a run are contiguous in a row: sorting the run's members by (row, run, float64
        # distance, id) and writing them back in place orders every run and moves nothing else.
        d64, perm = ties64.order(q, ref, getattr(path, "shift", None), r_i, ref_ids, group[r_i, c_i])
        ids[r_i, c_i] = ref_ids[perm]
        d32[r_i, c_i] = d32[r_i, c_i][perm]
        inside = c_i < kk
        dist[r_i[inside], c_i[inside]] = d64[perm][inside]
    return dist, ids[:, :kk], d32[:, :kk].max(1)


def _rows_refined(kb: int) -> int:
    """Rows refined at once with ``kb`` candidates each: the candidates' ids and distances, their order,
    sorted copies, the near-tie masks and (where most candidates are near-ties, as in k = R lists)
    the float64 ordering's per-pair arrays take up to about 160 bytes a candidate."""
    return max(1, REFINE_BUDGET // (160 * max(kb, 1)))


def _search_block(path, q: np.ndarray, qc: np.ndarray, ref: np.ndarray, kk: int):
    """The ``kk`` nearest references of every row of ``q`` (``qc``: centred), certified."""
    n_ref, dim = len(ref), q.shape[1]
    dist = np.empty((len(q), kk), np.float64)
    ids = np.empty((len(q), kk), np.int64)
    q_norm = np.sqrt(ties64.sq_norms(qc))
    todo = np.arange(len(q))
    kb = min(kk + _REFINE_EXTRA, n_ref)
    while len(todo):
        retry = []
        every = _rows_refined(kb)
        for c in range(0, len(todo), every):
            rows = todo[c:c + every]
            if kb >= n_ref:               # every reference is a candidate: nothing to certify
                all_ids = np.broadcast_to(np.arange(n_ref, dtype=np.int64), (len(rows), n_ref))
                dist[rows], ids[rows], _ = _refine(path, q[rows], ref, all_ids, kk)
                continue
            approx, cand = path.propose(qc[rows], kb)
            d, i, kept_max = _refine(path, q[rows], ref, cand, kk)
            ok = rounding.reach(kept_max, q_norm[rows], dim, path.unit) < approx[:, -1]
            dist[rows[ok]], ids[rows[ok]] = d[ok], i[ok]
            retry.append(rows[~ok])
        todo = np.concatenate(retry) if retry else todo[:0]
        kb = min(n_ref, kb * _GROWTH)
    return dist, ids


def search_blocks(query, ref, k, exclude_self, device, block) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start_row, distances, ids)`` for consecutive query blocks (k already clamped); distances
    are float64 squared distances in the embeddings' own units."""
    if len(query) == 0 or k == 0:
        for s in range(0, len(query), max(1, block)):
            e = min(len(query), s + max(1, block))
            yield s, np.zeros((e - s, 0), np.float64), np.zeros((e - s, 0), np.int64)
        return
    e = rounding.scale_exponent(query, ref)
    same = query is ref
    ref = rounding.rescale(ref, e, "ref")
    query = ref if same else rounding.rescale(query, e, "query")
    # Distances do not change under a shift, but the matrix product's rounding does: centred on the
    # references' mean, |q|^2 + |r|^2 - 2 q.r cancels far fewer digits for embeddings far from the
    # origin, and more rows pass the certificate at the first try.
    shift = ref.mean(axis=0, dtype=np.float64).astype(np.float32)
    ref_c = ref - shift
    kk = k + int(exclude_self)
    path = _make_path(ref, ref_c, str(device))
    path.shift = shift.astype(np.float64)
    step = _rows_per_block(block, min(kk + _REFINE_EXTRA, len(ref)))
    for s in range(0, len(query), step):
        qb = query[s:s + step]
        d, i = _search_block(path, qb, qb - shift, ref, kk)
        if exclude_self:
            d, i = _drop_self(d, i, s, k)
        yield s, np.ldexp(d, -2 * e) if e else d, i


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
    """The k nearest rows of ``ref`` for every row of ``query``: squared-L2 distances (float64) and
    int64 ids, both (n_query, k), nearest first, ties ordered by id: the lists of float64 brute force.

    ``exclude_self=True``: query and ref are the same set in the same order, and each query's own row
    is left out of its list. ``k`` is clamped to the neighbours available. ``device`` ``"cpu"`` uses
    faiss; anything else (``"cuda"``, ``"cuda:1"``) a blocked torch search on that device.
    Distances are float32 pair-by-pair sums, or float64 ones where float32 could not order two
    neighbours.
    """
    query, ref = check_inputs(query, ref, exclude_self)
    k = clamp_k(k, len(ref), exclude_self)
    dist = np.empty((len(query), k), np.float64)
    ids = np.empty((len(query), k), np.int64)
    for s, d, i in search_blocks(query, ref, k, exclude_self, device, block):
        dist[s:s + len(d)], ids[s:s + len(i)] = d, i
    return dist, ids
