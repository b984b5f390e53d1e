"""The retrieval gallery: the same fixed test queries for every method, each shown with its k
nearest test images under each method's embedding, every neighbour marked right (its class) or
wrong. Digits are shown as they are, photos as thumbnails.

The neighbours are recomputed from each method's saved test embeddings (its first seed) by exact
squared-L2 distance in numpy, ties to the lower id, the query itself left out: a handful of queries
against the test set needs no index. The images are read back from the dataset the runs name in
their config.json (the loaders import no torch).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.core.errors import DMLBenchError
from dmlbench.data import load_dataset
from dmlbench.report.plots.common import class_names, figure, first_seed, save, test_embeddings

log = logging.getLogger("dmlbench")
RIGHT, WRONG = "#1a9850", "#d73027"


def fixed_queries(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` test indices of as many different classes as there are queries (classes spread over the
    label range, one seeded image each): the same for every method and every report."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    chosen = classes[np.linspace(0, len(classes) - 1, min(n, len(classes))).round().astype(int)]
    picks = [int(rng.choice(np.flatnonzero(labels == c))) for c in chosen]
    while len(picks) < n and len(picks) < len(labels):  # fewer classes than queries: more images
        extra = int(rng.integers(len(labels)))
        if extra not in picks:
            picks.append(extra)
    return np.array(picks, dtype=np.int64)


def nearest(emb: np.ndarray, query: int, k: int) -> np.ndarray:
    """The ``k`` nearest rows of ``emb`` to row ``query`` (itself left out), nearest first, ties by id."""
    d = ((emb.astype(np.float64) - emb[query].astype(np.float64)) ** 2).sum(axis=1)
    d[query] = np.inf
    return np.lexsort((np.arange(len(d)), d))[:k]


def test_images(cfg: dict):
    """The test images a run was evaluated on, read back from its dataset (None where the data is
    not on this machine)."""
    try:
        data = load_dataset(cfg["dataset"], data_dir=cfg.get("data_dir") or None, split=cfg.get("split", "standard"),
                            seed=cfg.get("data_seed", 0), options=cfg.get("data_options") or {}, normalize="unit")
    except (DMLBenchError, OSError) as e:
        log.warning("retrieval gallery left out: the images of %s are not here (%s)", cfg["dataset"], e)
        return None
    return data.test


def _show(ax, image: np.ndarray, colour: str | None, thumb: int) -> None:
    """One image (C, H, W uint8) in an axes, with a coloured frame for a neighbour."""
    img = np.transpose(image, (1, 2, 0))
    if img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=max(int(img.max()), 1), interpolation="nearest")
    else:
        if max(img.shape[:2]) > thumb:  # a thumbnail: every k-th pixel, enough to recognise a photo
            step = int(np.ceil(max(img.shape[:2]) / thumb))
            img = img[::step, ::step]
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)


def plot_gallery(runs: pd.DataFrame, path: Path, n_queries: int = 4, k: int = 5, thumb: int = 96) -> Path | None:
    """The gallery figure of the runs' methods (first seed each); None where no run kept its test
    embeddings or the images are not on this machine."""
    first = first_seed(runs)
    panels = [(label, emb, y) for label, _, emb, y in test_embeddings(first)]
    if not panels:
        return None
    part = test_images(first["config"].iloc[0])
    y = panels[0][2]
    if part is None or len(part) != len(y) or not np.array_equal(np.asarray(part.y), y):
        if part is not None:
            log.warning("retrieval gallery left out: the test images here are not the ones the runs saw")
        return None
    queries = fixed_queries(y, n_queries)
    names = class_names(runs, np.unique(y))
    name_of = dict(zip(np.unique(y), names))
    rows = len(queries) * len(panels)
    fig = figure(1.1 * (k + 1) + 1.6, 1.1 * rows + 0.5 * len(queries) + 0.6)
    grid = fig.add_gridspec(rows, k + 2, width_ratios=[1.5, 1, *([1] * k)])
    for qi, q in enumerate(queries):
        for mi, (label, emb, _) in enumerate(panels):
            row = qi * len(panels) + mi
            if mi == 0:
                ax = fig.add_subplot(grid[row:row + len(panels), 0])
                _show(ax, np.asarray(part.images(np.array([q])))[0], None, thumb)
                ax.set_title(f"query: {name_of[y[q]]}", fontsize=8)
            tax = fig.add_subplot(grid[row, 1])
            tax.axis("off")
            tax.text(1.0, 0.5, label if len(label) <= 24 else label[:23] + "…", ha="right", va="center", fontsize=7)
            hits = nearest(emb, int(q), k)
            images = np.asarray(part.images(hits))
            for j, (h, image) in enumerate(zip(hits, images)):
                _show(fig.add_subplot(grid[row, 2 + j]), image, RIGHT if y[h] == y[q] else WRONG, thumb)
    fig.suptitle(f"Retrieval: {len(queries)} fixed test queries, the {k} nearest test images under each method "
                 f"(first seed; frame green: same class, red: another)", fontsize=9)
    return save(fig, path)
