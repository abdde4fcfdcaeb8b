"""``index.html``: one static page that opens from disk, with no server and no network.

Everything is inline (CSS, a small script, the data as HTML); the figures are linked
relatively from ``figures/``. The page works without the script (all tables are plain HTML,
drill-downs are ``<details>`` or hidden rows); the script adds sorting on every table header
and the per-method drill-down toggles. Numbers link to their MLflow runs when the tracking
server's URL is known.

The page fits any window from about 800 px wide: the verdict sentence comes first, every table
scrolls sideways inside its own frame (the methods table keeps its rank and method columns in
view, and its header in view within a frame of 85 % of the window's height), a legend defines
each column of the methods table, and the figures scale down to the page's width.
"""

from __future__ import annotations

import json
import math
from html import escape
from urllib.parse import quote

from bench.leaderboard import formatting as fmt
from bench.leaderboard import stats
from bench.leaderboard.aggregate import CellResult, EntrySummary, Leaderboard
from bench.leaderboard.compression import COMPRESSION_FILE, CompressionSummary
from bench.leaderboard.compression import by_variant as compression_by_variant
from bench.leaderboard.compression import cells as compression_cells
from bench.leaderboard.compression import columns as compression_columns
from bench.leaderboard.compression import intro as compression_intro
from bench.leaderboard.figures import FIGURES
from bench.leaderboard.models import (
    BATCH_SIZES,
    HEADER,
    ModelsTable,
    cell_cost,
    measurement_text,
    problem_lines,
    row_cells,
)


