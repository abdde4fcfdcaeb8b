"""Compressed students in a leaderboard: ``compression.csv`` and the "Compression" section of
README.md and index.html, for a suite whose students were pruned or quantised (the sweep's
``compress:`` post-stage, or ``kdbench compress`` on its runs).

``compression.csv`` has one row per compression child run of a finished trial of the
leaderboard's phase (a variant of a trial measured more than once counts once: its latest run):

===================  ==========================================================================
column               meaning
===================  ==========================================================================
run_key              the trial's run key (its row in results.csv)
dataset              dataset name
entry                the trial's method entry as the leaderboard names it (``kd@1``, or
                     ``kd@1[temperature=4.0]`` when the method ran with several settings)
method               method name
teacher              the trial's teacher (empty for methods without one)
student              student architecture
seed                 the student's seed
variant              ``fp32`` (as trained), ``pruned-<sparsity>`` (global magnitude pruning of
                     every convolution and linear weight, no fine-tuning) or ``int8`` (static
                     post-training quantization)
sparsity             measured share of zero convolution and linear weights, in [0, 1]
test_acc             top-1 accuracy of the variant on the test split, in [0, 1]
size_bytes           bytes of its saved state dict (sparse tensors as bit mask + non-zeros)
latency_ms_batch<B>  median CPU latency of one forward pass at batch size B, in milliseconds
                     (one column per batch size measured)
threads              torch threads the latencies were measured with
mlflow_run_id        the child run (empty for rows from elsewhere)
===================  ==========================================================================

Like results.csv, it is a source: ``kdbench leaderboard --from-csv results.csv OUT_DIR`` reads
the compression.csv beside that results.csv, so the section is rebuilt without MLflow. The
columns that describe the trial (dataset … seed, entry) are taken from the runs table on
every build; a row whose run key is not a finished run of the phase there is left out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.analysis import COMPRESS_KIND, COMPRESSED_KEY_TAG, VARIANT_TAG
from bench.leaderboard import stats
from bench.leaderboard.aggregate import Leaderboard
from bench.leaderboard.formatting import markdown_table, md, md_code
from bench.leaderboard.runs import LeaderboardError, read_text_table
from bench.tracking import _quiet_mlflow, search_all_runs

COMPRESSION_FILE = "compression.csv"
_LATENCY = re.compile(r"^latency_ms_batch(\d+)$")
#: Columns before and after the latency columns, in file order.
HEAD_COLUMNS = (
    "run_key",
    "dataset",
    "entry",
    "method",
    "teacher",
    "student",
    "seed",
    "variant",
    "sparsity",
    "test_acc",
    "size_bytes",
)
TAIL_COLUMNS = ("threads", "mlflow_run_id")
#: Columns a compression.csv must have; the others are taken from results.csv or optional.
REQUIRED = ("run_key", "variant", "sparsity", "test_acc", "size_bytes")
#: The measurements, as the child runs name their metrics.
MEASURED = ("sparsity", "test_acc", "size_bytes")


@dataclass(frozen=True)
class CompressionRow:
    """One row of the section: one variant of one method entry's students.

    Attributes:
        dataset: Dataset name.
        student: Student architecture.
        entry: Method entry.
        variant: ``fp32``, ``pruned-<sparsity>`` or ``int8``.
        accuracy: Test accuracy over the students, in points.
        drop: Mean over the students of the variant's accuracy minus their fp32 accuracy, in
            points (NaN for fp32 itself or without fp32 runs).
        sparsity: Mean measured sparsity.
        size_bytes: Mean size on disk.
        smaller: Mean over the students of fp32 size / the variant's size.
        latency_ms: Batch size → mean latency in milliseconds.
    """

    dataset: str
    student: str
    entry: str
    variant: str
    accuracy: stats.CellSummary
    drop: float
    sparsity: float
    size_bytes: float
    smaller: float
    latency_ms: dict[int, float]


@dataclass(frozen=True)
class CompressionSummary:
    """The section's rows, grouped as shown.

    Attributes:
        rows: Sorted by dataset, student, entry (the main table's order), variant.
        batch_sizes: The latency columns.
        threads: The torch thread counts the latencies were measured with.
        n_runs: Rows of compression.csv behind the section.
    """

    rows: tuple[CompressionRow, ...]
    batch_sizes: tuple[int, ...]
    threads: tuple[int, ...]
    n_runs: int

    @property
    def groups(self) -> list[tuple[str, str]]:
        """The (dataset, student) pairs, in order."""
        return list(dict.fromkeys((r.dataset, r.student) for r in self.rows))


# --------------------------------------------------------------------------------------------
# Reading: MLflow, compression.csv
# --------------------------------------------------------------------------------------------


def compression_from_mlflow(tracking_uri: str, experiment: str) -> pd.DataFrame | None:
    """The FINISHED compression child runs of an experiment, one row each (the trial's own
    columns are filled in later from the runs table); None when there are none."""
    from mlflow.tracking import MlflowClient  # slow import; a rebuild from results.csv skips it

    _quiet_mlflow()
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = f"tags.`kdbench.kind` = '{COMPRESS_KIND}' and attributes.status = 'FINISHED'"
    runs = search_all_runs(client, found.experiment_id, query, ["attributes.start_time ASC"])
    records = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if COMPRESSED_KEY_TAG not in tags or VARIANT_TAG not in tags:
            continue
        record = {
            "run_key": tags[COMPRESSED_KEY_TAG],
            "variant": tags[VARIANT_TAG],
            **{m: float(metrics[m]) for m in MEASURED if m in metrics},
            **{name: float(v) for name, v in metrics.items() if _LATENCY.match(name)},
            "threads": _threads(run.data.params.get("torch_threads", "")),
            "mlflow_run_id": run.info.run_id,
        }
        records.append(record)
    return pd.DataFrame(records) if records else None


def _threads(text: str) -> float:
    try:
        return float(int(text))
    except ValueError:
        return math.nan


def read_compression_csv(path: str | Path) -> pd.DataFrame:
    """Read and check a compression.csv.

    Raises:
        LeaderboardError: A missing column or a malformed number, naming the row, its file
            line and the column.
    """
    path = Path(path)
    raw = read_text_table(path)
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise LeaderboardError(
            f"{path.name}: header row is missing column(s) {', '.join(map(repr, missing))}. "
            f"Required columns: {', '.join(REQUIRED)}."
        )
    out = raw.copy()
    numeric = [c for c in raw.columns if c in (*MEASURED, "threads") or _LATENCY.match(c)]
    for column in numeric:
        out[column] = [
            _number(text.strip(), column, f"{path.name}, row {i + 1} (line {i + 2})")
            for i, text in enumerate(raw[column])
        ]
    for i, (key, variant) in enumerate(zip(out["run_key"], out["variant"], strict=True)):
        if not key.strip() or not variant.strip():
            column = "run_key" if not key.strip() else "variant"
            raise LeaderboardError(
                f"{path.name}, row {i + 1} (line {i + 2}), column {column!r}: empty; every "
                "row names its trial's run key and its variant."
            )
    return out


def _number(text: str, column: str, where: str) -> float:
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise LeaderboardError(
            f"{where}, column {column!r}: {text!r} is not a number. Write a plain number, or "
            "leave it empty when missing."
        ) from None
    if not math.isfinite(value) or value < 0:
        raise LeaderboardError(f"{where}, column {column!r}: {text!r} must be ≥ 0 and finite.")
    if column in ("sparsity", "test_acc") and value > 1:
        raise LeaderboardError(
            f"{where}, column {column!r}: {value} is outside [0, 1]; it is a fraction."
        )
    return value


def beside(results_csv: str | Path) -> pd.DataFrame | None:
    """The compression.csv in the folder of a results.csv, read; None when there is none."""
    path = Path(results_csv).parent / COMPRESSION_FILE
    return read_compression_csv(path) if path.is_file() else None


# --------------------------------------------------------------------------------------------
# The table and its summary
# --------------------------------------------------------------------------------------------


def compression_table(
    board: Leaderboard, runs: pd.DataFrame, measured: pd.DataFrame
) -> pd.DataFrame:
    """compression.csv: the measurements of the leaderboard's finished trials, each with its
    trial's columns from the runs table and its method entry from the leaderboard.

    Args:
        board: The leaderboard.
        runs: The runs table it was built from.
        measured: One row per child run (:func:`compression_from_mlflow` or
            :func:`read_compression_csv`).
    """
    entries = {key: entry for (_, entry), r in board.results.items() for key in r.run_keys}
    trials = runs.drop_duplicates("run_key").set_index("run_key")
    latency = sorted((c for c in measured.columns if _LATENCY.match(c)), key=_batch_size)
    columns = [*HEAD_COLUMNS, *latency, *TAIL_COLUMNS]
    kept = measured[measured["run_key"].isin(entries)]
    kept = kept.drop_duplicates(["run_key", "variant"], keep="last")
    rows = []
    for record in kept.to_dict("records"):
        key = record["run_key"]
        trial = trials.loc[key]
        row = {c: record.get(c, math.nan) for c in columns}
        row.update(
            entry=entries[key],
            dataset=trial["dataset"],
            method=trial["method"],
            teacher=trial["teacher"],
            student=trial["student"],
            seed=int(trial["seed"]),
            mlflow_run_id=record.get("mlflow_run_id", "") or "",
        )
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    if table.empty:
        return table
    order = {e.entry: i for i, e in enumerate(board.entries)}
    table = table.assign(
        _entry=[order.get(e, len(order)) for e in table["entry"]],
        _variant=[variant_order(v) for v in table["variant"]],
    )
    table = table.sort_values(
        ["dataset", "student", "_entry", "entry", "_variant", "seed", "run_key"], kind="stable"
    )
    return table.drop(columns=["_entry", "_variant"]).reset_index(drop=True)


def variant_order(variant: str) -> tuple[int, float, str]:
    """fp32 first, then the pruned variants by sparsity, then int8, then anything else."""
    if variant == "fp32":
        return (0, 0.0, "")
    if variant.startswith("pruned-"):
        try:
            return (1, float(variant[len("pruned-") :]), "")
        except ValueError:
            pass
    if variant == "int8":
        return (2, 0.0, "")
    return (3, 0.0, variant)


def _batch_size(column: str) -> int:
    match = _LATENCY.match(column)
    return int(match.group(1)) if match else 0


def write_compression_csv(table: pd.DataFrame, path: str | Path) -> None:
    """Write compression.csv (numbers at full precision, so it reads back equal)."""
    out = table.copy()
    for column in out.columns:
        if column in (*MEASURED, "threads") or _LATENCY.match(column):
            out[column] = [
                _text(v, integer=column in ("size_bytes", "threads")) for v in out[column]
            ]
    out.to_csv(path, index=False, lineterminator="\n")


def _text(value: float, *, integer: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if integer and float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def summarize(table: pd.DataFrame, confidence: float = 0.95) -> CompressionSummary:
    """The section's rows from compression.csv's table (see :class:`CompressionRow`)."""
    latency = [c for c in table.columns if _LATENCY.match(c)]
    batch_sizes = tuple(_batch_size(c) for c in latency)
    rows = []
    for (dataset, student), group in table.groupby(["dataset", "student"], sort=False):
        base = group[group["variant"] == "fp32"].set_index("run_key")
        for (entry, variant), runs in group.groupby(["entry", "variant"], sort=False):
            acc = runs["test_acc"].astype(float) * 100
            paired = runs[runs["run_key"].isin(base.index)]
            fp32 = base.loc[paired["run_key"]]
            drops = (paired["test_acc"].to_numpy() - fp32["test_acc"].to_numpy()) * 100
            ratios = fp32["size_bytes"].to_numpy() / paired["size_bytes"].to_numpy()
            rows.append(
                CompressionRow(
                    dataset=dataset,
                    student=student,
                    entry=entry,
                    variant=variant,
                    accuracy=stats.cell_summary(acc, confidence),
                    drop=_mean(drops) if variant != "fp32" else math.nan,
                    sparsity=_mean(runs["sparsity"].astype(float)),
                    size_bytes=_mean(runs["size_bytes"].astype(float)),
                    smaller=_mean(ratios),
                    latency_ms={
                        b: _mean(runs[c].astype(float))
                        for b, c in zip(batch_sizes, latency, strict=True)
                    },
                )
            )
    threads = sorted({int(t) for t in table["threads"] if isinstance(t, float) and t == t})
    return CompressionSummary(tuple(rows), batch_sizes, tuple(threads), len(table))


def _mean(values: object) -> float:
    series = pd.Series(values, dtype=float)
    series = series[series.notna()]
    return float(series.mean()) if len(series) else math.nan


# --------------------------------------------------------------------------------------------
# README.md section
# --------------------------------------------------------------------------------------------


def intro(summary: CompressionSummary) -> str:
    """The section's opening sentences (README and index.html)."""
    threads = ", ".join(map(str, summary.threads)) or "unknown"
    return (
        "Each student of the compressed methods measured as trained (fp32), after global "
        "magnitude pruning of its convolution and linear weights to each sparsity (no "
        "fine-tuning) and after int8 post-training quantization: test accuracy in percent "
        "(mean ± sd over its students), its change from the same students' fp32 accuracy in "
        "points, size on disk (sparse tensors as bit mask + non-zeros) and median CPU latency "
        f"of one forward pass (torch threads: {threads})."
    )


def columns(summary: CompressionSummary) -> list[str]:
    """The section's column labels."""
    return [
        "method",
        "variant",
        "sparsity",
        "test acc: mean ± sd (n)",
        "vs fp32",
        "size",
        "× smaller",
        *(f"ms @ batch {b}" for b in summary.batch_sizes),
    ]


def cells(row: CompressionRow) -> list[str]:
    """One row's cells, as text, in :func:`columns` order."""
    a = row.accuracy
    spread = "" if math.isnan(a.sd) else f" ± {a.sd:.2f}"
    return [
        row.entry,
        row.variant,
        f"{row.sparsity:.2f}",
        f"{a.mean:.2f}{spread} ({a.n})",
        _signed(row.drop),
        f"{row.size_bytes / 1e3:,.1f} kB",
        "—" if math.isnan(row.smaller) else f"{row.smaller:.2f}",
        *(f"{row.latency_ms[b]:.2f}" for b in sorted(row.latency_ms)),
    ]


def _signed(points: float) -> str:
    """``-1.34``; a mean that rounds to zero reads ``+0.00``, never ``-0.00``."""
    return "—" if math.isnan(points) else f"{round(points, 2) or 0.0:+.2f}"


def by_variant(summary: CompressionSummary, dataset: str, student: str) -> list[list[str]]:
    """Accuracy against variant, one column per method entry: the header row, then one row
    per variant with each entry's mean accuracy and its change from fp32 in brackets."""
    rows = [r for r in summary.rows if (r.dataset, r.student) == (dataset, student)]
    entries = list(dict.fromkeys(r.entry for r in rows))
    variants = sorted({r.variant for r in rows}, key=variant_order)
    found = {(r.entry, r.variant): r for r in rows}
    table = [["variant", *entries]]
    for variant in variants:
        line = [variant]
        for entry in entries:
            row = found.get((entry, variant))
            if row is None:
                line.append("—")
                continue
            change = "" if math.isnan(row.drop) else f" ({_signed(row.drop)})"
            line.append(f"{row.accuracy.mean:.2f}{change}")
        table.append(line)
    return table


def compression_markdown(summary: CompressionSummary) -> list[str]:
    """The README's "Compression" section."""
    lines = ["## Compression", "", intro(summary), ""]
    align = ["l", "l", "r", "r", "r", "r", "r", *("r" for _ in summary.batch_sizes)]
    for dataset, student in summary.groups:
        if len(summary.groups) > 1:
            lines += [f"### {md(dataset)}: {md(student)}", ""]
        pivot = by_variant(summary, dataset, student)
        if len(pivot[0]) > 2:
            entries = [md_code(c) if i else c for i, c in enumerate(pivot[0])]
            variants = [[md(row[0]), *row[1:]] for row in pivot[1:]]
            lines += [
                "Test accuracy in percent by variant (change from fp32 in points):",
                "",
                *markdown_table(entries, variants, align=["l"] + ["r"] * (len(entries) - 1)),
                "",
            ]
        rows = [
            [md_code(text[0]), md(text[1]), *text[2:]]
            for row in summary.rows
            if (row.dataset, row.student) == (dataset, student)
            for text in [cells(row)]
        ]
        lines += [*markdown_table(columns(summary), rows, align=align), ""]
    lines += [
        f"Every number traces to its runs: [{COMPRESSION_FILE}]({COMPRESSION_FILE}) has one "
        f"row per student and variant ({summary.n_runs} rows), with its trial's run key.",
        "",
    ]
    return lines
