"""dmlbench.evaluation.probe: the linear-SVM probe (one-vs-rest squared hinge, liblinear or L-BFGS)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from dmlbench.evaluation import probe
from dmlbench.evaluation.probe import LAMBDAS, Scaler, choose_lambda, fit_svm, linear_probe, svm_objective


@pytest.fixture(scope="module")
def digits_split():
    x, y = load_digits(return_X_y=True)
    return train_test_split(x.astype(np.float32), y, test_size=0.3, stratify=y, random_state=0)


def clusters(n, d, classes, spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(classes, d))
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_digits_accuracy(digits_split):
    xtr, xte, ytr, yte = digits_split
    r = linear_probe(xtr, ytr, xte, yte, seed=0)
    assert r.accuracy > 0.9
    assert r.solver == "liblinear"
    assert r.lam in LAMBDAS and set(r.cv_accuracy) == set(LAMBDAS)
    assert all(0.8 < a <= 1 for a in r.cv_accuracy.values())
    assert r.cv_accuracy[r.lam] == max(r.cv_accuracy.values())
    assert r.correct.dtype == bool and r.correct.shape == yte.shape
    assert r.accuracy == pytest.approx(r.correct.mean())
    assert r.confusion.shape == (10, 10) and r.confusion.sum() == len(yte)
    assert np.trace(r.confusion) == r.correct.sum()


@pytest.mark.parametrize("lam", [1e-3, 1e-5])
def test_lbfgs_and_liblinear_reach_the_same_optimum(digits_split, lam):
    xtr, xte, ytr, _ = digits_split
    scaler = Scaler(xtr)
    xs, xts = scaler(xtr), scaler(xte)
    C = 1.0 / (lam * len(xs))
    lib = fit_svm(xs, ytr, C, "liblinear")
    lbf = fit_svm(xs, ytr, C, "lbfgs")
    f_lib, f_lbf = svm_objective(lib, xs, ytr, C), svm_objective(lbf, xs, ytr, C)
    assert abs(f_lbf - f_lib) <= 1e-3 * f_lib, (f_lib, f_lbf)
    # Not a trivial optimum: far below the objective at w = 0 (C * n * classes).
    assert f_lib < 0.5 * C * len(xs) * 10
    assert np.mean(lib.predict(xts) == lbf.predict(xts)) >= 0.99
    assert np.mean(lib.predict(xs) == lbf.predict(xs)) >= 0.99


def test_lbfgs_on_the_gpu_matches_the_cpu_where_cuda_exists(digits_split):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the GPU L-BFGS probe is checked against the CPU only where one exists")
    xtr, xte, ytr, yte = digits_split
    cpu = linear_probe(xtr, ytr, xte, yte, seed=0, solver="lbfgs")
    gpu = linear_probe(xtr, ytr, xte, yte, seed=0, solver="lbfgs", device="cuda")
    assert gpu.lam == cpu.lam and gpu.solver == "lbfgs"
    assert abs(gpu.accuracy - cpu.accuracy) <= 2 / len(yte)  # the same optimum, up to a float32 tie or two
    assert np.mean(gpu.correct == cpu.correct) >= 0.995


def test_auto_uses_lbfgs_above_256_features_and_matches_liblinear():
    x, y = clusters(600, 300, 5, spread=0.15, seed=1)
    xtr, xte, ytr, yte = x[:400], x[400:], y[:400], y[400:]
    # 400 x 300 values: few enough for liblinear, whatever the width.
    assert linear_probe(xtr, ytr, xte, yte, lambdas=(1e-3,)).solver == "liblinear"
    big = np.repeat(xtr, 9, axis=0) + np.random.default_rng(0).normal(0, 1e-3, (3600, 300)).astype(xtr.dtype)
    assert linear_probe(big, np.repeat(ytr, 9), xte, yte, lambdas=(1e-3,)).solver == "lbfgs"
    r = linear_probe(xtr, ytr, xte, yte, lambdas=(1e-3,), solver="lbfgs")
    assert r.solver == "lbfgs" and r.cv_accuracy == {}
    scaler = Scaler(xtr)
    xs = scaler(xtr)
    C = 1.0 / (1e-3 * len(xs))
    lib = fit_svm(xs, ytr, C, "liblinear")
    lbf = fit_svm(xs, ytr, C, "lbfgs")
    f_lib, f_lbf = svm_objective(lib, xs, ytr, C), svm_objective(lbf, xs, ytr, C)
    assert abs(f_lbf - f_lib) <= 1e-3 * f_lib, (f_lib, f_lbf)
    pred_lib = lib.predict(scaler(xte))
    assert np.mean(pred_lib == lbf.predict(scaler(xte))) >= 0.99
    assert np.array_equal(r.correct, pred_lib == yte) or np.mean(r.correct == (pred_lib == yte)) >= 0.99
    assert 0.5 < r.accuracy < 1.0                     # a problem where the classifier matters


def test_binary_problem_both_solvers():
    x, y = clusters(300, 10, 2, spread=0.6, seed=2)
    y = np.where(y == 1, "cat", "dog")
    scaler = Scaler(x)
    xs = scaler(x)
    C = 1.0 / (1e-3 * len(xs))
    lib, lbf = fit_svm(xs, y, C, "liblinear"), fit_svm(xs, y, C, "lbfgs")
    assert lib.coef.shape == lbf.coef.shape == (1, 10)
    f_lib, f_lbf = svm_objective(lib, xs, y, C), svm_objective(lbf, xs, y, C)
    assert abs(f_lbf - f_lib) <= 1e-3 * f_lib
    assert np.mean(lib.predict(xs) == lbf.predict(xs)) >= 0.99
    assert 0.7 < np.mean(lib.predict(xs) == y) < 1.0


def test_lambda_choice_uses_training_data_only(digits_split):
    xtr, xte, ytr, yte = digits_split
    a = linear_probe(xtr, ytr, xte, yte, seed=3)
    rng = np.random.default_rng(0)
    b = linear_probe(xtr, ytr, rng.normal(size=xte.shape).astype(np.float32), rng.permutation(yte), seed=3)
    assert a.lam == b.lam
    assert a.cv_accuracy == b.cv_accuracy
    assert b.accuracy < 0.3 < a.accuracy              # the test data did change: only the test score moved


def test_cv_subsample_is_stratified_seeded_and_bounded():
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    keep = probe._cv_subsample(y, 500, seed=0)
    assert len(keep) == 500 and len(np.unique(keep)) == 500
    np.testing.assert_array_equal(np.bincount(y[keep]), [50, 100, 150, 200])
    np.testing.assert_array_equal(keep, probe._cv_subsample(y, 500, seed=0))
    assert not np.array_equal(keep, probe._cv_subsample(y, 500, seed=1))
    np.testing.assert_array_equal(probe._cv_subsample(y, 5000, seed=0), np.arange(1000))


def test_cv_rows_limits_what_cross_validation_sees(monkeypatch):
    seen = []
    real = probe.fit_svm

    def spy(x, y, C, solver="auto", **kw):
        seen.append(len(x))
        return real(x, y, C, solver, **kw)

    monkeypatch.setattr(probe, "fit_svm", spy)
    x, y = clusters(900, 5, 3, spread=2.0)
    r = linear_probe(x[:600], y[:600], x[600:], y[600:], cv_rows=300, lambdas=(1e-3, 1e-2))
    assert seen[:-1] == [200] * 6                     # 2 lambdas x 3 folds of 2/3 of 300 rows
    assert seen[-1] == 600                            # the final fit on every training row
    assert r.lam in (1e-3, 1e-2)


def test_ties_go_to_the_larger_lambda():
    assert choose_lambda({1e-5: 0.9, 1e-4: 0.95, 1e-3: 0.95, 1e-2: 0.9}) == 1e-3
    assert choose_lambda({1e-5: 0.97, 1e-4: 0.95}) == 1e-5
    # Well-separated classes: every lambda scores 100% in CV, so the largest is chosen.
    x, y = clusters(600, 8, 4, spread=30.0)
    r = linear_probe(x[:400], y[:400], x[400:], y[400:])
    assert set(r.cv_accuracy.values()) == {1.0}
    assert r.lam == max(LAMBDAS) and r.accuracy == 1.0


def test_scaler_is_one_global_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * np.array([1000.0, 1, 1, 1, 1, 0.001]) + 7.0
    s = Scaler(x)
    z = s(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    assert np.sqrt(np.mean(np.sum(z**2, 1))) == pytest.approx(1.0)
    # Relative feature scales are kept (per-feature standardisation would equalise them).
    sd = z.std(0)
    assert sd[0] / sd[1] == pytest.approx(x[:, 0].std() / x[:, 1].std())
    assert Scaler(np.ones((4, 3))).scale == 1.0       # constant features: no division by zero


def test_unseen_test_class_counts_as_wrong_and_enters_confusion():
    x, y = clusters(300, 4, 3, spread=20.0)
    yte = y[200:].copy()
    yte[:5] = 9
    r = linear_probe(x[:200], y[:200], x[200:], yte, lambdas=(1e-2,))
    assert not r.correct[:5].any() and r.correct[5:].all()
    assert list(r.labels) == [0, 1, 2, 9] and r.confusion.shape == (4, 4)
    assert r.confusion[3].sum() == 5 and r.confusion[:, 3].sum() == 0


def test_bad_arguments():
    x, y = clusters(30, 4, 2, spread=3.0)
    with pytest.raises(ValueError):
        linear_probe(x, y, x[:, :3], y)
    with pytest.raises(ValueError):
        linear_probe(x, y, x, y, solver="sgd")
    with pytest.raises(ValueError):
        linear_probe(x, y[:-1], x, y)


def test_liblinear_per_class_fits_are_sklearns_one_vs_rest(digits_split):
    """The per-class binary fits (on threads) solve the problems LinearSVC's own multi-class loop does."""
    from sklearn.svm import LinearSVC

    xtr, _, ytr, _ = digits_split
    xs = Scaler(xtr)(xtr)
    C = 1.0 / (1e-3 * len(xs))
    ref = LinearSVC(dual=False, C=C, tol=1e-4, max_iter=1000, random_state=0).fit(xs, ytr)
    ref_model = probe.LinearModel(ref.coef_, ref.intercept_, ref.classes_)
    fits = [fit_svm(xs, ytr, C, "liblinear", jobs=jobs) for jobs in (1, 3)]
    for m in fits:
        # liblinear groups the rows by class, so its sums run in another order: the same optimum
        # to within the solver's tolerance, not bitwise.
        np.testing.assert_allclose(m.coef, ref.coef_, rtol=0, atol=1e-6)
        np.testing.assert_allclose(m.intercept, ref.intercept_, rtol=0, atol=1e-6)
        assert svm_objective(m, xs, ytr, C) == pytest.approx(svm_objective(ref_model, xs, ytr, C), rel=1e-9)
        np.testing.assert_array_equal(m.predict(xs), ref.predict(xs))
    np.testing.assert_array_equal(fits[0].coef, fits[1].coef)   # threads change nothing


