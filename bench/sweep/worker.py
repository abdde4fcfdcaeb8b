"""What runs on a worker: one student trial as a Ray Tune function trainable, and one teacher
as a Ray task. Both are plain functions of picklable inputs; nothing here needs the driver.

A trial logs to MLflow itself through :class:`bench.tracking.Tracker` (never through Ray's
MLflow callback, which would log a restored trial twice), following the rules of
:mod:`bench.sweep.ledger`: it looks its run key up first and returns at once when the key is
done, marks dead attempts of the same sweep KILLED, and checks for a duplicate before it ends
FINISHED.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bench.config import CHECKPOINT_EVERY_EPOCHS, CHECKPOINT_EVERY_MINUTES, TrialConfig
from bench.progress import Reporter
from bench.suite.expand import TeacherJob
from bench.suite.schema import Resources
from bench.sweep import checkpoints, ledger
from bench.trial.resume import CheckpointPolicy, TrainState

if TYPE_CHECKING:
    from mlflow.entities import Run

    from bench.api import Method
    from bench.tracking import RunHandle, Tracker
    from bench.trial.compose import Prepared, TrialResult
    from bench.trial.loop import EpochRecord

#: Key of the last result a trial reports; the driver reads the outcome from it.
STATUS = "kdbench_status"
SKIPPED = "SKIPPED"

_trackers: dict[tuple[str, str], Tracker] = {}


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep needs to know, shipped once to the workers.

    Attributes:
        tracking_uri: MLflow tracking URI every trial logs to.
        experiment: MLflow experiment.
        sweep: The sweep key (tag ``kdbench.sweep`` on every run of the sweep).
        parent_run_id: The sweep's parent run.
        home: The kdbench home (teacher cache) as the driver sees it; shared storage on a
            cluster.
        trials: Run key → trial config.
        resources: Run key → resources (for the trial's torch threads).
        plugins: Method files to import before the trial.
        retry_failed: Whether FAILED verdicts are run again.
        storage: Ray Tune's storage of the sweep, where trials' checkpoints are kept (shared
            storage on a cluster); empty outside a sweep.
        checkpoint_epochs: A running trial saves its state every this many epochs …
        checkpoint_minutes: … and after any epoch ending this long after the last save.
    """

    tracking_uri: str
    experiment: str
    sweep: str
    parent_run_id: str
    home: str
    trials: dict[str, TrialConfig] = field(default_factory=dict)
    resources: dict[str, Resources] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    retry_failed: bool = False
    storage: str = ""
    checkpoint_epochs: int = CHECKPOINT_EVERY_EPOCHS
    checkpoint_minutes: float = CHECKPOINT_EVERY_MINUTES


def prepare_worker(home: str, threads: int, plugins: tuple[str, ...] = ()) -> None:
    """Point this worker process at the sweep's kdbench home, size torch's thread pool to the
    CPUs Ray granted, and load method plugins."""
    os.environ["KDBENCH_HOME"] = home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if plugins:
        from bench.plugins import load_plugin_file

        for path in plugins:
            load_plugin_file(path)


def tracker_for(uri: str, experiment: str) -> Tracker:
    """One :class:`~bench.tracking.Tracker` per process (reused actors keep theirs)."""
    from bench.tracking import Tracker

    key = (uri, experiment)
    if key not in _trackers:
        _trackers[key] = Tracker(uri, experiment=experiment)
    return _trackers[key]


def node_id() -> str:
    """The Ray node this process runs on (the host name outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # outside a Ray worker there is no node id; the host is still useful
        pass
    return socket.gethostname()


# --------------------------------------------------------------------------------------------
# Student trials
# --------------------------------------------------------------------------------------------


def tune_trainable(config: dict[str, Any], context: SweepContext) -> None:
    """The Ray Tune function trainable: run the trial named by ``config["run_key"]``."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id() or ""
    key = config["run_key"]
    saved = checkpoints.latest_state(tune.get_checkpoint(), context.storage, key)
    run_trial_once(
        key,
        context,
        report=tune.report,
        attempt_id=trial_id,
        resume=saved,
        checkpoint=checkpoints.TuneCheckpointer(
            CheckpointPolicy(context.checkpoint_epochs, context.checkpoint_minutes)
        ),
    )


