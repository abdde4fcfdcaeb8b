"""A suite's compression post-stage (``compress:`` in suite.yaml): after the student trials,
each FINISHED trial of the selected methods has its student measured as trained (``fp32``),
pruned at each sparsity and quantised to int8
(:func:`bench.analysis.compress.compress_recorded`), each variant recorded as an MLflow child
run of the trial, tagged ``kdbench.compress_of`` = its run key.

- What is done is read from MLflow, as for trials: a student is done when every variant the
  suite asks for has a FINISHED child run. Running the sweep again records nothing new; a
  suite that adds a sparsity records that variant only (``fp32``, the base of the others, is
  measured again but not recorded twice).
- It runs in the sweep's driver process, after the trials and after Ray has shut down: the CPU
  latencies it measures then have the machine's cores to themselves instead of sharing them
  with trials, and one small student takes seconds, too little to be worth a Ray task.
  Latencies are timed with as many torch threads as the trial had (its ``resources.cpu``), so
  they do not depend on how many cores the driver's machine has.
- A student that cannot be compressed (an int8 refusal for a model FX cannot trace, a missing
  artifact) is reported with its reason and the others go on; when only int8 is refused, the
  pruned variants are still recorded.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from bench.analysis import (
    COMPRESS_KIND,
    COMPRESSED_KEY_TAG,
    FP32_VARIANT,
    INT8_VARIANT,
    VARIANT_TAG,
    pruned_variant,
)
from bench.suite.expand import PlannedTrial
from bench.suite.schema import Compression
from bench.tracking import search_all_runs

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from bench.analysis.compress import Variant
    from bench.analysis.runs import RecordedRun

#: The latency column the sweep summary shows (the one a deployed student sees most).
SUMMARY_BATCH = 1


@dataclass
class CompressionPlan:
    """Which students of a suite the post-stage compresses.

    Attributes:
        compression: The suite's ``compress:`` section.
        todo: Finished students with a variant not yet recorded, and those variants.
        done: Students whose every variant is recorded.
        unfinished: Selected trials without a FINISHED run (yet): nothing to compress.
    """

    compression: Compression
    todo: list[tuple[PlannedTrial, tuple[str, ...]]] = field(default_factory=list)
    done: list[PlannedTrial] = field(default_factory=list)
    unfinished: list[PlannedTrial] = field(default_factory=list)

    @property
    def selected(self) -> int:
        return len(self.todo) + len(self.done) + len(self.unfinished)


@dataclass
class CompressionOutcome:
    """What the post-stage did.

    Attributes:
        plan: What it set out to do.
        compressed: Run keys of the students it recorded variants of.
        failed: Run key → why its student (or one of its variants) could not be compressed.
        recorded: Child runs it recorded.
        seconds: Wall time.
        table: (pair, method, params, variant) → the recorded child runs of the suite's
            selected students (all of them, not only this sweep's), for the summary.
    """

    plan: CompressionPlan
    compressed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    recorded: int = 0
    seconds: float = 0.0
    table: dict[tuple[str, str, str, str], list[Run]] = field(default_factory=dict)


def recorded_variants(
    client: MlflowClient | None, experiment_id: str | None
) -> dict[str, dict[str, Run]]:
    """Run key → variant → its FINISHED compression child run (the latest, if several)."""
    if client is None or experiment_id is None:
        return {}
    query = f"tags.`kdbench.kind` = '{COMPRESS_KIND}' and attributes.status = 'FINISHED'"
    runs = search_all_runs(client, experiment_id, query, ["attributes.start_time ASC"])
    out: dict[str, dict[str, Run]] = defaultdict(dict)
    for run in runs:
        tags = run.data.tags
        if COMPRESSED_KEY_TAG in tags and VARIANT_TAG in tags:
            out[tags[COMPRESSED_KEY_TAG]][tags[VARIANT_TAG]] = run
    return dict(out)


def plan_compression(
    compression: Compression,
    trials: Sequence[PlannedTrial],
    done: Mapping[str, Run],
    recorded: Mapping[str, Mapping[str, Run]],
) -> CompressionPlan:
    """Sort the selected trials into to do, done and unfinished.

    Args:
        compression: The suite's section.
        trials: The suite's trials.
        done: Run key → the MLflow run that settles it (:func:`bench.sweep.ledger.done_runs`).
        recorded: :func:`recorded_variants`.
    """
    plan = CompressionPlan(compression)
    for trial in trials:
        if not compression.selects(trial.method):
            continue
        run = done.get(trial.key)
        if run is None or run.info.status != "FINISHED":
            plan.unfinished.append(trial)
            continue
        have = recorded.get(trial.key, {})
        missing = tuple(v for v in compression.variants if v not in have)
        if missing:
            plan.todo.append((trial, missing))
        else:
            plan.done.append(trial)
    return plan


def run_compression(
    plan: CompressionPlan,
    done: Mapping[str, Run],
    client: MlflowClient | None,
    experiment_id: str | None,
    err: TextIO,
) -> CompressionOutcome:
    """Compress every student of ``plan.todo``, one after another, in this process.

    Args:
        plan: From :func:`plan_compression`.
        done: Run key → its FINISHED MLflow run.
        client: The MLflow client to read and record with; None when the store does not
            exist yet (nor then any run to compress).
        experiment_id: The suite's experiment; None when it does not exist yet.
        err: Where progress lines go.
    """
    from bench.analysis.runs import recorded_run

    # Each student's artifacts are small; MLflow's progress bars would only clutter stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = time.perf_counter()
    outcome = CompressionOutcome(plan)
    if plan.todo:
        print(
            f"compression: {plan.compression.describe()}: {len(plan.todo)} student"
            f"{'' if len(plan.todo) == 1 else 's'} to compress, {len(plan.done)} done",
            file=err,
            flush=True,
        )
    for trial, missing in plan.todo:
        began = time.perf_counter()
        try:
            run = recorded_run(done[trial.key], client)
            with _threads(trial.resources.threads):
                variants, refused = _compress_one(run, plan.compression, missing)
        except Exception as exc:  # reported per student; the others go on
            outcome.failed[trial.key] = _reason(exc)
            print(f"  FAILED compression of {trial.describe()}: {_reason(exc)}", file=err)
            continue
        outcome.recorded += sum(v.mlflow_run_id is not None for v in variants)
        outcome.compressed.append(trial.key)
        if refused:
            outcome.failed[trial.key] = refused
        shown = ", ".join(f"{v.name} {v.test_acc:.2%}" for v in variants)
        print(
            f"  compressed {trial.describe()}: {shown} ({time.perf_counter() - began:.1f}s)"
            + (f"; {refused}" if refused else ""),
            file=err,
            flush=True,
        )
    outcome.seconds = time.perf_counter() - started
    outcome.table = summary_table(plan, recorded_variants(client, experiment_id))
    return outcome


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compress_one(
    run: RecordedRun, compression: Compression, missing: tuple[str, ...]
) -> tuple[list[Variant], str | None]:
    """Record the ``missing`` variants of one student; returns the variants measured and,
    when int8 was refused but the rest recorded, the refusal."""
    from bench.analysis import QuantizationError
    from bench.analysis.compress import compress_recorded

    sparsities = [s for s in compression.sparsities if pruned_variant(s) in missing]
    skip = set(compression.variants) - set(missing)
    int8 = INT8_VARIANT in missing
    try:
        report = compress_recorded(run, sparsities=sparsities, int8=int8, skip=skip)
        return report.variants, None
    except QuantizationError as exc:
        if not sparsities and FP32_VARIANT not in missing:
            raise
        report = compress_recorded(run, sparsities=sparsities, int8=False, skip=skip)
        return report.variants, f"int8 not recorded: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else "no message"
    return f"{type(exc).__name__}: {first}"


def summary_table(
    plan: CompressionPlan, recorded: Mapping[str, Mapping[str, Run]]
) -> dict[tuple[str, str, str, str], list[Run]]:
    """(pair, method, params, variant) → the child runs of the plan's finished students."""
    table: dict[tuple[str, str, str, str], list[Run]] = defaultdict(list)
    students = [t for t, _ in plan.todo] + plan.done
    for trial in students:
        have = recorded.get(trial.key, {})
        for variant in plan.compression.variants:
            if variant in have:
                row = (trial.pair, trial.method, trial.params_label, variant)
                table[row].append(have[variant])
    return dict(table)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def print_plan(plan: CompressionPlan, out: TextIO) -> None:
    """The dry run's account of the post-stage: how many students it will compress, which
    are done."""
    later = len(plan.unfinished)
    print(
        f"\ncompression post-stage: {plan.compression.describe()}: {plan.selected} students; "
        f"{len(plan.done)} done, {len(plan.todo)} to compress now"
        + (f", {later} once their trials finish" if later else ""),
        file=out,
    )
    for trial, missing in plan.todo:
        print(f"  to compress  {trial.key}  {trial.describe()}: {', '.join(missing)}", file=out)
    for trial in plan.done:
        print(f"  done         {trial.key}  {trial.describe()}", file=out)


def print_outcome(outcome: CompressionOutcome, out: TextIO) -> None:
    """The sweep summary's account of the post-stage: what it did, what failed, and the mean
    test accuracy, size and latency of each variant."""
    plan = outcome.plan
    print(
        f"\ncompression ({plan.compression.describe()}) in {outcome.seconds:.0f}s: "
        f"{plan.selected} students; {len(outcome.compressed)} compressed now "
        f"({outcome.recorded} child runs), {len(plan.done)} already done, "
        f"{len(outcome.failed)} failed, {len(plan.unfinished)} without a finished trial",
        file=out,
    )
    if outcome.failed:
        described = {t.key: t.describe() for t, _ in plan.todo}
        print("compression failed:", file=out)
        for key, reason in outcome.failed.items():
            print(f"  {described.get(key, key)} [{key}]: {reason}", file=out)
    if not outcome.table:
        return
    header: tuple[str, ...] = ("pair", "method", "params", "variant", "n", "test_acc", "size KB")
    header += (f"ms@batch{SUMMARY_BATCH}",)
    rows = []
    for (pair, method, params, variant), runs in outcome.table.items():
        rows.append(
            (
                pair,
                method,
                params,
                variant,
                str(len(runs)),
                _mean(runs, "test_acc", "{:.4f}"),
                _mean(runs, "size_bytes", "{:.1f}", scale=1e-3),
                _mean(runs, f"latency_ms_batch{SUMMARY_BATCH}", "{:.2f}"),
            )
        )
    print("compressed students, mean over seeds:", file=out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print(
            "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


def _mean(runs: Sequence[Run], metric: str, form: str, scale: float = 1.0) -> str:
    values = [r.data.metrics[metric] for r in runs if metric in r.data.metrics]
    values = [v for v in values if math.isfinite(v)]
    return form.format(statistics.fmean(values) * scale) if values else ""
