"""``bench compare``: which differences between methods are real.

For each dataset, the methods are ranked by their mean over seeds; every pair is compared

- by a paired t-test over the seeds both have (:func:`dmlbench.report.stats.paired_t`), and
- by a paired bootstrap over test queries (:func:`dmlbench.report.stats.paired_bootstrap`) on the
  per-query values of the lowest seed both have (``per_query.npz``; recall@1, MAP@R and
  R-precision have them), which tells whether one training run's difference exceeds the noise of
  the test set;

and the p-values of all pairs are Holm-corrected together. The two answer different questions,
so the verdict keeps them apart: with two or more seeds a pair is ``significant`` by the seeds'
test (training randomness included; the table's bold uses the same test), and the query bootstrap
is reported beside it; with one seed there is only the bootstrap, and the verdict says so. A
bootstrap that favours the other method than the seeds' mean says that too.

Over several datasets, a Friedman test and the Nemenyi critical difference (Demšar 2006) rank the
methods, drawn as a CD diagram.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import read_npz
from dmlbench.evaluation.metrics import METRICS, higher_is_better
from dmlbench.report.plots.cd import cd_diagram
from dmlbench.report.results import collect, label_runs
from dmlbench.report.stats import (
    POWER,
    detectable_difference,
    friedman_nemenyi,
    holm,
    paired_bootstrap,
    paired_t,
    seeds_needed,
)
from dmlbench.report.table import failures
from dmlbench.running import layout

PER_QUERY_KEY = {**{f"recall@{k}": f"retrieval_recall@{k}" for k in (1, 2, 4, 8)}, "map@r": "retrieval_map@r",
                 "r_precision": "retrieval_r_precision", "triplet_acc": "triplet_correct", "knn_acc": "knn_correct",
                 "svm_acc": "svm_correct"}


def _per_query(run_dir: str, metric: str) -> np.ndarray | None:
    key = PER_QUERY_KEY.get(metric)
    path = Path(run_dir) / layout.PER_QUERY
    if key is None or not path.is_file():
        return None
    arrays = read_npz(path)
    return np.asarray(arrays[key], dtype=float) if key in arrays else None


DELTA = 0.005  # the difference "seeds needed" is stated for: half a point of a metric in [0, 1]


def compare(results_dir: Path | list[Path], metric: str = "map@r", alpha: float = 0.05, n_boot: int = 10_000,
            delta: float = DELTA) -> dict:
    """Ranks, pairwise tests, each pair's power (the smallest difference its seeds could detect at
    80% power, and the seeds needed to detect ``delta``) and, over several datasets, the
    Friedman/Nemenyi result. ``n_boot`` resamples for each pair's query bootstrap (0: none)."""
    if metric not in METRICS.names():
        raise DMLBenchError(f"unknown metric {metric!r}; known: {', '.join(METRICS.names())}")
    if not 0 < alpha < 1:
        raise DMLBenchError(f"--alpha {alpha} must lie between 0 and 1 (e.g. 0.05)")
    if not METRICS.get(metric).comparable:
        raise DMLBenchError(f"{metric} depends on a setting (not on the method alone) and is never ranked; "
                            "compare on another metric, e.g. --metric map@r")
    folders = [Path(p) for p in ([results_dir] if isinstance(results_dir, (str, Path)) else results_dir)]
    for folder in folders:
        if folder.is_file():
            raise DMLBenchError(f"{folder} is a file, not a results folder; give the folder bench run wrote "
                                "(e.g. results/digits)")
        if not folder.is_dir():
            raise DMLBenchError(f"results folder {folder} does not exist; run `bench run` first or give its path")
    all_runs = pd.concat([collect(f) for f in folders], ignore_index=True)
    results_dir = ", ".join(map(str, folders))
    done = label_runs(all_runs)
    if metric not in done.columns:
        raise DMLBenchError(f"no run under {results_dir} has {metric}")
    hib = higher_is_better(metric)
    rankings, pairs = [], []
    for ds, runs in done.groupby("dataset", sort=False):
        by_label = runs.pivot_table(index="label", columns="seed", values=metric, aggfunc="first")
        means = by_label.mean(axis=1).sort_values(ascending=not hib)
        for rank, (label, mean) in enumerate(means.items(), 1):
            rankings.append({"dataset": ds, "rank": rank, "method": label, "mean": mean,
                             "seeds": int(by_label.loc[label].notna().sum())})
        dirs = runs.set_index(["label", "seed"])["run_dir"]
        for a, b in itertools.combinations(means.index, 2):
            shared = by_label.loc[[a, b]].dropna(axis=1).columns
            # The difference the paired test is about: on the seeds both have (the ranking's means
            # may include seeds only one of them has).
            diff = (by_label.loc[a, shared] - by_label.loc[b, shared]).mean() if len(shared) else np.nan
            diffs = (by_label.loc[a, shared] - by_label.loc[b, shared]).to_numpy(float)
            row = {"dataset": ds, "a": a, "b": b, "diff": diff, "seeds": len(shared),
                   "p_seeds": paired_t(by_label.loc[a, shared], by_label.loc[b, shared]) if len(shared) else np.nan,
                   "p_queries": np.nan, "query_ci": "", "query_seed": None, "query_diff": np.nan,
                   "detectable": detectable_difference(diffs, alpha), "seeds_needed": seeds_needed(diffs, delta, alpha)}
            if len(shared) and n_boot:          # n_boot=0: the seeds' tests only, no query bootstrap
                s = min(shared)
                qa, qb = _per_query(dirs[(a, s)], metric), _per_query(dirs[(b, s)], metric)
                if qa is not None and qb is not None and qa.shape == qb.shape:
                    bs = paired_bootstrap(qa, qb, n_boot=n_boot, seed=0)
                    row.update(p_queries=bs["p_value"], query_ci=f"[{bs['ci_low']:+.4f}, {bs['ci_high']:+.4f}]",
                               query_seed=int(s), query_diff=bs["mean_diff"])
            pairs.append(row)
    pairs = pd.DataFrame(pairs)
    if len(pairs):
        for col in ("p_seeds", "p_queries"):
            pairs[col + "_holm"] = holm(pairs[col].to_numpy(float))
        by_seeds = pairs["p_seeds_holm"] < alpha
        by_queries = pairs["p_queries_holm"] < alpha
        pairs["significant"] = np.where(pairs["seeds"] >= 2, by_seeds, by_queries)
        pairs["verdict"] = [_verdict(r, hib, alpha) for r in pairs.itertuples()]
    out = {"metric": metric, "higher_is_better": hib, "ranking": pd.DataFrame(rankings), "pairs": pairs,
           "friedman": None, "alpha": alpha, "delta": delta,
           "left_out": failures(all_runs)}
    scores = done.groupby(["dataset", "label"])[metric].mean().unstack("label")
    # Friedman ranks within each dataset, so it takes the methods every dataset has.
    complete = scores.dropna(axis=1)
    out["friedman_left_out"] = sorted(set(scores.columns) - set(complete.columns))
    if len(complete) >= 2 and complete.shape[1] >= 3:
        out["friedman"] = friedman_nemenyi(complete, higher_is_better=hib, alpha=alpha)
    return out


