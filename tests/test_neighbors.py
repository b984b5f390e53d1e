"""dmlbench.evaluation.exact_search and dmlbench.evaluation.neighbors: exact search, retrieval metrics (checked against pytorch-metric-learning and
brute force) and k-NN classification (checked against scikit-learn)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dmlbench.core.errors import NonFiniteEmbeddingError
from dmlbench.evaluation import exact_search, neighbors, rounding
from dmlbench.evaluation.neighbors import knn_classify, retrieval_metrics, search


def clusters(n=300, d=8, classes=6, spread=1.5, seed=0):
    """Gaussian clusters with continuous coordinates (distinct distances almost surely)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(classes, d))
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y


def brute(query, ref, exclude_self=False):
    """Full distance matrix (float64) and ids sorted by (distance, id)."""
    d = ((query[:, None, :].astype(np.float64) - ref[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(ref)), d.shape), d), axis=-1)
    if exclude_self:
        order = order[:, :-1]
    return np.take_along_axis(d, order, 1), order


def brute_metrics(query, qy, ref=None, ry=None, ks=(1, 2, 4, 8)):
    loo = ref is None
    if loo:
        ref, ry = query, qy
    _, order = brute(query, ref, exclude_self=loo)
    match = ry[order] == qy[:, None]
    r = match.sum(1)
    valid = r > 0
    out = {f"recall@{k}": match[valid, :k].any(1).mean() for k in ks}
    rp, ap = [], []
    for m, rr in zip(match[valid], r[valid]):
        top = m[:rr]
        rp.append(top.sum() / rr)
        ap.append(sum(np.cumsum(top)[j] / (j + 1) for j in range(rr) if top[j]) / rr)
    out["precision@1"] = match[valid, 0].mean()
    out["r_precision"] = np.mean(rp)
    out["map@r"] = np.mean(ap)
    out["queries_without_positive"] = float((~valid).sum())
    return out


# ---------------------------------------------------------------- search


def test_import_does_not_pull_torch():
    code = "import sys, dmlbench.evaluation.neighbors, dmlbench.evaluation.exact_search, dmlbench.evaluation.probe; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("block", [7, 4096])
def test_search_matches_brute_force(block):
    x, _ = clusters(n=200)
    q, ref = x[:50], x[50:]
    d, i = search(q, ref, 10, block=block)
    bd, bi = brute(q, ref)
    assert d.dtype == np.float64 and i.dtype == np.int64 and d.shape == i.shape == (50, 10)
    np.testing.assert_array_equal(i, bi[:, :10])
    np.testing.assert_allclose(d, bd[:, :10], rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(d, axis=1) >= 0)


@pytest.mark.parametrize("block", [5, 4096])
def test_search_exclude_self(block):
    x, _ = clusters(n=120)
    d, i = search(x, x, 6, exclude_self=True, block=block)
    bd, bi = brute(x, x, exclude_self=True)
    assert not np.any(i == np.arange(len(x))[:, None])
    np.testing.assert_array_equal(i, bi[:, :6])
    np.testing.assert_allclose(d, bd[:, :6], rtol=1e-4, atol=1e-4)


def test_search_exclude_self_when_own_row_is_not_first():
    # Four identical copies of every point: a query's own row ties with three others at distance 0
    # and may sit anywhere among them; it must be removed and exactly k others kept.
    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, 5)).astype(np.float32)
    x = np.concatenate([base] * 4)
    d, i = search(x, x, 3, exclude_self=True, block=16)
    n = len(base)
    for row in range(len(x)):
        copies = {row % n + c * n for c in range(4)} - {row}
        assert set(i[row]) == copies, row
        assert np.all(np.diff(i[row]) > 0)            # ties ordered by id
    np.testing.assert_allclose(d, 0, atol=1e-5)
    # Five copies, k=2: for the later copies the own row falls outside the k+1 searched; the result
    # is still the two lowest-id other copies.
    x5 = np.concatenate([base] * 5)
    for blk in (16, 4096):
        _, i5 = search(x5, x5, 2, exclude_self=True, block=blk)
        for row in range(len(x5)):
            others = [row % n + c * n for c in range(5) if row % n + c * n != row]
            assert list(i5[row]) == others[:2], row


