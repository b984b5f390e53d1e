"""``bench compare``: which differences between methods are real.

For each dataset, the methods are ranked by their mean over seeds; every pair is compared

- by a paired t-test over the seeds both have (:func:`dmlbench.stats.paired_t`), and
- by a paired bootstrap over test queries (:func:`dmlbench.stats.paired_bootstrap`) on the
  per-query values of the lowest seed both have (``per_query.npz``; recall@1, MAP@R and
  R-precision have them), which tells whether one training run's difference exceeds the noise of
  the test set;

and the p-values of all pairs are Holm-corrected together. Over several datasets, a Friedman
test and the Nemenyi critical difference (Demšar 2006) rank the methods, drawn as a CD diagram.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench import layout
from dmlbench.errors import DMLBenchError
from dmlbench.metrics import METRICS, higher_is_better

PER_QUERY_KEY = {"recall@1": "retrieval_recall@1", "map@r": "retrieval_map@r", "r_precision": "retrieval_r_precision",
                 "triplet_acc": "triplet_correct", "knn_acc": "knn_correct", "svm_acc": "svm_correct"}


def _per_query(run_dir: str, metric: str) -> np.ndarray | None:
    from dmlbench.io import read_npz

    key = PER_QUERY_KEY.get(metric)
    path = Path(run_dir) / layout.PER_QUERY
    if key is None or not path.is_file():
        return None
    arrays = read_npz(path)
    return np.asarray(arrays[key], dtype=float) if key in arrays else None


def compare(results_dir: Path, metric: str = "map@r", alpha: float = 0.05, n_boot: int = 10_000) -> dict:
    """Ranks, pairwise tests and (over several datasets) the Friedman/Nemenyi result."""
    from dmlbench.results import label_runs, collect
    from dmlbench.stats import friedman_nemenyi, holm, paired_bootstrap, paired_t

    if metric not in METRICS.names():
        raise DMLBenchError(f"unknown metric {metric!r}; known: {', '.join(METRICS.names())}")
    if not Path(results_dir).is_dir():
        raise DMLBenchError(f"results folder {results_dir} does not exist; run `bench run` first or give its path")
    done = label_runs(collect(results_dir))
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
            row = {"dataset": ds, "a": a, "b": b, "diff": means[a] - means[b], "seeds": len(shared),
                   "p_seeds": paired_t(by_label.loc[a, shared], by_label.loc[b, shared]) if len(shared) else np.nan,
                   "p_queries": np.nan, "query_ci": ""}
            if len(shared):
                s = min(shared)
                qa, qb = _per_query(dirs[(a, s)], metric), _per_query(dirs[(b, s)], metric)
                if qa is not None and qb is not None and qa.shape == qb.shape:
                    bs = paired_bootstrap(qa, qb, n_boot=n_boot, seed=0)
                    row.update(p_queries=bs["p_value"], query_ci=f"[{bs['ci_low']:+.4f}, {bs['ci_high']:+.4f}]")
            pairs.append(row)
    pairs = pd.DataFrame(pairs)
    if len(pairs):
        for col in ("p_seeds", "p_queries"):
            pairs[col + "_holm"] = holm(pairs[col].to_numpy(float))
        pairs["significant"] = (pairs["p_seeds_holm"] < alpha) | (pairs["p_queries_holm"] < alpha)
    out = {"metric": metric, "higher_is_better": hib, "ranking": pd.DataFrame(rankings), "pairs": pairs,
           "friedman": None}
    scores = done.groupby(["dataset", "label"])[metric].mean().unstack("label")
    if len(scores) >= 2 and scores.shape[1] >= 3:
        out["friedman"] = friedman_nemenyi(scores, higher_is_better=hib, alpha=alpha)
    return out


def format_compare(result: dict) -> str:
    lines = [f"# {result['metric']} ({'higher' if result['higher_is_better'] else 'lower'} is better)", ""]
    rk = result["ranking"]
    for ds, g in rk.groupby("dataset", sort=False):
        lines.append(f"## {ds}")
        lines += [f"{r.rank:>3}. {r.method:40s} {r.mean:.4f}  ({r.seeds} seed{'s' if r.seeds != 1 else ''})"
                  for r in g.itertuples()]
        lines.append("")
    pairs = result["pairs"]
    if len(pairs):
        lines.append("pair | mean diff | seeds | p (paired t, Holm) | p (query bootstrap, Holm) | 95% CI of the query diff | significant")
        lines.append("--- | --- | --- | --- | --- | --- | ---")
        for r in pairs.itertuples():
            lines.append(f"{r.a} vs {r.b} ({r.dataset}) | {r.diff:+.4f} | {r.seeds} | {r.p_seeds_holm:.3g} | "
                         f"{r.p_queries_holm:.3g} | {r.query_ci or '—'} | {'yes' if r.significant else 'no'}")
    fr = result["friedman"]
    if fr is not None:
        lines += ["", f"Friedman over {fr['n_blocks']} datasets: p = {fr['p_value']:.3g}; Nemenyi CD = {fr['cd']:.3f}",
                  "average ranks: " + ", ".join(f"{m} {fr['avg_ranks'][m]:.2f}" for m in fr["methods"])]
    return "\n".join(lines) + "\n"
