"""Collect run folders into one table: a row per (dataset, method config), over seeds.

Each cell is the mean over seeds ± the half-width of its 95% Student-t confidence interval (a
lone value where there is one seed); bold marks every row not significantly worse than the best
one (paired t-tests over seeds, Holm-corrected), so ties within noise are shown as ties. A metric
registered ``comparable=False`` is never bold. No torch, no faiss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import write_text
from dmlbench.evaluation.metrics import METRICS, default_metrics, higher_is_better
from dmlbench.report.results import collect, label_order, label_runs
from dmlbench.report.stats import best_set, t_interval
from dmlbench.running import layout

log = logging.getLogger("dmlbench")
FORMATS = ("markdown", "csv", "latex")
# What follows a mean in a cell (``bench table --spread``): the default is the 95% t-interval's
# half-width, the statistic the bold's tests and `bench compare` use.
SPREADS = {
    "ci": "± half-width of the 95% t-interval",
    "std": "± sample standard deviation",
    "interval": "[low, high] of the 95% t-interval",
    "none": "alone",
}


def aggregate(runs: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Per (dataset, method config): mean, std, 95% t-interval half-width (``_ci``) over seeds, the
    seed count ``n``, and ``_best``: whether the row is not significantly worse than the best row
    (paired t-tests over seeds against the best, Holm-corrected; :func:`dmlbench.report.stats.best_set`)."""
    done = label_runs(runs)
    done = done.assign(steps=[budget(o) for o in done["options"]] if "options" in done else 0)
    metrics = [m for m in (metrics or default_metrics()) if m in done.columns]
    rows = []
    for (ds, label, method), g in done.groupby(["dataset", "label", "method"], sort=False):
        row = {"dataset": ds, "label": label, "method": method, "n": len(g),
               "seeds": ",".join(str(s) for s in sorted(g["seed"])), "steps": int(g["steps"].max()),
               "world_sizes": tuple(sorted({int(w) for w in g["world_size"]})) if "world_size" in g else (1,),
               # made from a tree with uncommitted changes: marked in every table that shows it
               "dirty": bool("commit" in g and g["commit"].astype(str).str.endswith("+dirty").any())}
        for m, flag in EDGE_FLAGS.items():
            row[m + "_edge"] = bool(flag in g and (g[flag].fillna(0) != 0).any())
        for m in metrics:
            vals = g[m].dropna().to_numpy(float)
            if len(vals):
                mean, sd, half = t_interval(vals)
                row.update({m: mean, m + "_std": sd, m + "_ci": half})
            else:
                row.update({m: np.nan, m + "_std": np.nan, m + "_ci": np.nan})
        rows.append(row)
    out = pd.DataFrame(rows)
    for m in metrics:
        out[m + "_best"] = False
        spec = METRICS.get(m) if m in METRICS.names() else None
        if spec is not None and not spec.comparable:
            continue
        hib = higher_is_better(m)
        for ds, idx in out.groupby("dataset").groups.items():
            sub = done[done["dataset"] == ds].pivot_table(index="label", columns="seed", values=m, aggfunc="first")
            rows_ds = out.loc[idx]
            # Rows trained with different budgets are never compared: the bold is decided within each
            # budget; an untrained row (the raw floor) joins every budget's comparison, and is bold
            # only where it holds its own against the best of each.
            budgets = sorted({s for s in rows_ds["steps"] if s > 0}) or [0]
            floor = rows_ds.loc[rows_ds["steps"] == 0, "label"].tolist()
            bold_floor = set(floor)
            for steps in budgets:
                group = rows_ds.loc[rows_ds["steps"] == steps, "label"].tolist() + (floor if steps else [])
                labels = [lab for lab in group if lab in sub.index and sub.loc[lab].notna().any()]
                if len(labels) < 2:
                    bold_floor = set()
                    continue
                best = best_set({lab: sub.loc[lab].to_numpy(float) for lab in labels}, higher_is_better=hib)
                mine = rows_ds["steps"] == steps
                out.loc[rows_ds.index[mine], m + "_best"] = rows_ds.loc[mine, "label"].isin(best).to_numpy()
                bold_floor &= best
            if budgets != [0]:
                out.loc[rows_ds.index[rows_ds["steps"] == 0], m + "_best"] = \
                    rows_ds.loc[rows_ds["steps"] == 0, "label"].isin(bold_floor).to_numpy()
    order = label_order(out["label"], out["method"])
    out["_order"] = out["label"].map(order)
    return out.sort_values(["dataset", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


# A metric whose searched setting may lie on its grid's edge, and the run column that says so.
EDGE_FLAGS = {"svm_acc": "svm_lambda_edge"}
EDGE_MARK, DIRTY_MARK = "†", "*"


def budget(options) -> int:
    """A run's training budget in optimiser steps (0: it trains nothing, as the raw floor)."""
    steps = (options or {}).get("steps") if isinstance(options, dict) else None
    return int(steps or 0)


def budget_note(agg: pd.DataFrame) -> str:
    """One line where the table's rows were trained with different budgets, else ''."""
    mixed = {ds: sorted({int(s) for s in g["steps"] if s > 0}) for ds, g in agg.groupby("dataset")}
    mixed = {ds: b for ds, b in mixed.items() if len(b) > 1}
    if not mixed:
        return ""
    return ("Budgets differ (" + "; ".join(f"{ds}: {', '.join(f'{s:,}' for s in b)} steps" for ds, b in mixed.items())
            + "): bold compares rows of the same budget only; compare across budgets with care.")


def world_note(agg: pd.DataFrame) -> str:
    """One line where the table's runs were made by different numbers of processes (``--nproc-per-run``), else ''."""
    if "world_sizes" not in agg:
        return ""
    sizes = {ds: sorted({w for ws in g["world_sizes"] for w in ws}) for ds, g in agg.groupby("dataset")}
    sizes = {ds: s for ds, s in sizes.items() if len(s) > 1}
    if not sizes:
        return ""
    return ("Runs were made by different numbers of processes (" + "; ".join(
        f"{ds}: {', '.join(map(str, s))}" for ds, s in sizes.items()) + " per run): a run of several processes "
            "trains as one process does, but not bit for bit: float rounding that training can amplify "
            "(docs/distributed.md).")


def table_notes(agg: pd.DataFrame, metrics: list[str] | None = None) -> list[str]:
    """The lines under a table that explain its marks: mixed budgets, a metric whose searched
    setting stayed on its grid's edge, rows made from uncommitted code, numbers of processes that differ."""
    notes = [budget_note(agg), world_note(agg)]
    shown = [m for m in (metrics or default_metrics()) if m in agg.columns]
    for m in EDGE_FLAGS:
        if m in shown and (m + "_edge") in agg and agg[m + "_edge"].any():
            notes.append(f"{EDGE_MARK} {m}: the probe's regularisation λ stayed on the edge of its grid, widened to "
                         "1e-8..10, for some seed: the accuracy may be understated.")
    if "dirty" in agg and agg["dirty"].any():
        notes.append(f"Rows marked {DIRTY_MARK} were made from a tree with uncommitted changes: no commit reproduces them.")
    return [n for n in notes if n]


def _cell(v: float, sd: float, half: float, spread: str) -> str:
    digits = 4 if abs(v) < 10 else 1
    mean = f"{v:.{digits}f}"
    if pd.isna(half) or spread == "none":  # one seed: a lone value, never "± 0"
        return mean
    if spread == "std":
        return f"{mean} ± {sd:.{digits}f}"
    if spread == "interval":
        return f"{mean} [{v - half:.{digits}f}, {v + half:.{digits}f}]"
    return f"{mean} ± {half:.{digits}f}"


def format_table(agg: pd.DataFrame, fmt: str = "markdown", metrics: list[str] | None = None,
                 spread: str = "ci") -> str:
    """An :func:`aggregate` table as markdown, LaTeX (best rows in bold, mean and ``spread`` per cell) or csv
    (every column)."""
    if fmt not in FORMATS:
        raise DMLBenchError(f"unknown table format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if spread not in SPREADS:
        raise DMLBenchError(f"unknown spread {spread!r}; use one of: {', '.join(SPREADS)}")
    metrics = [m for m in (metrics or default_metrics()) if m in agg.columns]
    if fmt == "csv":
        cols = ["dataset", "label", "n", "seeds", "steps"] + [c for m in metrics
                                                             for c in (m, m + "_std", m + "_ci", m + "_best")]
        return agg[cols].rename(columns={"label": "method"}).to_csv(index=False)
    dirty = agg["dirty"] if "dirty" in agg else pd.Series(False, index=agg.index)
    labels = [f"{lab} {DIRTY_MARK}" if d else lab for lab, d in zip(agg["label"], dirty)]
    cells = pd.DataFrame({"dataset": agg["dataset"], "method": labels, "seeds": agg["n"],
                          "steps": [f"{s:,}" if s else "—" for s in agg["steps"]]})
    for m in metrics:
        text = []
        edges = agg[m + "_edge"] if m + "_edge" in agg else [False] * len(agg)
        for v, sd, half, best, edge in zip(agg[m], agg[m + "_std"], agg[m + "_ci"], agg[m + "_best"], edges):
            if pd.isna(v):
                text.append("—")
                continue
            t = _cell(v, sd, half, spread)
            if best:
                t = f"**{t}**" if fmt == "markdown" else rf"\textbf{{{t}}}"
            text.append(t + (f" {EDGE_MARK}" if edge else ""))
        cells[m] = text
    if fmt == "latex":
        special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}

        def tex(text: str) -> str:
            return "".join(special.get(c, c) for c in str(text))

        for m in metrics:  # plain ASCII LaTeX: any engine, any font
            cells[m] = cells[m].str.replace(" ± ", r" $\pm$ ", regex=False)
        cells = cells.replace("—", "--")

        cells.columns = [tex(c) for c in cells.columns]
        for c in ("dataset", "method"):
            cells[c] = cells[c].map(tex)
        return cells.to_latex(index=False, escape=False)
    return cells.to_markdown(index=False) if _has_tabulate() else _markdown(cells)


def legend(spread: str = "ci") -> str:
    """The note under a table: what a cell's spread and the bold mean, and which rows ran untuned."""
    return (f"Mean over seeds {SPREADS[spread]} (one seed: the value alone). Bold: not significantly "
            "worse than the best row with 2+ seeds (paired t-test over shared seeds, Holm-corrected, alpha 0.05); "
            "a row that cannot be tested (under 2 shared seeds) is bold only if its mean is at least the best's. "
            "Rows not marked [tuned...] run at the method's defaults (or the [options] shown), untuned.")


def provenance_lines(runs: pd.DataFrame) -> list[str]:
    """What made the table's results: commits, code hashes, devices, torch versions."""
    done = runs[runs["status"] == "done"] if len(runs) and "status" in runs else runs
    out = []
    for col, name in (("commit", "commit"), ("code", "code hash"), ("device", "device"), ("torch", "torch")):
        if col in done:
            vals = sorted({str(v) for v in done[col].dropna() if str(v)})
            if vals:
                out.append(f"{name}: {', '.join(vals)}")
    return out


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
    """One line per failed or corrupt run: its label, seed and reason."""
    if not len(runs) or "reason" not in runs:
        return []
    bad = runs[runs["status"].isin(["failed", "corrupt"])]
    return [f"{r.label} seed {r.seed}: {r.reason}" for r in bad.itertuples()]


def markdown_report(runs: pd.DataFrame, metrics: list[str] | None = None, spread: str = "ci") -> str:
    """The markdown table of ``runs`` with its legend, notes where budgets or process counts differ, what made the
    results, and the runs left out (failed or unreadable)."""
    agg = aggregate(runs, metrics)
    md = format_table(agg, "markdown", metrics, spread=spread) + "\n" + legend(spread) + "\n"
    for note in table_notes(agg, metrics):
        md += note + "\n"
    prov = provenance_lines(runs)
    if prov:
        md += "Made by " + "; ".join(prov) + "\n"
    fails = failures(runs)
    if fails:
        md += "\nRuns left out (failed or unreadable):\n" + "".join(f"- {f}\n" for f in fails)
    return md


def write_tables(results_dir: Path, metrics: list[str] | None = None, only: set[str] | None = None) -> str:
    """Aggregate a suite folder's runs, write table.md and table.csv there; return the markdown of
    the ``only`` runs (their run folders: one command's runs), or of all of them."""
    runs = collect(results_dir, recursive=False)
    write_text(Path(results_dir) / layout.TABLE_MD, markdown_report(runs, metrics))
    write_text(Path(results_dir) / layout.TABLE_CSV, format_table(aggregate(runs, metrics), "csv", metrics))
    if only is None:
        return (Path(results_dir) / layout.TABLE_MD).read_text()
    mine = [str(Path(r).resolve()) in {str(Path(o).resolve()) for o in only} for r in runs["run_dir"]]
    return markdown_report(runs[mine] if len(runs) else runs, metrics)


def suites_of(runs: pd.DataFrame) -> list[str]:
    """The suite folders the runs come from (the folder above each method's folder), sorted."""
    return sorted({str(Path(r).parents[1]) for r in runs["run_dir"]}) if len(runs) else []


def table_text(results_dir: Path, fmt: str = "markdown", metrics: str | None = None, spread: str = "ci") -> str:
    """``bench table``: every run under ``results_dir`` as one table in ``fmt``; ``metrics``:
    comma-separated names or ``all``; runs that failed or cannot be read are listed under a
    markdown table, or named in a warning."""
    results_dir = Path(results_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise DMLBenchError(f"{results_dir} is a file, not a results folder; give the folder bench run wrote "
                            "(e.g. results/digits)")
    if not results_dir.is_dir():
        raise DMLBenchError(f"results folder {results_dir} does not exist; run `bench run` first or give its path")
    names = None
    if metrics:
        known = METRICS.names()
        names = known if metrics == "all" else [m.strip() for m in metrics.split(",")]
        bad = [m for m in names if m not in known]
        if bad:
            raise DMLBenchError(f"unknown metric(s) {', '.join(bad)}; known: {', '.join(known)}")
    if spread not in SPREADS:
        raise DMLBenchError(f"--spread {spread!r} is not one of: {', '.join(SPREADS)}")
    if fmt not in FORMATS:
        raise DMLBenchError(f"unknown table format {fmt!r}; use one of: {', '.join(FORMATS)}")
    runs = collect(results_dir)
    suites = suites_of(runs[runs["status"] == "done"]) if len(runs) else []
    mixes = (f"This table mixes {len(suites)} suite folders: {', '.join(suites)} (bench table on one of them "
             "shows that suite alone).") if len(suites) > 1 else ""
    if fmt == "markdown":
        return markdown_report(runs, names, spread) + (f"\n{mixes}\n" if mixes else "")
    agg = aggregate(runs, names)
    for line in (mixes, *table_notes(agg, names)):
        if line:
            log.warning("%s", line)
    fails = failures(runs)
    if fails:
        log.warning("%d run(s) failed or unreadable, left out of the table: %s", len(fails), "; ".join(fails))
    return format_table(agg, fmt, names, spread=spread)