@pytest.mark.parametrize("n, dim", [(40, 4), (2100, 64)])
def test_search_ties_are_ordered_and_cut_by_id(n, dim):
    # 2,100 x 64-d: faiss's BLAS kernel (which it picks itself from n_query x dim = 128,000) rounds
    # each pair's distance differently, so copies tie only after the refine step recomputes their
    # distances pair by pair.
    rng = np.random.default_rng(2)
    base = rng.normal(size=(n, dim)).astype(np.float32)
    ref = np.concatenate([base, base, base])          # ids j, j+n, j+2n are identical
    d, i = search(base, ref, 5, block=n)
    rows = np.arange(n)
    np.testing.assert_array_equal(i[:, :3], np.stack([rows, rows + n, rows + 2 * n], 1))
    # The 4th and 5th neighbours are two of the three copies of the next point: the lower ids.
    nxt = i[:, 3] % n
    np.testing.assert_array_equal(i[:, 3:], np.stack([nxt, nxt + n], 1))


def test_small_dim_blocks_take_faiss_blas_kernel_and_leave_its_setting_alone():
    # faiss 1.15 scans pair by pair below n_query x dim = 128,000 (any block under 6,400 queries at
    # 20-d), 3-4x slower; the search lowers the threshold to 20 queries for its own calls only.
    faiss = pytest.importorskip("faiss")
    before = faiss.cvar.distance_compute_blas_threshold
    seen = []
    real = faiss.IndexFlatL2.search

    def spy(self, *args, **kwargs):
        seen.append(faiss.cvar.distance_compute_blas_threshold)
        return real(self, *args, **kwargs)

    x, _ = clusters(n=260, d=20)
    q, ref = x[:60], x[60:]
    try:
        faiss.IndexFlatL2.search = spy
        d, i = search(q, ref, 5, block=25)
    finally:
        faiss.IndexFlatL2.search = real
    assert seen == [exact_search._FAISS_BLAS_MIN_QUERIES] * 3
    assert faiss.cvar.distance_compute_blas_threshold == before
    bd, bi = brute(q, ref)
    np.testing.assert_array_equal(i, bi[:, :5])
    np.testing.assert_allclose(d, bd[:, :5], rtol=1e-4, atol=1e-4)


