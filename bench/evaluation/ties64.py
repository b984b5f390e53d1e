"""Near-ties of the exact search (:mod:`dmlbench.evaluation.exact_search`) ordered in float64: the
neighbours whose float32 distances are too close for their rounding to order are put in the order
of their float64 distances (sums of squared differences), then by id.

Few such pairs are summed pair by pair. Many (wide lists in many dimensions, such as the raw-pixel
floor's k = R retrieval over 784 pixels, where float32 leaves long runs) would cost a gather of
``pairs x dim`` values; there the float64 expansion ``|q|^2 + |r|^2 - 2 q.r`` of the centred embeddings,
from matrix products, orders them, and only the pairs it cannot separate within its error bound
are summed pair by pair.
"""

from __future__ import annotations

import numpy as np

from dmlbench.evaluation import rounding

# Float64 values of one chunk of squared differences, of references, or of products.
_F64_CHUNK = 2**22
# The expansion is used from one pair in DENSE of the block's query x reference pairs (a matrix
# product costs a few percent of a per-pair gather per value: 10,000 MNIST test images at k = R
# took 10.8 s pair by pair and 6.5 s so).
DENSE = 64
_U64 = 2.0**-53


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def pairs64(q: np.ndarray, ref: np.ndarray, rows: np.ndarray, ref_ids: np.ndarray) -> np.ndarray:
    """Float64 squared distances from ``q[rows[j]]`` to ``ref[ref_ids[j]]`` for every j."""
    out = np.empty(len(rows), np.float64)
    step = max(1, _F64_CHUNK // max(q.shape[1], 1))
    for s in range(0, len(rows), step):
        diff = q[rows[s:s + step]].astype(np.float64) - ref[ref_ids[s:s + step]]
        out[s:s + step] = np.einsum("ij,ij->i", diff, diff)
    return out


def dots64(qc64: np.ndarray, ref: np.ndarray, shift: np.ndarray, rows: np.ndarray, ref_ids: np.ndarray):
    """Float64 ``qc64[rows[j]] . (ref[ref_ids[j]] - shift)`` for every j, and the references' squared
    norms after centring, through float64 matrix products of the queries against blocks of references
    (taken where one pair in ``DENSE`` or more is wanted: a gather per pair costs more)."""
    dots = np.empty(len(rows), np.float64)
    r_sq = np.empty(len(rows), np.float64)
    step = max(1, _F64_CHUNK // max(ref.shape[1], len(qc64), 1))   # bounds both rc and prod
    # Pairs sorted by reference, so each block of references meets its pairs in one slice.
    order = np.argsort(ref_ids, kind="stable")
    bounds = np.searchsorted(ref_ids[order], np.arange(0, len(ref) + step, step))
    for b, s in enumerate(range(0, len(ref), step)):
        sel = order[bounds[b]:bounds[b + 1]]
        if not len(sel):
            continue
        rc = ref[s:s + step].astype(np.float64) - shift
        prod = qc64 @ rc.T                      # (rows of the block) x (references of the block)
        dots[sel] = prod[rows[sel], ref_ids[sel] - s]
        r_sq[sel] = sq_norms(rc)[ref_ids[sel] - s]
    return dots, r_sq


def order(q: np.ndarray, ref: np.ndarray, shift, rows: np.ndarray, ref_ids: np.ndarray, group: np.ndarray):
    """Float64 distances of the pairs ``(rows[j], ref_ids[j])`` and the permutation that orders every
    run (same row, same ``group``) by (float64 pair-by-pair distance, id).

    Few pairs: float64 sums of squared differences, pair by pair. Many (wide lists in many
    dimensions, where float32 leaves long runs of near-ties): the float64 expansion
    |q|^2 + |r|^2 - 2 q.r of the centred embeddings, from matrix products, orders them; only the
    pairs it cannot separate within its bound (gamma_(d+5) (|q_c| + |r_c|)^2 in float64, which
    takes in the centring, plus the pair-by-pair sum's own gamma_(d+3)) are summed pair by pair.
    """
    dim = q.shape[1]
    dense = shift is not None and len(rows) * DENSE >= len(q) * len(ref)
    if not dense:
        d64 = pairs64(q, ref, rows, ref_ids)
        return d64, np.lexsort((ref_ids, d64, group, rows))
    qc64 = q.astype(np.float64) - shift
    q_sq = sq_norms(qc64)
    dots, r_sq = dots64(qc64, ref, shift, rows, ref_ids)
    est = np.maximum(q_sq[rows] + r_sq - 2 * dots, 0.0)
    bound = rounding.gamma(dim + 5, _U64) * (np.sqrt(q_sq[rows]) + np.sqrt(r_sq)) ** 2
    err = bound + rounding.gamma(dim + 3, _U64) * (est + bound)    # and the pair-by-pair sum's error
    # Order by (row, run, estimate): the pairs come in (row, position) order, so a run is a segment
    # of them, and two stable sorts (estimate, then segment) are a lexsort at a fraction of its cost.
    # Equal estimates need no id order here: they are within the bound, so settled below.
    seg = np.zeros(len(rows), np.int64)
    np.cumsum((rows[1:] != rows[:-1]) | (group[1:] != group[:-1]), out=seg[1:])
    perm = np.argsort(est, kind="stable")
    perm = perm[np.argsort(seg[perm], kind="stable")]
    e, x, sp = est[perm], err[perm], seg[perm]
    close = (sp[1:] == sp[:-1]) & (e[1:] - x[1:] <= e[:-1] + x[:-1])
    if close.any():
        # Sub-runs the expansion cannot order (their positions are contiguous): summed pair by pair
        # and ordered by (sum, id) in place.
        sub = np.zeros(len(perm), np.int64)
        np.cumsum(~close, out=sub[1:])
        members = np.zeros(len(perm), bool)
        members[1:] |= close
        members[:-1] |= close
        at = np.flatnonzero(members)
        m = perm[at]
        exact = pairs64(q, ref, rows[m], ref_ids[m])
        est[m] = exact
        perm[at] = m[np.lexsort((ref_ids[m], exact, sub[at]))]
    return est, perm