def test_probe_result_does_not_depend_on_threads(digits_split):
    xtr, xte, ytr, yte = digits_split
    one, two = (linear_probe(xtr, ytr, xte, yte, seed=0, threads=t) for t in (1, 2))
    assert one.cv_accuracy == two.cv_accuracy and one.lam == two.lam
    np.testing.assert_array_equal(one.correct, two.correct)
    np.testing.assert_array_equal(one.confusion, two.confusion)


def test_threaded_fits_hold_bounded_copies(monkeypatch):
    monkeypatch.setattr(probe, "LIBLINEAR_POOL_BYTES", 16 * 1000 * 21 * 2)
    assert probe._pool_size(8, 10, rows=1000, dim=20) == 2      # two liblinear copies fit in the budget
    assert probe._pool_size(8, 1, rows=10, dim=20) == 1         # never more threads than fits
    assert probe._pool_size(None, 10, rows=10**7, dim=20) == 1  # at least one, whatever the size


def test_small_lbfgs_cv_fits_run_together_and_change_nothing(digits_split, monkeypatch):
    # The raw floor's CV fits (L-BFGS, small enough for one thread each) run `threads` at once; the
    # numbers are those of running them one after another.
    xtr, xte, ytr, yte = digits_split
    one = linear_probe(xtr, ytr, xte, yte, seed=0, threads=1, solver="lbfgs")
    pools = []
    real = probe.ThreadPoolExecutor
    monkeypatch.setattr(probe, "ThreadPoolExecutor", lambda n: pools.append(n) or real(n))
    two = linear_probe(xtr, ytr, xte, yte, seed=0, threads=2, solver="lbfgs")
    assert pools == [2]
    assert one.cv_accuracy == two.cv_accuracy and one.lam == two.lam
    np.testing.assert_array_equal(one.correct, two.correct)


