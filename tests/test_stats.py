"""dmlbench.report.stats and dmlbench.report.plots.cd.

Expected values come from an independent computation (scipy, the standard library, a brute-force
reference written here) or from a published worked example, cited where used:

- Holm's example: Wikipedia, "Holm–Bonferroni method", section "Example" (p = 0.01, 0.04, 0.03,
  0.005 at alpha = 0.05: H1 and H4 rejected, H2 and H3 not).
- Nemenyi critical values and the CD example: Demšar (2006), "Statistical comparisons of
  classifiers over multiple data sets", JMLR 7:1-30, Table 5(a) and Section 3.2.2 / 3.2.4
  (four algorithms, 14 data sets, average ranks 3.143, 2.000, 2.893, 1.964: chi2_F = 9.28,
  CD = 2.569 * sqrt(4*5/(6*14)) = 1.25).
"""

from __future__ import annotations

import itertools
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from dmlbench.report.plots.cd import cd_cliques, cd_diagram
from dmlbench.report.stats import best_set, friedman_nemenyi, holm, nemenyi_q, paired_bootstrap, paired_t, t_interval

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- t_interval

def test_t_interval_matches_scipy_and_stdlib():
    x = [0.71, 0.74, 0.69, 0.77, 0.73, 0.70]
    mean, sd, half = t_interval(x, level=0.95)
    assert mean == pytest.approx(statistics.fmean(x), abs=1e-15)
    assert sd == pytest.approx(statistics.stdev(x), rel=1e-12)  # stdlib: sample sd, n - 1
    lo, hi = st.t.interval(0.95, df=len(x) - 1, loc=statistics.fmean(x), scale=st.sem(x))
    assert half == pytest.approx((hi - lo) / 2, rel=1e-12)
    _, _, half90 = t_interval(x, level=0.90)
    lo, hi = st.t.interval(0.90, df=len(x) - 1, loc=statistics.fmean(x), scale=st.sem(x))
    assert half90 == pytest.approx((hi - lo) / 2, rel=1e-12)


def test_t_interval_small_and_missing():
    mean, sd, half = t_interval([0.5])
    assert mean == 0.5 and math.isnan(sd) and math.isnan(half)
    assert all(math.isnan(v) for v in t_interval([]))
    assert t_interval([1.0, np.nan, 3.0]) == pytest.approx(t_interval([1.0, 3.0]))
    with pytest.raises(ValueError):
        t_interval([1.0, 2.0], level=1.5)


# --------------------------------------------------------------------------------------------- paired_t

def test_paired_t_matches_scipy():
    rng = np.random.default_rng(3)
    a = rng.normal(0.8, 0.02, 7)
    b = a - 0.01 + rng.normal(0, 0.01, 7)
    assert paired_t(a, b) == pytest.approx(st.ttest_rel(a, b).pvalue, rel=1e-12)
    assert paired_t(b, a) == pytest.approx(paired_t(a, b), rel=1e-12)  # two-sided


def test_paired_t_drops_nan_pairs():
    a = np.array([0.80, np.nan, 0.82, 0.79, 0.85])
    b = np.array([0.78, 0.70, np.nan, 0.76, 0.80])
    keep = [0, 3, 4]
    assert paired_t(a, b) == pytest.approx(st.ttest_rel(a[keep], b[keep]).pvalue, rel=1e-12)


