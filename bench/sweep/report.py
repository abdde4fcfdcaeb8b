"""What a sweep did, and the console reports about it: the dry run's trial matrix, the
summary at the end (outcomes, the metric over seeds, the best configurations of a tuning
suite) and where the results are.

The outcome is read from MLflow (:mod:`bench.sweep.ledger`), not from what Ray reported, so a
sweep resumed after a crash reports the same as one that ran through.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bench.progress import format_seconds
from bench.suite.expand import PlannedTrial, teacher_jobs, teacher_trainings
from bench.suite.schema import Suite, SuiteError
from bench.sweep import compress as compression
from bench.sweep import ledger
from bench.sweep.preflight import local_capacity
from bench.sweep.progress import ProgressBoard

if TYPE_CHECKING:
    from mlflow.entities import Run

# Exit statuses of ``kdbench sweep``.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@dataclass
class SweepReport:
    """What a sweep did.

    Attributes:
        planned: Trials of the suite.
        skipped: Run keys that were already done before this sweep.
        finished: Run keys with a FINISHED run at the end.
        failed: Run key → reason, for keys that ended FAILED or were not run.
        parent_run_id: The sweep's parent run (None when nothing ran).
        tracking_uri: Where the runs are.
        experiment: Their MLflow experiment.
        storage: Ray Tune's storage path (its logs).
        seconds: Wall time of the sweep.
        exit_code: 0 all finished, 1 something failed or did not finish, 130 interrupted.
        compression: What the compression post-stage did (None without ``compress:`` or
            when it did not run).
    """

    planned: list[PlannedTrial] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    tracking_uri: str = ""
    experiment: str = ""
    storage: str = ""
    seconds: float = 0.0
    exit_code: int = EXIT_OK
    compression: compression.CompressionOutcome | None = None


def finish_report(
    report: SweepReport,
    grouped: dict[str, list[Run]],
    trials: Sequence[PlannedTrial],
    started: float,
    board: ProgressBoard | None = None,
) -> SweepReport:
    """Fill the report's outcome from what MLflow holds now."""
    done = ledger.done_runs(grouped)
    report.finished = [
        t.key for t in trials if t.key in done and _status(done[t.key]) == "FINISHED"
    ]
    for trial in trials:
        key = trial.key
        if key in report.finished:
            report.failed.pop(key, None)
            continue
        if key in done:
            report.failed[key] = done[key].data.tags.get(ledger.ERROR_TAG, "failed")
        elif key not in report.failed:
            error = board.errors.get(key) if board is not None else None
            runs = grouped.get(key, [])
            last = runs[-1].data.tags.get(ledger.ERROR_TAG) if runs else None
            report.failed[key] = error or last or "did not finish (interrupted?)"
    report.seconds = time.perf_counter() - started
    report.exit_code = EXIT_OK if len(report.finished) == len(trials) else EXIT_FAILED
    return report


def _status(run: Run) -> str:
    return run.info.status


def count_compression(report: SweepReport) -> None:
    """A student that could not be compressed makes the sweep's exit status 1, as a failed
    trial does (running the sweep again retries it)."""
    failed = report.compression is not None and report.compression.failed
    if failed and report.exit_code == EXIT_OK:
        report.exit_code = EXIT_FAILED


