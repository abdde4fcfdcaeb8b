"""The runs table: one row per MLflow run, read from MLflow or from ``results.csv``.

``results.csv`` is the leaderboard's source of truth: every output in a suite folder is
rebuilt from it alone (``kdbench leaderboard --from-csv``), and it is how results from
elsewhere join a comparison. Its columns (see :data:`COLUMNS`):

========================  =====================================================================
column                    meaning
========================  =====================================================================
run_key                   deterministic identity of the trial (unique per row)
dataset                   dataset name
teacher                   teacher architecture, ``<arch>@ep<k>`` for the checkpoint after epoch
                          k of its training (early-stopped teachers); empty for methods that
                          use no teacher (their runs count in every teacher's cell of the same
                          dataset and student)
student                   student architecture
method                    method name (``ce``: student alone; ``kd``: vanilla KD)
method_version            integer version of the method's behaviour
params                    the method's hyperparameters as a JSON object, keys sorted
seed                      the student's seed (integer)
phase                     ``tune`` (selection on validation) or ``final`` (reported on test)
image_size                side of the square images the run trained and tested at (the
                          recipe's ``image_size``); empty: the dataset's own size
status                    MLflow run status: FINISHED, FAILED, RUNNING, KILLED, SCHEDULED
outcome                   ``ok``, ``failed`` or ``refused`` (the method declined the pair)
error                     why the run failed or was refused (empty otherwise)
test_acc                  top-1 accuracy on the test split after the final epoch, in [0, 1]
test_top5                 top-5 accuracy on the test split, in [0, 1]
val_acc                   top-1 accuracy on the validation split after the final epoch
teacher_test_acc          the teacher's top-1 test accuracy (empty without a teacher)
agreement                 fraction of test samples where student and teacher predict alike
macro_precision           macro-averaged precision on the test split, in [0, 1]
macro_recall              macro-averaged recall on the test split, in [0, 1]
macro_f1                  macro-averaged F1 on the test split, in [0, 1]
ece                       expected calibration error (15 equal-width bins) on the test split
train_seconds             wall time of the trial
student_params            parameters of the student
student_flops             FLOPs of one student forward pass on one input (multiply-add = 2)
extra_params              parameters the method adds (connectors, embeddings, heads)
mlflow_run_id             MLflow run id (empty for runs from elsewhere)
mlflow_experiment_id      MLflow experiment id (empty for runs from elsewhere)
compute                   where the run computed: device, precision and torch threads
                          (``cpu fp32 1 thread``), part of its run key
teacher_key               the teacher's cache key (``file-…`` for a checkpoint file)
teacher_sha256            SHA-256 of the teacher checkpoint's bytes the run loaded
========================  =====================================================================

Accuracies are fractions, not percentages. Empty means missing. Columns beyond these are
ignored; optional columns (all but :data:`REQUIRED`) may be left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from bench.textfile import not_utf8
from bench.tracking import REPLICATE_TAG, RUN_KEY_TAG, _quiet_mlflow, search_all_runs

#: Every column of results.csv, in file order.
COLUMNS: tuple[str, ...] = (
    "run_key",
    "dataset",
    "teacher",
    "student",
    "method",
    "method_version",
    "params",
    "seed",
    "phase",
    "image_size",
    "status",
    "outcome",
    "error",
    "test_acc",
    "test_top5",
    "val_acc",
    "teacher_test_acc",
    "agreement",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "ece",
    "train_seconds",
    "student_params",
    "student_flops",
    "extra_params",
    "mlflow_run_id",
    "mlflow_experiment_id",
    # Added later, so at the end: files written before them still read the same.
    "compute",
    "teacher_key",
    "teacher_sha256",
)

#: Columns a results.csv must have.
REQUIRED: tuple[str, ...] = (
    "dataset",
    "teacher",
    "student",
    "method",
    "method_version",
    "params",
    "seed",
    "phase",
    "status",
    "test_acc",
    "val_acc",
    "teacher_test_acc",
    "run_key",
)

#: Columns holding fractions in [0, 1].
FRACTION_COLUMNS: tuple[str, ...] = (
    "test_acc",
    "test_top5",
    "val_acc",
    "teacher_test_acc",
    "agreement",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "ece",
)

#: Other numeric columns (non-negative).
COUNT_COLUMNS: tuple[str, ...] = (
    "train_seconds",
    "student_params",
    "student_flops",
    "extra_params",
)

#: Image sides in pixels (positive integers; empty: the dataset's own size).
SIZE_COLUMNS: tuple[str, ...] = ("image_size",)

NUMERIC_COLUMNS: tuple[str, ...] = FRACTION_COLUMNS + COUNT_COLUMNS
TEXT_COLUMNS: tuple[str, ...] = tuple(
    c
    for c in COLUMNS
    if c not in NUMERIC_COLUMNS + SIZE_COLUMNS and c not in ("method_version", "seed")
)
#: Columns that must not be empty in any row.
NON_EMPTY: tuple[str, ...] = ("run_key", "dataset", "student", "method", "phase", "status")

STATUSES = ("FINISHED", "FAILED", "RUNNING", "KILLED", "SCHEDULED")

#: MLflow metric name → results.csv column.
METRIC_COLUMNS: dict[str, str] = {
    "test_acc": "test_acc",
    "test_top5": "test_top5",
    "final_val_acc": "val_acc",
    "teacher_test_acc": "teacher_test_acc",
    "agreement": "agreement",
    "macro_precision": "macro_precision",
    "macro_recall": "macro_recall",
    "macro_f1": "macro_f1",
    "ece": "ece",
    "train_seconds": "train_seconds",
    "student_params": "student_params",
    "student_flops": "student_flops",
    "extra_params": "extra_params",
}


class LeaderboardError(ValueError):
    """Input the leaderboard cannot use; the message says where and how to fix it."""


# --------------------------------------------------------------------------------------------
# Building and checking a runs table
# --------------------------------------------------------------------------------------------


def runs_frame(records: Iterable[Mapping[str, Any]], *, source: str = "runs") -> pd.DataFrame:
    """A checked runs table from dicts, one per run (keys are results.csv columns).

    Missing optional keys become empty; ``params`` may be a mapping or its JSON text.

    Args:
        records: One mapping per run.
        source: How errors name the input, e.g. a file name.

    Returns:
        The table with the columns of :data:`COLUMNS`, typed and sorted.

    Raises:
        LeaderboardError: When a value is malformed (see :func:`check_runs`).
    """
    rows = []
    for record in records:
        row = {c: record.get(c) for c in COLUMNS}
        if isinstance(row["params"], Mapping):
            row["params"] = canonical_params(row["params"])
        rows.append({c: _as_text(v) for c, v in row.items()})
    raw = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)
    return check_runs(raw, source=source, first_line=None)


def check_runs(
    raw: pd.DataFrame, *, source: str = "results.csv", first_line: int | None = 2
) -> pd.DataFrame:
    """Validate a table of text cells and return it typed.

    Args:
        raw: One row per run, every cell a string ("" for missing).
        source: Name used in error messages.
        first_line: File line of the first data row (2 below a header), or None when the
            rows did not come from a file.

    Returns:
        Typed table: numeric columns float (NaN when missing), ``seed`` and
        ``method_version`` int, text columns str; rows sorted by cell, method and seed.

    Raises:
        LeaderboardError: Naming the row and column of the first problem found: a missing
            required column, an empty required value, a non-numeric or out-of-range number,
            an unknown status or phase, malformed params, or a run key that appears twice.
    """
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise LeaderboardError(
            f"{source}: header row is missing column(s) {', '.join(map(repr, missing))}. "
            f"Required columns: {', '.join(REQUIRED)}."
        )
    out = pd.DataFrame(index=raw.index)
    where = _RowNamer(source, first_line)
    for column in COLUMNS:
        texts = raw[column] if column in raw.columns else pd.Series("", index=raw.index)
        texts = texts.fillna("").astype(str).str.strip()
        if column in NUMERIC_COLUMNS:
            out[column] = [_number(t, column, where(i)) for i, t in enumerate(texts)]
        elif column in SIZE_COLUMNS:
            out[column] = [_size(t, column, where(i)) for i, t in enumerate(texts)]
        elif column in ("seed", "method_version"):
            out[column] = pd.Series(
                [_integer(t, column, where(i)) for i, t in enumerate(texts)],
                index=raw.index,
                dtype="int64",
            )
        else:
            out[column] = texts.astype(object)
    for i, row in enumerate(out.itertuples(index=False)):
        _check_row(row, where(i))
    out["params"] = [_params_text(p, where(i)) for i, p in enumerate(out["params"])]
    _check_unique_keys(out["run_key"], where)
    out = out.sort_values(
        ["dataset", "teacher", "student", "method", "method_version", "params", "seed", "run_key"],
        kind="stable",
    )
    return out.reset_index(drop=True)[list(COLUMNS)]


class _RowNamer:
    """Formats "row N (line L of FILE)" for error messages."""

    def __init__(self, source: str, first_line: int | None) -> None:
        self.source = source
        self.first_line = first_line

    def __call__(self, index: int) -> str:
        if self.first_line is None:
            return f"{self.source}, row {index + 1}"
        return f"{self.source}, row {index + 1} (line {index + self.first_line})"


def _number(text: str, column: str, where: str) -> float:
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise LeaderboardError(
            f"{where}, column {column!r}: {text!r} is not a number. "
            "Write a plain number (e.g. 0.9312), or leave it empty when missing."
        ) from None
    if math.isinf(value):
        raise LeaderboardError(f"{where}, column {column!r}: infinite value {text!r}.")
    if math.isnan(value):
        return math.nan
    if column in FRACTION_COLUMNS and not 0.0 <= value <= 1.0:
        hint = " It looks like a percentage: divide by 100." if 1 < value <= 100 else ""
        raise LeaderboardError(
            f"{where}, column {column!r}: {value} is outside [0, 1]; accuracies and other "
            f"rates are fractions.{hint}"
        )
    if column in COUNT_COLUMNS and value < 0:
        raise LeaderboardError(f"{where}, column {column!r}: negative value {value}.")
    return value


def _integer(text: str, column: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise LeaderboardError(
            f"{where}, column {column!r}: {text!r} is not an integer"
            f"{' (the column may not be empty)' if text == '' else ''}."
        )
    return int(value)


def _size(text: str, column: str, where: str) -> float:
    """An image side: a positive integer, or NaN when empty."""
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise LeaderboardError(
            f"{where}, column {column!r}: {text!r} is not an image size; write the side in "
            "pixels (e.g. 16), or leave it empty for the dataset's own size."
        )
    return value


def _check_row(row: Any, where: str) -> None:
    for column in NON_EMPTY:
        if getattr(row, column) == "":
            raise LeaderboardError(f"{where}, column {column!r}: empty; every run needs one.")
    if row.status not in STATUSES:
        raise LeaderboardError(
            f"{where}, column 'status': {row.status!r} is not one of {', '.join(STATUSES)}."
        )
    if row.status == "FINISHED" and math.isnan(row.test_acc):
        raise LeaderboardError(
            f"{where}, column 'test_acc': empty in a FINISHED run; a finished run has a test "
            "accuracy (mark the run FAILED if it has none)."
        )


def _params_text(text: str, where: str) -> str:
    if text == "":
        return "{}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LeaderboardError(
            f"{where}, column 'params': not valid JSON ({exc.msg}); write a JSON object such "
            'as {"temperature": 4.0}, or {} for none.'
        ) from None
    if not isinstance(value, dict):
        raise LeaderboardError(
            f"{where}, column 'params': expected a JSON object, got {type(value).__name__}."
        )
    return canonical_params(value)


def _check_unique_keys(keys: pd.Series, where: _RowNamer) -> None:
    first_seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in first_seen:
            raise LeaderboardError(
                f"{where(i)}, column 'run_key': {key!r} already appears in "
                f"{where(first_seen[key]).split(', ', 1)[1]}; each run must appear once. "
                "Remove the duplicate row."
            )
        first_seen[key] = i


def canonical_params(params: Mapping[str, Any]) -> str:
    """The JSON text of a params mapping, keys sorted, as results.csv stores it."""
    return json.dumps(dict(params), sort_keys=True, separators=(", ", ": "), default=str)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


# --------------------------------------------------------------------------------------------
# results.csv
# --------------------------------------------------------------------------------------------


def read_results_csv(path: str | Path, *, image_size: int | None = None) -> pd.DataFrame:
    """Read and check a results.csv.

    Args:
        path: The CSV file (header row, one row per run; columns in any order).
        image_size: The image size of every run when the file has no ``image_size`` column
            (a results.csv written before the column existed), e.g. the suite recipe's;
            None leaves it empty (the dataset's own size). A column in the file wins.

    Returns:
        The typed runs table (see :func:`check_runs`).

    Raises:
        LeaderboardError: When the file is missing, empty or malformed; the message names the
            row, the file line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise LeaderboardError(f"{path}: no such file; pass the results.csv of a leaderboard.")
    raw = read_text_table(path)
    if "image_size" not in raw.columns and image_size is not None:
        raw["image_size"] = str(image_size)
    return check_runs(raw, source=path.name, first_line=2)


def read_text_table(path: Path) -> pd.DataFrame:
    """A CSV file as text cells (nothing parsed, empty stays empty), headers stripped.

    Raises:
        LeaderboardError: The file is empty, not UTF-8 or not valid CSV.
    """
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise LeaderboardError(f"{path}: the file is empty; expected a header row.") from None
    except pd.errors.ParserError as exc:
        raise LeaderboardError(f"{path}: not a valid CSV file: {exc}") from None
    except UnicodeDecodeError as exc:
        raise LeaderboardError(not_utf8(path, exc)) from None
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw


def write_results_csv(runs: pd.DataFrame, path: str | Path) -> None:
    """Write a runs table as results.csv (numbers at full precision, so it reads back equal).

    Args:
        runs: A table from :func:`runs_frame`, :func:`read_results_csv` or
            :func:`runs_from_mlflow`.
        path: Where to write.
    """
    table = runs[list(COLUMNS)].copy()
    for column in NUMERIC_COLUMNS:
        table[column] = [_as_text(v) for v in table[column]]
    for column in SIZE_COLUMNS:
        table[column] = ["" if math.isnan(v) else str(int(v)) for v in table[column]]
    table.to_csv(path, index=False, lineterminator="\n")


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------


#: The columns that are a run's result: two FINISHED runs of one key must agree on every one
#: (train time is a measurement of the machine, not of the trial, and may differ).
RESULT_COLUMNS: tuple[str, ...] = tuple(c for c in METRIC_COLUMNS.values() if c != "train_seconds")


def runs_from_mlflow(tracking_uri: str, experiment: str) -> tuple[pd.DataFrame, list[str]]:
    """Every kdbench run of an MLflow experiment as a runs table, one row per run key.

    Runs without a ``kdbench.run_key`` tag (a sweep's parent run) and replicates (tagged
    ``kdbench.replicate=true``) are skipped. When a run key was recorded more than once: a
    FINISHED run is kept over the others (a failed trial retried); of several FINISHED runs
    with identical results the first recorded is kept, and a note names it; several FINISHED
    runs with different results are an error, since one key must mean one result. Without a
    FINISHED run, the latest one is kept.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///…`` or a server's ``http://…``).
        experiment: Experiment name.

    Returns:
        The runs table and a list of notes about skipped runs, each naming the run kept.

    Raises:
        LeaderboardError: When the experiment does not exist, or one run key has FINISHED
            runs with different results (the message names the key, both runs and their
            results).
    """

    _quiet_mlflow()
    from mlflow.tracking import MlflowClient  # slow import; a rebuild from results.csv skips it

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LeaderboardError(
            f"no MLflow experiment {experiment!r} at {tracking_uri}. Experiments there: "
            f"{', '.join(names) or 'none'}. Run the sweep first, or pass --experiment/"
            "--tracking-uri."
        )
    runs = search_all_runs(client, found.experiment_id, order_by=["start_time ASC"])
    by_key: dict[str, list[Any]] = {}
    replicates = 0
    for run in runs:
        key = run.data.tags.get(RUN_KEY_TAG)
        if not key:
            continue
        if str(run.data.tags.get(REPLICATE_TAG, "")).lower() == "true":
            replicates += 1
            continue
        by_key.setdefault(key, []).append(run)
    notes = []
    records = []
    for key, recorded in by_key.items():
        kept, note = _one_run(key, recorded)
        records.append(kept)
        if note:
            notes.append(note)
    if replicates:
        notes.append(
            f"{replicates} replicate run{'s' if replicates > 1 else ''} (tagged "
            f"{REPLICATE_TAG}=true) left out: replicates are not leaderboard entries"
        )
    return runs_frame(records, source=f"MLflow experiment {experiment!r}"), notes


def _one_run(key: str, recorded: list[Any]) -> tuple[dict[str, Any], str | None]:
    """The record kept for one run key (its runs in start order), and a note naming the runs
    ignored when there are any.

    Raises:
        LeaderboardError: Two FINISHED runs of the key differ in a result column.
    """
    if len(recorded) == 1:
        return _record(recorded[0]), None
    finished = [r for r in recorded if r.info.status == "FINISHED"]
    if finished:
        kept = finished[0]
        record = _record(kept)
        for other in finished[1:]:
            _check_same_result(key, kept, record, other, _record(other))
    else:
        kept = max(recorded, key=lambda r: r.info.start_time or 0)
        record = _record(kept)
    ignored = ", ".join(f"{r.info.run_id} ({r.info.status})" for r in recorded if r is not kept)
    times = "twice" if len(recorded) == 2 else f"{len(recorded)} times"
    why = (
        ", the first of its FINISHED runs, which have identical results"
        if len(finished) > 1
        else ""
    )
    note = (
        f"run key {key} was recorded {times}; using MLflow run {kept.info.run_id} "
        f"({kept.info.status}{why}), ignoring {ignored}"
    )
    return record, note


def _check_same_result(
    key: str, a: Any, a_record: Mapping[str, Any], b: Any, b_record: Mapping[str, Any]
) -> None:
    """Raise when two FINISHED runs of one key differ in a result column."""
    differ = [c for c in RESULT_COLUMNS if not _same_value(a_record.get(c), b_record.get(c))]
    if not differ:
        return

    def values(record: Mapping[str, Any]) -> str:
        return ", ".join(f"{c}={_shown(record.get(c))}" for c in differ)

    raise LeaderboardError(
        f"run key {key} has two FINISHED runs with different results: MLflow run "
        f"{a.info.run_id} ({values(a_record)}) and MLflow run {b.info.run_id} "
        f"({values(b_record)}). One run key must mean one result, so the leaderboard uses "
        "neither: find what differed between the two (thread count, teacher checkpoint, "
        "edited code), then delete the wrong run in MLflow (or move it to another "
        "experiment) and build again."
    )


def _same_value(a: Any, b: Any) -> bool:
    missing_a = a is None or (isinstance(a, float) and math.isnan(a))
    missing_b = b is None or (isinstance(b, float) and math.isnan(b))
    return (missing_a and missing_b) or (not missing_a and not missing_b and a == b)


def _shown(value: Any) -> str:
    return "missing" if value is None else repr(value)


def _record(run: Any) -> dict[str, Any]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    record: dict[str, Any] = {
        "run_key": tags.get("kdbench.run_key", ""),
        "dataset": tags.get("kdbench.dataset", ""),
        "teacher": _teacher_label(tags.get("kdbench.teacher", ""), params),
        "student": tags.get("kdbench.student", ""),
        "method": tags.get("kdbench.method", ""),
        "method_version": tags.get("kdbench.method_version", ""),
        "seed": tags.get("kdbench.seed", ""),
        "phase": tags.get("kdbench.phase", ""),
        "image_size": _image_size_param(params.get("recipe.image_size")),
        "status": run.info.status,
        "outcome": tags.get("kdbench.outcome", ""),
        "error": tags.get("kdbench.error", ""),
        "params": canonical_params(
            {
                k[len("params.") :]: _param_value(v)
                for k, v in params.items()
                if k.startswith("params.")
            }
        ),
        "mlflow_run_id": run.info.run_id,
        "mlflow_experiment_id": run.info.experiment_id,
        "compute": tags.get("kdbench.compute", ""),
        "teacher_key": tags.get("kdbench.teacher_key", ""),
        "teacher_sha256": tags.get("kdbench.teacher_sha256", ""),
    }
    for metric, column in METRIC_COLUMNS.items():
        if metric in metrics:
            record[column] = float(metrics[metric])
    return record


def _teacher_label(arch: str, params: Mapping[str, str]) -> str:
    """The teacher's architecture, ``@ep<k>`` added for a checkpoint after epoch k of its
    training (an early-stopped teacher), so that each checkpoint is its own cell."""
    stop = params.get("teacher.stop_epoch", "None")
    return f"{arch}@ep{stop}" if arch and stop not in ("", "None") else arch


def _image_size_param(text: str | None) -> str:
    """The recipe's image size as MLflow holds it: a number, or ``None`` (the dataset's own
    size; runs recorded before the field existed have no such param)."""
    return "" if text in (None, "", "None") else text


def _param_value(text: str) -> Any:
    """MLflow stores params as text; numbers and JSON lists come back as such."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text
