"""dmlbench.evaluation.exact_search at every scale: the lists equal float64 brute force's (ties by id)
row for row, from 1e-23 to 1e17, far from the origin, with copies and on lattices, on both paths;
rows tied at the cut are closed by more candidates, not by comparing every reference."""

from __future__ import annotations

import numpy as np
import pytest

from dmlbench.evaluation import exact_search, ties64
from dmlbench.evaluation.exact_search import search


def brute64(q: np.ndarray, ref: np.ndarray, k: int, exclude_self: bool = False):
    """float64 brute force: sums of squared differences, lists ordered by (distance, id)."""
    q64, r64 = q.astype(np.float64), ref.astype(np.float64)
    d_out, i_out = np.empty((len(q), k)), np.empty((len(q), k), np.int64)
    step = max(1, 2**23 // (len(ref) * q.shape[1]))
    for s in range(0, len(q), step):
        d = ((q64[s:s + step, None, :] - r64[None]) ** 2).sum(-1)
        if exclude_self:
            d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf
        order = np.lexsort((np.broadcast_to(np.arange(len(ref)), d.shape), d), axis=-1)[:, :k]
        d_out[s:s + step], i_out[s:s + step] = np.take_along_axis(d, order, 1), order
    return d_out, i_out


def scaled(x: np.ndarray, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    return (x.astype(np.float64) * scale + offset).astype(np.float32)


def cases(dim: int, nq: int, nr: int):
    """(name, query, ref): Gaussians at each scale, copies (every reference 20 times), both far from
    the origin."""
    rng = np.random.default_rng(dim)
    q, r = rng.normal(size=(nq, dim)), rng.normal(size=(nr, dim))
    copies = np.concatenate([r[:nr // 20]] * 20)
    for scale in (1e-23, 1e-20, 1.0, 1e17):
        yield f"scale {scale:g}", scaled(q, scale), scaled(r, scale)
        yield f"copies at {scale:g}", scaled(q, scale), scaled(copies, scale)
    yield "offset 1e4", scaled(q, offset=1e4), scaled(r, offset=1e4)
    yield "copies offset 1e4", scaled(q, offset=1e4), scaled(copies, offset=1e4)


def assert_exact(name, q, ref, k, exclude_self=False, paths=("faiss", "torch")):
    bd, bi = brute64(q, ref, k, exclude_self)
    for path in paths:
        if path == "torch":
            pytest.importorskip("torch")
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(exact_search, "_make_path", lambda r, r_c, device: exact_search._TorchPath(r, r_c, "cpu"))
                d, i = search(q, ref, k, exclude_self=exclude_self)
        else:
            d, i = search(q, ref, k, exclude_self=exclude_self)
        differing = int((i != bi).any(1).sum())
        assert differing == 0, f"{name} ({path}): {differing} of {len(q)} rows differ from float64 brute force"
        # The distances are brute force's up to float32 rounding, in the embeddings' own units.
        np.testing.assert_allclose(d, bd, rtol=1e-4, atol=0, err_msg=f"{name} ({path})")


@pytest.mark.parametrize("dim, nq, nr", [(2, 400, 4000), (512, 100, 1000)])
def test_lists_equal_float64_brute_force_at_every_scale(dim, nq, nr):
    # At 1e-20 squared differences are subnormal in float32, at 1e-23 zero; at 1e17 (2-d: 1e18 at
    # 512-d) |x|^2 nears float32's range: a power of two brings each into range exactly.
    for name, q, ref in cases(dim, nq, nr):
        assert_exact(f"{dim}-d {name}", q, ref, 10)


@pytest.mark.parametrize("scale", [1e-23, 1.0, 1e17])
def test_leave_one_out_lists_equal_float64_brute_force_with_copies(scale):
    rng = np.random.default_rng(5)
    x = scaled(np.concatenate([rng.normal(size=(150, 16))] * 6), scale)
    assert_exact(f"leave-one-out copies at {scale:g}", x, x, 8, exclude_self=True)


def lattice(offset: float = 0.0) -> np.ndarray:
    """20,000 points of the integer grid: every distance is an integer, shared by many references."""
    g = np.stack(np.meshgrid(np.arange(142), np.arange(142)), -1).reshape(-1, 2)[:20_000]
    return scaled(g, offset=offset)


@pytest.mark.parametrize("name, make", [
    ("lattice", lambda rng: (lattice()[rng.choice(20_000, 2_000, replace=False)], lattice())),
    ("lattice offset 1e4", lambda rng: (lattice(1e4)[rng.choice(20_000, 2_000, replace=False)], lattice(1e4))),
    ("copies offset 1e4, 100 of each", lambda rng: (scaled(rng.normal(size=(2_000, 2)), offset=1e4),
                                                    scaled(np.concatenate([rng.normal(size=(200, 2))] * 100), offset=1e4))),
])
def test_ties_at_the_cut_grow_the_candidates_instead_of_scanning_everything(monkeypatch, name, make):
    # 2,000 queries against 20,000 references, k = 10: rows whose cut falls inside a run of equal
    # distances are proposed again with more candidates, never compared with all 20,000.
    q, ref = make(np.random.default_rng(0))
    widths = []
    real = exact_search._refine
    monkeypatch.setattr(exact_search, "_refine",
                        lambda p, qq, r, ids, kk: widths.append((len(qq), ids.shape[1])) or real(p, qq, r, ids, kk))
    assert_exact(name, q, ref, 10, paths=("faiss",))
    assert max(w for _, w in widths) < len(ref), widths
    assert sum(n for n, w in widths if w == 10 + exact_search._REFINE_EXTRA) == len(q)


def test_long_runs_of_near_ties_are_ordered_by_float64_matrix_products_then_pair_by_pair(monkeypatch):
    # Wide lists in many dimensions (the raw-pixel floor's retrieval: k = R over 784 pixels), where
    # float32 cannot order most neighbours: the float64 expansion |q|^2 + |r|^2 - 2 q.r orders them,
    # and what it cannot separate (pixels in steps of 1/255 tie exactly; copies) is summed pair by
    # pair. The lists still equal float64 brute force's, ties by id.
    rng = np.random.default_rng(3)
    protos = rng.integers(0, 256, size=(4, 256))
    pix = np.clip(protos[rng.integers(0, 4, 400)] + rng.integers(-3, 4, size=(400, 256)), 0, 255)
    x = (np.concatenate([pix, pix[:100]]) / 255).astype(np.float32)      # 100 rows twice
    calls = []
    real = ties64.dots64
    monkeypatch.setattr(ties64, "dots64", lambda *a: calls.append(len(a[3])) or real(*a))
    assert_exact("pixels", x, x, 150, exclude_self=True)
    assert calls and sum(calls) > 10_000, calls