def print_matrix(
    suite: Suite,
    trials: Sequence[PlannedTrial],
    done: dict[str, Run],
    uri: str,
    home: Path,
    out: TextIO,
) -> None:
    """The dry run: counts per method, pair and seed; what is done; the teachers."""
    seeds = suite.seeds
    print(
        f"suite {suite.name} ({suite.phase}): {len(trials)} trials = "
        f"{len(suite.datasets)} dataset(s) × {len(suite.pairs)} pair(s) × "
        f"{len(suite.methods)} method entr{'y' if len(suite.methods) == 1 else 'ies'} × "
        f"{len(seeds)} seed(s) (teacherless methods run once per student)",
        file=out,
    )
    finished = sum(1 for t in trials if t.key in done)
    print(
        f"MLflow {uri}, experiment {suite.experiment!r}: {finished} already done, "
        f"{len(trials) - finished} to run",
        file=out,
    )
    _print_trial_rows(seeds, trials, done, out)
    per_method: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in trials:
        per_method[t.method][0] += 1
        per_method[t.method][1] += t.key in done
    print(
        "\nper method: " + ", ".join(f"{m} {n} ({d} done)" for m, (n, d) in per_method.items()),
        file=out,
    )
    per_seed = {s: sum(t.seed == s for t in trials) for s in seeds}
    print("per seed: " + ", ".join(f"{s}: {n}" for s, n in per_seed.items()), file=out)
    _print_teachers(suite, trials, home, out)
    if done:
        print("\nrun keys already done:", file=out)
        for t in trials:
            if t.key in done:
                run = done[t.key]
                print(
                    f"  {t.key}  {run.info.status:<8} {t.describe()}  run {run.info.run_id}",
                    file=out,
                )
    if len(done) < len(trials):
        print("\nrun keys to run:", file=out)
        for t in trials:
            if t.key not in done:
                compute = t.config.compute.describe() if t.config.compute else ""
                print(f"  {t.key}  {t.describe()}  ({compute})", file=out)


def _print_trial_rows(
    seeds: Sequence[int], trials: Sequence[PlannedTrial], done: dict[str, Run], out: TextIO
) -> None:
    """One row per (dataset, pair, method, params), one mark per seed."""
    rows: dict[tuple[str, str, str, str], dict[int, str]] = defaultdict(dict)
    for t in trials:
        row = (t.config.dataset, t.pair, t.method, t.params_label)
        rows[row][t.seed] = "x" if t.key in done else "."
    print("\nper trial: x done, . to run; columns are seeds " + " ".join(map(str, seeds)), file=out)
    header = ("dataset", "pair", "method", "params", "seeds", "done")
    table = [
        (
            *row,
            " ".join(marks.get(s, "-") for s in seeds),
            f"{sum(m == 'x' for m in marks.values())}/{len(marks)}",
        )
        for row, marks in rows.items()
    ]
    _print_table(header, table, out)


def _print_teachers(suite: Suite, trials: Sequence[PlannedTrial], home: Path, out: TextIO) -> None:
    """The teachers the trials need, which are cached, how many trainings the rest take."""
    from bench.sweep.worker import teacher_cached

    jobs = teacher_jobs(suite, trials)
    cached = [j for j in jobs if teacher_cached(j, str(home))]
    todo = teacher_trainings([j for j in jobs if j not in cached])
    print(
        f"teachers: {len(jobs)} ({len(cached)} cached), {len(todo)} "
        f"training{'' if len(todo) == 1 else 's'} to run",
        file=out,
    )
    for job in jobs:
        if job.spec.checkpoint:
            print(f"  {job.describe()}: loaded from {job.spec.checkpoint}", file=out)
            continue
        state = "cached" if job in cached else "to train"
        print(f"  {job.describe()}, {job.spec.recipe.epochs} epochs: {state}", file=out)


def print_plugins(suite: Suite, given: Sequence[str], out: TextIO) -> None:
    """The plugin files a sweep would import (a dry run imports none), and the methods left
    unchecked because they may come from them."""
    files = list(dict.fromkeys((*suite.plugins, *given)))
    if not files:
        return
    print("\nplugin files a sweep imports (not run by --dry-run):", file=out)
    for path in files:
        print(f"  {path}", file=out)
    if suite.unloaded_methods:
        print(
            f"methods not registered without them, so not checked or listed above: "
            f"{', '.join(suite.unloaded_methods)}",
            file=out,
        )


def print_local_fit(suite: Suite, out: TextIO) -> None:
    """A dry run lists a cluster suite's trials on any machine; it says when this one could
    not run them (a real sweep stops there)."""
    try:
        suite.check_resources([local_capacity()], "this machine")
    except SuiteError as exc:
        reasons = "; ".join(p.render(suite.source) for p in exc.problems)
        print(f"\nnot runnable here as it stands (use --address on a cluster): {reasons}", file=out)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print(
            "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip(), file=out
        )


