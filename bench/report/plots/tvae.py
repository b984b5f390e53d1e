"""The TVAE paper's figures: reconstructions (its Fig. 3) and the triplet-accuracy / reconstruction
trade-off across triplet weights. Generic figures are in :mod:`dmlbench.report.plots.figures`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench.core.io import read_npz
from dmlbench.report.plots.common import RERUN, class_names, figure, first_seed, save, style
from dmlbench.report.stats import t_interval


def _as_image(a: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, dict]:
    """(C,H,W) -> something imshow draws: grey for one channel, RGB for three."""
    if a.shape[0] == 1:
        return a[0], {"cmap": "gray", "vmin": lo, "vmax": hi}
    rgb = np.transpose(a[:3], (1, 2, 0))
    return np.clip((rgb - lo) / max(hi - lo, 1e-8), 0, 1), {}


def plot_reconstructions(runs: pd.DataFrame, path: Path, max_cols: int = 12) -> Path | None:
    """Up to ``max_cols`` test images above each generative method's reconstructions (first seed, VAE first);
    None if no run saved any."""
    first = first_seed(runs)
    first = first.iloc[np.argsort(first["method"].to_numpy() != "vae", kind="stable")]  # VAE, then TVAE, ...
    rows = []
    for r in first.itertuples():
        f = Path(r.run_dir) / "reconstructions.npz"
        if f.exists():
            z = read_npz(f, RERUN, require=("x", "x_hat", "y"))
            rows.append((r.label, z["x"], z["x_hat"], z["y"]))
    if not rows:
        return None
    x, y = rows[0][1], rows[0][3]
    k = min(len(x), max_cols)
    lo, hi = float(min(x.min(), 0.0)), float(max(x.max(), 1.0))
    names = class_names(runs, y[:k])
    grid = [("input", x)] + [(label, x_hat) for label, _, x_hat, _ in rows]
    width = max(1.0 * k + 2.2, 6.0)
    fig = figure(width, 1.05 * len(grid) + 0.6)
    axes = fig.subplots(len(grid), k, squeeze=False)
    for i, (label, imgs) in enumerate(grid):
        for j in range(k):
            ax = axes[i, j]
            img, kw = _as_image(np.asarray(imgs[j], dtype=np.float32), lo, hi)
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if i == 0:
                ax.set_title(names[j], fontsize=9)
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Test images (first of each class) and their reconstructions from z = μ (seed "
                 f"{int(first['seed'].min())})", fontsize=10)
    return save(fig, path)


def _ci(values: pd.Series) -> float:
    """The half-width of the 95% t-interval of the values (NaN with fewer than 2: no error bar)."""
    v = values.dropna().to_numpy(float)
    return t_interval(v)[2] if len(v) >= 2 else float("nan")


def _triplet_weight(cfg: dict) -> float | None:
    w = (cfg.get("method_params") or {}).get("weights") or {}
    return float(w["triplet"]) if "triplet" in w else None


def plot_tradeoff(runs: pd.DataFrame, path: Path) -> Path | None:
    """TVAE configs: triplet accuracy against test reconstruction error, one point per config."""
    if "recon_error" not in runs.columns:
        return None
    tv = runs[runs["method"] == "tvae"].copy()
    tv["w"] = [_triplet_weight(c) for c in tv["config"]]
    tv = tv[tv["w"].notna()]
    if tv["w"].nunique() < 2:
        return None
    ys = [m for m in ("triplet_acc", "triplet_acc_margin") if m in runs.columns]
    cols = ys + ["recon_error"]
    tvg = tv.groupby("label", sort=False).agg(w=("w", "first"), n=("seed", "nunique"),
                                             **{f"{c}_mean": (c, "mean") for c in cols},
                                             **{f"{c}_std": (c, _ci) for c in cols})
    tvg = tvg.sort_values("w", kind="stable")
    vae = runs[runs["method"] == "vae"]
    vaeg = vae.groupby("label", sort=False)[cols].agg(["mean", _ci]) if len(vae) else None
    if vaeg is not None:
        vaeg.columns = [(c, "mean" if k == "mean" else "std") for c, k in vaeg.columns]
    ambiguous = tvg["w"].duplicated(keep=False)
    fig = figure(5.2 * len(ys) + 0.4, 4.8)
    with style():
        axes = np.atleast_1d(fig.subplots(1, len(ys), squeeze=False)).ravel()
        for ax, y in zip(axes, ys):
            ax.plot(tvg["recon_error_mean"], tvg[f"{y}_mean"], color="0.7", linewidth=1, zorder=1)
            ax.errorbar(tvg["recon_error_mean"], tvg[f"{y}_mean"], xerr=tvg["recon_error_std"],
                        yerr=tvg[f"{y}_std"], fmt="o", color="tab:blue", ecolor="tab:blue", capsize=3,
                        markersize=6, label="TVAE", zorder=3)
            for (label, r), amb in zip(tvg.iterrows(), ambiguous):
                text = f"w={r['w']:g}" + (f" {label.split('#')[-1]}" if amb and "#" in label else "")
                ax.annotate(text, (r["recon_error_mean"], r[f"{y}_mean"]), textcoords="offset points",
                            xytext=(6, 6), fontsize=9, color="tab:blue")
            if vaeg is not None:
                for label, r in vaeg.iterrows():
                    ax.errorbar([r[("recon_error", "mean")]], [r[(y, "mean")]], xerr=[r[("recon_error", "std")]],
                                yerr=[r[(y, "std")]], fmt="s", color="tab:red", capsize=3, markersize=6,
                                label=label if label != "vae" else "VAE (w=0)", zorder=3)
            ax.set_xlabel("test reconstruction error (squared L2 per image; lower is better)")
            ax.set_ylabel(y.replace("_", " ") + " (higher is better)")
            ax.margins(x=0.15, y=0.15)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=len(names), frameon=False)
    lo, hi = int(tvg["n"].min()), int(tvg["n"].max())
    seeds = f"{hi} seed{'s' if hi > 1 else ''}" if lo == hi else f"{lo}–{hi} seeds per point"
    bars = "error bars: 95% CI" if hi >= 2 else "no error bars"
    fig.suptitle(f"TVAE: triplet accuracy against test reconstruction error for each triplet weight w "
                 f"(mean over {seeds}; {bars})", fontsize=10)
    return save(fig, path)