def _verdict(r, higher_is_better: bool, alpha: float) -> str:
    """One cell: the seeds' verdict, then what the query bootstrap of one seed adds."""
    sign = 1 if higher_is_better else -1
    better = r.a if sign * r.diff >= 0 else r.b
    if r.seeds == 0:
        return "not compared: no seed in common (a paired test needs the same seeds)"
    seed = _seed(r.query_seed)
    if r.seeds >= 2:
        text = f"yes, {better} better" if r.p_seeds_holm < alpha else "no"
    else:
        text = "one seed: by the test queries only"
    if not np.isnan(r.p_queries_holm) and r.p_queries_holm < alpha:
        q_better = r.a if sign * r.query_diff > 0 else r.b
        if r.seeds >= 2:
            text += (f"; seed {seed}: beyond test noise" if q_better == better
                     else f"; seed {seed} alone favours {q_better}")
        else:
            text = f"yes, {q_better} better (one seed: test-query noise only)"
    elif r.seeds < 2:
        text = "no (one seed: test-query noise only)"
    return text


def _p(value) -> str:
    """A p-value, or a dash where there is no test (one seed, no per-query values)."""
    return "—" if value is None or np.isnan(value) else f"{value:.3g}"


def _seed(value) -> str:
    """A seed as written on the command line (pandas keeps a column with gaps as floats)."""
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else str(int(value))