def _offset_clusters(n=1500, d=20, seed=3):
    """Clusters 1e-3 apart around a point 10 units from the origin: the matrix product's distances
    (|q|^2 + |r|^2 - 2 q.r) lose nearly all their digits to cancellation."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.normal(size=d) * 10 + 1e-3 * rng.normal(size=(10, d))[y] + 3e-4 * rng.normal(size=(n, d))
    return x.astype(np.float32), y


def torch_search(q, ref, k, exclude_self=False, block=4096):
    """The GPU path (torch's matrix product and gathered refine) run on the CPU."""
    pytest.importorskip("torch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exact_search, "_make_path", lambda r, r_c, device: exact_search._TorchPath(r, r_c, "cpu"))
        return search(q, ref, k, exclude_self=exclude_self, block=block)


def _both_paths(q, ref, k, exclude_self, block):
    out = {"faiss": search(q, ref, k, exclude_self=exclude_self, block=block)}
    if pytest.importorskip("torch"):
        out["torch"] = torch_search(q, ref, k, exclude_self, block)
    return out


@pytest.mark.parametrize("block", [37, 4096])
def test_search_is_exact_for_embeddings_far_from_the_origin(block):
    # Centring on the references' mean and, where the rounding bound still cannot certify a row, more
    # candidates: the lists are brute force's, whatever the block, on both paths.
    x, y = _offset_clusters()
    _, bi = brute(x, x, exclude_self=True)
    for name, (d, i) in _both_paths(x, x, 5, True, block).items():
        np.testing.assert_array_equal(i, bi[:, :5], err_msg=name)
    assert retrieval_metrics(x, y)[0]["map@r"] == pytest.approx(brute_metrics(x, y)["map@r"], abs=1e-3)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_uncertified_rows_grow_their_candidates_to_every_reference(monkeypatch, exclude_self):
    # A certificate that never closes (what ties at the cut do) grows the candidates until every
    # reference is one: the lists are unchanged, copies and ties by id included, on both paths.
    x, _ = clusters(n=200, d=12)
    x = np.concatenate([x, x[:30], x[:30]])
    certified = _both_paths(x, x, 7, exclude_self, 64)
    widths = []
    real = exact_search._refine
    monkeypatch.setattr(exact_search, "_refine", lambda p, q, r, ids, kk: widths.append(ids.shape[1]) or real(p, q, r, ids, kk))
    monkeypatch.setattr(exact_search.rounding, "reach", lambda kept_max, *a: np.full(len(kept_max), np.inf))
    _, bi = brute(x, x, exclude_self=exclude_self)
    for name, (d, i) in _both_paths(x, x, 7, exclude_self, 64).items():
        np.testing.assert_array_equal(i, certified[name][1], err_msg=name)
        np.testing.assert_array_equal(d, certified[name][0], err_msg=name)
        np.testing.assert_array_equal(i, bi[:, :7], err_msg=name)
        copies = np.arange(200, 230)
        want = [copies - 200, copies + 30] if exclude_self else [copies - 200, copies, copies + 30]
        np.testing.assert_array_equal(i[copies, :len(want)], np.stack(want, 1), err_msg=name)
    kk = 7 + exclude_self
    assert sorted(set(widths)) == [kk + 16, 4 * (kk + 16), len(x)]      # 23, 92, then all 260


@pytest.mark.parametrize("block", [20, 50])
def test_more_copies_than_the_refine_margin_keep_the_lower_ids(block):
    rng = np.random.default_rng(6)
    base = rng.normal(size=(50, 64)).astype(np.float32)
    ref = np.concatenate([base] * 40)                  # 40 copies each, more than the 16 extra candidates
    q = (base + 0.3 * rng.normal(size=base.shape)).astype(np.float32)
    _, bi = brute(q, ref)
    for name, (d, i) in _both_paths(q, ref, 5, False, block).items():
        np.testing.assert_array_equal(i, bi[:, :5], err_msg=name)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_embeddings_are_refused_in_one_line(bad):
    x, y = clusters(n=40)
    x[3, 1] = bad
    for call in (lambda: search(x, x, 3, exclude_self=True), lambda: retrieval_metrics(x, y),
                 lambda: knn_classify(x, y, x[:5], y[:5], 3)):
        with pytest.raises(NonFiniteEmbeddingError, match=r"1 row\(s\) with NaN or infinite values \(the first is row 3\)"):
            call()


def test_embeddings_whose_squares_would_overflow_float32_are_searched_exactly():
    # Rescaled by a power of two (exact) before the search: |x|^2 = 1e39 would overflow float32.
    x, _ = clusters(n=300)
    x = (x.astype(np.float64) * 1e19).astype(np.float32)
    d, i = search(x, x, 5, exclude_self=True)
    bd, bi = brute(x, x, exclude_self=True)
    np.testing.assert_array_equal(i, bi[:, :5])
    np.testing.assert_allclose(d, bd[:, :5], rtol=1e-5)


def test_values_no_float32_scale_holds_exactly_are_refused_in_one_line():
    x, _ = clusters(n=30)
    x[7, 0], x[3, 1] = 3e38, 1e-30    # scaling 3e38 into range turns 1e-30 subnormal: it would round
    with pytest.raises(NonFiniteEmbeddingError, match=r"^ref holds values from 1e-30 to 3e\+38: no float32 scale"):
        search(x, x, 3)


@pytest.mark.parametrize("scale", [1e-22, 1.0])
def test_copies_tie_at_subnormal_scales(scale):
    # Five distinct values, many copies of each: every distance is an exact tie with others. At
    # 1e-22 the squares are subnormal, where rounding errors are absolute, not relative.
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 5, (300, 1)) * scale).astype(np.float32)
    _, bi = brute(x, x, exclude_self=True)
    for name, (d, i) in _both_paths(x, x, 3, True, 64).items():
        np.testing.assert_array_equal(i, bi[:, :3], err_msg=name)


