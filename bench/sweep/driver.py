"""The sweep's driver: run a suite as Ray Tune trials, on this machine or on a Ray cluster.

The order of work:

1. Load and validate the suite (:mod:`bench.suite`); check its resources against this machine
   (or, after joining, the cluster), the run store (:mod:`bench.store`) and every checkpoint
   file it names (a dry run does all this too, but imports no plugin file). Bad input stops
   here, before anything starts.
2. Look every run key up in MLflow: keys already done are skipped (:mod:`bench.sweep.ledger`
   says what "done" means). Nothing left → nothing starts, not even Ray.
3. Start Ray on this machine, listening on loopback only and watched so that none of its
   processes outlives the driver (:mod:`bench.sweep.localray`), or join ``--address``
   (:mod:`bench.sweep.tune`); on a cluster, run the preflight (:mod:`bench.sweep.preflight`).
4. Open the sweep's parent run (reused when the same sweep runs again).
5. Teachers first: each distinct teacher that is not cached yet is trained once, as a Ray task
   with the suite's teacher resources, into the cache under the kdbench home (shared storage
   on a cluster; :mod:`bench.sweep.teachers`). Trials whose teacher failed are not started
   and are reported.
6. Packing: trials that ask for a fraction of a GPU are piloted, one short pilot per trial
   shape on a whole card, and their share is raised where the pilot needs more
   (:mod:`bench.sweep.pilot`), so packed trials never run out of memory.
7. Students: one Ray Tune trial per run key (a function trainable, per-trial resources, FIFO
   order, ``FailureConfig(max_failures)`` so a trial on a dead node is retried elsewhere). Each
   trial logs its own MLflow run (:mod:`bench.sweep.tune`, :mod:`bench.sweep.worker`).
8. With a ``compress:`` section: once Ray is down, compress every finished student of the
   selected methods that is not compressed yet (:mod:`bench.sweep.compress`).
9. Reconcile (dead attempts KILLED, duplicates demoted), close the parent run, print a
   summary of what ran, what failed and why, and where the results are
   (:mod:`bench.sweep.report`).

An interrupted sweep resumes with the same command: finished keys are skipped, the others run
from their first epoch. Tuner.restore is not used: MLflow, not Tune's experiment state, is the
record of what is done, so a changed suite resumes just as well as an unchanged one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bench.store import check_store
from bench.suite.expand import PlannedTrial, plan_trials
from bench.suite.schema import Compression, Suite
from bench.sweep import compress as compression
from bench.sweep import ledger
from bench.sweep.preflight import PreflightError, checkpoint_problems, local_capacity
from bench.sweep.progress import ProgressBoard
from bench.sweep.report import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    SweepReport,
    count_compression,
    finish_report,
    print_local_fit,
    print_matrix,
    print_plugins,
    print_summary,
)
from bench.sweep.teachers import train_teachers
from bench.sweep.tune import ray_session, tune_students
from bench.sweep.worker import SweepContext
from bench.tracking import Tracker

if TYPE_CHECKING:
    from mlflow.entities import Run


class SweepError(RuntimeError):
    """A sweep that cannot proceed for a reason other than bad suite input."""


@dataclass
class SweepOptions:
    """How to run a suite (the command line's options).

    Attributes:
        address: Ray cluster to join (``auto``, ``ray://…``, ``host:port``); None starts Ray
            on this machine.
        dry_run: Print the trial matrix and stop.
        max_concurrent: At most this many trials at once (None: as resources allow).
        resume: Require an earlier, unfinished run of this sweep to continue.
        retry_failed: Run again the trials whose recorded verdict is FAILED.
        tracking_uri: MLflow URI (default ``$MLFLOW_TRACKING_URI`` or SQLite in the home).
        cluster_config: Ray launcher file whose node types the resource check uses.
        storage_path: Ray Tune's storage (default ``<kdbench home>/sweeps``).
        plugins: Extra method files to load (on the driver and every worker).
        progress_interval: Seconds between status lines when stderr is not a terminal.
        quiet: No epoch lines of teachers and trials (the status line and each trial's
            outcome stay).
    """

    address: str | None = None
    dry_run: bool = False
    max_concurrent: int | None = None
    resume: bool = False
    retry_failed: bool = False
    tracking_uri: str | None = None
    cluster_config: str | None = None
    storage_path: str | None = None
    plugins: tuple[str, ...] = ()
    progress_interval: float = 15.0
    quiet: bool = False


def run_sweep(
    suite: Suite,
    options: SweepOptions | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> SweepReport:
    """Run every trial of ``suite`` that is not done yet (see the module docstring).

    Raises:
        SuiteError: a resource request no node can satisfy.
        StoreError: the run store cannot be used (:mod:`bench.store`).
        PreflightError: on a cluster, a check failed.
        SweepError: ``--resume`` with nothing to resume, or another driver runs this sweep.
    """
    options = options or SweepOptions()
    # MLflow prints a "View run" link whenever a run on a server ends; the summary says where.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    out = out or sys.stdout
    err = err or sys.stderr
    plan = _plan(suite, options)
    report = SweepReport(
        planned=plan.trials,
        skipped=[t.key for t in plan.trials if t.key in plan.done],
        tracking_uri=plan.uri,
        experiment=suite.experiment,
        storage=str(plan.storage),
    )
    if options.dry_run:
        _dry_run(plan, report, options, out)
    elif not plan.todo:
        _nothing_to_run(plan, report, out, err)
    else:
        _run(plan, report, options, out, err)
    return report


@dataclass
class _Plan:
    """What the sweep knows before it starts anything: its trials, where their records go and
    what those records already hold.

    Attributes:
        suite: The suite.
        trials: Its trials.
        uri: The MLflow tracking URI.
        home: The kdbench home (the teacher cache).
        storage: Ray Tune's storage path.
        grouped: Trial runs already recorded, by run key.
        done: Run key → the recorded run that settles it.
        sweep: The sweep key.
        started: When the sweep started (``time.perf_counter``).
    """

    suite: Suite
    trials: list[PlannedTrial]
    uri: str
    home: Path
    storage: Path
    grouped: dict[str, list[Run]]
    done: dict[str, Run]
    sweep: str
    started: float

    @property
    def todo(self) -> list[PlannedTrial]:
        """The trials not done yet."""
        return [t for t in self.trials if t.key not in self.done]

    @property
    def lock(self) -> Path:
        """The lock file that keeps this sweep to one driver."""
        return self.storage / f"{self.suite.experiment}-{self.sweep}.lock"


def _plan(suite: Suite, options: SweepOptions) -> _Plan:
    """Check what needs no Ray (this machine's resources, the tracking server) and read what
    MLflow already records; creates nothing."""
    from bench.paths import kdbench_home
    from bench.tracking import default_tracking_uri

    started = time.perf_counter()
    trials = list(plan_trials(suite))
    uri = options.tracking_uri or default_tracking_uri()
    home = kdbench_home()
    storage = Path(options.storage_path or home / "sweeps").expanduser().resolve()
    if options.address is None and not options.dry_run:
        suite.check_resources([local_capacity()], "this machine")
    # Before MLflow's client spends minutes retrying a server that is down, or creates a
    # database anew where the old one is gone.
    check_store(uri, write=not options.dry_run)
    broken = checkpoint_problems(checkpoint_files(trials))
    if broken:
        raise PreflightError(broken)
    grouped = ledger.recorded_runs(uri, suite.experiment)
    done = ledger.done_runs(grouped, options.retry_failed)
    sweep = ledger.sweep_key(suite.experiment, [t.key for t in trials])
    return _Plan(suite, trials, uri, home, storage, grouped, done, sweep, started)


def checkpoint_files(trials: Sequence[PlannedTrial]) -> list[tuple[str, str]]:
    """(what, path) of every checkpoint file the trials load."""
    files = []
    for trial in trials:
        teacher, config = trial.config.teacher, trial.config
        if teacher is not None and teacher.checkpoint:
            files.append((f"teacher_checkpoint of {teacher.arch}", teacher.checkpoint))
        if config.student_checkpoint:
            files.append((f"student_checkpoint of {config.student}", config.student_checkpoint))
    return files


def _dry_run(plan: _Plan, report: SweepReport, options: SweepOptions, out: TextIO) -> None:
    """Print the trial matrix (and the compression plan, and whether this machine could run
    the suite); run nothing."""
    suite, trials = plan.suite, plan.trials
    print_matrix(suite, trials, plan.done, plan.uri, plan.home, out)
    print_plugins(suite, options.plugins, out)
    if suite.compress is not None:
        client, found = ledger.read_experiment(plan.uri, suite.experiment)
        experiment_id = found.experiment_id if found is not None else None
        recorded = compression.recorded_variants(client, experiment_id)
        compress_plan = compression.plan_compression(suite.compress, trials, plan.done, recorded)
        compression.print_plan(compress_plan, out)
    if options.address is None:
        print_local_fit(suite, out)
    finish_report(report, plan.grouped, trials, plan.started)
    report.exit_code = EXIT_OK


def _nothing_to_run(plan: _Plan, report: SweepReport, out: TextIO, err: TextIO) -> None:
    """Every trial is recorded: no Ray, no parent run; only the compression post-stage may
    still have work."""
    suite, trials = plan.suite, plan.trials
    print(
        f"kdbench sweep: all {len(trials)} trials of {suite.name} are already recorded in "
        f"experiment {suite.experiment!r}; nothing to run.",
        file=err,
    )
    finish_report(report, plan.grouped, trials, plan.started)
    if suite.compress is not None:
        plan.storage.mkdir(parents=True, exist_ok=True)
        with _sweep_lock(plan.lock):
            report.compression = _compress(suite.compress, suite.experiment, trials, plan.uri, err)
        count_compression(report)
    report.seconds = time.perf_counter() - plan.started
    print_summary(report, suite, plan.grouped, trials, board=None, out=out)


def _run(plan: _Plan, report: SweepReport, options: SweepOptions, out: TextIO, err: TextIO) -> None:
    """Hold the sweep's lock; teachers, pilots and students on Ray, then the post-stages; and
    whatever happened, reconcile the record and print the summary."""
    suite = plan.suite
    if (
        options.resume
        and not report.skipped
        and not ledger.has_parent(plan.uri, suite.experiment, plan.sweep)
    ):
        raise SweepError(
            f"--resume: no earlier run of this sweep in experiment {suite.experiment!r} at "
            f"{plan.uri}; run the command without --resume to start it"
        )
    plan.storage.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(plan.lock):
        run = _SweepRun(plan, options, report)
        try:
            with ray_session(options.address, options.cluster_config) as view:
                if view is not None:
                    from bench.sweep.preflight import preflight

                    preflight(
                        suite=suite,
                        tracking_uri=plan.uri,
                        shared_paths=[plan.home, plan.storage],
                        view=view,
                    )
                run.start(err)
                run.execute(err)
            # In this process, after the trials and once Ray is down (when this sweep started
            # it): the CPU latencies it measures then do not share the cores with trials.
            if suite.compress is not None:
                report.compression = _compress(
                    suite.compress, suite.experiment, plan.trials, plan.uri, err
                )
        except KeyboardInterrupt:
            run.interrupted = True
            report.exit_code = EXIT_INTERRUPTED
        finally:
            # Ray is down here (when this sweep started it), so no attempt can still write:
            # what is RUNNING now is dead.
            if run.parent is not None:
                run.close(out)


class _SweepRun:
    """The stateful part of :func:`run_sweep`: parent run, teachers, trials, reconciliation."""

    def __init__(self, plan: _Plan, options: SweepOptions, report: SweepReport) -> None:
        self.suite = plan.suite
        self.options = options
        self.report = report
        self.todo = plan.todo
        self.sweep = plan.sweep
        self.home = plan.home
        self.storage = plan.storage
        self.started = plan.started
        self.interrupted = False
        self.board: ProgressBoard | None = None
        # Both set by start(); _opened() hands them to the steps after it.
        self.tracker: Tracker | None = None
        self.parent: ledger.ParentRun | None = None

    def _opened(self) -> tuple[Tracker, ledger.ParentRun]:
        """The tracker and parent run that :meth:`start` opened."""
        if self.tracker is None or self.parent is None:
            raise RuntimeError("the sweep's parent run is not open; start() comes first")
        return self.tracker, self.parent

    def start(self, err: TextIO) -> None:
        """Open (or reopen) the parent run; mark dead attempts of this sweep KILLED."""
        suite, report = self.suite, self.report
        self.tracker = Tracker(report.tracking_uri, experiment=suite.experiment)
        plan = {
            "suite": suite.name,
            "sweep": self.sweep,
            "trials": {t.key: t.describe() for t in report.planned},
        }
        self.parent = ledger.open_parent(
            self.tracker,
            self.sweep,
            suite_name=suite.name,
            phase=suite.phase,
            suite_text=Path(suite.path).read_text(encoding="utf-8") if suite.path else "",
            plan=plan,
        )
        report.parent_run_id = self.parent.run_id
        verb = "resuming" if self.parent.resumed else "starting"
        print(
            f"kdbench sweep: {verb} {suite.name} ({suite.phase}): {len(report.planned)} "
            f"trials, {len(report.skipped)} already recorded, {len(self.todo)} to run; MLflow "
            f"{report.tracking_uri} experiment {suite.experiment!r}, parent run "
            f"{self.parent.run_id}",
            file=err,
            flush=True,
        )
        # Nothing else runs this sweep (we hold its lock), so its RUNNING attempts are dead.
        self._supersede(f"sweep resumed by parent run {self.parent.run_id}")

    def execute(self, err: TextIO) -> None:
        """Teachers first, then the student trials."""
        suite, options = self.suite, self.options
        tracker, parent = self._opened()
        plugins = tuple(dict.fromkeys((*suite.plugins, *options.plugins)))
        lost = train_teachers(
            suite,
            self.todo,
            str(self.home),
            plugins,
            err,
            options.progress_interval,
            epochs=not options.quiet,
        )
        self.report.failed.update(lost)
        if lost:  # these trials get no run of their own: the sweep's run says why
            ledger.record_teacher_failures(
                tracker, parent.run_id, {t.key: t.describe() for t in self.todo}, lost
            )
        runnable = [t for t in self.todo if t.key not in lost]
        # Packed trials get a share their pilot fits in before Ray places them.
        from bench.sweep.pilot import check_packing

        runnable = check_packing(
            runnable, str(self.home), plugins, err, cache=self.storage / "pilots"
        )
        context = SweepContext(
            tracking_uri=self.report.tracking_uri,
            experiment=suite.experiment,
            sweep=self.sweep,
            parent_run_id=parent.run_id,
            home=str(self.home),
            trials={t.key: t.config for t in runnable},
            resources={t.key: t.resources for t in runnable},
            plugins=plugins,
            retry_failed=options.retry_failed,
            storage=str(self.storage),
            checkpoint_epochs=suite.checkpoint.epochs,
            checkpoint_minutes=suite.checkpoint.minutes,
        )
        self.board = ProgressBoard(
            {t.key: t for t in runnable},
            suite.metric,
            err,
            interval=options.progress_interval,
            epochs=not options.quiet,
        )
        if runnable:
            tune_students(
                suite,
                runnable,
                context,
                self.board,
                self.storage,
                self.sweep,
                options.max_concurrent,
            )

    def close(self, out: TextIO) -> None:
        """Reconcile the record, end the parent run, print the summary."""
        report = self.report
        if self.board is not None:
            self.board.close()
        tracker, parent = self._opened()
        self._supersede(f"sweep ended (parent run {parent.run_id})")
        planned = {t.key for t in report.planned}
        grouped = ledger.trial_runs(tracker)
        ledger.deduplicate(tracker, {k: v for k, v in grouped.items() if k in planned})
        grouped = ledger.trial_runs(tracker)
        finish_report(report, grouped, report.planned, self.started, self.board)
        status = "FINISHED" if report.exit_code == EXIT_OK else "FAILED"
        count_compression(report)
        if self.interrupted:
            report.exit_code, status = EXIT_INTERRUPTED, "KILLED"
        counts = {
            "trials": len(report.planned),
            "finished": len(report.finished),
            "failed": len(report.failed),
            "skipped": len(report.skipped),
            "sweep_seconds": report.seconds,
        }
        if report.compression is not None:
            counts["compressed"] = len(report.compression.compressed)
            counts["compression_failed"] = len(report.compression.failed)
        ledger.close_parent(tracker, parent.run_id, status, counts)
        print_summary(report, self.suite, grouped, report.planned, board=self.board, out=out)

    def _supersede(self, reason: str) -> None:
        tracker, _ = self._opened()
        runs = [r for group in ledger.trial_runs(tracker).values() for r in group]
        ledger.supersede_stale(tracker, runs, self.sweep, by=reason)


def _compress(
    section: Compression,
    experiment: str,
    trials: Sequence[PlannedTrial],
    uri: str,
    err: TextIO,
) -> compression.CompressionOutcome:
    """The compression post-stage (the suite's ``compress:`` section) over the students
    MLflow now records as finished in ``experiment``."""
    client, found = ledger.read_experiment(uri, experiment)
    experiment_id = found.experiment_id if found is not None else None
    grouped = ledger.recorded_runs(uri, experiment)
    done = ledger.done_runs(grouped)
    recorded = compression.recorded_variants(client, experiment_id)
    plan = compression.plan_compression(section, trials, done, recorded)
    return compression.run_compression(plan, done, client, experiment_id, err)


@contextlib.contextmanager
def _sweep_lock(path: Path) -> Iterator[None]:
    """One driver per sweep at a time (the rules of the ledger rely on it)."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SweepError(
                f"this sweep is already running ({holder}; lock {path}); wait for it or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
