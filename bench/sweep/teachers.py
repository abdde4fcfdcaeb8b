"""The teachers stage of a sweep: each distinct teacher its trials need that is not cached
yet is trained once, as a Ray task with the suite's teacher resources, into the teacher cache
under the kdbench home (:mod:`bench.teachers`; shared storage on a cluster). The task itself
is :func:`bench.sweep.worker.train_teacher`.

A teacher that fails costs only the trials that need it: they are reported, not started.

Each training's epoch lines (:mod:`bench.progress`) travel from its task to the driver on a
Ray queue and are printed as they come, between status lines every ``interval`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from bench.progress import format_seconds
from bench.suite.expand import PlannedTrial, TeacherJob, teacher_jobs, teacher_trainings
from bench.suite.schema import Suite

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.util.queue import Queue

    #: A teacher task (:func:`bench.sweep.worker.train_teacher`) → the jobs its training
    #: serves (one, or the early-stopped checkpoints of one teacher run).
    Pending = dict[ObjectRef[dict[str, Any]], Sequence[TeacherJob]]

#: Seconds between looks at the queue of epoch lines while teachers train.
POLL_SECONDS = 1.0


def train_teachers(
    suite: Suite,
    todo: Sequence[PlannedTrial],
    home: str,
    plugins: tuple[str, ...],
    err: TextIO,
    interval: float,
    *,
    epochs: bool = True,
) -> dict[str, str]:
    """Train every missing teacher of ``todo`` as Ray tasks, printing each training's epoch
    lines when ``epochs``; returns run key → reason for the trials whose teacher failed."""
    from bench.sweep.worker import teacher_cached

    jobs = teacher_jobs(suite, todo)
    missing = [j for j in jobs if not teacher_cached(j, home)]
    # The early-stopped checkpoints of one teacher run are one task: it trains once and
    # keeps them all, instead of one retraining per checkpoint.
    trainings = teacher_trainings(missing)
    print(
        f"teachers: {len(jobs)} needed, {len(jobs) - len(missing)} cached, {len(missing)} to "
        f"train in {len(trainings)} training{'' if len(trainings) == 1 else 's'}",
        file=err,
        flush=True,
    )
    if not missing:
        return {}
    lines = _line_queue() if epochs else None
    try:
        pending = _submit(suite, trainings, home, plugins, lines)
        failed = _wait_for(pending, len(trainings), err, interval, lines)
    finally:
        if lines is not None:
            lines.shutdown()
    lost = {}
    for trial in todo:
        for job, reason in failed.items():
            if trial.config.teacher == job.spec and trial.config.dataset == job.dataset.name:
                lost[trial.key] = reason
    return lost


def _line_queue() -> Queue:
    """The queue the teacher tasks put their epoch lines on; it holds no CPU, so it never
    waits for one or keeps a teacher from one."""
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0})


def _submit(
    suite: Suite,
    trainings: Sequence[Sequence[TeacherJob]],
    home: str,
    plugins: tuple[str, ...],
    lines: Queue | None,
) -> Pending:
    """One Ray task per training (its last job trains, keeping the others' checkpoints;
    its epoch lines go on ``lines``); returns task reference → the jobs it serves."""
    import ray

    from bench.sweep.worker import train_teacher

    task = ray.remote(train_teacher)
    pending: Pending = {}
    for group in trainings:
        job = group[-1]
        pending[
            task.options(
                num_cpus=job.resources.cpu,
                num_gpus=job.resources.gpu,
                max_retries=suite.max_failures,
                name=f"teacher {job.spec.arch}",
            ).remote(job, home, plugins, tuple(j.epoch for j in group), lines)
        ] = group
    return pending


def _wait_for(
    pending: Pending, trainings: int, err: TextIO, interval: float, lines: Queue | None = None
) -> dict[TeacherJob, str]:
    """Wait for every task, printing the epoch lines on ``lines`` and each outcome as they
    come, and a status line after every ``interval`` seconds in which none ended; returns
    job → reason for the jobs whose training failed."""
    import ray

    failed: dict[TeacherJob, str] = {}
    started = last = time.perf_counter()
    poll = interval if lines is None else min(interval, POLL_SECONDS)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll)
        # A task's lines are on the queue before it returns: they come before its outcome.
        _print_lines(lines, err)
        for ref in ready:
            group = pending.pop(ref)
            reason = _collect(ref, group, err)
            if reason is not None:
                failed.update(dict.fromkeys(group, reason))
        now = time.perf_counter()
        if ready:
            last = now
        elif now - last >= interval:
            last = now
            print(
                f"  teachers: {trainings - len(pending)}/{trainings} trained, "
                f"{format_seconds(now - started)} elapsed",
                file=err,
                flush=True,
            )
    return failed


def _print_lines(lines: Queue | None, err: TextIO) -> None:
    """Print the epoch lines the teacher tasks have put on ``lines`` so far."""
    if lines is None:
        return
    waiting = lines.size()
    for line in lines.get_nowait_batch(waiting) if waiting else ():
        print(f"  {line}", file=err, flush=True)


def _collect(
    ref: ObjectRef[dict[str, Any]], group: Sequence[TeacherJob], err: TextIO
) -> str | None:
    """Print a finished task's outcome; returns why it failed, None when it did not."""
    import ray

    job = group[-1]
    kept = (
        f", checkpoints after epochs {', '.join(str(j.epoch) for j in group)}"
        if len(group) > 1
        else ""
    )
    try:
        info = ray.get(ref)
    except Exception as exc:  # reported per trial; the other teachers go on
        reason = f"teacher {job.describe()}{kept} failed: {error_text(exc)}"
        print(f"  FAILED {reason}", file=err, flush=True)
        return reason
    print(
        f"  teacher {job.describe()}{kept}: test_acc {info['test_acc']:.4f} "
        f"({info['seconds']:.0f}s)",
        file=err,
        flush=True,
    )
    return None


def error_text(exc: BaseException) -> str:
    """The whole message of a teacher task's error (every line of it): the original
    exception's when Ray wraps it (a ``TrialFailed`` gives its reason, which says what went
    wrong and the fix), else Ray's own (a lost worker, a cancelled task)."""
    cause = getattr(exc, "cause", None)  # RayTaskError wraps the original
    shown = cause if isinstance(cause, BaseException) else exc
    reason = getattr(shown, "reason", None)
    if reason:
        return str(reason)
    text = str(shown).strip()
    return f"{type(shown).__name__}: {text}" if text else type(shown).__name__