def test_one_far_reference_does_not_send_every_query_to_the_full_scan(monkeypatch):
    # The certificate bounds the estimate's error by the query's norm and the distance itself, not by
    # the largest reference norm: one outlier costs nothing, every row is certified at the first try.
    widths = []
    real = exact_search._FaissPath.propose
    monkeypatch.setattr(exact_search._FaissPath, "propose", lambda self, qc, kb: widths.append(kb) or real(self, qc, kb))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[-1] *= 1000
    d, i = search(x[:300], x, 10)
    assert widths == [10 + exact_search._REFINE_EXTRA]
    np.testing.assert_array_equal(i, brute(x[:300], x)[1][:, :10])


def test_matmul_unit_follows_torch_precision(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert exact_search._matmul_unit(torch) == (rounding.F32_UNIT if torch.get_float32_matmul_precision() == "highest"
                                                else rounding.TF32_UNIT)

    def per_backend():
        raise RuntimeError("PyTorch is checking the matmul precision without a specific backend name")

    monkeypatch.setattr(torch, "get_float32_matmul_precision", per_backend)
    assert exact_search._matmul_unit(torch) == rounding.BF16_UNIT        # the least precise, to stay sound
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    assert exact_search._matmul_unit(torch) == rounding.TF32_UNIT


def test_concurrent_searches_leave_faiss_setting_alone():
    from concurrent.futures import ThreadPoolExecutor

    faiss = pytest.importorskip("faiss")
    before = faiss.cvar.distance_compute_blas_threshold
    x, _ = clusters(n=3000, d=20)
    want = search(x[:500], x, 5)[1]
    with ThreadPoolExecutor(4) as pool:                 # a worker's exception is raised here by list()
        results = list(pool.map(lambda _: search(x[:500], x, 5, block=100)[1], range(20)))
    assert all((r == want).all() for r in results)
    assert faiss.cvar.distance_compute_blas_threshold == before


def test_search_clamps_k_and_handles_empty():
    x, _ = clusters(n=10)
    d, i = search(x, x, 50)
    assert d.shape == (10, 10)
    d, i = search(x, x, 50, exclude_self=True)
    assert i.shape == (10, 9)
    d, i = search(x[:0], x, 3)
    assert i.shape == (0, 3)
    with pytest.raises(ValueError):
        search(x[:5], x, 3, exclude_self=True)


@pytest.mark.parametrize("dim", [8, 64])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_torch_path_agrees_with_faiss(exclude_self, dim):
    pytest.importorskip("torch")
    x, _ = clusters(n=150, d=dim)
    x = np.concatenate([x, x[:20]])                    # duplicates: exercises the tie handling
    ref = x
    k = 7
    fd, fi = search(x, ref, k, exclude_self=exclude_self)
    td, ti = torch_search(x, ref, k, exclude_self, 16)
    np.testing.assert_array_equal(ti, fi)
    np.testing.assert_allclose(td, fd, rtol=1e-4, atol=1e-4)


def test_memory_is_bounded_by_blocks(monkeypatch):
    # A block never holds more query rows than the result budget allows at this k.
    seen = []
    real = exact_search._canonical

    def spy(d, i):
        seen.append(len(d))
        return real(d, i)

    monkeypatch.setattr(exact_search, "_canonical", spy)
    # 25 rows of k=11 and the candidates faiss refines beyond it
    monkeypatch.setattr(exact_search, "RESULT_BUDGET", 12 * (11 + exact_search._REFINE_EXTRA) * 25)
    x, _ = clusters(n=100)
    d, i = search(x, x, 11)
    assert max(seen) <= 25 and sum(seen) == 100        # every row refined once: certified at the first try
    np.testing.assert_array_equal(i, brute(x, x)[1][:, :11])


# ---------------------------------------------------------------- retrieval metrics


def _pml(query, qy, ref=None, ry=None):
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              device=torch.device("cpu"))
    if ref is None:
        return calc.get_accuracy(query, qy, query, qy, ref_includes_query=True)
    return calc.get_accuracy(query, qy, ref, ry, ref_includes_query=False)