def run_trial_once(
    key: str,
    context: SweepContext,
    *,
    report: Callable[[dict[str, Any]], None],
    attempt_id: str = "",
    resume: TrainState | None = None,
    checkpoint: checkpoints.TuneCheckpointer | None = None,
) -> dict[str, Any]:
    """Run one trial under the sweep's rules and return (and report) its final result.

    Args:
        key: The trial's run key.
        context: The sweep's context (the trial's config and resources among its trials).
        report: Where results go: every epoch's metrics, then the final result (Ray Tune's
            ``tune.report`` on a worker).
        attempt_id: Ray Tune's id of this attempt, recorded as a tag.
        resume: The state an earlier attempt saved: the trial continues after its epochs, in
            that attempt's MLflow run when it is still RUNNING (a lost worker or node), else
            in a new run that first records the saved epochs (the driver was stopped and has
            ended the old attempt).
        checkpoint: Saves the trial's state between epochs (Ray Tune checkpoints).
    """
    from bench.trial.compose import prepare_trial, trial_facts

    config = context.trials[key]
    _prepare_process(context, context.resources.get(key, Resources()))
    tracker = tracker_for(context.tracking_uri, context.experiment)
    runs = ledger.key_runs(tracker, key)
    settled = _settled_run(runs, context.retry_failed)
    if settled is not None:
        result = _recorded_result(settled)
        report(result)
        return result
    tags = _attempt_tags(runs, context.sweep, attempt_id)
    started, cpu_started = time.perf_counter(), time.process_time()
    method_cls, prepared, error, facts = None, None, None, {}
    try:
        from bench.plugins import get_method

        method_cls = get_method(config.method)
        # The device and threads are the config's (from the trial's resources), never Ray's
        # GPU ids, so the key computed here is the planned one.
        prepared = prepare_trial(config)
        _check_same_key(key, prepared.key)
        facts = trial_facts(prepared)
    except Exception as exc:  # recorded as this trial's failure; the sweep goes on
        error, prepared = exc, None
    if resume is not None and prepared is None:
        resume = None
    continued = resume.run_id if resume and tracker.is_running(resume.run_id) else None
    if resume is not None:
        tags[ledger.RESUMED_TAG] = str(resume.epochs_done)
    with tracker.trial_run(
        prepared.config if prepared is not None else config,
        key,
        # The run reads only a method's version, knowledge and module, which the stand-in
        # has; trial_run's parameter names the whole Method class.
        method_cls or cast("type[Method]", _UnresolvedMethod),
        parent_run_id=context.parent_run_id,
        extra_tags=tags,
        resume_run_id=continued,
        facts=facts,
    ) as run:
        others = [r for r in runs if r.info.run_id != run.run_id]
        ledger.supersede_stale(tracker, others, context.sweep, by=run.run_id)
        if prepared is None:
            return _record_setup_failure(run, key, error, report)
        logged = _epochs_on_record(run, resume)
        if checkpoint is not None:
            checkpoint.run_id = run.run_id
        outcome = _execute(
            prepared,
            run,
            _epoch_reporter(run, tracker, report, skip=logged),
            resume=resume,
            checkpoint=checkpoint,
        )
        outcome.mlflow_run_id = run.run_id
        # CPU time of the whole attempt (setup, training, evaluation, logging): what a trial
        # costs whatever else the machine runs.
        run.log_metrics({"cpu_seconds": time.process_time() - cpu_started})
        _end_run(run, tracker, key, outcome)
    if context.storage:
        checkpoints.delete_checkpoints(context.storage, key)
    result = _result_of(outcome, time.perf_counter() - started)
    report(result)
    return result


def _prepare_process(context: SweepContext, resources: Resources) -> None:
    """Set this process up for the trial: the sweep's home, torch threads, plugins, and a
    packed trial's memory cap."""
    prepare_worker(context.home, resources.threads, context.plugins)
    if 0 < resources.gpu < 1:  # a packed trial: its allocator stays within its share
        from bench.sweep.packing import limit_process_memory

        limit_process_memory(resources.gpu)


def _settled_run(runs: list[Run], retry_failed: bool) -> Run | None:
    """The recorded run that settles the key (a FINISHED one first), None when none does."""
    settled = [r for r in runs if ledger.is_done(r, retry_failed)]
    finished = [r for r in settled if r.info.status == "FINISHED"] or settled
    return finished[0] if finished else None


