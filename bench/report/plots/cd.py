"""Critical-difference diagram (Demšar 2006, JMLR 7:1-30, Fig. 1-2).

:func:`cd_diagram` draws the result of :func:`dmlbench.report.stats.friedman_nemenyi`: a rank axis
(rank 1, the best, on the left), each method hanging from its average rank with its name and rank,
the critical difference as a bar above the axis, and thick bars joining the groups of methods whose
average ranks differ by less than CD (:func:`cd_cliques`, methods not significantly different by
the Nemenyi test). The PNG is written atomically (:func:`dmlbench.core.io.atomic_write_bytes`).

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dmlbench.core.io import atomic_write_bytes

__all__ = ["cd_cliques", "cd_diagram"]

_AXIS_IN = 4.0  # width of the rank axis, inches
_CHAR_IN = 0.075  # approximate width of one label character at the font size used, inches
_ROW_IN = 0.28  # vertical step between method labels, inches
_CLIQUE_IN = 0.12  # vertical step between clique bars, inches


def cd_cliques(ranks: Mapping[str, float], cd: float) -> list[list[str]]:
    """Maximal groups of at least two methods whose average ranks span less than ``cd``.

    Methods are sorted by rank (then name); for each method the group runs to the last method whose
    rank is less than ``cd`` above it, and groups contained in an earlier one are dropped. Every
    group is a run of consecutive methods in rank order, listed best first, and the groups are
    listed by their best member. Two methods whose ranks differ by exactly ``cd`` or more are
    significantly different (Nemenyi) and never share a group. A NaN ``cd`` gives no groups.
    """
    order = sorted(ranks, key=lambda m: (float(ranks[m]), str(m)))
    r = [float(ranks[m]) for m in order]
    cliques: list[list[str]] = []
    last_end = -1
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and r[j + 1] - r[i] < cd:
            j += 1
        if j > i and j > last_end:  # a group ending no later than the previous one is inside it
            cliques.append(order[i : j + 1])
            last_end = j
    return cliques


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def cd_diagram(result: Mapping[str, Any], path: Path | str, title: str = "") -> None:
    """Draw the critical-difference diagram of ``result`` (from
    :func:`dmlbench.report.stats.friedman_nemenyi`; it needs ``avg_ranks`` and ``cd``, and shows
    ``n_blocks``, ``p_value`` and ``alpha`` when present) and write it to ``path`` as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranks = {str(m): float(v) for m, v in dict(result["avg_ranks"]).items()}
    if len(ranks) < 2:
        raise ValueError("a critical-difference diagram needs at least two methods")
    cd = float(result["cd"])
    k = len(ranks)
    order = sorted(ranks, key=lambda m: (ranks[m], m))
    cliques = cd_cliques(ranks, cd)

    n_left = (k + 1) // 2
    left, right = order[:n_left], order[n_left:][::-1]  # right side listed from the worst outwards
    labels = {m: f"{m} ({ranks[m]:.2f})" for m in order}
    label_in = _CHAR_IN * max(len(s) for s in labels.values()) + 0.25

    # x in rank units, y in inches (downwards); the axes fill the figure
    lo, hi = 1.0, float(k)
    per_in = (hi - lo) / _AXIS_IN
    xmin, xmax = lo - (label_in + 0.15) * per_in, hi + (label_in + 0.15) * per_in
    top = 0.35 + (0.3 if title else 0.0) + (0.2 if "n_blocks" in result else 0.0)
    y_cd = top + 0.15
    y_axis = y_cd + 0.45
    y_cliques = y_axis + 0.2
    y_first = y_cliques + _CLIQUE_IN * len(cliques) + 0.15
    height = y_first + _ROW_IN * max(len(left), len(right)) + 0.1
    width = _AXIS_IN + 2 * (label_in + 0.15)

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(height, 0.0)
    ax.set_axis_off()
    line = dict(color="black", linewidth=0.9, solid_capstyle="butt")

    # heading
    y = 0.1
    if title:
        ax.text((xmin + xmax) / 2, y, title, ha="center", va="top", fontsize=11, weight="bold")
        y += 0.3
    if "n_blocks" in result:
        alpha = result.get("alpha", 0.05)
        sub = f"N = {result['n_blocks']}, k = {k}, Friedman p = {_fmt_p(result.get('p_value'))}, CD = {cd:.2f} (α = {alpha:g})"
        ax.text((xmin + xmax) / 2, y, sub, ha="center", va="top", fontsize=8)

    # CD bar
    if math.isfinite(cd):
        ax.plot([lo, lo + cd], [y_cd, y_cd], **line)
        for x in (lo, lo + cd):
            ax.plot([x, x], [y_cd - 0.05, y_cd + 0.05], **line)
        ax.text(lo + cd / 2, y_cd - 0.07, "CD", ha="center", va="bottom", fontsize=8)

    # rank axis with ticks at integers and halves
    ax.plot([lo, hi], [y_axis, y_axis], **line)
    for t in range(1, k + 1):
        ax.plot([t, t], [y_axis - 0.1, y_axis], **line)
        ax.text(t, y_axis - 0.12, str(t), ha="center", va="bottom", fontsize=8)
        if t < k:
            ax.plot([t + 0.5, t + 0.5], [y_axis - 0.05, y_axis], **line)

    # methods hanging from their ranks
    for side, members in (("left", left), ("right", right)):
        for i, m in enumerate(members):
            yy = y_first + _ROW_IN * i
            end = lo - 0.1 * per_in if side == "left" else hi + 0.1 * per_in
            ax.plot([ranks[m], ranks[m], end], [y_axis, yy, yy], **line)
            ax.text(
                end - 0.05 * per_in if side == "left" else end + 0.05 * per_in,
                yy,
                labels[m],
                ha="right" if side == "left" else "left",
                va="center",
                fontsize=9,
            )

    # groups not significantly different
    for i, group in enumerate(cliques):
        yy = y_cliques + _CLIQUE_IN * i
        ax.plot(
            [ranks[group[0]] - 0.03, ranks[group[-1]] + 0.03],
            [yy, yy],
            color="black",
            linewidth=3.0,
            solid_capstyle="round",
        )

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())
