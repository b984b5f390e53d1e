"""Figures from a results folder: one PNG per kind, per dataset.

They read the run folders that :mod:`dmlbench.running.runner` wrote; per dataset:

- ``embeddings.png``: 2-D t-SNE (or PCA) of the test embeddings, a panel per method (TVAE Fig. 2);
- ``reconstructions.png``: test images and their reconstructions by each generative method (TVAE Fig. 3;
  :mod:`dmlbench.report.plots.tvae`);
- ``confusion_<method>.png``: the linear SVM's row-normalised confusion matrix (Hoffer & Ailon Fig. 3);
- ``loss_curves.png``: every loss term per epoch, mean ± sd over seeds, a panel per method;
- ``metrics.png``: the main metrics, mean ± sd over seeds, a bar group per method;
- ``tradeoff.png``: TVAE triplet accuracy against reconstruction error as the triplet weight grows,
  with the VAE as reference (only where several TVAE triplet weights were run; :mod:`dmlbench.report.plots.tvae`).

A "method" here is a method configuration, labelled as in the results table (``tvae[weights.triplet=10]``).
Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import read_npz
from dmlbench.report.plots.common import (
    NOT_LOSS_COLUMNS,
    RERUN,
    bar_metrics,
    class_names,
    figure,
    figure_format,
    file_slug,
    first_seed,
    grid,
    method_labels,
    palette,
    runs_of,
    save,
    seeds_note,
    short_labels,
    style,
    t_errorbar,
    test_embeddings,
)
from dmlbench.report.plots.tvae import plot_reconstructions, plot_tradeoff

PROJECTIONS = ("tsne", "pca")
TSNE_MAX_POINTS = 2000


# --------------------------------------------------------------------------------------------- figures

def _project(emb: np.ndarray, projection: str, seed: int = 0) -> np.ndarray:
    if emb.shape[1] <= 2:
        return np.pad(emb, ((0, 0), (0, 2 - emb.shape[1])))
    if projection == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(emb)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(emb) - 1) / 3)))
    return TSNE(n_components=2, init="pca", learning_rate="auto", perplexity=perplexity,
                random_state=seed).fit_transform(emb)


def plot_embeddings(runs: pd.DataFrame, path: Path, projection: str = "tsne",
                    max_points: int | None = None) -> Path | None:
    """A seeded subsample of at most ``max_points`` (default TSNE_MAX_POINTS) test points, the same for every panel."""
    max_points = max_points or TSNE_MAX_POINTS
    first = first_seed(runs)
    panels = test_embeddings(first)
    if not panels:
        return None
    n = len(panels[0][3])
    rng = np.random.default_rng(0)
    sub = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    classes = np.unique(panels[0][3])
    names = class_names(runs, classes)
    colours = dict(zip(classes, palette(len(classes))))
    rows, cols = grid(len(panels))
    fig = figure(3.6 * cols + 1.4, 3.4 * rows + 0.4)
    with style():
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, (label, seed, emb, y) in zip(axes, panels):
            xy = _project(np.asarray(emb, dtype=np.float32)[sub], projection)
            ys = y[sub]
            for c in classes:
                m = ys == c
                ax.scatter(xy[m, 0], xy[m, 1], s=5, color=colours[c], alpha=0.8, linewidths=0, rasterized=True)
            ax.set_title(f"{label} (seed {seed})", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[len(panels):]:
            ax.set_visible(False)
    if len(classes) <= 30:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="", color=colours[c], markersize=6) for c in classes]
        fig.legend(handles, names, loc="outside right center", title="class", frameon=False,
                   ncols=math.ceil(len(classes) / 15))
    what = "t-SNE" if projection == "tsne" else "PCA"
    fig.suptitle(f"{what} of the test embeddings ({len(sub)} of {n} test images, coloured by class)")
    return save(fig, path)


def plot_confusions(runs: pd.DataFrame, folder: Path) -> list[Path]:
    """One row-normalised SVM confusion heatmap per method, pooled over its seeds, in ``folder``; the PNGs written."""
    import seaborn as sns

    out = []
    short = short_labels(runs)
    for label in method_labels(runs):
        mine = runs[runs["label"] == label]
        mats, ids = [], None
        for r in mine.itertuples():
            f = Path(r.run_dir) / "confusion.csv"
            if not f.exists():
                continue
            mats.append(pd.read_csv(f).to_numpy(dtype=float))
            emb = Path(r.run_dir) / "embeddings.npz"
            if ids is None and emb.exists():
                z = read_npz(emb, RERUN, require=("train_y", "test_y"))
                ids = np.unique(np.concatenate([z["train_y"], z["test_y"]]))  # svm_accuracy's labels: train and test
        if not mats or len({m.shape for m in mats}) != 1:
            continue
        total = np.sum(mats, axis=0)  # pooled over seeds
        k = len(total)
        if ids is None or len(ids) != k:
            ids = np.arange(k)
        names = class_names(runs, ids)
        norm = total / np.maximum(total.sum(1, keepdims=True), 1)
        side = max(5.0, 0.45 * k + 2.5)
        fig = figure(side + 1.0, side)
        ax = fig.subplots()
        annot = k <= 15
        sns.heatmap(norm, ax=ax, vmin=0, vmax=1, cmap="Blues", square=True, annot=annot, fmt=".2f",
                    annot_kws={"fontsize": 7 if k > 10 else 8}, xticklabels=names, yticklabels=names,
                    cbar_kws={"label": "fraction of the true class", "shrink": 0.8})
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(axis="x", labelrotation=90 if max(map(len, names)) > 3 else 0)
        ax.tick_params(axis="y", labelrotation=0)
        acc = np.trace(total) / max(total.sum(), 1)
        ax.set_title(f"{label}: linear SVM on the embeddings\n(row-normalised, {len(mats)} seed(s) pooled, "
                     f"accuracy {acc:.3f})", fontsize=10)
        out.append(save(fig, folder / f"confusion_{file_slug(short[label])}.png"))
    return out


def _history(run_dir: str) -> pd.DataFrame | None:
    f = Path(run_dir) / "history.csv"
    if not f.exists() or f.stat().st_size == 0:
        return None
    try:
        h = pd.read_csv(f)
    except pd.errors.EmptyDataError:
        return None
    return h if len(h) and "epoch" in h else None


def plot_loss_curves(runs: pd.DataFrame, path: Path) -> Path | None:
    """Each method's loss terms per epoch (mean ± sd over seeds), one panel a method; None if no run has a history."""
    import seaborn as sns

    panels = []
    for label in method_labels(runs):
        frames = []
        for r in runs[runs["label"] == label].itertuples():
            h = _history(r.run_dir)
            if h is None:
                continue
            terms = [c for c in h.columns if c not in NOT_LOSS_COLUMNS]
            if len(terms) == 2 and "loss" in terms:
                terms.remove("loss")  # one term: the total is the same curve, up to its weight
            long = h.melt(id_vars="epoch", value_vars=terms, var_name="term", value_name="value")
            frames.append(long.assign(seed=r.seed))
        if frames:
            panels.append((label, pd.concat(frames, ignore_index=True)))
    if not panels:
        return None
    rows, cols = grid(len(panels), 3)
    fig = figure(4.3 * cols, 3.3 * rows + 0.3)
    with style():
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, (label, df) in zip(axes, panels):
            terms = list(dict.fromkeys(df["term"]))
            # The weighted total is drawn dashed in black, the terms in colour.
            colours = dict(zip([t for t in terms if t != "loss"], palette(len(terms))))
            colours["loss"] = (0.15, 0.15, 0.15)
            n_seeds = df["seed"].nunique()
            sns.lineplot(data=df, x="epoch", y="value", hue="term", style="term", ax=ax, palette=colours,
                         dashes={t: ((4, 2) if t == "loss" else "") for t in terms},
                         errorbar=t_errorbar if n_seeds >= 2 else None,
                         markers=len(df["epoch"].unique()) <= 12, markersize=4)
            v = df["value"]
            if (v > 0).all() and v.max() / v.min() > 30:  # terms on different scales
                ax.set_yscale("log")
            ax.set_title(f"{label} ({n_seeds} seed{'s' if n_seeds > 1 else ''})", fontsize=10)
            ylabel = "loss (mean, 95% t-interval band)" if n_seeds >= 2 else "loss"
            ax.set_ylabel(ylabel if ax in axes[::cols] else "")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=8, title=None, loc="best", framealpha=0.8)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
    fig.suptitle("Training loss terms and their weighted total ('loss', dashed), mean per epoch")
    return save(fig, path)