def _attempt_tags(runs: list[Run], sweep: str, attempt_id: str) -> dict[str, str]:
    """Tags of a new attempt: its sweep, its number within the sweep, where it runs."""
    attempt = 1 + sum(r.data.tags.get(ledger.SWEEP_TAG) == sweep for r in runs)
    return {
        ledger.SWEEP_TAG: sweep,
        ledger.ATTEMPT_TAG: str(attempt),
        ledger.NODE_TAG: node_id(),
        "kdbench.host": socket.gethostname(),
        "kdbench.ray_trial": attempt_id,
    }


def _epochs_on_record(run: RunHandle, resume: TrainState | None) -> set[int]:
    """The epochs the run already holds. A resumed attempt in a new run first records the
    epochs its saved state covers, so every run of a trial holds each epoch once."""
    if resume is None:
        return set()
    logged = run.logged_epochs()
    for epoch, metrics in enumerate(resume.history):
        if epoch not in logged:
            run.log_history_epoch(epoch, metrics)
    return run.logged_epochs()


def _epoch_reporter(
    run: RunHandle,
    tracker: Tracker,
    report: Callable[[dict[str, Any]], None],
    skip: set[int] | frozenset[int] = frozenset(),
) -> Callable[[EpochRecord], None]:
    """The trial's per-epoch hook: log the epoch to the run (unless it holds it already, from
    an earlier attempt), report its metrics to Tune."""

    def epoch_done(record: EpochRecord) -> None:
        if record.epoch not in skip:
            run.log_epoch(record)
        metrics = {
            "epoch": record.epoch + 1,
            "val_acc": record.val_acc,
            "loss": record.terms.get("loss", float("nan")),
            "epoch_seconds": record.seconds,
        }
        try:
            report(metrics)
        except Exception:
            raise
        except BaseException:  # Tune stops a trial by exiting from report()
            ledger.mark_killed(tracker, run.run_id, {ledger.ERROR_TAG: "stopped by Ray Tune"})
            run.ended = True
            raise

    return epoch_done


def _end_run(run: RunHandle, tracker: Tracker, key: str, outcome: TrialResult) -> None:
    """End the run with the trial's outcome, or KILLED as a duplicate when another run of the
    key finished meanwhile (see :mod:`bench.sweep.ledger`)."""
    duplicate = _finished_elsewhere(tracker, key, run.run_id)
    if outcome.status == "FINISHED" and duplicate:
        ledger.mark_killed(tracker, run.run_id, {ledger.DUPLICATE_TAG: duplicate})
        run.ended = True
    else:
        run.finish(outcome)


def _execute(
    prepared: Prepared,
    run: RunHandle,
    on_epoch: Callable[[EpochRecord], None],
    *,
    resume: TrainState | None = None,
    checkpoint: checkpoints.TuneCheckpointer | None = None,
) -> TrialResult:
    from bench.trial.compose import execute

    return execute(
        prepared,
        on_epoch=on_epoch,
        log=run.log_metrics,
        resume=resume,
        checkpoint=checkpoint,
        on_setup=run.record_setup,
    )


def _check_same_key(planned: str, here: str) -> None:
    """The key the worker computes must be the one the sweep planned: a checkpoint file or
    method file changed since would make this run another trial than the key says."""
    if here != planned:
        raise RuntimeError(
            f"the trial planned as run key {planned} is run key {here} on this worker: a "
            "checkpoint file or method file changed since the sweep was planned (or differs "
            "on this node); run the sweep again to plan it anew"
        )


def _finished_elsewhere(tracker: Tracker, key: str, run_id: str) -> str | None:
    others = [
        r
        for r in ledger.key_runs(tracker, key)
        if r.info.status == "FINISHED" and r.info.run_id != run_id
    ]
    return others[0].info.run_id if others else None


class _UnresolvedMethod:
    """Stands in for a method class a worker could not import, so the failure is recorded."""

    version = 0
    knowledge = "unknown"


