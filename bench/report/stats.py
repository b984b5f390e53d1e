"""Statistics for comparing methods: confidence intervals, paired tests, multiple-comparison
correction, "best or not significantly worse" sets, and Friedman/Nemenyi rank tests.

Two levels of pairing occur in a benchmark:

- *over seeds*: one number per (method, seed), e.g. the test recall@1 of each training run.
  :func:`t_interval` summarises one method, :func:`paired_t` compares two methods on the seeds
  they share, and :func:`best_set` picks the methods that are not significantly worse than the
  best one (Holm-corrected), i.e. the ones a results table may print in bold.
- *over queries*: one number per (method, query) of the same run, e.g. per-query recall@1.
  :func:`paired_bootstrap` resamples queries to give a confidence interval and a p-value of the
  mean difference.
- *over datasets*: :func:`friedman_nemenyi` ranks methods within each dataset (block) and tests
  whether the average ranks differ (Demšar 2006, JMLR 7:1-30); :mod:`dmlbench.report.plots.cd` draws
  the critical-difference diagram.

Everything here is numpy/scipy (pandas for tables); nothing imports torch. NaN means "missing":
it is dropped (pairwise where values are paired), never propagated into a mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import special as _sp  # light: scipy.stats (1+ s to import) is loaded only where needed

__all__ = [
    "t_interval",
    "paired_t",
    "paired_bootstrap",
    "holm",
    "best_set",
    "nemenyi_q",
    "friedman_nemenyi",
]

_BOOT_CHUNK_ELEMENTS = 2_000_000  # resampled values held in memory at once by paired_bootstrap


# --------------------------------------------------------------------------------------------- helpers

def _as_1d(values: Any, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_level(level: float) -> None:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` restricted to the pairs where neither value is NaN."""
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


# --------------------------------------------------------------------------------------------- over seeds

def t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, sample standard deviation (ddof=1), half-width of the Student-t confidence interval).

    The interval is ``mean ± t_{(1+level)/2, n-1} · std / sqrt(n)``. NaN values are dropped. With
    one value the standard deviation and half-width are NaN; with none all three are NaN.
    """
    _check_level(level)
    x = _as_1d(values)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(np.mean(x))
    if n == 1:
        return (mean, math.nan, math.nan)
    std = float(np.std(x, ddof=1))
    half = float(_sp.stdtrit(n - 1, 0.5 + level / 2.0) * std / math.sqrt(n))  # Student-t quantile
    return (mean, std, half)


def paired_t(a: Any, b: Any) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b`` (:func:`scipy.stats.ttest_rel`).

    ``a[i]`` and ``b[i]`` belong together (same seed); pairs with a NaN on either side are dropped.
    Returns NaN when fewer than two pairs remain. Degenerate differences (zero variance), where the
    t statistic is 0/0 or x/0, are decided directly: all differences exactly zero means the two
    are indistinguishable (1.0); a constant non-zero difference is a perfectly consistent shift (0.0).
    """
    x, y = _paired(a, b)
    d = x - y
    if d.size < 2:
        return math.nan
    if np.all(d == 0.0):
        return 1.0
    if np.all(d == d[0]):
        return 0.0
    # ttest_rel's statistic, with the t distribution's tail from scipy.special (no scipy.stats import).
    n = d.size
    t = float(np.mean(d) / (np.std(d, ddof=1) / math.sqrt(n)))
    return float(min(1.0, 2.0 * _sp.stdtr(n - 1, -abs(t))))


# --------------------------------------------------------------------------------------------- power

POWER = 0.8  # the power a "could have detected" figure is stated at


