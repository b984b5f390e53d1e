"""What every figure shares: the figure and its atomic save, the style and palette, the panel grid,
and reading the runs (one per method configuration, class names, a run's history).

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend);
matplotlib and seaborn are imported where a figure is drawn, so reading results stays light.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.core.io import atomic_write_bytes
from dmlbench.evaluation.metrics import METRICS, default_metrics
from dmlbench.report.results import load_runs
from dmlbench.running.layout import slug

# A run's saved arrays are its own: a damaged one is made again by re-running that run.
RERUN = "re-run the bench run command that made it (it re-makes a run whose files cannot be read; if it skips the run, delete the run's metrics.json first)"

NOT_LOSS_COLUMNS = {"epoch", "lr", "seconds", "images_per_s"}


def figure(width: float, height: float):
    """A constrained-layout matplotlib figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: Path) -> Path:
    """Write the figure as a PNG, atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def style():
    """The seaborn style every figure is drawn in (a context manager)."""
    import seaborn as sns

    return sns.axes_style("whitegrid")


def palette(n: int):
    """``n`` distinct colours: tab10, tab20, then husl."""
    import seaborn as sns

    if n <= 10:
        return sns.color_palette("tab10", n)
    if n <= 20:
        return sns.color_palette("tab20", n)
    return sns.color_palette("husl", n)


def bar_metrics() -> list[str]:
    """The registry's default metrics that are fractions in [0, 1] (bars share one axis)."""
    return [m for m in default_metrics() if METRICS.get(m).higher_is_better and METRICS.get(m).kind != "info"]


def grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, columns) of a panel grid for ``n`` panels."""
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def runs_of(results_dir: Path) -> pd.DataFrame:
    """The complete runs under ``results_dir``, labelled and ordered as in the table."""
    return load_runs(results_dir)


def method_labels(runs: pd.DataFrame) -> list[str]:
    """The method configurations' labels, in the table's order."""
    return list(dict.fromkeys(runs["label"]))


def first_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per method configuration: seed 0, or the lowest seed."""
    return runs.sort_values("seed", kind="stable").groupby("label", sort=False).head(1) \
        .set_index("label").loc[method_labels(runs)].reset_index()


def class_names(runs: pd.DataFrame, ids: np.ndarray) -> list[str]:
    """Names for class ids, from config.json's data info where it has them, else the ids."""
    for cfg in runs["config"]:
        info = cfg.get("data") or {}
        names = info.get("class_names")
        if names is None and isinstance(info.get("classes"), list):
            names = info["classes"]
        if names:
            return [str(names[int(c)]) if 0 <= int(c) < len(names) else str(c) for c in ids]
    return [str(int(c)) for c in ids]


def file_slug(text: str) -> str:
    """A label as a file name part."""
    return slug(text)