def _record_setup_failure(
    run: RunHandle, key: str, error: BaseException | None, report: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """A trial whose inputs could not be built on this worker (missing data, plugin, teacher
    file): FAILED without a verdict, so the next sweep tries it again."""
    import traceback

    from mlflow.entities import RunTag

    text = "".join(traceback.format_exception(error)[-6:]) if error else "unknown error"
    message = f"setup failed: {type(error).__name__}: {error}\n{text}"
    run.client.log_batch(run.run_id, tags=[RunTag(ledger.ERROR_TAG, message[-5000:])])
    run.client.set_terminated(run.run_id, "FAILED")
    run.ended = True
    result = {
        STATUS: "FAILED",
        "error": message,
        "mlflow_run_id": run.run_id,
        "run_key": key,
    }
    report(result)
    return result


def _result_of(outcome: TrialResult, seconds: float) -> dict[str, Any]:
    return {
        STATUS: outcome.status,
        "outcome": outcome.outcome,
        "test_acc": outcome.test_acc,
        "val_acc": outcome.val_acc,
        "train_seconds": outcome.train_seconds,
        "trial_seconds": seconds,
        "error": outcome.error or "",
        "mlflow_run_id": outcome.mlflow_run_id or "",
        "run_key": outcome.run_key,
    }


def _recorded_result(run: Run) -> dict[str, Any]:
    metrics = run.data.metrics
    return {
        STATUS: SKIPPED,
        "recorded_status": run.info.status,
        "test_acc": metrics.get("test_acc", float("nan")),
        "val_acc": metrics.get("final_val_acc", float("nan")),
        "error": run.data.tags.get(ledger.ERROR_TAG, ""),
        "mlflow_run_id": run.info.run_id,
        "run_key": run.data.tags.get(ledger.RUN_KEY_TAG, ""),
    }


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------


def train_teacher(
    job: TeacherJob,
    home: str,
    plugins: tuple[str, ...] = (),
    keep: tuple[int, ...] = (),
    lines: Any = None,
) -> dict[str, Any]:
    """Train (or load from the shared cache) one teacher; returns its key and test accuracy.
    ``keep``: further epochs of the same training to checkpoint (the other early-stopped
    teachers of that run), so one training serves them all. ``lines``: a Ray queue that
    receives the training's epoch lines, for the driver to print (None: no progress). Runs as
    a Ray task; concurrent requests for the same teacher wait on the cache's lock."""
    prepare_worker(home, job.resources.threads, plugins)
    from bench.teachers import obtain_teacher

    started = time.perf_counter()
    progress = Reporter(QueueLines(lines), bars=False) if lines is not None else None
    teacher = obtain_teacher(
        job.dataset.name,
        job.spec,
        data_root=job.dataset.data_root,
        keep=keep,
        progress=progress,
    )
    return {
        "key": teacher.key,
        "test_acc": teacher.test_acc,
        "seconds": time.perf_counter() - started,
        "node": node_id(),
    }


class QueueLines(io.TextIOBase):
    """A text stream whose lines go onto a queue (a Ray queue the driver reads). Once the
    queue cannot be reached (the driver is gone), lines are dropped: showing progress never
    fails the work."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self._partial = ""
        self._reachable = True

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._put(line)
        return len(text)

    def _put(self, line: str) -> None:
        if not self._reachable:
            return
        try:
            self.queue.put_nowait(line)
        except Exception:  # the queue's actor is gone; the training goes on unseen
            self._reachable = False


def teacher_cached(job: TeacherJob, home: str) -> bool:
    """Whether the teacher is already in the cache (or is a readable checkpoint file), so no
    task is needed. Follows the cache layout of :mod:`bench.teachers`; a damaged entry or an
    unreadable file is not cached, so its task repairs the entry or reports the file."""
    import json

    if job.spec.checkpoint is not None:
        return _readable(Path(job.spec.checkpoint))
    from bench.teachers import teacher_key

    folder = Path(home) / "teachers" / teacher_key(job.dataset.name, job.spec)
    epoch = job.spec.stop_epoch or job.spec.recipe.epochs
    meta = folder / "meta.json"
    if not (folder / f"epoch_{epoch}.pt").is_file() or not meta.is_file():
        return False
    try:
        recorded = str(epoch) in json.loads(meta.read_text(encoding="utf-8"))["test_acc"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return recorded and _readable(folder / f"epoch_{epoch}.pt")


def _readable(path: Path) -> bool:
    from bench.checkpoint import CheckpointError, read_state_dict

    try:
        read_state_dict(path)
    except CheckpointError:
        return False
    return True