def render_html(
    board: Leaderboard,
    *,
    mlflow_url: str | None = None,
    models: ModelsTable | None = None,
    compression: CompressionSummary | None = None,
    figure_sizes: dict[str, tuple[float, float]] | None = None,
) -> str:
    """The whole page.

    Args:
        board: The leaderboard.
        mlflow_url: Base URL of the MLflow UI (e.g. ``http://head:5000``); with it, every
            cell mean links to its runs and every seed value to its run.
        models: The teachers' and students' costs (a Models section), or None.
        compression: The compressed students' section, when the suite has one.
        figure_sizes: File name → (width, height) in CSS pixels of each figure written
            (:func:`bench.leaderboard.figures.svg_size`); a wide one gets a row of its own.

    Returns:
        The HTML text.
    """
    links = _Links(mlflow_url)
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>kdbench leaderboard: {escape(board.name)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>kdbench leaderboard: {escape(board.name)}</h1>",
        f'<p class="meta">{escape(_meta_line(board))}</p>',
        f'<p id="verdict">{_inline_code(fmt.verdict_line(board))}</p>',
        "</header>",
        "<main>",
        _notes(board),
        _main_table(board, links),
        _retired(board),
        _figures(figure_sizes or {}),
        _models(models) if models is not None else "",
        _compression(compression),
        _cells(board, links, models),
        _pairwise(board),
        _how_to_read(board),
        _settings(board),
        "</main>",
        f"<script>{_JS}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(p for p in parts if p)


def _meta_line(board: Leaderboard) -> str:
    return (
        f"{board.n_used} finished runs of phase “{board.settings.phase}” "
        f"({board.n_runs} in results.csv) · {len(board.cells)} cells · "
        f"{len(board.entries)} methods · {fmt.metric_name(board)} (%)"
    )


class _Links:
    """MLflow UI links, or none when the URL is unknown."""

    def __init__(self, base: str | None) -> None:
        self.base = base.rstrip("/") if base else None

    def run(self, experiment_id: str, run_id: str) -> str | None:
        if not self.base or not run_id or not experiment_id:
            return None
        return f"{self.base}/#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}"

    def runs(self, result: CellResult) -> str | None:
        ids = [s.mlflow_run_id for s in result.seeds if s.mlflow_run_id]
        exps = sorted({s.mlflow_experiment_id for s in result.seeds if s.mlflow_experiment_id})
        if not self.base or not ids or len(ids) != len(result.seeds):
            return None
        if len(ids) == 1:
            return self.run(exps[0], ids[0])
        query = f"runs={quote(json.dumps(ids))}&experiments={quote(json.dumps(exps))}"
        return f"{self.base}/#/compare-runs?{query}"


def _a(text: str, href: str | None, title: str | None = None) -> str:
    """A link when there is somewhere to go; the title (e.g. a run key) shows on hover."""
    t = f' title="{escape(title)}"' if title else ""
    if not href:
        return f"<span{t}>{escape(text)}</span>" if title else escape(text)
    return f'<a href="{escape(href)}"{t}>{escape(text)}</a>'


def _id(prefix: str, name: str) -> str:
    return prefix + "-" + "".join(c if c.isalnum() else "_" for c in name)


def _num(x: float) -> str:
    return "" if x is None or math.isnan(x) else repr(round(float(x), 6))


def _td(content_html: str, sort: str | float | None = None, cls: str = "") -> str:
    attrs = ""
    if sort is not None:
        attrs += f' data-sort="{escape(sort if isinstance(sort, str) else _num(sort))}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{content_html}</td>"


def _verdict_html(text: str) -> str:
    """A verdict with its mark coloured; insufficient data in grey italics."""
    if text.startswith(stats.BETTER):
        cls = "better"
    elif text.startswith(stats.WORSE):
        cls = "worse"
    elif text.startswith(stats.SAME):
        cls = "same"
    elif text == fmt.DASH:
        return escape(text)
    else:
        cls = "insufficient"
    return f'<span class="{cls}">{escape(text)}</span>'


def _verdict_sort(verdict: stats.Verdict | None, p: float) -> float | None:
    """Strongest "better" first when sorted descending; no verdict sorts last."""
    if verdict is None or verdict.mark is None:
        return None
    p = 1.0 if math.isnan(p) else p
    if verdict.mark == stats.BETTER:
        return 2.0 - p
    if verdict.mark == stats.WORSE:
        return -1.0 + p
    return 0.5


def _header(columns: list[tuple[str, str, str]]) -> str:
    """columns: (label, type "num"|"text", first sort direction)."""
    cells = []
    for label, kind, first in columns:
        cells.append(
            f'<th scope="col" data-type="{kind}" data-first="{first}">'
            f'<button type="button">{escape(label)}</button></th>'
        )
    return "<thead><tr>" + "".join(cells) + "</tr></thead>"


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _notes(board: Leaderboard) -> str:
    if not board.notes:
        return ""
    items = "".join(f"<li>{_inline_code(n)}</li>" for n in board.notes)
    return f'<section id="notes"><h2>Notes</h2><ul>{items}</ul></section>'


def _inline_code(text: str) -> str:
    pieces = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _main_table(board: Leaderboard, links: _Links) -> str:
    s = board.settings
    base, ref = board.baseline.label, board.reference.label
    side = fmt.side_columns(board)
    keyed = [
        ("rank", "Rank", "num", "ascending"),
        ("method", "Method", "text", "ascending"),
        ("coverage", "Coverage", "num", "descending"),
        ("gain_baseline", f"Gain vs {base}", "num", "descending"),
        ("gain_reference", f"Gain vs {ref}", "num", "descending"),
        ("across", f"vs {ref} across cells", "num", "descending"),
        ("wtl", f"W/T/L vs {ref}", "num", "descending"),
        ("p_improvement", f"P(> {ref})", "num", "descending"),
        ("avg_rank", "Avg rank", "num", "ascending"),
        ("seeds", "Seeds", "num", "descending"),
        *((metric, label, "num", first) for label, metric, first, _ in side),
        ("cost", "Cost", "num", "ascending"),
    ]
    columns = [(label, kind, first) for _, label, kind, first in keyed]
    rows = []
    n_cells = len(board.cells)
    for e in board.entries:
        drill_id = _id("drill", e.entry)
        across = e.vs_reference
        wtl_compared = e.entry != board.reference_entry and board.reference_entry is not None
        cells = [
            _td(escape(fmt.rank(e)), e.rank if e.rank is not None else ""),
            _td(
                f'<button type="button" class="drill" aria-expanded="false" '
                f'aria-controls="{drill_id}">{escape(e.entry)}</button>',
                e.entry,
                "method",
            ),
            _td(escape(fmt.coverage(e, n_cells)), e.coverage / max(n_cells, 1)),
            _td(_gain_html(e.gain_vs_baseline), e.gain_vs_baseline.estimate, "gain"),
            _td(_gain_html(e.gain_vs_reference), e.gain_vs_reference.estimate, "gain"),
            _td(
                _verdict_html(fmt.across_verdict(across)),
                _verdict_sort(across.verdict, across.p_holm) if across else None,
                "across",
            ),
            _td(
                escape(fmt.wtl(e.wtl_reference, compared=wtl_compared)),
                (e.wtl_reference.wins - e.wtl_reference.losses) if wtl_compared else "",
            ),
            _td(escape(fmt.probability(e.p_improvement)), e.p_improvement.estimate, "num"),
            _td(escape(fmt.number(e.avg_rank)), e.avg_rank, "num"),
            _td(escape(fmt.seeds(e)), e.seeds_min),
            *(_percent_td(e.side[m]) for _, m, _, _ in side),
            _td(
                escape(fmt.cost(e, board.baseline_entry)),
                e.time_ratio if not math.isnan(e.time_ratio) else e.train_seconds,
            ),
        ]
        rows.append(
            f'<tr class="entry" id="{_id("entry", e.entry)}" data-entry="{escape(e.entry)}">'
            + "".join(cells)
            + "</tr>"
        )
        rows.append(
            f'<tr class="drill-row" id="{drill_id}" hidden><td colspan="{len(columns)}">'
            + _method_drill(board, e, links)
            + "</td></tr>"
        )
    labels = [label for label, _, _, _ in side]
    caption = (
        f"One row per method@version. Gains in points with {s.confidence:.0%} bootstrap "
        "intervals"
        + (f"; {', '.join(labels)} in percent, averaged over covered cells" if labels else "")
        + ". Click a header to sort, a method to see its cells; every column is defined "
        "below the table."
    )
    return (
        '<section id="methods"><h2>Methods</h2>'
        f'<p class="hint">{escape(caption)}</p>'
        '<div class="scroll" id="main-scroll" tabindex="0" role="region" '
        'aria-label="Methods table">'
        '<table id="main" class="sortable">'
        + _header(columns)
        + "<tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
        + _legend(board, [(key, label) for key, label, _, _ in keyed])
        + "</section>"
    )


def _legend(board: Leaderboard, columns: list[tuple[str, str]]) -> str:
    """What every column of the methods table holds."""
    definitions = fmt.column_definitions(board)
    items = "".join(
        f"<dt>{escape(label)}</dt><dd>{_inline_code(definitions[key])}</dd>"
        for key, label in columns
    )
    return f'<dl class="legend" id="legend">{items}</dl>'


def _gain_html(ci: stats.BootstrapCI) -> str:
    """A gain with its interval; a narrow table breaks the line before the interval only."""
    estimate, _, interval = fmt.interval(ci).partition(" ")
    if not interval:
        return escape(estimate)
    return f'{escape(estimate)} <span class="nowrap">{escape(interval)}</span>'


def _retired(board: Leaderboard) -> str:
    """Entries of method versions the suite no longer runs, apart from the ranked table."""
    if not board.retired:
        return ""
    head = "".join(
        f'<th scope="col">{_inline_code(label)}</th>' for label in fmt.retired_header(board)
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{_inline_code(c)}</td>" for c in row) + "</tr>"
        for row in fmt.retired_rows(board)
    )
    return (
        '<section id="retired"><h2>Retired versions</h2><p class="hint">Runs of a method '
        "version the suite no longer runs (the store still holds them). Not ranked and left "
        "out of every test; their gains are shown for the record.</p>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div></section>"
    )


def _percent_td(fraction: float) -> str:
    return _td(escape(fmt.number(fraction * 100)), fraction, "num")


def _method_drill(board: Leaderboard, e: EntrySummary, links: _Links) -> str:
    results = [board.result(cell, e.entry) for cell in board.cells]
    problems = any(r is not None and r.problems for r in results)
    head = (
        "<thead><tr><th>Cell</th><th>Mean ± sd (n)</th>"
        f"<th>vs {escape(board.reference.label)}</th><th>vs {escape(board.baseline.label)}</th>"
        + ("<th>Did not finish</th>" if problems else "")
        + "</tr></thead>"
    )
    rows = []
    for cell, r in zip(board.cells, results, strict=True):
        cells = [f'<a href="#{_id("cell", cell.slug)}">{escape(cell.label)}</a>']
        if r is None:
            cells += ["no runs", "", ""]
        else:
            cells += [
                _a(fmt.mean_sd_n(r), links.runs(r), "MLflow runs"),
                _verdict_html(fmt.cell_verdict(r.vs_reference_verdict, r.vs_reference)),
                _verdict_html(fmt.cell_verdict(r.vs_baseline_verdict, r.vs_baseline)),
            ]
        if problems:
            cells.append(escape("; ".join(r.problems)) if r is not None else "")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    # The drill-down stays at the left edge of the scrolled methods table.
    return (
        f'<div class="drill-box"><table class="drill-table">{head}<tbody>{"".join(rows)}'
        "</tbody></table></div>"
    )


#: A figure wider than this (CSS pixels) gets a row of its own instead of sharing one.
_WIDE_FIGURE = 760


def _figures(sizes: dict[str, tuple[float, float]]) -> str:
    items = []
    for name, title in FIGURES.items():
        size = sizes.get(name)
        dims = f' width="{size[0]:.0f}" height="{size[1]:.0f}"' if size else ""
        wide = ' class="wide"' if size and size[0] > _WIDE_FIGURE else ""
        items.append(
            f'<figure{wide}><a href="figures/{name}"><img src="figures/{name}"{dims} '
            f'alt="{escape(title)}" loading="lazy"></a><figcaption>{escape(title)}'
            "</figcaption></figure>"
        )
    return '<section id="figures"><h2>Figures</h2>' + "".join(items) + "</section>"


def _models(models: ModelsTable) -> str:
    """The Models section: one sortable row per model, how it was measured underneath."""
    if not models.rows:
        return ""
    kinds = ["text", "text", "text", "num", "num", "num", *("num" for _ in BATCH_SIZES), "num"]
    columns = [(label, kind, "ascending") for label, kind in zip(HEADER, kinds, strict=True)]
    rows = []
    for row in models.rows:
        p = row.profile
        sorts: list[str | float | None] = [None, None, None]
        sorts += (
            [p.num_classes, p.params, p.flops, *(p.latency_ms[b] for b in BATCH_SIZES)]
            if p
            else [""] * (3 + len(BATCH_SIZES))
        )
        sorts += [max((acc for _, acc in row.teacher_acc), default=math.nan)]
        texts = row_cells(row)
        rows.append(
            "<tr>"
            + "".join(
                _td(escape(text), sort, "num" if kind == "num" else "")
                for text, sort, kind in zip(texts, sorts, kinds, strict=True)
            )
            + "</tr>"
        )
    problems = "".join(f"<li>{escape(p)}</li>" for p in problem_lines(models))
    return (
        '<section id="models"><h2>Models</h2>'
        '<p class="hint">One row per teacher and student architecture, input shape and '
        'classes.</p><div class="scroll"><table id="models-table" class="sortable">'
        + _header(columns)
        + "<tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
        + f'<p class="hint">{_inline_code(measurement_text(models))}</p>'
        + (f"<p>Not measured:</p><ul>{problems}</ul>" if problems else "")
        + "</section>"
    )


def _compression(summary: CompressionSummary | None) -> str:
    """The compressed students: one sortable table per dataset and student."""
    if summary is None:
        return ""
    # Method and variant sort as text; the numbers sort best first (accuracy high, size and
    # latency low).
    first = ["ascending", "ascending", "descending", "descending", "descending", "ascending"]
    first += ["descending"] + ["ascending"] * len(summary.batch_sizes)
    labels = compression_columns(summary)
    header = _header(
        [
            (label, "text" if i < 2 else "num", order)
            for i, (label, order) in enumerate(zip(labels, first, strict=True))
        ]
    )
    blocks = []
    for dataset, student in summary.groups:
        rows = []
        for row in summary.rows:
            if (row.dataset, row.student) != (dataset, student):
                continue
            sorts: list[str | float | None] = [
                row.entry,
                row.variant,
                row.sparsity,
                row.accuracy.mean,
                row.drop,
                row.size_bytes,
                row.smaller,
                *(row.latency_ms[b] for b in sorted(row.latency_ms)),
            ]
            text = compression_cells(row)
            rows.append(
                "<tr>"
                + "".join(
                    _td(escape(t), v, "" if i < 2 else "num")
                    for i, (t, v) in enumerate(zip(text, sorts, strict=True))
                )
                + "</tr>"
            )
        caption = f"{dataset}: {student}" if len(summary.groups) > 1 else ""
        pivot = compression_by_variant(summary, dataset, student)
        if len(pivot[0]) > 2:
            blocks.append(
                '<div class="scroll"><table class="compression-by-variant"><caption>'
                + escape(f"{caption + ': ' if caption else ''}Test accuracy (%) by variant, ")
                + escape("change from fp32 in points")
                + "</caption><thead><tr>"
                + "".join(f'<th scope="col">{escape(c)}</th>' for c in pivot[0])
                + "</tr></thead><tbody>"
                + "".join(
                    "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in line) + "</tr>"
                    for line in pivot[1:]
                )
                + "</tbody></table></div>"
            )
        blocks.append(
            '<div class="scroll"><table class="sortable compression">'
            + (f"<caption>{escape(caption)}</caption>" if caption else "")
            + header
            + "<tbody>"
            + "".join(rows)
            + "</tbody></table></div>"
        )
    return (
        '<section id="compression"><h2>Compression</h2>'
        f'<p class="hint">{escape(compression_intro(summary))} One row per student and variant: '
        f'<a href="{COMPRESSION_FILE}">{COMPRESSION_FILE}</a>.</p>' + "".join(blocks) + "</section>"
    )


def _cells(board: Leaderboard, links: _Links, models: ModelsTable | None = None) -> str:
    s = board.settings
    columns = [
        ("Method", "text", "ascending"),
        ("Mean ± sd (n)", "num", "descending"),
        (f"{s.confidence:.0%} t-interval", "num", "descending"),
        (f"vs {board.reference.label}", "num", "descending"),
        (f"vs {board.baseline.label}", "num", "descending"),
        *((label, "num", first) for label, _, first, _ in fmt.side_columns(board)),
        ("Seeds (runs)", "text", "ascending"),
    ]
    problems = any(r.problems for r in board.results.values())
    if problems:
        columns.append(("Did not finish", "text", "ascending"))
    blocks = []
    order = [e.entry for e in board.entries]
    for cell in board.cells:
        rows = []
        for entry in order:
            r = board.result(cell, entry)
            if r is None:
                continue
            seeds = ", ".join(
                _a(
                    f"s{sd.seed}: {sd.value:.2f}",
                    links.run(sd.mlflow_experiment_id, sd.mlflow_run_id),
                    f"run key {sd.run_key}",
                )
                for sd in r.seeds
            )
            rows.append(
                "<tr>"
                + _td(escape(entry), entry, "method")
                + _td(_a(fmt.mean_sd_n(r), links.runs(r), "MLflow runs"), r.summary.mean, "num")
                + _td(escape(fmt.t_interval(r)), r.summary.ci_low, "num")
                + _td(
                    _verdict_html(fmt.cell_verdict(r.vs_reference_verdict, r.vs_reference)),
                    r.vs_reference.diff if r.vs_reference else None,
                )
                + _td(
                    _verdict_html(fmt.cell_verdict(r.vs_baseline_verdict, r.vs_baseline)),
                    r.vs_baseline.diff if r.vs_baseline else None,
                )
                + "".join(_percent_td(r.side[m]) for _, m, _, _ in fmt.side_columns(board))
                + _td(seeds, "", "seeds")
                + (_td(escape("; ".join(r.problems))) if problems else "")
                + "</tr>"
            )
        teacher = board.teacher_acc.get(cell, math.nan)
        summary = cell.label
        if not math.isnan(teacher):
            summary += f" · teacher {teacher:.2f}%"
        cost = cell_cost(models, cell)
        if cost:
            summary += f" · {cost}"
        summary += f" · {len(rows)} methods"
        blocks.append(
            f'<details class="cell" id="{_id("cell", cell.slug)}"><summary>{escape(summary)}'
            f'</summary><div class="scroll"><table class="sortable cell-table">'
            f"{_header(columns)}<tbody>" + "".join(rows) + "</tbody></table></div></details>"
        )
    return (
        '<section id="cells"><h2>Cells</h2><p class="hint">Open a cell for every method’s '
        "seeds, verdicts and run keys.</p>" + "".join(blocks) + "</section>"
    )


def _pairwise(board: Leaderboard) -> str:
    if not board.pairwise:
        return ""
    columns = [
        ("A", "text", "ascending"),
        ("B", "text", "ascending"),
        ("Cells", "num", "descending"),
        ("A wins/ties/losses", "num", "descending"),
        ("Median A − B", "num", "descending"),
        ("p", "num", "ascending"),
        ("p (Holm)", "num", "ascending"),
        ("Verdict for A", "text", "ascending"),
    ]
    rows = []
    for p in board.pairwise:
        rows.append(
            "<tr>"
            + _td(escape(p.a), p.a)
            + _td(escape(p.b), p.b)
            + _td(str(p.n_cells), p.n_cells)
            + _td(f"{p.wins}/{p.ties}/{p.losses}", p.wins - p.losses)
            + _td(escape(fmt.signed(p.median_diff)), p.median_diff, "num")
            + _td(escape(fmt.pvalue(p.pvalue)), p.pvalue, "num")
            + _td(escape(fmt.pvalue(p.p_holm)), p.p_holm, "num")
            + _td(_verdict_html(p.verdict.text), p.verdict.text)
            + "</tr>"
        )
    significant = sum(p.verdict.significant for p in board.pairwise)
    return (
        '<section id="pairwise"><h2>Pairwise comparisons</h2><details><summary>'
        f"Wilcoxon signed-rank tests on cell means, Holm-corrected over all {len(rows)} pairs "
        f"({significant} significant)</summary>"
        f'<div class="scroll"><table class="sortable" id="pairwise-table">{_header(columns)}'
        "<tbody>" + "".join(rows) + "</tbody></table></div></details></section>"
    )


def _how_to_read(board: Leaderboard) -> str:
    text = " ".join(fmt.how_to_read(board))
    return f'<section id="how"><h2>How to read this</h2><p>{_inline_code(text)}</p></section>'


def _settings(board: Leaderboard) -> str:
    s = board.settings
    items = [
        f"phase: {s.phase}; metric: {s.metric}",
        f"baseline: {s.baseline} → {board.baseline_entry or 'absent (no finished run)'}; "
        f"reference: {s.reference} → {board.reference_entry or 'absent (no finished run)'}",
        f"within-cell test: {s.cell_test_name}; Holm within each cell and baseline; "
        f"α = {s.alpha:g}; fewest seeds for a verdict: {stats.MIN_SEEDS}",
        "across cells: Friedman on the methods covering every cell; Wilcoxon signed-rank "
        f"(exact up to {stats.WILCOXON_EXACT_MAX_N} non-tied cells), Holm over all pairs; "
        f"fewest cells for a verdict: {stats.wilcoxon_min_cells(s.alpha)}",
        f"bootstrap: {s.n_boot} replicates, seed {s.bootstrap_seed}, "
        + ("seeds within cells and cells" if s.bootstrap_over_cells else "seeds within cells")
        + f", {s.confidence:.0%} percentile intervals",
        "files: results.csv (every run), summary.csv (the methods table), cells.csv, "
        "pairwise.csv, figures/",
    ]
    lis = "".join(f"<li>{escape(i)}</li>" for i in items)
    return f'<section id="settings"><h2>Settings</h2><ul>{lis}</ul></section>'


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--head:#f6f8fa;--accent:#0969da;
--better:#1a7f37;--worse:#cf222e;--rank:4.6em}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--fg);margin:0;background:#fff;overflow-wrap:break-word}
header,main{max-width:1400px;margin:0 auto;padding:0 20px}
header{padding-top:18px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
.meta,.hint,caption{color:var(--muted)}
#verdict{margin:10px 0 0;padding:8px 12px;border-left:4px solid var(--accent);
background:var(--head);font-size:15px}
caption{text-align:left;padding:4px 0;font-size:12.5px}
#methods>.hint{font-size:12.5px;margin:4px 0}
#notes ul{margin:0;padding-left:20px}
#notes li{margin:3px 0}
.scroll{overflow-x:auto;max-width:100%}
#main-scroll{max-height:85vh;overflow:auto}
table{border-collapse:separate;border-spacing:0;width:100%;font-variant-numeric:tabular-nums;
border-top:1px solid var(--line);border-left:1px solid var(--line)}
th,td{border-right:1px solid var(--line);border-bottom:1px solid var(--line);padding:4px 8px;
text-align:left;vertical-align:top;background:#fff}
thead th{background:var(--head)}
table.sortable>thead th{position:sticky;top:0;z-index:2}
th button{all:unset;cursor:pointer;font-weight:600;display:block}
th button:focus-visible{outline:2px solid var(--accent)}
th[aria-sort=ascending] button::after{content:" ▴"}
th[aria-sort=descending] button::after{content:" ▾"}
td.num,.nowrap{white-space:nowrap}
#main td.across{min-width:9.5em}
#main>thead th:first-child,#main tr.entry>td:first-child{position:sticky;left:0;
width:var(--rank);min-width:var(--rank);max-width:var(--rank)}
#main>thead th:nth-child(2),#main tr.entry>td:nth-child(2){position:sticky;left:var(--rank);
min-width:12em;max-width:18em;box-shadow:inset -2px 0 var(--line)}
#main tr.entry>td:nth-child(-n+2){z-index:1}
#main>thead th:nth-child(-n+2){z-index:3}
tr.entry:hover>td{background:#f6f8fa}
button.drill{all:unset;cursor:pointer;color:var(--accent);font-weight:600;
overflow-wrap:anywhere}
button.drill::before{content:"▸ ";display:inline-block}
button.drill[aria-expanded=true]::before{content:"▾ "}
tr.drill-row>td{background:#fbfcfd;padding:8px 12px 12px 28px}
.drill-box{position:sticky;left:28px;width:max-content;overflow-x:auto;
max-width:min(1300px,calc(100vw - 110px))}
.drill-table{width:auto;font-size:13px}
table.compression-by-variant{width:auto;margin:6px 0 14px}
dl.legend{display:grid;grid-template-columns:fit-content(16em) 1fr;gap:3px 14px;
margin:10px 0 0;font-size:12.5px}
dl.legend dt{font-weight:600}
dl.legend dd{margin:0;color:var(--muted)}
.better{color:var(--better);font-weight:600}
.worse{color:var(--worse);font-weight:600}
.same{color:var(--muted)}
.insufficient{color:var(--muted);font-style:italic}
details.cell{border:1px solid var(--line);border-radius:6px;margin:6px 0;padding:0 10px}
details.cell[open]{padding-bottom:10px}
details summary{cursor:pointer;padding:6px 0;font-weight:600}
td.seeds{font-size:12px}
a{color:var(--accent)}
#figures{display:flex;flex-wrap:wrap;gap:16px}
#figures h2{flex-basis:100%}
figure{margin:0;flex:1 1 560px;min-width:0}
figure.wide{flex-basis:100%}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:12.5px}
code{background:#eff1f3;padding:0 4px;border-radius:4px}
"""

_JS = """
(function () {
  "use strict";
  function key(cell, numeric) {
    var v = cell ? cell.getAttribute("data-sort") : null;
    if (v === null) { v = cell ? cell.textContent.trim() : ""; }
    if (numeric) {
      var x = parseFloat(v);
      return v === "" || isNaN(x) ? null : x;
    }
    return v.toLowerCase();
  }
  function sortBy(th) {
    var table = th.closest("table");
    var headers = Array.prototype.slice.call(th.parentNode.children);
    var col = headers.indexOf(th);
    var numeric = th.getAttribute("data-type") === "num";
    var now = th.getAttribute("aria-sort");
    var dir = now === "ascending" ? "descending" : now === "descending" ? "ascending"
      : (th.getAttribute("data-first") || "ascending");
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var groups = [];
    Array.prototype.forEach.call(body.rows, function (row) {
      if (row.classList.contains("drill-row") && groups.length) {
        groups[groups.length - 1].rows.push(row);
      } else {
        groups.push({rows: [row], k: key(row.cells[col], numeric), i: groups.length});
      }
    });
    var sign = dir === "ascending" ? 1 : -1;
    groups.sort(function (a, b) {
      if (a.k === null || b.k === null) {
        return a.k === b.k ? a.i - b.i : (a.k === null ? 1 : -1);
      }
      if (a.k < b.k) { return -sign; }
      if (a.k > b.k) { return sign; }
      return a.i - b.i;
    });
    groups.forEach(function (g) {
      g.rows.forEach(function (r) { body.appendChild(r); });
    });
  }
  document.querySelectorAll("table.sortable thead th").forEach(function (th) {
    var target = th.querySelector("button") || th;
    target.addEventListener("click", function () { sortBy(th); });
  });
  document.querySelectorAll("button.drill").forEach(function (b) {
    b.addEventListener("click", function () {
      var row = document.getElementById(b.getAttribute("aria-controls"));
      var open = b.getAttribute("aria-expanded") === "true";
      b.setAttribute("aria-expanded", open ? "false" : "true");
      row.hidden = open;
    });
  });
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id ? document.getElementById(id) : null;
    if (el && el.tagName === "DETAILS") { el.open = true; el.scrollIntoView(); }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
})();
"""