def format_compare(result: dict) -> str:
    """A comparison as Markdown text: the ranking per dataset, the pairwise tests, the Friedman test and
    the runs left out."""
    lines = [f"# {result['metric']} ({'higher' if result['higher_is_better'] else 'lower'} is better)", ""]
    rk = result["ranking"]
    for ds, g in rk.groupby("dataset", sort=False):
        lines.append(f"## {ds}")
        lines += [f"{r.rank:>3}. {r.method:40s} {r.mean:.4f}  ({r.seeds} seed{'s' if r.seeds != 1 else ''})"
                  for r in g.itertuples()]
        lines.append("")
    pairs = result["pairs"]
    lone = [ds for ds, g in rk.groupby("dataset", sort=False) if len(g) == 1]
    if lone:
        lines += [f"{ds}: one method only, nothing to compare it with; give a folder with several methods' runs"
                  for ds in lone] + [""]
    if len(pairs):
        lines.append("Significant: by the paired t-test over seeds (as the table's bold); the query bootstrap, on "
                     "one seed's test queries, says whether that run's difference exceeds test-set noise.")
        lines.append("")
        delta = result.get("delta", DELTA)
        lines.append(f"Power, from the spread of each pair's per-seed differences: the smallest difference these seeds "
                     f"detect with {POWER:.0%} power (paired t, alpha {result.get('alpha', 0.05):g}, before Holm), and "
                     f"the seeds needed to detect a difference of {delta:g}. A \"no\" means no difference larger than "
                     "the first was likely missed, not that the methods are equal.")
        lines.append("")
        lines.append("pair | mean diff (shared seeds) | seeds | p (paired t, Holm) | p (query bootstrap, Holm) | "
                     f"95% CI of the query diff | detectable at {POWER:.0%} power | seeds for {delta:g} | significant")
        lines.append("--- | --- | --- | --- | --- | --- | --- | --- | ---")
        for r in pairs.itertuples():
            ci = f"{r.query_ci} (seed {_seed(r.query_seed)})" if r.query_ci else "—"
            diff = "—" if np.isnan(r.diff) else f"{r.diff:+.4f}"
            mdd = "—" if np.isnan(getattr(r, "detectable", np.nan)) else f"{r.detectable:.4f}"
            need = getattr(r, "seeds_needed", None)
            need = "—" if need is None or (isinstance(need, float) and np.isnan(need)) else (
                f"{int(need)}" if int(need) <= 10_000 else "> 10,000")
            lines.append(f"{r.a} vs {r.b} ({r.dataset}) | {diff} | {r.seeds} | {_p(r.p_seeds_holm)} | "
                         f"{_p(r.p_queries_holm)} | {ci} | {mdd} | {need} | {r.verdict}")
    fr = result["friedman"]
    if fr is not None:
        lines += ["", f"Friedman over {fr['n_blocks']} datasets: p = {fr['p_value']:.3g}; Nemenyi CD = {fr['cd']:.3f}",
                  "average ranks: " + ", ".join(f"{m} {fr['avg_ranks'][m]:.2f}" for m in fr["methods"])]
    if result.get("left_out"):
        lines += ["", "Runs left out (failed or unreadable):"]
        lines += [f"- {x}" for x in result["left_out"]]
    if result.get("friedman_left_out") and len(result["ranking"]["dataset"].unique()) >= 2:
        lines += [f"left out of the Friedman test (not run on every dataset): {', '.join(result['friedman_left_out'])}"]
    return "\n".join(lines) + "\n"


def compare_report(results_dir: Path | list[Path], metric: str = "map@r", alpha: float = 0.05, cd_plot: Path | None = None) -> str:
    """``bench compare``: the comparison as text, and the critical-difference diagram written to
    ``cd_plot`` where asked (several datasets); every refusal comes before anything is computed."""
    if cd_plot is not None and (Path(cd_plot).is_dir() or not Path(cd_plot).parent.is_dir()):
        raise DMLBenchError(f"--cd-plot {cd_plot}: give a PNG file path in an existing folder"
                            + (" (that is a folder)" if Path(cd_plot).is_dir() else ""))
    result = compare(results_dir, metric, alpha)
    if cd_plot is not None and result["friedman"] is None:  # refused before anything is printed
        raise DMLBenchError("a critical-difference diagram needs at least 2 datasets and 3 methods that every "
                            "dataset has; leave out --cd-plot")
    text = format_compare(result)
    if cd_plot is not None:
        cd_diagram(result["friedman"], cd_plot, title=f"{metric}: average ranks")
    return text