def _compare(ours, pml, bf):
    assert ours["precision@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    for key, v in bf.items():
        assert ours[key] == pytest.approx(v, abs=1e-12), key


def test_retrieval_leave_one_out_matches_pml_and_brute_force():
    x, y = clusters(n=240, d=6, classes=8, spread=1.0)
    y = y.copy()
    y[:3] = [100, 101, 102]                            # singleton classes: no positive, excluded
    ours, per = retrieval_metrics(x, y)
    _compare(ours, _pml(x, y), brute_metrics(x, y))
    assert ours["queries_without_positive"] == 3
    assert 0.2 < ours["map@r"] < 0.95                 # not a degenerate case
    for key in ("recall@1", "map@r", "r_precision"):
        assert per[key].shape == (240,)
        assert np.isnan(per[key][:3]).all() and not np.isnan(per[key][3:]).any()
    assert np.nanmean(per["map@r"]) == pytest.approx(ours["map@r"])
    assert np.nanmean(per["recall@1"]) == pytest.approx(ours["recall@1"])


def test_retrieval_query_gallery_matches_pml_and_brute_force():
    x, y = clusters(n=300, d=6, classes=7, spread=1.0, seed=3)
    q, qy, g, gy = x[:100], y[:100], x[100:], y[100:]
    gy = np.where(gy == 6, 5, gy)                      # class 6 only among the queries: R = 0
    ours, per = retrieval_metrics(q, qy, g, gy)
    _compare(ours, _pml(q, qy, g, gy), brute_metrics(q, qy, g, gy))
    assert ours["queries_without_positive"] == np.sum(qy == 6) > 0
    assert np.isnan(per["map@r"][qy == 6]).all()


def test_retrieval_hand_computed():
    # 1-D points; leave-one-out. Query 0 (class a) ranks: 1(a) 2(b) 3(a)  -> R=2, AP@R = (1/1)/2.
    x = np.array([[0.0], [1.0], [2.1], [3.3], [10.0]], np.float32)
    y = np.array(["a", "a", "b", "a", "b"])
    s, per = retrieval_metrics(x, y, ks=(1, 2))
    # Query 1 ranks 0(a)@1 2(b)@1.1 3(a)@2.3 -> AP@R=0.5, RP=0.5 ; query 3 ranks 2(b) 1(a) 0(a) -> 0.25, 0.5
    # Query 2 (b) ranks 1 3 0 4 -> R=1, miss -> 0 ; query 4 (b) ranks 3 2 -> R=1, miss at 1 -> 0
    np.testing.assert_allclose(per["map@r"], [0.5, 0.5, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(per["r_precision"], [0.5, 0.5, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(per["recall@1"], [1, 1, 0, 0, 0])
    np.testing.assert_allclose(per["recall@2"], [1, 1, 0, 1, 1])
    assert s["map@r"] == pytest.approx(1.25 / 5)
    assert s["recall@2"] == pytest.approx(0.8)
    assert s["queries_without_positive"] == 0


def test_retrieval_perfect_embedding():
    x, y = clusters(n=120, spread=100.0)
    s, _ = retrieval_metrics(x, y)
    for key in ("recall@1", "recall@8", "precision@1", "r_precision", "map@r"):
        assert s[key] == 1.0, key


# ---------------------------------------------------------------- k-NN classification


def test_knn_matches_sklearn_without_ties():
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    x, y = load_digits(return_X_y=True)
    x = (x + np.random.default_rng(0).normal(scale=1e-3, size=x.shape)).astype(np.float32)
    tr, te = slice(0, 1200), slice(1200, None)
    k = 5
    acc, correct = knn_classify(x[tr], y[tr], x[te], y[te], k)
    ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(x[tr], y[tr])
    pred = ref.predict(x[te])
    # Rows whose vote has a unique winner: both must agree exactly.
    _, nb = ref.kneighbors(x[te])
    votes = np.stack([np.bincount(row, minlength=10) for row in y[tr][nb]])
    unique = (votes == votes.max(1, keepdims=True)).sum(1) == 1
    assert unique.mean() > 0.9
    np.testing.assert_array_equal(correct[unique], (pred == y[te])[unique])
    assert correct.dtype == bool and correct.shape == (len(y[te]),)
    assert acc == pytest.approx(correct.mean()) and acc > 0.9


def test_knn_tie_goes_to_nearer_class():
    train = np.array([[1.0], [-2.0], [3.0], [-4.0], [10.0], [11.0]], np.float32)
    ty = np.array([7, 3, 7, 3, 5, 5])
    test = np.array([[0.0], [-0.1]], np.float32)
    # k=4: two 7s (at 1, 3) and two 3s (at -2, -4) around 0 -> the nearest is a 7; around -0.1 still
    # (1.1 < 1.9). Swapping the labels swaps the winner: nearness decides, not the label's value.
    acc, correct = knn_classify(train, ty, test, np.array([7, 7]), 4)
    assert correct.tolist() == [True, True]
    swapped = np.array([3, 7, 3, 7, 5, 5])
    acc, correct = knn_classify(train, swapped, test, np.array([3, 3]), 4)
    assert correct.tolist() == [True, True] and acc == 1.0
    # A strict majority beats nearness: k=5 adds the 5 at 10 -> still 2-2-1, tie to nearer (7).
    _, correct = knn_classify(train, ty, test[:1], np.array([7]), 5)
    assert correct.tolist() == [True]
    ty2 = np.array([7, 3, 3, 3, 5, 5])
    _, correct = knn_classify(train, ty2, test[:1], np.array([3]), 4)
    assert correct.tolist() == [True]


def test_knn_unseen_test_label_is_wrong():
    x, y = clusters(n=100, spread=50.0)
    acc, correct = knn_classify(x, y, x[:4], np.array([99, y[1], y[2], y[3]]), 1)
    assert correct.tolist() == [False, True, True, True]


def test_vote_vectorised_matches_loop():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=(500, 9))
    pred = neighbors._vote(labels)
    for row, p in zip(labels, pred):
        counts = np.bincount(row, minlength=4)
        best = np.flatnonzero(counts == counts.max())
        first = {c: int(np.flatnonzero(row == c)[0]) for c in best}
        assert p == min(best, key=first.get)


def test_gpu_search_matches_faiss_where_cuda_exists():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the GPU path is checked against faiss only where one exists")
    from dmlbench.evaluation.neighbors import retrieval_metrics, search

    rng = np.random.default_rng(0)
    y = rng.integers(0, 20, 3000)
    emb = (rng.normal(size=(20, 32))[y] + rng.normal(size=(3000, 32))).astype(np.float32)
    d_cpu, i_cpu = search(emb, emb, 10, exclude_self=True)
    d_gpu, i_gpu = search(emb, emb, 10, exclude_self=True, device="cuda")
    np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(i_gpu, i_cpu)     # both exact: float64 orders what float32 cannot
    m_cpu, _ = retrieval_metrics(emb, y)
    m_gpu, _ = retrieval_metrics(emb, y, device="cuda")
    for k in m_cpu:
        assert m_gpu[k] == pytest.approx(m_cpu[k], abs=1e-6)