def paired_power(n: int, effect: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs against a true mean difference of
    ``effect`` standard deviations of the differences (Cohen's d_z): P(|T| > t_crit) for T
    noncentral-t with n - 1 degrees of freedom and noncentrality d_z * sqrt(n)."""
    from scipy import stats  # (1 s to import: only where power is asked for)

    if n < 2:
        return math.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isnan(p):  # scipy's noncentral t gives up far in the tail, where the power is 1 (or 0)
        return 1.0 if abs(nc) > crit else 0.0
    return min(1.0, p)


def detectable_difference(diffs: Any, alpha: float = 0.05, power: float = POWER) -> float:
    """The smallest mean difference the paired t-test over these seeds would detect with ``power``
    (two-sided, at ``alpha``), on the scale of the metric: d_z * sd of the paired per-seed
    differences. NaN with fewer than 2 pairs; 0 where the differences do not vary."""
    from scipy.optimize import brentq

    d = _as_1d(diffs, "diffs")
    d = d[~np.isnan(d)]
    if d.size < 2:
        return math.nan
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        return 0.0
    effect = brentq(lambda e: paired_power(d.size, e, alpha) - power, 1e-9, 1e3)
    return effect * sd


def seeds_needed(diffs: Any, delta: float, alpha: float = 0.05, power: float = POWER, most: int = 10_000) -> int | None:
    """The number of seeds (pairs) at which the paired t-test detects a true difference of ``delta``
    with ``power``, given the spread of the observed paired differences; None where the spread is
    unknown (fewer than 2 pairs) or more than ``most`` seeds would be needed."""
    d = _as_1d(diffs, "diffs")
    d = d[~np.isnan(d)]
    if d.size < 2 or delta <= 0:
        return None
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        return 2
    effect = delta / sd
    lo, hi = 2, 2
    while paired_power(hi, effect, alpha) < power:  # doubling, then bisection: power grows with n
        lo, hi = hi, hi * 2
        if hi > most:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        if paired_power(mid, effect, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return hi


# --------------------------------------------------------------------------------------------- over queries

def paired_bootstrap(
    a: Any,
    b: Any,
    n_boot: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    *,
    _chunk: int | None = None,
) -> dict[str, float]:
    """Paired bootstrap of the mean difference ``mean(a - b)`` over per-query values.

    ``a[i]`` and ``b[i]`` are two methods' values on the same query ``i`` (e.g. per-query recall@1);
    pairs with a NaN on either side are dropped. The ``n`` remaining differences are resampled with
    replacement ``n_boot`` times (vectorised, in chunks of about two million values).

    Returns a dict with

    - ``mean_diff``: the observed mean of ``a - b``; ``mean_a``, ``mean_b``: the two means over
      the kept pairs; ``n``: pairs kept; ``n_boot``, ``level``;
    - ``ci_low``, ``ci_high``: percentile interval of the resampled mean differences
      (quantiles ``(1-level)/2`` and ``(1+level)/2``);
    - ``p_value``: two-sided bootstrap p-value ``min(1, 2 (c + 1) / (n_boot + 1))`` where ``c`` is
      the smaller of #{resampled mean <= 0} and #{resampled mean >= 0}. It is consistent with the
      percentile interval (the interval at level ``1 - p`` just touches 0) and never exactly 0
      (the +1 counts the observed sample, Davison & Hinkley 1997 §4.4).

    With fewer than two pairs the interval and p-value are NaN; when every difference is exactly
    zero the interval is [0, 0] and the p-value 1. The same inputs and seed give the same result.
    """
    _check_level(level)
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    x, y = _paired(a, b)
    d = x - y
    n = int(d.size)
    out: dict[str, float] = {
        "mean_diff": float(d.mean()) if n else math.nan,
        "mean_a": float(x.mean()) if n else math.nan,
        "mean_b": float(y.mean()) if n else math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p_value": math.nan,
        "n": n,
        "n_boot": n_boot,
        "level": float(level),
    }
    if n < 2:
        return out
    if np.all(d == 0.0):
        out.update(ci_low=0.0, ci_high=0.0, p_value=1.0)
        return out

    rng = np.random.default_rng(seed)
    chunk = int(_chunk) if _chunk is not None else max(1, _BOOT_CHUNK_ELEMENTS // n)
    means = np.empty(n_boot, dtype=float)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)

    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    tail = min(int(np.count_nonzero(means <= 0.0)), int(np.count_nonzero(means >= 0.0)))
    out.update(
        ci_low=float(lo),
        ci_high=float(hi),
        p_value=float(min(1.0, 2.0 * (tail + 1) / (n_boot + 1))),
    )
    return out


# --------------------------------------------------------------------------------------------- multiple comparisons

def holm(pvalues: Any) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value is
    ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (Holm 1979; the formula of statsmodels'
    ``multipletests(method="holm")``). Rejecting where the adjusted p is ``<= alpha`` is Holm's
    step-down procedure at level ``alpha``. NaN p-values stay NaN and do not count towards ``m``.
    """
    p = _as_1d(pvalues, "pvalues")
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    pv = p[ok]
    m = pv.size
    if m == 0:
        return out
    if np.any((pv < 0) | (pv > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = np.argsort(pv, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * pv[order])
    adj_sorted = np.maximum.accumulate(scaled)
    adj = np.empty(m)
    adj[order] = adj_sorted
    out[ok] = adj
    return out


def _as_series(values: Any, name: str) -> pd.Series:
    """A method's per-seed values as a float Series indexed by seed, NaNs dropped.

    Accepts a pandas Series (index = seed), a mapping seed -> value, or an array-like whose
    position is the seed (NaN marks a missing seed).
    """
    if isinstance(values, pd.Series):
        s = values.astype(float)
    elif isinstance(values, Mapping):
        s = pd.Series({k: float(v) for k, v in values.items()}, dtype=float)
    else:
        s = pd.Series(_as_1d(values, name), dtype=float)
    if s.index.has_duplicates:
        raise ValueError(f"{name}: duplicate seeds {sorted(set(s.index[s.index.duplicated()]))}")
    return s.dropna()


def best_set(
    values_by_method: Mapping[str, Any],
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> set[str]:
    """The methods that are not significantly worse than the best one (the ones to print in bold).

    ``values_by_method`` maps a method to its per-seed values: a pandas Series indexed by seed, a
    mapping seed -> value, or an array whose position is the seed (NaN = missing seed). The best
    method has the highest mean over its seeds (lowest if ``higher_is_better`` is False). Every
    other method is compared with it by :func:`paired_t` over the seeds both have; the p-values of
    these comparisons are Holm-adjusted (:func:`holm`). A method is in the set when

    - its mean equals the best mean (ties for best are all best), or
    - it shares at least two seeds with the best and either its adjusted p >= ``alpha`` or, on
      the shared seeds, it is not behind the best (a two-sided test cannot make it "worse").

    The best is the best mean among the methods with two or more seeds (a lone lucky seed cannot
    take the bold from every tested row); only where no method has two seeds is it the best mean
    of all. With fewer than two shared seeds nothing can be tested, so such a method is in the set
    only if its mean is at least the best's: with a single seed per method, only the best is bold.
    Methods without any value are never in the set.
    """
    series = {m: _as_series(v, m) for m, v in values_by_method.items()}
    means = {m: float(s.mean()) for m, s in series.items() if len(s)}
    if not means:
        return set()
    sign = 1.0 if higher_is_better else -1.0
    pool = [m for m in means if len(series[m]) >= 2] or list(means)
    top = max(sign * means[m] for m in pool)

    def at_least_top(m: str) -> bool:
        v = sign * means[m]
        return v > top or math.isclose(v, top, rel_tol=1e-12, abs_tol=1e-15)

    tied = {m for m in means if at_least_top(m)}
    best = min((m for m in pool if at_least_top(m)), key=lambda m: (-len(series[m]), m))  # most seeds first

    chosen = set(tied)
    tested: list[str] = []
    pvals: list[float] = []
    not_behind: dict[str, bool] = {}
    for m in means:
        if m in tied:
            continue
        shared = series[m].index.intersection(series[best].index)
        if len(shared) < 2:
            continue  # untestable: not the best mean, so not in the set
        x = series[m].loc[shared].to_numpy()
        y = series[best].loc[shared].to_numpy()
        tested.append(m)
        pvals.append(paired_t(x, y))
        not_behind[m] = sign * float(np.mean(x - y)) >= 0.0
    if tested:
        adjusted = holm(pvals)
        for m, p in zip(tested, adjusted):
            if not_behind[m] or (not np.isnan(p) and p >= alpha):
                chosen.add(m)
    return chosen


# --------------------------------------------------------------------------------------------- over datasets

def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Critical value q_alpha of the Nemenyi test for ``k`` methods (Demšar 2006, Table 5a):
    the studentized range quantile with infinite degrees of freedom divided by sqrt(2)."""
    if k < 2:
        raise ValueError(f"the Nemenyi test needs at least 2 methods, got {k}")
    from scipy import stats as _st

    return float(_st.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0))


def friedman_nemenyi(
    scores: pd.DataFrame,
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Friedman test and Nemenyi critical difference over blocks (Demšar 2006).

    ``scores`` has one row per dataset (block) and one column per method. Rows with a missing value
    are dropped (the test needs complete blocks). Within each row, methods are ranked 1 (best) to
    k, ties getting the average of their ranks.

    Returns a dict with

    - ``methods``: the column names, best average rank first; ``avg_ranks``: method -> average rank
      (same order); ``ranks``: the per-block ranks as a DataFrame;
    - ``n_blocks`` (N), ``k``, ``alpha``, ``higher_is_better``, ``dropped_blocks``: labels of the
      rows dropped for missing values;
    - ``statistic``, ``p_value``: Friedman's chi-square and its p-value
      (:func:`scipy.stats.friedmanchisquare`, tie-corrected); NaN with fewer than 3 methods, fewer
      than 2 blocks, or when every block is a complete tie;
    - ``q_alpha`` (:func:`nemenyi_q`) and ``cd = q_alpha * sqrt(k (k + 1) / (6 N))``: two methods
      whose average ranks differ by at least ``cd`` are significantly different.
    """
    if not isinstance(scores, pd.DataFrame):
        raise TypeError("scores must be a pandas DataFrame (rows = datasets, columns = methods)")
    data = scores.astype(float)
    complete = data.notna().all(axis=1)
    dropped = [idx for idx, ok in complete.items() if not ok]
    data = data[complete]
    n, k = data.shape
    if k < 2:
        raise ValueError(f"need at least 2 methods (columns), got {k}")
    if n < 1:
        raise ValueError("no dataset (row) has a value for every method")

    values = data.to_numpy()
    from scipy import stats as _st

    ranks = _st.rankdata(-values if higher_is_better else values, axis=1)
    ranks_df = pd.DataFrame(ranks, index=data.index, columns=data.columns)
    avg = ranks_df.mean(axis=0)
    order = sorted(range(k), key=lambda j: (avg.iloc[j], j))
    methods = [data.columns[j] for j in order]

    statistic = p_value = math.nan
    if k >= 3 and n >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                res = _st.friedmanchisquare(*(values[:, j] for j in range(k)))
                statistic, p_value = float(res.statistic), float(res.pvalue)
            except (ValueError, ZeroDivisionError):
                pass
        if not np.isfinite(statistic):
            statistic = p_value = math.nan

    q = nemenyi_q(k, alpha)
    cd = q * math.sqrt(k * (k + 1) / (6.0 * n))
    return {
        "methods": methods,
        "avg_ranks": {m: float(avg[m]) for m in methods},
        "ranks": ranks_df,
        "n_blocks": int(n),
        "k": int(k),
        "alpha": float(alpha),
        "higher_is_better": bool(higher_is_better),
        "dropped_blocks": dropped,
        "statistic": statistic,
        "p_value": p_value,
        "q_alpha": q,
        "cd": float(cd),
    }