def print_summary(
    report: SweepReport,
    suite: Suite,
    grouped: dict[str, list[Run]],
    trials: Sequence[PlannedTrial],
    *,
    board: ProgressBoard | None,
    out: TextIO,
) -> None:
    ran = len(trials) - len(report.skipped)
    print(
        f"\nsweep {suite.name} ({suite.phase}) in {format_seconds(report.seconds)}: "
        f"{len(trials)} trials; {len(report.finished)} finished, {len(report.failed)} failed "
        f"or not run; {len(report.skipped)} were already recorded, {ran} attempted now",
        file=out,
    )
    if report.failed:
        print("failed or not run:", file=out)
        by_key = {t.key: t for t in trials}
        for key, reason in report.failed.items():
            # The whole reason: its last line alone may be a bare file path or frame.
            lines = (reason or "failed").strip().splitlines() or ["failed"]
            print(f"  {by_key[key].describe()} [{key}]: {lines[0]}", file=out)
            for line in lines[1:]:
                print(f"      {line}", file=out)
    _print_results(suite, grouped, trials, out)
    if report.compression is not None:
        compression.print_outcome(report.compression, out)
    print(f"\nresults: MLflow {report.tracking_uri}, experiment {report.experiment!r}", file=out)
    if report.parent_run_id:
        print(f"  sweep parent run {report.parent_run_id}", file=out)
    if report.tracking_uri.startswith("sqlite:"):
        print(f"  browse: mlflow ui --backend-store-uri {report.tracking_uri}", file=out)
    elif report.tracking_uri.startswith("http"):
        print(f"  browse: {report.tracking_uri}", file=out)
    if board is not None:
        print(f"  Ray Tune logs: {report.storage}", file=out)
    if report.exit_code != EXIT_OK and (
        report.failed or (report.compression is not None and report.compression.failed)
    ):
        print(
            "  run the same command again to retry what did not finish "
            "(--retry-failed re-runs recorded failures)",
            file=out,
        )


def _print_results(
    suite: Suite, grouped: dict[str, list[Run]], trials: Sequence[PlannedTrial], out: TextIO
) -> None:
    """Mean ± sd of the suite's metric per (dataset, pair, method, params) over seeds."""
    metric = "final_val_acc" if suite.metric == "val_acc" else suite.metric
    done = ledger.done_runs(grouped)
    cells: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for t in trials:
        run = done.get(t.key)
        if run is None or run.info.status != "FINISHED":
            continue
        value = run.data.metrics.get(metric)
        if value is not None and math.isfinite(value):
            cells[(t.config.dataset, t.pair, t.method, t.params_label)].append(value)
    if not cells:
        return
    print(f"\n{suite.metric} over seeds (mean ± sd, n):", file=out)
    rows = [
        (
            *cell,
            f"{statistics.fmean(v):.4f}",
            f"{statistics.stdev(v) if len(v) > 1 else 0:.4f}",
            str(len(v)),
        )
        for cell, v in sorted(cells.items(), key=lambda kv: (kv[0][:2], -statistics.fmean(kv[1])))
    ]
    _print_table(("dataset", "pair", "method", "params", "mean", "sd", "n"), rows, out)
    if suite.phase == "tune":
        _print_best_params(cells, out)


def _print_best_params(cells: dict[tuple[str, str, str, str], list[float]], out: TextIO) -> None:
    """Per method, the configuration with the best mean validation accuracy over every
    dataset, pair and seed: ready to paste into the final suite."""
    by_config: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (_, _, method, params), values in cells.items():
        by_config[(method, params)].extend(values)
    best: dict[str, tuple[str, float]] = {}
    for (method, params), values in by_config.items():
        mean = statistics.fmean(values)
        if method not in best or mean > best[method][1]:
            best[method] = (params, mean)
    print("\nselected on val_acc (paste into the final suite's methods):", file=out)
    for method, (params, mean) in best.items():
        if params == "defaults":
            print(f"  - {method}    # val_acc {mean:.4f}", file=out)
        else:
            body = ", ".join(p.replace("=", ": ") for p in params.split(","))
            print(f"  - {{name: {method}, params: {{{body}}}}}    # val_acc {mean:.4f}", file=out)