def test_the_grid_widens_towards_an_edge_that_wins():
    calls = []

    def make(peak):
        def score(lams):                              # accuracy falls off a decade at a time from ``peak``
            calls.append(list(lams))
            return {lam: 0.9 - 0.01 * abs(np.log10(lam) - np.log10(peak)) for lam in lams}
        return score

    for peak, want, edge in ((1e-7, 1e-7, False), (1e-12, 1e-8, True), (3.0, 1.0, False), (1e3, 10.0, True),
                             (1e-3, 1e-3, False)):
        calls.clear()
        score = make(peak)
        cv = score(LAMBDAS)
        lam, on_edge = probe.widen(cv, score)
        assert lam == pytest.approx(want) and on_edge == edge, peak
        assert lam == choose_lambda(cv)
        assert len(calls) - 1 <= probe.MAX_WIDEN           # at most three decades on that side
    # A plateau that reaches the edge is no edge: its interior lambdas do as well.
    flat = {lam: 1.0 for lam in LAMBDAS}
    assert probe.widen(dict(flat), lambda lams: pytest.fail("widened a plateau")) == (max(LAMBDAS), False)


def test_a_probe_whose_best_lambda_lies_beyond_the_grid_widens_it_and_says_where_it_stops():
    # Many noisy features, few rows: more regularisation than the grid's largest wins on this data,
    # so the grid grows past 1e-2 until the choice is interior (or three decades on, flagged).
    x, y = clusters(900, 200, 3, spread=0.25, seed=4)
    r = linear_probe(x[:600], y[:600], x[600:], y[600:])
    assert set(r.cv_accuracy) > set(LAMBDAS)
    assert r.lam > max(LAMBDAS) and r.lam == choose_lambda(r.cv_accuracy)
    assert r.lam_edge == (probe.edge_side(r.cv_accuracy, r.lam) != 0)
    assert not r.lam_edge and max(r.cv_accuracy) > r.lam                 # interior: a larger lambda did worse
