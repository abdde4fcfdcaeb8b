"""The leaderboard's figures, as SVG files drawn with matplotlib (no pyplot, no GUI backend).

* ``cd_diagram.svg``: Wilcoxon-Holm critical-difference diagram of the average ranks.
* ``gains.svg``: mean gain over the baseline and the reference with bootstrap intervals.
* ``gain_heatmap.svg``: per-cell gain over the reference, with the within-cell marks.

Text stays text in the SVG (searchable, small), and the files carry no date or random ids, so
the same leaderboard gives byte-identical figures. matplotlib is imported only when a figure
is drawn, so the page and the README can name the figures without it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
    # Names from run data are text, never TeX: a "$" in a method's name stays a "$".
    "text.parse_math": False,
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
            # The figures are sized to their text; the tight box is the guard that no label a
            # measurement missed is cut at the edge.
            fig.savefig(
                path,
                format="svg",
                metadata={"Date": None, "Creator": "kdbench"},
                bbox_inches="tight",
                pad_inches=_MARGIN,
            )
            out[name] = path
    return out


def svg_size(path: str | Path) -> tuple[float, float]:
    """Width and height in CSS pixels (96 per inch) of an SVG matplotlib wrote.

    Args:
        path: The SVG file.

    Returns:
        (width, height); (0, 0) when the file states no size in points.
    """
    head = Path(path).read_text(encoding="utf-8")[:2000]
    found = re.search(r'<svg[^>]*\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"', head)
    if found is None:
        return 0.0, 0.0
    return float(found.group(1)) * 96 / 72, float(found.group(2)) * 96 / 72


#: Blank border of every figure, in inches.
_MARGIN = 0.08
#: Measured widths are padded by this fraction: a browser drawing the SVG's text with its own
#: copy of the font may lay it out a little wider than matplotlib measured it.
_SLACK = 1.06


def _figure(width: float, height: float, *, layout: Literal["constrained"] | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def text_inches(text: str, size: float) -> float:
    """Width in inches of ``text`` (its longest line) at ``size`` points in the figures' font,
    as matplotlib lays it out, with a little slack for other renderers.

    Args:
        text: One or more lines.
        size: Font size in points.
    """
    from matplotlib.font_manager import FontProperties

    renderer = _renderer()
    prop = FontProperties(family=_RC["font.family"], size=size)
    widest = max(
        renderer.get_text_width_height_descent(line, prop, ismath=False)[0]
        for line in text.split("\n")
    )
    return _SLACK * widest / renderer.dpi


@functools.cache
def _renderer() -> Any:
    """An Agg renderer to measure text with (4 pixels per point: finer than any hinting)."""
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(1, 1, 288)


def _line_inches(size: float) -> float:
    """Height of one line of text at ``size`` points (matplotlib's line spacing is 1.2)."""
    return 1.2 * size / 72


def _wrap(text: str, inches: float, size: float = 8) -> str:
    """Break ``text`` between words into lines at most ``inches`` wide at ``size`` points; a
    word wider than that gets a line of its own (see :func:`_longest_word`)."""
    lines: list[str] = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and text_inches(trial, size) <= inches:
            lines[-1] = trial
        else:
            lines.append(word)
    return "\n".join(lines)


def _longest_word(text: str, size: float) -> float:
    """Width in inches of the widest word of ``text``: no wrapping makes a line narrower."""
    return max((text_inches(word, size) for word in text.split()), default=0.0)


def _lines(text: str) -> int:
    return text.count("\n") + 1


def _message(text: str):
    width = max(6.0, _longest_word(text, 9) + 0.4)
    wrapped = _wrap(text, width - 0.4, 9)
    fig = _figure(width, 0.5 + _line_inches(9) * _lines(wrapped), layout=None)
    fig.text(0.5, 0.5, wrapped, ha="center", va="center", color="#57606a", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# Critical-difference diagram
# --------------------------------------------------------------------------------------------


def draw_cd_diagram(board: Leaderboard):
    """Average ranks on an axis (1 = best, left); bars join methods no test separates.

    Drawn in inches, with no layout engine: the axis gets a width for its ranks and each side
    the width of its longest label, so no name is cut whatever its length.
    """
    ranked = board.ranked
    if len(ranked) < 2:
        return _message("No critical-difference diagram: fewer than two methods cover every cell.")
    k = len(ranked)
    names = [e.entry for e in ranked]
    ranks = [e.avg_rank for e in ranked]
    half = (k + 1) // 2
    labels = [f"{n} ({r:.2f})" for n, r in zip(names[:half], ranks[:half], strict=True)]
    labels += [f"({r:.2f}) {n}" for n, r in zip(names[half:], ranks[half:], strict=True)]
    groups = board.cd_groups
    n = board.friedman.n_cells
    need = stats.wilcoxon_min_cells(board.settings.alpha)
    caption = (
        f"Average rank over {n} cells (1 = best). Bars join methods that the Wilcoxon–Holm "
        f"test does not separate (α = {board.settings.alpha:g})."
    )
    if n < need:
        caption += f" Fewer than {need} cells: no pair can be separated."

    # Horizontal layout, in inches from the left edge.
    side = max(text_inches(label, 9) for label in labels) + 0.35  # a label and its leader
    axis = min(8.0, max(3.0, 0.55 * (k - 1)))
    width = max(2 * side + axis, _longest_word(caption, 8)) + 2 * _MARGIN
    start = (width - axis) / 2  # rank 1
    unit = axis / (k - 1)
    caption = _wrap(caption, width - 2 * _MARGIN, 8)
    # Vertical layout, in inches from the top edge, then flipped.
    axis_y = _MARGIN + _line_inches(8) * _lines(caption) + 0.1 + _line_inches(9) + 0.08
    bar_step, row_step = 0.1, 0.22
    first_row = axis_y + 0.15 + bar_step * len(groups) + row_step / 2
    rows = max(half, k - half)
    height = first_row + row_step * (rows - 0.5) + _MARGIN + 0.05

    fig = _figure(width, height, layout=None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # y grows downwards: inches from the top
    ax.axis("off")

    def x_of(rank: float) -> float:
        return start + (rank - 1) * unit

    ax.text(width / 2, _MARGIN, caption, ha="center", va="top", fontsize=8, color="#57606a")
    ax.plot([x_of(1), x_of(k)], [axis_y, axis_y], color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([x_of(r), x_of(r)], [axis_y, axis_y - 0.06], color="black", lw=1)
        ax.text(x_of(r), axis_y - 0.09, str(r), ha="center", va="bottom")
    for i, (rank, label) in enumerate(zip(ranks, labels, strict=True)):
        on_left = i < half
        y = first_row + row_step * (i if on_left else i - half)
        end = start - 0.25 if on_left else start + axis + 0.25
        ax.plot([x_of(rank), x_of(rank), end], [axis_y, y, y], color="#24292f", lw=0.8)
        ax.text(
            end + (-0.05 if on_left else 0.05),
            y,
            label,
            ha="right" if on_left else "left",
            va="center",
        )
    rank_of = dict(zip(names, ranks, strict=True))
    for j, group in enumerate(groups):
        y = axis_y + 0.12 + bar_step * j
        lo, hi = min(rank_of[g] for g in group), max(rank_of[g] for g in group)
        ax.plot(
            [x_of(lo) - 0.03, x_of(hi) + 0.03],
            [y, y],
            color="#0969da",
            lw=3,
            solid_capstyle="round",
        )
    return fig


# --------------------------------------------------------------------------------------------
# Interval plot
# --------------------------------------------------------------------------------------------


def draw_gains(board: Leaderboard):
    """Two panels: mean gain over the baseline and over the reference, with intervals.

    The figure is as wide as the method names plus two panels, each panel at least as wide as
    its title's longest word, so the layout never runs out of room."""
    entries = list(board.entries)
    if not entries:
        return _message("No gains: no method has finished runs.")
    n = len(entries)
    labels = [e.entry for e in entries]
    titles = [f"gain over {a.label} (points)" for a in (board.baseline, board.reference)]
    panel = max(3.0, *(_longest_word(t, 9) + 0.2 for t in titles))
    titles = [_wrap(t, panel - 0.1, 9) for t in titles]
    width = max(text_inches(label, 9) for label in labels) + 2 * panel + 0.5
    caption = _wrap(
        f"Mean over cells of the gain in seed means; {board.settings.confidence:.0%} "
        f"stratified bootstrap intervals (seed {board.settings.bootstrap_seed}). Green / "
        "red: Wilcoxon–Holm verdict across cells ▲ better / ▼ worse.",
        width - 0.3,
        8,
    )
    title_lines = max(_lines(t) for t in titles)
    height = 0.75 + 0.27 * n + _line_inches(8) * _lines(caption) + _line_inches(9) * title_lines
    fig = _figure(width, height)
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(n)[::-1]
    panels = (("gain_vs_baseline", "vs_baseline"), ("gain_vs_reference", "vs_reference"))
    for ax, title, (attr, across) in zip(axes, titles, panels, strict=True):
        ax.axvline(0, color="#8c959f", lw=0.8)
        for yi, e in zip(y, entries, strict=True):
            ci = getattr(e, attr)
            if math.isnan(ci.estimate):
                continue
            verdict = getattr(e, across)
            color = _COLORS[verdict.verdict.mark if verdict else None]
            ax.plot([ci.low, ci.high], [yi, yi], color=color, lw=2, solid_capstyle="butt")
            ax.plot([ci.estimate], [yi], "o", color=color, ms=4)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", color="#eaeef2", lw=0.6)
        ax.set_axisbelow(True)
    axes[0].set_yticks(y, labels)
    axes[0].set_ylim(-0.7, n - 0.3)
    fig.suptitle(caption, fontsize=8, color="#57606a")
    return fig


# --------------------------------------------------------------------------------------------
# Heatmap
# --------------------------------------------------------------------------------------------


def draw_gain_heatmap(board: Leaderboard):
    """Entries × cells, colour = gain over the reference in points, text = gain and mark.

    Columns are as wide as their cell labels, the figure as wide as the method names plus the
    columns and the colour bar, and at least tall enough for the colour bar's label."""
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
    columns = [f"{c.dataset}\n{c.short}" for c in cells]
    shown = [*columns, *(text for row in texts for text in row)]
    column = max(0.6, *(text_inches(t, 7) + 0.12 for t in shown))
    bar_label = "gain (points)"
    # the colour bar, its tick labels and its label
    bar = 0.25 + max(text_inches(f"{x:+.1f}", 9) for x in (-88.8, 88.8)) + 0.3
    width = max(text_inches(e, 9) for e in entries) + 0.2 + column * len(cells) + bar
    title = (
        f"Gain over {ref} per cell (points): ▲/▼ within-cell Holm verdict, ? fewer than "
        f"{stats.MIN_SEEDS} seeds, — no runs"
    )
    width = max(width, _longest_word(title, 8) + 0.3)
    title = _wrap(title, width - 0.3, 8)
    # rows, at least the colour bar's label (drawn at 0.8 of the rows' height) and the tick labels
    rows = max(0.3 * len(entries), (text_inches(bar_label, 9) + 0.3) / 0.8)
    height = rows + _line_inches(8) * _lines(title) + 2 * _line_inches(7) + 0.45
    fig = _figure(width, height)
    ax = fig.add_subplot()
    finite = np.abs(gains[~np.isnan(gains)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    from matplotlib import colormaps

    cmap = colormaps["RdBu"].with_extremes(bad="#f0f0f0")
    image = ax.imshow(
        np.ma.masked_invalid(gains), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto"
    )
    ax.set_xticks(range(len(cells)), columns, fontsize=7)
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
    fig.colorbar(image, ax=ax, label=bar_label, shrink=0.8)
    ax.set_title(title, fontsize=8, color="#57606a")
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
    seeds = max(p.summary.n for p in points)
    title = (
        f"{result.spec.method}: student {result.metric} against the "
        f"{result.spec.axis_label} ({seeds} seeds per point)"
    )
    with matplotlib_rc():
        width = max(6.0, _longest_word(title, 9) + 0.6)
        title = _wrap(title, width - 0.6, 9)
        fig = _figure(width, 3.4 + _line_inches(9) * _lines(title))
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
        ax.set_title(title, fontsize=9)
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
