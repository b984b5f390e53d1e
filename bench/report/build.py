"""``bench report``: one suite's results as a report a reader can open: ``report.md`` with its
figures beside it (in ``figures/``) and ``report.html``, one self-contained file.

It holds the results table (95% CIs, bold where not significantly worse than the best, each row's
budget: steps, epochs and tuning trials), the statistics of ``bench compare`` (verdicts and the
power of each pair; the critical-difference diagram where the results span two datasets or
more), the tuning curves of a tuned suite, the figures (metric bars, loss curves, 2-D embedding
maps, confusion matrices, TVAE reconstructions), a retrieval gallery (fixed test queries and each
method's nearest test images, right or wrong) and what made the results.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import CorruptFileError, read_json, write_text
from dmlbench.evaluation.metrics import METRICS
from dmlbench.report.compare import DELTA, compare
from dmlbench.report.document import Document
from dmlbench.report.plots.cd import cd_diagram
from dmlbench.report.plots.common import figure_format
from dmlbench.report.plots.figures import PROJECTIONS, plot_confusions, plot_embeddings, plot_loss_curves, plot_metrics
from dmlbench.report.plots.gallery import plot_gallery
from dmlbench.report.plots.tuning import TUNED_FILE, plot_tuning_curves
from dmlbench.report.plots.tvae import plot_reconstructions, plot_tradeoff
from dmlbench.report.results import collect, load_runs
from dmlbench.report.stats import POWER
from dmlbench.report.table import budget, markdown_report, provenance_lines

log = logging.getLogger("dmlbench")
REPORT_MD, REPORT_HTML, FIGURES = "report.md", "report.html", "figures"


def suite_folder(results_dir: Path, suite: str | None) -> Path:
    """The suite folder of ``bench report RESULTS_DIR [--suite NAME]``: RESULTS_DIR/NAME (or, for
    RESULTS_DIR a results root, RESULTS_DIR/<dataset>/NAME), else RESULTS_DIR itself."""
    root = Path(results_dir)
    if not root.is_dir():
        raise DMLBenchError(f"results folder {root} does not exist; run `bench run` first or give its path")
    if not suite:
        return root
    hits = [root / suite] if (root / suite).is_dir() else sorted(p for p in root.glob(f"*/{suite}") if p.is_dir())
    if not hits:
        raise DMLBenchError(f"no suite folder {suite!r} under {root}; give the folder bench run wrote (e.g. "
                            "results/mnist) and the suite's name")
    return hits[0]


def _budget_table(runs: pd.DataFrame, tuned: dict) -> str:
    """Per method configuration: its steps, epochs and tuning trials."""
    lines = ["| method | steps | epochs | tuning trials |", "| --- | --- | --- | --- |"]
    for label, g in runs.groupby("label", sort=False):
        cfg = g["config"].iloc[0]
        steps = budget(cfg)
        per_epoch = max(1, int(cfg.get("epoch_size") or 1) // int(cfg.get("batch_size") or 1))
        epochs = f"{steps / per_epoch:.3g}" if steps else "—"
        t = cfg.get("tuned") or {}
        trials = tuned.get(g["method"].iloc[0], {}).get("trials") if t else None
        lines.append(f"| {label} | {steps:,} | {epochs} | " + (f"{trials} (trial {t.get('trial')} best)" if trials
                                                                else "untuned" if steps else "—") + " |")
    return "\n".join(lines)


def _stats_table(result: dict) -> str:
    """``bench compare``'s pairs as a Markdown table, with each pair's power."""
    pairs = result["pairs"]
    if not len(pairs):
        return "One method only: nothing to compare."
    lines = [f"| pair | mean diff | seeds | p (paired t, Holm) | detectable at {POWER:.0%} power | "
             f"seeds for {result['delta']:g} | verdict |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in pairs.itertuples():
        p = "—" if np.isnan(r.p_seeds_holm) else f"{r.p_seeds_holm:.3g}"
        mdd = "—" if np.isnan(r.detectable) else f"{r.detectable:.4f}"
        need = "—" if r.seeds_needed is None or (isinstance(r.seeds_needed, float) and np.isnan(r.seeds_needed)) \
            else str(int(r.seeds_needed))
        diff = "—" if np.isnan(r.diff) else f"{r.diff:+.4f}"
        lines.append(f"| {r.a} vs {r.b} | {diff} | {r.seeds} | {p} | {mdd} | {need} | {r.verdict} |")
    return "\n".join(lines)


def build_report(results_dir: Path, suite: str | None = None, *, fmt: str = "png", dpi: int = 150,
                 metric: str = "map@r", projection: str = "tsne", queries: int = 4, k: int = 5,
                 metrics: list[str] | None = None) -> tuple[Path, Path]:
    """Write report.md (figures in ``figures/`` beside it) and report.html into the suite folder;
    returns their paths. ``metric``: what the statistics compare on; ``metrics``: the table's
    columns (default: the registry's default metrics)."""
    if projection not in PROJECTIONS:
        raise DMLBenchError(f"unknown projection {projection!r}; use one of: {', '.join(PROJECTIONS)}")
    if metric not in METRICS.names() or not METRICS.get(metric).comparable:
        raise DMLBenchError(f"--metric {metric!r} is not a metric that can be ranked; e.g. map@r")
    folder = suite_folder(results_dir, suite)
    runs = load_runs(folder, recursive=False)
    all_runs = collect(folder, recursive=False)
    figs = folder / FIGURES
    figs.mkdir(parents=True, exist_ok=True)
    try:
        tuned = read_json(folder / TUNED_FILE).get("methods", {}) if (folder / TUNED_FILE).is_file() else {}
    except CorruptFileError as e:
        log.warning("%s", e)
        tuned = {}
    doc = Document(f"{folder.name}: {', '.join(dict.fromkeys(runs['method']))} on {runs['dataset'].iloc[0]}")
    with figure_format(fmt, dpi):
        doc.heading("Results")
        doc.table(markdown_report(all_runs, metrics).split("\nMade by")[0])
        doc.heading("Budgets")
        doc.para("Every row's training budget; tuned rows ran the best of their method's trials, each method "
                 "with the same number of trials on validation data (never the test set).")
        doc.table(_budget_table(runs, tuned))
        doc.heading(f"Statistics ({metric})")
        result = compare(folder, metric)
        doc.para("A pair is significant by the paired t-test over the seeds both methods have (Holm-corrected, "
                 "alpha 0.05), as the table's bold. The power columns say what these seeds could see: the smallest "
                 f"difference detected with {POWER:.0%} power, and the seeds needed for a difference of {DELTA:g}; a "
                 "\"no\" below a large detectable difference means the run was too small to tell, not that the "
                 "methods are equal.")
        doc.table(_stats_table(result))
        if result["friedman"] is not None:
            cd_diagram(result["friedman"], figs / "cd.png", title=f"{metric}: average ranks")
            doc.figure(figs / "cd.png", "Critical-difference diagram (Friedman test, Nemenyi CD) over the datasets")
        else:
            doc.para("The critical-difference diagram ranks methods over two datasets or more; this suite has one.")
        curves = plot_tuning_curves(folder, figs / "tuning_curves.png")
        if curves is not None:
            doc.heading("Tuning")
            doc.figure(curves, "Tuning curves: best validation score so far against the trial number")
        doc.heading("Retrieval gallery")
        gallery = plot_gallery(runs, figs / "gallery.png", n_queries=queries, k=k)
        if gallery is None:
            doc.para("No gallery: the runs' test embeddings (embeddings.npz) or the dataset's images are not here; "
                     "re-run the suite (complete runs are skipped, embeddings are kept) where the data is.")
        doc.figure(gallery, f"The same {queries} test queries for every method and their {k} nearest test "
                            "images (first seed; green frame: same class, red: another)")
        doc.heading("Figures")
        doc.figure(plot_metrics(runs, figs / "metrics.png"), "Test metrics per method")
        doc.figure(plot_loss_curves(runs, figs / "loss_curves.png"), "Training loss terms per epoch")
        doc.figure(plot_embeddings(runs, figs / "embeddings.png", projection),
                   f"{'t-SNE' if projection == 'tsne' else 'PCA'} map of the test embeddings (first seed)")
        for path in plot_confusions(runs, figs):
            doc.figure(path, f"Linear-probe confusion matrix: {path.stem.removeprefix('confusion_')}")
        doc.figure(plot_reconstructions(runs, figs / "reconstructions.png"), "Test images and their reconstructions")
        doc.figure(plot_tradeoff(runs, figs / "tradeoff.png"), "TVAE: triplet accuracy against reconstruction error")
    doc.footer("Made by " + "; ".join(provenance_lines(all_runs)) + f"\nReport of {folder} written by `bench report`.")
    md, page = folder / REPORT_MD, folder / REPORT_HTML
    write_text(md, doc.markdown(folder))
    write_text(page, doc.html())
    return md, page
