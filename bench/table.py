"""Collect run folders into one table: a row per (dataset, method), mean ± std over seeds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.errors import DMLBenchError
from dmlbench.evaluate import METRICS

DEFAULT_METRICS = ["triplet_acc", "triplet_acc_margin", "recall@1", "map@r", "knn_acc", "svm_acc", "recon_error"]
FORMATS = ("markdown", "csv", "latex")


def collect(results_dir: Path, recursive: bool = True) -> pd.DataFrame:
    """One row per run folder (complete or failed) under results_dir.

    ``recursive=False`` reads only ``results_dir/<method>/<run>/`` (one suite's own runs).
    """
    rows = []
    paths = Path(results_dir).rglob("config.json") if recursive else Path(results_dir).glob("*/*/config.json")
    for cfg_path in sorted(paths):
        run = cfg_path.parent
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(cfg, dict) or not {"method", "group_id", "seed", "dataset"} <= cfg.keys():
            continue  # some other tool's config.json, not a dmlbench run
        label = cfg["method"] + (f"[{cfg['variant']}]" if cfg.get("variant") else "")
        row = {"dataset": cfg["dataset"], "method": cfg["method"], "label": label, "group_id": cfg["group_id"],
               "seed": cfg["seed"], "run_dir": str(run)}
        if (run / "metrics.json").exists():
            row.update(status="done", **json.loads((run / "metrics.json").read_text()))
        elif (run / "failed.json").exists():
            row.update(status="failed", reason=json.loads((run / "failed.json").read_text())["reason"])
        else:
            row.update(status="unfinished")
        rows.append(row)
    return pd.DataFrame(rows)


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Complete runs, one per (dataset, config, seed), labelled for tables and plots.

    The same config and seed found twice (e.g. in two suite folders) counts once. A label that
    covers several configs (e.g. other epochs) gets the config id appended.
    """
    done = runs[runs["status"] == "done"] if len(runs) else runs
    if not len(done):
        raise DMLBenchError("no complete runs found; run `bench run` first, or point at the right results folder")
    done = done.drop_duplicates(["dataset", "group_id", "seed"])
    n_groups = done.groupby(["dataset", "label"])["group_id"].transform("nunique")
    return done.assign(label=np.where(n_groups > 1, done["label"] + " #" + done["group_id"].str[:6], done["label"]))


def aggregate(runs: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean and std over seeds for each (dataset, method config); columns '<metric>' and '<metric>_std'."""
    done = label_runs(runs)
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in done.columns]
    g = done.groupby(["dataset", "label", "method"], sort=False)
    out = g[metrics].mean()
    std = g[metrics].std(ddof=1).fillna(0.0).where(out.notna())  # one seed: std 0; no value: none
    out = out.join(std.add_suffix("_std"))
    out["n"] = g.size()
    out = out.reset_index()
    order = label_order(out["label"], out["method"])
    out["_order"] = out["label"].map(order)
    return out.sort_values(["dataset", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _natural(text: str) -> tuple:
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def label_order(labels, methods) -> dict[str, int]:
    """Rank of each row label: methods in registry order (plugins after), a method's default
    configuration before its variants, variants by their options with numbers compared as numbers,
    and the raw floor last."""
    from dmlbench.methods import method_names

    registry = {m: i for i, m in enumerate(method_names())}

    def key(pair):
        label, method = pair
        return (method == "raw", registry.get(method, len(registry)), method, _natural(label[len(method):]))

    pairs = sorted(dict.fromkeys(zip(labels, methods)), key=key)
    return {label: i for i, (label, _) in enumerate(pairs)}


def format_table(agg: pd.DataFrame, fmt: str = "markdown", metrics: list[str] | None = None) -> str:
    if fmt not in FORMATS:
        raise DMLBenchError(f"unknown table format {fmt!r}; use one of: {', '.join(FORMATS)}")
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in agg.columns]
    if fmt == "csv":
        cols = ["dataset", "label", "n"] + [c for m in metrics for c in (m, m + "_std")]
        return agg[cols].rename(columns={"label": "method"}).to_csv(index=False)
    cells = pd.DataFrame({"dataset": agg["dataset"], "method": agg["label"], "seeds": agg["n"]})
    for m in metrics:
        col, sd = agg[m], agg[m + "_std"]
        higher = METRICS[m].higher_is_better if m in METRICS else True
        # The best value within each dataset: datasets are not comparable with each other.
        by_ds = col.groupby(agg["dataset"])
        best = by_ds.transform("max" if higher else "min")
        n_values = by_ds.transform("count")
        text = []
        for v, s, b, n in zip(col, sd, best, n_values):
            if pd.isna(v):
                text.append("—")
                continue
            t = f"{v:.4f} ± {s:.4f}" if abs(v) < 10 else f"{v:.1f} ± {s:.1f}"
            if np.isclose(v, b) and n > 1:
                t = f"**{t}**" if fmt == "markdown" else rf"\textbf{{{t}}}"
            text.append(t)
        cells[m] = text
    if fmt == "latex":
        def tex(text: str) -> str:
            return str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("#", r"\#").replace("%", r"\%")

        cells.columns = [tex(c) for c in cells.columns]
        for c in ("dataset", "method"):
            cells[c] = cells[c].map(tex)
        return cells.to_latex(index=False, escape=False)
    return cells.to_markdown(index=False) if _has_tabulate() else _markdown(cells)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _markdown(df: pd.DataFrame) -> str:
    """A plain GitHub markdown table (pandas' to_markdown needs the optional tabulate)."""
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def failures(runs: pd.DataFrame) -> list[str]:
    if not len(runs) or "reason" not in runs:
        return []
    bad = runs[runs["status"] == "failed"]
    return [f"{r.label} seed {r.seed}: {r.reason}" for r in bad.itertuples()]


def write_tables(results_dir: Path, metrics: list[str] | None = None) -> str:
    """Aggregate a dataset's results folder, write table.md and table.csv there, return the markdown."""
    from dmlbench.io import write_text

    runs = collect(results_dir, recursive=False)
    agg = aggregate(runs, metrics)
    md = format_table(agg, "markdown", metrics)
    fails = failures(runs)
    if fails:
        md += "\nFailed runs:\n" + "".join(f"- {f}\n" for f in fails)
    write_text(Path(results_dir) / "table.md", md)
    write_text(Path(results_dir) / "table.csv", format_table(agg, "csv", metrics))
    return md
