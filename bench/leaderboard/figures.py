"""The leaderboard's figures, as SVG files drawn with matplotlib (no pyplot, no GUI backend).

* ``cd_diagram.svg``: Wilcoxon-Holm critical-difference diagram of the average ranks.
* ``gains.svg``: mean gain over the baseline and the reference with bootstrap intervals.
* ``gain_heatmap.svg``: per-cell gain over the reference, with the within-cell marks.

Text stays text in the SVG (searchable, small), and the files carry no date or random ids, so
the same leaderboard gives byte-identical figures. matplotlib is imported only when a figure
is drawn, so the page and the README can name the figures without it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.leaderboard import stats
from bench.leaderboard.aggregate import Leaderboard

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

FIGURES = {
    "cd_diagram.svg": "Critical-difference diagram (Wilcoxon–Holm)",
    "gains.svg": "Mean gain with bootstrap intervals",
    "gain_heatmap.svg": "Gain over the reference in each cell",
}

_COLORS = {stats.BETTER: "#1a7f37", stats.WORSE: "#cf222e", None: "#6e7781", stats.SAME: "#6e7781"}
_RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "kdbench",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def write_figures(board: Leaderboard, folder: str | Path) -> dict[str, Path]:
    """Draw every figure into ``folder``.

    Args:
        board: The leaderboard.
        folder: Output folder (created if needed).

    Returns:
        File name → path of each figure written (the keys of :data:`FIGURES`).
    """
    import matplotlib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    drawers: dict[str, Callable] = {
        "cd_diagram.svg": draw_cd_diagram,
        "gains.svg": draw_gains,
        "gain_heatmap.svg": draw_gain_heatmap,
    }
    out = {}
    with matplotlib.rc_context(_RC):
        for name, draw in drawers.items():
            fig = draw(board)
            path = folder / name
            fig.savefig(path, format="svg", metadata={"Date": None, "Creator": "kdbench"})
            out[name] = path
    return out


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _wrap(text: str, inches: float) -> str:
    """Break a caption to fit a figure ``inches`` wide at 8 pt."""
    return "\n".join(textwrap.wrap(text, max(30, int(inches * 15))))


def _message(text: str):
    fig = _figure(6.0, 1.0)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, color="#57606a")
    return fig


# --------------------------------------------------------------------------------------------
# Critical-difference diagram
# --------------------------------------------------------------------------------------------


def draw_cd_diagram(board: Leaderboard):
    """Average ranks on an axis (1 = best, left); bars join methods no test separates."""
    ranked = board.ranked
    if len(ranked) < 2:
        return _message("No critical-difference diagram: fewer than two methods cover every cell.")
    k = len(ranked)
    names = [e.entry for e in ranked]
    ranks = [e.avg_rank for e in ranked]
    left = names[: (k + 1) // 2]
    right = names[(k + 1) // 2 :]
    rows = max(len(left), len(right))
    groups = board.cd_groups
    step = 0.22
    bar_step = 0.09
    top_gap = 0.18 + bar_step * len(groups)
    height_units = top_gap + step * (rows + 0.5)
    fig = _figure(7.5, 0.9 + 1.25 * height_units)
    ax = fig.add_subplot()
    pad = max(1.2, 0.32 * (k - 1))
    ax.set_xlim(1 - pad, k + pad)
    ax.set_ylim(-height_units, 0.35)
    ax.axis("off")
    ax.plot([1, k], [0, 0], color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.05], color="black", lw=1)
        ax.text(r, 0.09, str(r), ha="center", va="bottom")
    for i, name in enumerate(names):
        x = ranks[i]
        on_left = name in left
        row = left.index(name) if on_left else right.index(name)
        y = -(top_gap + step * (row + 0.5))
        end = 1 - 0.25 * pad if on_left else k + 0.25 * pad
        ax.plot([x, x, end], [0, y, y], color="#24292f", lw=0.8)
        ax.text(
            end + (-0.05 if on_left else 0.05),
            y,
            f"{name} ({x:.2f})" if on_left else f"({x:.2f}) {name}",
            ha="right" if on_left else "left",
            va="center",
        )
    rank_of = dict(zip(names, ranks, strict=True))
    for j, group in enumerate(groups):
        y = -(0.1 + bar_step * j)
        lo, hi = min(rank_of[g] for g in group), max(rank_of[g] for g in group)
        ax.plot([lo - 0.03, hi + 0.03], [y, y], color="#0969da", lw=3, solid_capstyle="round")
    n = board.friedman.n_cells
    need = stats.wilcoxon_min_cells(board.settings.alpha)
    caption = (
        f"Average rank over {n} cells (1 = best). Bars join methods that the Wilcoxon–Holm "
        f"test does not separate (α = {board.settings.alpha:g})."
    )
    if n < need:
        caption += f" Fewer than {need} cells: no pair can be separated."
    fig.suptitle(_wrap(caption, 7.5), fontsize=8, color="#57606a")
    return fig


# --------------------------------------------------------------------------------------------
# Interval plot
# --------------------------------------------------------------------------------------------


def draw_gains(board: Leaderboard):
    """Two panels: mean gain over the baseline and over the reference, with intervals."""
    entries = list(board.entries)
    if not entries:
        return _message("No gains: no method has finished runs.")
    n = len(entries)
    fig = _figure(8.0, 1.1 + 0.27 * n)
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(n)[::-1]
    labels = [e.entry for e in entries]
    panels = (
        (board.baseline.label, "gain_vs_baseline", "vs_baseline"),
        (board.reference.label, "gain_vs_reference", "vs_reference"),
    )
    for ax, (method, attr, across) in zip(axes, panels, strict=True):
        ax.axvline(0, color="#8c959f", lw=0.8)
        for yi, e in zip(y, entries, strict=True):
            ci = getattr(e, attr)
            if math.isnan(ci.estimate):
                continue
            verdict = getattr(e, across)
            color = _COLORS[verdict.verdict.mark if verdict else None]
            ax.plot([ci.low, ci.high], [yi, yi], color=color, lw=2, solid_capstyle="butt")
            ax.plot([ci.estimate], [yi], "o", color=color, ms=4)
        title = f"gain over {method} (points)"
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", color="#eaeef2", lw=0.6)
        ax.set_axisbelow(True)
    axes[0].set_yticks(y, labels)
    axes[0].set_ylim(-0.7, n - 0.3)
    fig.suptitle(
        _wrap(
            f"Mean over cells of the gain in seed means; {board.settings.confidence:.0%} "
            f"stratified bootstrap intervals (seed {board.settings.bootstrap_seed}). Green / "
            "red: Wilcoxon–Holm verdict across cells ▲ better / ▼ worse.",
            8.0,
        ),
        fontsize=8,
        color="#57606a",
    )
    return fig


# --------------------------------------------------------------------------------------------
# Heatmap
# --------------------------------------------------------------------------------------------


def draw_gain_heatmap(board: Leaderboard):
    """Entries × cells, colour = gain over the reference in points, text = gain and mark."""
    ref = board.reference_entry
    if ref is None:
        return _message(f"No heatmap: no {board.reference.wanted} runs to compare with.")
    entries = [e.entry for e in board.entries if e.entry != ref]
    cells = list(board.cells)
    if not entries:
        return _message("No heatmap: no method besides the reference.")
    gains = np.full((len(entries), len(cells)), math.nan)
    texts = [["" for _ in cells] for _ in entries]
    for i, entry in enumerate(entries):
        for j, cell in enumerate(cells):
            r = board.result(cell, entry)
            if r is None or r.vs_reference is None:
                texts[i][j] = "—"
                continue
            gains[i, j] = r.vs_reference.diff
            v = r.vs_reference_verdict
            mark = v.mark if v is not None and v.mark in (stats.BETTER, stats.WORSE) else ""
            if v is not None and v.insufficient:
                mark = "?"
            texts[i][j] = f"{r.vs_reference.diff:+.1f}{mark}"
    width = min(16.0, 2.2 + 0.9 * len(cells))
    fig = _figure(width, 1.4 + 0.3 * len(entries))
    ax = fig.add_subplot()
    finite = np.abs(gains[~np.isnan(gains)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    from matplotlib import colormaps

    cmap = colormaps["RdBu"].with_extremes(bad="#f0f0f0")
    image = ax.imshow(
        np.ma.masked_invalid(gains), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto"
    )
    ax.set_xticks(range(len(cells)), [f"{c.dataset}\n{c.short}" for c in cells], fontsize=7)
    ax.set_yticks(range(len(entries)), entries)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for i in range(len(entries)):
        for j in range(len(cells)):
            value = gains[i, j]
            dark = not math.isnan(value) and abs(value) > 0.6 * limit
            ax.text(
                j,
                i,
                texts[i][j],
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "#24292f",
            )
    fig.colorbar(image, ax=ax, label=f"gain over {ref} (points)", shrink=0.8)
    ax.set_title(
        _wrap(
            f"Gain over {ref} per cell (points): ▲/▼ within-cell "
            f"Holm verdict, ? fewer than {stats.MIN_SEEDS} seeds, — no runs",
            width - 1.5,
        ),
        fontsize=8,
        color="#57606a",
    )
    return fig


# --------------------------------------------------------------------------------------------
# Study suites (PNG: the figure a README shows inline)
# --------------------------------------------------------------------------------------------


def draw_study(result):
    """Accuracy of the studied method against what varies: mean over seeds with its
    t-interval, each seed as a dot; the student alone as a band (mean ± sd); the teacher's
    own accuracy where the runs logged it.

    Args:
        result: A :class:`bench.leaderboard.study.StudyResult`.
    """
    points = result.points
    xs = np.array([p.x for p in points], dtype=float)
    means = np.array([p.summary.mean for p in points])
    low = np.array([p.summary.ci_low for p in points])
    high = np.array([p.summary.ci_high for p in points])
    with matplotlib_rc():
        fig = _figure(6.0, 3.6)
        ax = fig.add_subplot()
        base = result.baseline
        if base is not None and not math.isnan(base.mean):
            spread = 0.0 if math.isnan(base.sd) else base.sd
            ax.axhspan(base.mean - spread, base.mean + spread, color="#d0d7de", alpha=0.6, lw=0)
            ax.axhline(base.mean, color="#57606a", lw=1.2, ls="--")
            ax.text(
                xs.min(),
                base.mean,
                f" {result.baseline_method} (student alone) {base.mean:.2f}",
                va="bottom",
                ha="left",
                color="#57606a",
                fontsize=8,
            )
        teacher = np.array([p.teacher for p in points])
        if np.isfinite(teacher).any():
            ax.plot(xs, teacher, color="#8250df", marker="s", ms=4, lw=1.2, label="teacher")
        spread = (
            np.where(np.isnan(low), 0.0, means - low),
            np.where(np.isnan(high), 0.0, high - means),
        )
        ax.errorbar(
            xs,
            means,
            yerr=spread,
            color="#0969da",
            marker="o",
            ms=5,
            lw=1.6,
            capsize=3,
            label=f"{result.spec.method} (mean, 95% t-interval)",
        )
        ax.set_xlabel(result.spec.axis_label)
        ax.set_ylabel(f"{result.metric} (%)")
        if log_scale(xs):
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.grid(axis="y", color="#eaeef2", lw=0.8)
        ax.legend(loc="lower right", fontsize=8, frameon=False)
        seeds = max(p.summary.n for p in points)
        ax.set_title(
            f"{result.spec.method}: student {result.metric} against the "
            f"{result.spec.axis_label} ({seeds} seeds per point)",
            fontsize=9,
        )
    return fig


def matplotlib_rc():
    """The figures' shared style, as a context manager."""
    import matplotlib

    return matplotlib.rc_context(_RC)


def log_scale(values: np.ndarray) -> bool:
    """Whether values spanning more than a factor of 8 read better on a log axis."""
    positive = values[values > 0]
    return positive.size == values.size and positive.max() / positive.min() > 8


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG with no timestamp, so the same figure gives the same bytes."""
    path = Path(path)
    fig.savefig(path, format="png", dpi=150, metadata={"Software": None})
    return path