def plot_metrics(runs: pd.DataFrame, path: Path, metrics: list[str] | None = None) -> Path | None:
    """Bars of each method's test metrics (default: :func:`bar_metrics`, the rankable ones), the
    mean over seeds with its 95% CI where there are 2 seeds or more; None if no metric has a value."""
    import seaborn as sns

    metrics = [m for m in (metrics or bar_metrics()) if m in runs.columns and runs[m].notna().any()]
    if not metrics:
        return None
    short = short_labels(runs)
    long = runs.melt(id_vars=["label", "seed"], value_vars=metrics, var_name="metric", value_name="value").dropna()
    long["label"] = long["label"].map(short)
    labels = [short[lab] for lab in method_labels(runs)]
    fig = figure(max(7.0, 1.25 * len(labels) * max(len(metrics), 3) / 3 + 2.5), 4.6)
    with style():
        ax = fig.subplots()
        errorbar, words = seeds_note(runs)
        sns.barplot(data=long, x="label", y="value", hue="metric", order=labels, hue_order=metrics,
                    errorbar=errorbar, capsize=0.08, err_kws={"linewidth": 1}, ax=ax, palette=palette(len(metrics)))
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("")
        ax.set_ylabel("mean over seeds" if errorbar else "value (one seed)")
        if max(map(len, labels)) * len(labels) > 60:
            ax.tick_params(axis="x", labelrotation=20)
            for t in ax.get_xticklabels():
                t.set_horizontalalignment("right")
        ax.legend(title=None, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    n = runs.groupby("label")["seed"].nunique()
    seeds = (f"{int(n.min())}–{int(n.max())} seeds per method" if n.min() != n.max()
             else f"{int(n.min())} seed{'s' if n.min() > 1 else ''} per method")
    fig.suptitle(f"Test metrics ({seeds}" + (f"; error bars: the {words})" if errorbar else ")"))
    return save(fig, path)


def plot_results(results_dir: Path, out: Path | None = None, projection: str = "tsne", fmt: str = "png",
                 dpi: int = 150) -> list[Path]:
    """Draw every figure for each dataset under results_dir; returns the written files.

    Figures go to ``<dataset folder>/plots/``; with ``out``, to ``out`` (one dataset) or
    ``out/<dataset folder name>/`` (several datasets); as ``fmt`` (png, pdf, svg) at ``dpi``.
    """
    with figure_format(fmt, dpi):
        return _plot_results(results_dir, out, projection)


def _plot_results(results_dir: Path, out: Path | None, projection: str) -> list[Path]:
    if projection not in PROJECTIONS:
        raise DMLBenchError(f"unknown projection {projection!r}; use one of: {', '.join(PROJECTIONS)}")
    runs = runs_of(Path(results_dir))
    datasets = list(dict.fromkeys(runs["dataset_dir"]))
    written: list[Path] = []
    for ds in datasets:
        mine = runs[runs["dataset_dir"] == ds].reset_index(drop=True)
        if out is None:
            folder = Path(ds) / "plots"
        else:
            folder = Path(out) / Path(ds).name if len(datasets) > 1 else Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for p in (plot_embeddings(mine, folder / "embeddings.png", projection),
                  plot_reconstructions(mine, folder / "reconstructions.png"),
                  *plot_confusions(mine, folder),
                  plot_loss_curves(mine, folder / "loss_curves.png"),
                  plot_metrics(mine, folder / "metrics.png"),
                  plot_tradeoff(mine, folder / "tradeoff.png")):
            if p is not None:
                written.append(p)
    return written
