"""What every figure shares: the figure and its atomic save, the style and palette, the panel grid,
and reading the runs (one per method configuration, class names, a run's history).

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend);
matplotlib and seaborn are imported where a figure is drawn, so reading results stays light.
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import atomic_write_bytes, read_npz
from dmlbench.evaluation.metrics import METRICS, default_metrics
from dmlbench.report.results import load_runs
from dmlbench.report.stats import t_interval
from dmlbench.running.layout import slug

# A run's saved arrays are its own: a damaged one is made again by re-running that run.
RERUN = "re-run the bench run command that made it (it re-makes a run whose files cannot be read; if it skips the run, delete the run's metrics.json first)"

# history.csv's bookkeeping columns: never drawn as a loss.
NOT_LOSS_COLUMNS = {"epoch", "step", "lr", "seconds", "images_per_s"}
FORMATS = ("png", "pdf", "svg")
# The file format and resolution every figure is saved with (figure_format sets them for a block).
_FORMAT: ContextVar[tuple[str, int]] = ContextVar("figure_format", default=("png", 150))


@contextmanager
def figure_format(fmt: str = "png", dpi: int = 150):
    """Save the figures drawn in this block as ``fmt`` (png, pdf or svg) at ``dpi``."""
    if fmt not in FORMATS:
        raise DMLBenchError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    if not 30 <= dpi <= 1200:
        raise DMLBenchError(f"--dpi {dpi} must be between 30 and 1200 (150 for the screen, 300 for print)")
    token = _FORMAT.set((fmt, dpi))
    try:
        yield
    finally:
        _FORMAT.reset(token)


def figure(width: float, height: float):
    """A constrained-layout matplotlib figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_FORMAT.get()[1], layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: Path) -> Path:
    """Write the figure atomically, in the block's format (:func:`figure_format`; the path's suffix
    follows it) and resolution; returns the path written."""
    fmt, dpi = _FORMAT.get()
    path = Path(path).with_suffix(f".{fmt}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, metadata={"Software": None} if fmt == "png" else None)
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
    """The registry's default metrics that are fractions in [0, 1] (bars share one axis) and can be
    ranked (a metric that depends on the embedding's scale is no bar beside the others)."""
    return [m for m in default_metrics() if METRICS.get(m).higher_is_better and METRICS.get(m).kind != "info"
            and METRICS.get(m).comparable]


def t_errorbar(values) -> tuple[float, float]:
    """The 95% Student-t interval of the values (seaborn's ``errorbar`` callable): the interval
    the tables print, not seaborn's bootstrap, which two or three seeds make meaningless."""
    v = np.asarray(values, float)
    mean, _, half = t_interval(v[~np.isnan(v)]) if np.isfinite(v).sum() >= 2 else (float(np.nanmean(v)), 0.0, 0.0)
    half = 0.0 if np.isnan(half) else half
    return mean - half, mean + half


def seeds_note(runs: pd.DataFrame):
    """(seaborn errorbar, its words): the 95% t-interval over seeds where some method has 2 seeds
    or more, else none (one seed has no spread to show)."""
    if len(runs) and runs.groupby("label")["seed"].nunique().max() >= 2:
        return t_errorbar, "95% t-interval"
    return None, "one seed: no error bars"


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


def short_labels(runs: pd.DataFrame) -> dict[str, str]:
    """Labels for axes: a method's name where it has one configuration here (``tvae (tuned)`` for a
    tuned one), else the table's full label, which tells its configurations apart."""
    out = {}
    per_method = runs.groupby("method")["label"].nunique()
    for label, method in dict(zip(runs["label"], runs["method"])).items():
        if per_method[method] == 1:
            out[label] = method + (" (tuned)" if "[tuned" in label else "")
        else:
            out[label] = label
    return out


def first_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per method configuration: seed 0, or the lowest seed."""
    return runs.sort_values("seed", kind="stable").groupby("label", sort=False).head(1) \
        .set_index("label").loc[method_labels(runs)].reset_index()


def test_embeddings(first: pd.DataFrame) -> list[tuple]:
    """``(label, seed, test embeddings, test labels)`` of each run of ``first`` that kept its
    embeddings.npz (a run made elsewhere may not have)."""
    out = []
    for r in first.itertuples():
        f = Path(r.run_dir) / "embeddings.npz"
        if f.exists():
            z = read_npz(f, RERUN, require=("test_emb", "test_y"))
            out.append((r.label, r.seed, z["test_emb"], z["test_y"]))
    return out


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