def test_paired_t_degenerate_cases():
    assert math.isnan(paired_t([0.8], [0.7]))
    assert math.isnan(paired_t([0.8, np.nan], [0.7, 0.6]))  # one pair left
    assert paired_t([0.8, 0.7, 0.9], [0.8, 0.7, 0.9]) == 1.0  # all differences exactly zero
    assert paired_t([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == 0.0  # constant non-zero shift
    with pytest.raises(ValueError):
        paired_t([1.0, 2.0], [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------------------------- paired_bootstrap

def _per_query(n=400, shift=0.05, seed=0):
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.70).astype(float)  # per-query recall@1 of method a
    b = (rng.random(n) < 0.70 - shift).astype(float)
    return a, b


def test_bootstrap_ci_agrees_with_scipy_bootstrap():
    a, b = _per_query()
    res = paired_bootstrap(a, b, n_boot=10000, seed=1)
    ref = st.bootstrap(
        (a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
        n_resamples=10000, method="percentile", confidence_level=0.95, rng=np.random.default_rng(2),
    ).confidence_interval
    half = (ref.high - ref.low) / 2
    assert res["mean_diff"] == pytest.approx(np.mean(a - b), abs=1e-15)
    assert res["mean_a"] == pytest.approx(a.mean()) and res["mean_b"] == pytest.approx(b.mean())
    # two independent Monte-Carlo estimates of the same interval: within 10% of its half-width
    assert res["ci_low"] == pytest.approx(ref.low, abs=0.1 * half)
    assert res["ci_high"] == pytest.approx(ref.high, abs=0.1 * half)
    # and the normal approximation mean ± 1.96 sd/sqrt(n) (sd with ddof=0, the bootstrap's)
    se = np.std(a - b) / np.sqrt(a.size)
    assert res["ci_low"] == pytest.approx(np.mean(a - b) - 1.96 * se, abs=0.1 * half)
    assert res["ci_high"] == pytest.approx(np.mean(a - b) + 1.96 * se, abs=0.1 * half)
    assert res["n"] == a.size and res["n_boot"] == 10000


def test_bootstrap_is_reproducible_and_chunk_independent():
    a, b = _per_query(n=57)
    r1 = paired_bootstrap(a, b, n_boot=999, seed=5)
    assert paired_bootstrap(a, b, n_boot=999, seed=5) == r1
    assert paired_bootstrap(a, b, n_boot=999, seed=5, _chunk=7) == r1
    assert paired_bootstrap(a, b, n_boot=999, seed=6) != r1


def test_bootstrap_drops_nan_pairs():
    a, b = _per_query(n=100)
    a2, b2 = a.copy(), b.copy()
    a2[[3, 10]] = np.nan
    b2[[10, 50]] = np.nan
    keep = np.ones(100, bool)
    keep[[3, 10, 50]] = False
    assert paired_bootstrap(a2, b2, n_boot=500) == paired_bootstrap(a[keep], b[keep], n_boot=500)
    assert paired_bootstrap(a2, b2, n_boot=500)["n"] == 97


def test_bootstrap_p_values():
    # every difference positive: no resampled mean is <= 0, so p = 2 (0 + 1) / (n_boot + 1)
    a = np.array([1.0, 1.0, 0.5, 1.0, 0.7])
    b = np.array([0.0, 0.5, 0.0, 0.2, 0.1])
    res = paired_bootstrap(a, b, n_boot=999)
    assert res["p_value"] == pytest.approx(2 / 1000)
    assert res["ci_low"] > 0
    # differences symmetric about 0: about half the resampled means fall on each side -> p near 1
    d = np.tile([1.0, -1.0], 200)
    res = paired_bootstrap(d, np.zeros_like(d), n_boot=4000)
    assert res["p_value"] > 0.8 and res["ci_low"] < 0 < res["ci_high"]
    # a clear shift on 400 queries is detected and the interval excludes 0; p below 1 - level
    a, b = _per_query(n=400, shift=0.25)
    res = paired_bootstrap(a, b, n_boot=2000)
    assert res["p_value"] < 0.01 and res["ci_low"] > 0


def test_bootstrap_degenerate_cases():
    z = paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    assert (z["ci_low"], z["ci_high"], z["p_value"], z["mean_diff"]) == (0.0, 0.0, 1.0, 0.0)
    one = paired_bootstrap([1.0, np.nan], [0.0, 1.0])
    assert one["n"] == 1 and one["mean_diff"] == 1.0
    assert math.isnan(one["ci_low"]) and math.isnan(one["p_value"])
    assert math.isnan(paired_bootstrap([], [])["mean_diff"])


# --------------------------------------------------------------------------------------------- holm

def test_holm_wikipedia_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04,
    # running maximum 0.02, 0.03, 0.06, 0.06; back in input order:
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert list(holm(p) <= 0.05) == [True, False, False, True]  # H1 and H4 rejected (Wikipedia)


def _holm_step_down(p, alpha):
    """Holm's procedure as stated in Holm (1979): reject H_(1..i-1) where i is the first sorted
    p-value with p_(i) > alpha / (m - i + 1)."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    rejected = np.zeros(m, bool)
    for rank, idx in enumerate(order):
        if p[idx] > alpha / (m - rank):
            break
        rejected[idx] = True
    return rejected


def test_holm_equals_step_down_procedure():
    rng = np.random.default_rng(11)
    for _ in range(50):
        m = int(rng.integers(1, 9))
        p = rng.random(m) ** 3  # many small p-values
        adj = holm(p)
        assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
        for alpha in (0.01, 0.05, 0.1, 0.3):
            np.testing.assert_array_equal(adj <= alpha, _holm_step_down(p, alpha))


def test_holm_nan_and_single():
    out = holm([0.02, np.nan, 0.01])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])  # m = 2: 0.01*2 = 0.02, max(0.02, 0.02*1)
    assert holm([0.03])[0] == 0.03
    assert holm([]).shape == (0,)


# --------------------------------------------------------------------------------------------- best_set

# five seeds; B and C are each significantly behind A before correction (raw p 0.040 and 0.030)
A5 = [0.801, 0.794, 0.794, 0.79, 0.798]
B5 = [0.798, 0.785, 0.784, 0.778, 0.798]
C5 = [0.794, 0.768, 0.781, 0.787, 0.778]


def test_best_set_uses_holm_correction():
    pb, pc = st.ttest_rel(B5, A5).pvalue, st.ttest_rel(C5, A5).pvalue
    assert pb < 0.05 and pc < 0.05  # each alone would be "significantly worse"
    assert 2 * min(pb, pc) >= 0.05  # Holm over two comparisons keeps both
    assert best_set({"A": A5, "B": B5, "C": C5}) == {"A", "B", "C"}
    assert best_set({"A": A5, "B": B5}) == {"A"}  # one comparison: no correction, B is worse


def test_best_set_separates_clear_loser():
    a = np.array([0.80, 0.82, 0.81, 0.79, 0.83])
    b = a + np.array([0.01, -0.02, 0.015, -0.01, 0.0])
    c = a - 0.1 + np.array([0.003, -0.002, 0.001, 0.0, -0.001])
    assert st.ttest_rel(a, b).pvalue > 0.5 and st.ttest_rel(a, c).pvalue < 1e-6
    assert best_set({"a": a, "b": b, "c": c}) == {"a", "b"}
    # lower is better: c is now the best and both others are far behind it
    assert best_set({"a": a, "b": b, "c": c}, higher_is_better=False) == {"c"}
    # a stricter alpha cannot shrink the set
    assert best_set({"a": a, "b": b, "c": c}, alpha=1e-9) == {"a", "b", "c"}


def test_best_set_single_seed_only_best():
    assert best_set({"a": [0.8], "b": [0.79], "c": [0.5]}) == {"a"}
    assert best_set({"a": [0.8], "b": [0.8], "c": [0.5]}) == {"a", "b"}  # tie for best
    assert best_set({"a": [0.8], "b": [0.79]}, higher_is_better=False) == {"b"}
    assert best_set({}) == set()
    assert best_set({"a": [np.nan], "b": [0.1]}) == {"b"}


def test_best_set_pairs_only_shared_seeds():
    # c has seeds 3 and 4 only; with a it shares one seed (4) -> untestable, and not the best mean
    a = [0.80, 0.82, 0.81, np.nan, 0.83]
    b = [0.79, 0.83, 0.80, 0.70, 0.82]
    c = [np.nan, np.nan, np.nan, 0.79, 0.60]
    assert np.nanmean(a) > np.nanmean(b) > np.nanmean(c)
    # b vs a over seeds 0, 1, 2, 4 (seed 3 missing for a): differences -0.01, 0.01, -0.01, -0.01
    assert st.ttest_rel([0.79, 0.83, 0.80, 0.82], [0.80, 0.82, 0.81, 0.83]).pvalue > 0.05
    assert best_set({"a": a, "b": b, "c": c}) == {"a", "b"}


def test_best_set_keeps_method_ahead_on_shared_seeds():
    # b has the best mean only thanks to a seed that a lacks; on the shared seeds a is ahead of b,
    # significantly so, which does not make a "significantly worse"
    a = [0.80, 0.82, 0.81, np.nan, 0.83]
    b = [0.79, 0.811, 0.799, 0.99, 0.821]
    assert np.nanmean(b) > np.nanmean(a)
    assert st.ttest_rel([0.80, 0.82, 0.81, 0.83], [0.79, 0.811, 0.799, 0.821]).pvalue < 0.001
    assert best_set({"a": a, "b": b}) == {"a", "b"}


def test_best_set_aligns_series_by_seed():
    # seeds vary a lot, c trails a by about 0.01 on every seed: significant only when paired by seed
    a = pd.Series([0.80, 0.90, 0.70, 0.85, 0.75], index=[0, 1, 2, 3, 4])
    c = a - 0.01 + np.array([0.001, -0.001, 0.0005, 0.0, -0.0005])
    shuffled = c.iloc[[3, 0, 4, 1, 2]]
    assert st.ttest_rel(a, c).pvalue < 1e-4
    assert st.ttest_rel(a.to_numpy(), shuffled.to_numpy()).pvalue > 0.5
    assert best_set({"a": a, "c": shuffled}) == best_set({"a": a.to_numpy(), "c": c.to_numpy()}) == {"a"}
    assert best_set({"a": a.to_numpy(), "c": shuffled.to_numpy()}) == {"a", "c"}  # arrays: position = seed
    assert best_set({"a": {0: 0.8, 1: 0.81}, "b": {1: 0.79, 2: 0.9}}) == {"b"}  # mapping seed -> value


# --------------------------------------------------------------------------------------------- friedman / nemenyi

@pytest.mark.parametrize(
    "k,q05,q10",
    # Demšar (2006) Table 5(a)
    [(2, 1.960, 1.645), (3, 2.343, 2.052), (4, 2.569, 2.291), (5, 2.728, 2.459), (10, 3.164, 2.920)],
)
def test_nemenyi_q_matches_demsar_table(k, q05, q10):
    # the table has three decimals and is truncated in places (k=3: 2.3437 is printed 2.343)
    assert nemenyi_q(k, 0.05) == pytest.approx(q05, abs=1e-3)
    assert nemenyi_q(k, 0.10) == pytest.approx(q10, abs=1e-3)


def _friedman_from_ranks(avg_ranks, n):
    """Demšar (2006) eq. for chi2_F from average ranks (no ties)."""
    r = np.asarray(avg_ranks, float)
    k = r.size
    return 12 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4)


def test_friedman_reference_formula_reproduces_demsar_example():
    # validates the reference used below against the published numbers
    assert _friedman_from_ranks([3.143, 2.000, 2.893, 1.964], 14) == pytest.approx(9.28, abs=0.01)


def test_friedman_nemenyi_demsar_cd_and_statistic():
    rng = np.random.default_rng(4)
    scores = pd.DataFrame(rng.random((14, 4)) + [0.0, 0.3, 0.1, 0.35], columns=["c45", "m", "cf", "mcf"])
    res = friedman_nemenyi(scores)
    assert res["cd"] == pytest.approx(1.25, abs=0.005)  # Demšar 2006, k=4, N=14
    assert res["k"] == 4 and res["n_blocks"] == 14 and res["dropped_blocks"] == []
    ranks = [res["avg_ranks"][m] for m in scores.columns]
    assert sum(ranks) == pytest.approx(14 * 10 / 14)  # ranks 1..4 sum to 10 in each row
    assert res["statistic"] == pytest.approx(_friedman_from_ranks(ranks, 14), rel=1e-10)
    ref = st.friedmanchisquare(*(-scores[c] for c in scores.columns))
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert res["p_value"] == pytest.approx(st.chi2.sf(res["statistic"], 3), rel=1e-10)
    assert res["methods"] == sorted(scores.columns, key=lambda m: res["avg_ranks"][m])


def test_friedman_ranks_direction_and_ties():
    scores = pd.DataFrame(
        {"x": [0.9, 0.5, 0.7], "y": [0.8, 0.5, 0.6], "z": [0.1, 0.2, 0.7]}, index=["d1", "d2", "d3"]
    )
    res = friedman_nemenyi(scores)
    # by hand, rank 1 = highest: d1: x1 y2 z3; d2: x1.5 y1.5 z3; d3: x1.5 y3 z1.5
    expected = pd.DataFrame({"x": [1, 1.5, 1.5], "y": [2, 1.5, 3], "z": [3, 3, 1.5]}, index=scores.index, dtype=float)
    pd.testing.assert_frame_equal(res["ranks"], expected)
    assert res["avg_ranks"] == pytest.approx({"x": 4 / 3, "y": 6.5 / 3, "z": 7.5 / 3})
    assert res["methods"] == ["x", "y", "z"]
    low = friedman_nemenyi(scores, higher_is_better=False)
    pd.testing.assert_frame_equal(low["ranks"], 4.0 - expected)  # reversed order, same ties
    assert low["methods"] == ["z", "y", "x"]


def test_friedman_small_cases_and_missing_rows():
    two = friedman_nemenyi(pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 4.0]}))
    assert math.isnan(two["statistic"]) and math.isnan(two["p_value"])  # Friedman needs k >= 3
    assert two["cd"] == pytest.approx(1.960 * math.sqrt(2 * 3 / (6 * 3)), abs=1e-3)
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 2.0], "b": [0.0, 1.0, 4.0, 1.0], "c": [2.0, 0.0, 0.0, 0.5]})
    res = friedman_nemenyi(df)
    assert res["n_blocks"] == 3 and res["dropped_blocks"] == [1]
    ref = friedman_nemenyi(df.drop(index=1))
    assert res["statistic"] == pytest.approx(ref["statistic"]) and res["cd"] == pytest.approx(ref["cd"])
    ties = friedman_nemenyi(pd.DataFrame({"a": [1.0, 1.0], "b": [1.0, 1.0], "c": [1.0, 1.0]}))
    assert math.isnan(ties["statistic"]) and ties["avg_ranks"] == {"a": 2.0, "b": 2.0, "c": 2.0}


# --------------------------------------------------------------------------------------------- cd diagram

def _cliques_brute_force(ranks, cd):
    """All maximal sets of >= 2 methods whose rank range is < cd."""
    names = list(ranks)
    ok = [
        set(s)
        for size in range(2, len(names) + 1)
        for s in itertools.combinations(names, size)
        if max(ranks[m] for m in s) - min(ranks[m] for m in s) < cd
    ]
    return {frozenset(s) for s in ok if not any(s < t for t in ok)}


def test_cd_cliques_hand_examples():
    assert cd_cliques({"A": 1.0, "B": 1.5, "C": 2.6, "D": 3.0}, 1.2) == [["A", "B"], ["B", "C"], ["C", "D"]]
    assert cd_cliques({"D": 4.0, "B": 1.2, "A": 1.0, "C": 1.4}, 1.0) == [["A", "B", "C"]]
    assert cd_cliques({"A": 1.0, "B": 2.0}, 1.0) == []  # difference == CD: significantly different
    assert cd_cliques({"A": 1.0, "B": 2.0}, 1.0000001) == [["A", "B"]]
    assert cd_cliques({"A": 1.0, "B": 2.0, "C": 3.0}, 5.0) == [["A", "B", "C"]]
    assert cd_cliques({"A": 1.0, "B": 2.0}, float("nan")) == []


def test_cd_cliques_match_brute_force():
    rng = np.random.default_rng(8)
    for _ in range(100):
        k = int(rng.integers(2, 8))
        ranks = {f"m{i}": float(v) for i, v in enumerate(np.round(rng.uniform(1, k, k), 1))}
        cd = float(rng.uniform(0.2, 3.0))
        got = cd_cliques(ranks, cd)
        assert {frozenset(c) for c in got} == _cliques_brute_force(ranks, cd)
        assert all(c == sorted(c, key=lambda m: (ranks[m], m)) for c in got)


def test_cd_diagram_writes_png_atomically(tmp_path):
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(rng.random((6, 5)) + np.arange(5) * 0.2, columns=[f"method_{i}" for i in range(5)])
    res = friedman_nemenyi(scores)
    out = tmp_path / "cd.png"
    out.write_bytes(b"old")
    cd_diagram(res, out, title="recall@1")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cd.png"]  # no temp file left behind
    cd_diagram({"avg_ranks": {"a": 1.2, "b": 1.8}, "cd": 0.9}, tmp_path / "sub" / "two.png")
    assert (tmp_path / "sub" / "two.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_modules_do_not_import_torch_or_other_package_modules():
    code = (
        "import sys, dmlbench.report.stats, dmlbench.report.plots.cd; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "extra = sorted(m for m in sys.modules if m.startswith('dmlbench') and m not in "
        "{'dmlbench', 'dmlbench.core', 'dmlbench.report', 'dmlbench.report.plots', 'dmlbench.core.errors', 'dmlbench.core.io', 'dmlbench.report.stats', 'dmlbench.report.plots.cd'}); "
        "assert not extra, extra"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_a_lone_lucky_seed_does_not_take_the_bold_from_tested_rows():
    # a and b: 3 seeds, level within noise; c: one seed, above both. The best is a (best of the
    # rows with 2+ seeds): b is tested against it, and c, untestable but not behind, is bold too.
    a, b = [0.62, 0.63, 0.625], [0.61, 0.635, 0.62]
    assert best_set({"a": a, "b": b, "c": [0.64]}) == {"a", "b", "c"}
    assert best_set({"a": a, "b": b, "d": [0.60]}) == {"a", "b"}  # untestable and behind: not bold
    assert best_set({"a": [0.7], "b": [0.6]}) == {"a"}  # no row with 2 seeds: only the best


def test_power_figures_agree_with_statsmodels():
    """The smallest detectable difference and the seeds needed come from the paired t-test's power,
    as statsmodels' TTestPower computes it (one-sample t on the differences, two-sided)."""
    TTestPower = pytest.importorskip("statsmodels.stats.power").TTestPower
    from dmlbench.report.stats import detectable_difference, paired_power, seeds_needed

    diffs = np.array([0.004, -0.001, 0.006, 0.002, 0.0035])
    sd = diffs.std(ddof=1)
    for n, effect in ((5, 1.3), (3, 2.0), (10, 0.5)):
        assert paired_power(n, effect, 0.05) == pytest.approx(
            TTestPower().power(effect_size=effect, nobs=n, alpha=0.05, alternative="two-sided"), rel=1e-6)
    expected = TTestPower().solve_power(nobs=len(diffs), alpha=0.05, power=0.8, alternative="two-sided") * sd
    assert detectable_difference(diffs, 0.05) == pytest.approx(expected, rel=1e-5)
    need = seeds_needed(diffs, 0.005, 0.05)
    exact = TTestPower().solve_power(effect_size=0.005 / sd, alpha=0.05, power=0.8, alternative="two-sided")
    assert need == int(np.ceil(exact))  # the smallest whole number of seeds with power >= 0.8
    assert math.isnan(detectable_difference([0.01], 0.05)) and seeds_needed([0.01], 0.005) is None
