"""``kdbench sweep``: run a suite as Ray Tune trials, on this machine or on a Ray cluster.

The order of work:

1. Load and validate the suite (:mod:`bench.suite`); check its resources against this machine
   (or, after joining, the cluster). Bad input stops here, before anything starts.
2. Look every run key up in MLflow: keys already done are skipped (:mod:`bench.sweep_ledger`
   says what "done" means). Nothing left → nothing starts, not even Ray.
3. Start Ray (``address="local"``) or join ``--address``; on a cluster, run the preflight
   (:mod:`bench.sweep_preflight`).
4. Open the sweep's parent run (reused when the same sweep runs again).
5. Teachers first: each distinct teacher that is not cached yet is trained once, as a Ray task
   with the suite's teacher resources, into the cache under the kdbench home (shared storage
   on a cluster). Trials whose teacher failed are not started and are reported.
6. Packing: trials that ask for a fraction of a GPU are piloted, one short pilot per trial
   shape on a whole card, and their share is raised where the pilot needs more
   (:mod:`bench.sweep_packing`), so packed trials never run out of memory.
7. Students: one Ray Tune trial per run key (a function trainable, per-trial resources, FIFO
   order, ``FailureConfig(max_failures)`` so a trial on a dead node is retried elsewhere). Each
   trial logs its own MLflow run (:mod:`bench.sweep_trial`).
8. With a ``compress:`` section: once Ray is down, compress every finished student of the
   selected methods that is not compressed yet (:mod:`bench.sweep_compress`).
9. Reconcile (dead attempts KILLED, duplicates demoted), close the parent run, print a
   summary of what ran, what failed and why, and where the results are.

An interrupted sweep resumes with the same command: finished keys are skipped, the others run
from their first epoch. Tuner.restore is not used: MLflow, not Tune's experiment state, is the
record of what is done, so a changed suite resumes just as well as an unchanged one.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench import sweep_compress as compression
from bench import sweep_ledger as ledger
from bench.suite.expand import PlannedTrial, TeacherJob, teacher_trainings
from bench.suite.load import load_suite
from bench.suite.schema import Suite, SuiteError
from bench.sweep_preflight import PreflightError, check_reachable, local_capacity
from bench.sweep_progress import ProgressBoard, format_seconds
from bench.sweep_trial import SweepContext

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


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


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``kdbench sweep``."""
    parser.add_argument("suite", help="a suite file, or its folder (leaderboards/digits)")
    parser.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster (auto, host:port, ray://host:10001); default: start Ray "
        "on this machine",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trial matrix and which run keys already finished (and, with a "
        "compress: section, which students are compressed); run nothing",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one seed, one configuration per method, one epoch, in the experiment "
        "<experiment>-smoke: a quick check that every trial runs",
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=None, metavar="N", help="at most N trials at once"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep (the same command without it resumes too; with "
        "it, a sweep that never started is an error)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the trials whose recorded verdict is FAILED (diverged, refused, raised)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite under "
        "$KDBENCH_HOME); on a cluster, the head node's mlflow server",
    )
    parser.add_argument(
        "--cluster-config",
        default=None,
        help="Ray launcher file (ray_cluster.yaml) whose node types the resource check "
        "counts (default: ~/ray_bootstrap_config.yaml when present)",
    )
    parser.add_argument(
        "--storage-path",
        default=None,
        help="Ray Tune storage, shared by every node (default: $KDBENCH_HOME/sweeps)",
    )
    parser.add_argument("--plugins", nargs="*", default=[], help="method files to load")


def sweep_main(args: argparse.Namespace) -> int:
    """Run ``kdbench sweep`` from parsed arguments; returns the exit status."""
    from bench.plugins import load_methods, load_plugin_file

    try:
        load_methods()
        for path in getattr(args, "plugins", None) or ():
            load_plugin_file(path)
        suite = load_suite(args.suite)
        if getattr(args, "smoke", False):
            suite = suite.smoke()
        options = SweepOptions(
            address=args.address,
            dry_run=bool(args.dry_run),
            max_concurrent=args.max_concurrent,
            resume=bool(args.resume),
            retry_failed=bool(getattr(args, "retry_failed", False)),
            tracking_uri=args.tracking_uri,
            cluster_config=getattr(args, "cluster_config", None),
            storage_path=getattr(args, "storage_path", None),
            plugins=tuple(str(Path(p).resolve()) for p in (args.plugins or ())),
        )
        if options.max_concurrent is not None and options.max_concurrent < 1:
            raise SweepError(f"--max-concurrent must be ≥ 1, got {options.max_concurrent}")
        return run_sweep(suite, options).exit_code
    except (SuiteError, PreflightError, SweepError, ImportError, FileNotFoundError) as exc:
        print(f"kdbench sweep: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


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
        PreflightError: on a cluster, a check failed.
        SweepError: ``--resume`` with nothing to resume, or another driver runs this sweep.
    """
    from bench.paths import kdbench_home
    from bench.tracking import default_tracking_uri

    options = options or SweepOptions()
    # MLflow prints a "View run" link whenever a run on a server ends; the summary says where.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    out = out or sys.stdout
    err = err or sys.stderr
    started = time.perf_counter()
    trials = list(suite.trials())
    uri = options.tracking_uri or default_tracking_uri()
    home = kdbench_home()
    storage = Path(options.storage_path or home / "sweeps").expanduser().resolve()
    report = SweepReport(
        planned=trials, tracking_uri=uri, experiment=suite.experiment, storage=str(storage)
    )
    if options.address is None and not options.dry_run:
        suite.check_resources([local_capacity()], "this machine")
    unreachable = check_reachable(uri)
    if unreachable:  # before MLflow's client spends minutes retrying it
        raise PreflightError([f"the MLflow server is not reachable: {unreachable}"])
    grouped = _recorded_runs(uri, suite.experiment)
    done = ledger.done_runs(grouped, options.retry_failed)
    todo = [t for t in trials if t.key not in done]
    report.skipped = [t.key for t in trials if t.key in done]
    sweep = ledger.sweep_key(suite.experiment, [t.key for t in trials])
    if options.dry_run:
        print_matrix(suite, trials, done, uri, home, out)
        if suite.compress is not None:
            client, found = _read_experiment(uri, suite.experiment)
            experiment_id = found.experiment_id if found is not None else None
            recorded = compression.recorded_variants(client, experiment_id)
            plan = compression.plan_compression(suite.compress, trials, done, recorded)
            compression.print_plan(plan, out)
        if options.address is None:
            _print_local_fit(suite, out)
        _finish_report(report, grouped, trials, started)
        report.exit_code = EXIT_OK
        return report
    if not todo:
        print(
            f"kdbench sweep: all {len(trials)} trials of {suite.name} are already recorded in "
            f"experiment {suite.experiment!r}; nothing to run.",
            file=err,
        )
        _finish_report(report, grouped, trials, started)
        if suite.compress is not None:
            storage.mkdir(parents=True, exist_ok=True)
            with _sweep_lock(storage / f"{suite.experiment}-{sweep}.lock"):
                report.compression = _compress(suite, trials, uri, err)
            _count_compression(report)
        report.seconds = time.perf_counter() - started
        _print_summary(report, suite, grouped, trials, board=None, out=out)
        return report
    if options.resume and not report.skipped and not _has_parent(uri, suite.experiment, sweep):
        raise SweepError(
            f"--resume: no earlier run of this sweep in experiment {suite.experiment!r} at "
            f"{uri}; run the command without --resume to start it"
        )
    storage.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(storage / f"{suite.experiment}-{sweep}.lock"):
        run = _SweepRun(suite, options, report, todo, sweep, home, storage, started)
        try:
            with _ray(options) as view:
                if view is not None:
                    from bench.sweep_preflight import preflight

                    preflight(
                        suite=suite, tracking_uri=uri, shared_paths=[home, storage], view=view
                    )
                run.start(err)
                run.execute(err)
            # In this process, after the trials and once Ray is down (when this sweep started
            # it): the CPU latencies it measures then do not share the cores with trials.
            if suite.compress is not None:
                report.compression = _compress(suite, trials, uri, err)
        except KeyboardInterrupt:
            run.interrupted = True
            report.exit_code = EXIT_INTERRUPTED
        finally:
            # Ray is down here (when this sweep started it), so no attempt can still write:
            # what is RUNNING now is dead.
            if run.parent is not None:
                run.close(out)
    return report


class _SweepRun:
    """The stateful part of :func:`run_sweep`: parent run, teachers, trials, reconciliation."""

    def __init__(
        self,
        suite: Suite,
        options: SweepOptions,
        report: SweepReport,
        todo: list[PlannedTrial],
        sweep: str,
        home: Path,
        storage: Path,
        started: float,
    ) -> None:
        self.suite = suite
        self.options = options
        self.report = report
        self.todo = todo
        self.sweep = sweep
        self.home = home
        self.storage = storage
        self.started = started
        self.interrupted = False
        self.board: ProgressBoard | None = None
        self.tracker: Any = None
        self.parent: ledger.ParentRun | None = None

    def start(self, err: TextIO) -> None:
        """Open (or reopen) the parent run; mark dead attempts of this sweep KILLED."""
        from bench.tracking import Tracker

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
            suite_text=Path(suite.path).read_text() if suite.path else "",
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
        plugins = tuple(dict.fromkeys((*suite.plugins, *options.plugins)))
        lost = _train_teachers(
            suite, self.todo, str(self.home), plugins, err, options.progress_interval
        )
        self.report.failed.update(lost)
        runnable = [t for t in self.todo if t.key not in lost]
        # Packed trials get a share their pilot fits in before Ray places them.
        from bench.sweep_packing import check_packing

        runnable = check_packing(
            runnable, str(self.home), plugins, err, cache=self.storage / "pilots"
        )
        context = SweepContext(
            tracking_uri=self.report.tracking_uri,
            experiment=suite.experiment,
            sweep=self.sweep,
            parent_run_id=self.parent.run_id,
            home=str(self.home),
            trials={t.key: t.config for t in runnable},
            resources={t.key: t.resources for t in runnable},
            plugins=plugins,
            retry_failed=options.retry_failed,
        )
        self.board = ProgressBoard(
            {t.key: t for t in runnable}, suite.metric, err, interval=options.progress_interval
        )
        if runnable:
            _tune(suite, options, runnable, context, self.board, self.storage, self.sweep)

    def close(self, out: TextIO) -> None:
        """Reconcile the record, end the parent run, print the summary."""
        report = self.report
        if self.board is not None:
            self.board.close()
        self._supersede(f"sweep ended (parent run {self.parent.run_id})")
        planned = {t.key for t in report.planned}
        grouped = ledger.trial_runs(self.tracker)
        ledger.deduplicate(self.tracker, {k: v for k, v in grouped.items() if k in planned})
        grouped = ledger.trial_runs(self.tracker)
        _finish_report(report, grouped, report.planned, self.started, self.board)
        status = "FINISHED" if report.exit_code == EXIT_OK else "FAILED"
        _count_compression(report)
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
        ledger.close_parent(self.tracker, self.parent.run_id, status, counts)
        _print_summary(report, self.suite, grouped, report.planned, board=self.board, out=out)

    def _supersede(self, reason: str) -> None:
        runs = [r for group in ledger.trial_runs(self.tracker).values() for r in group]
        ledger.supersede_stale(self.tracker, runs, self.sweep, by=reason)


def _compress(
    suite: Suite, trials: Sequence[PlannedTrial], uri: str, err: TextIO
) -> compression.CompressionOutcome:
    """The compression post-stage over the students MLflow now records as finished."""
    client, found = _read_experiment(uri, suite.experiment)
    experiment_id = found.experiment_id if found is not None else None
    grouped = _recorded_runs(uri, suite.experiment)
    done = ledger.done_runs(grouped)
    recorded = compression.recorded_variants(client, experiment_id)
    plan = compression.plan_compression(suite.compress, trials, done, recorded)
    return compression.run_compression(plan, done, client, experiment_id, err)


def _count_compression(report: SweepReport) -> None:
    """A student that could not be compressed makes the sweep's exit status 1, as a failed
    trial does (running the sweep again retries it)."""
    failed = report.compression is not None and report.compression.failed
    if failed and report.exit_code == EXIT_OK:
        report.exit_code = EXIT_FAILED


def _tune(
    suite: Suite,
    options: SweepOptions,
    runnable: Sequence[PlannedTrial],
    context: SweepContext,
    board: ProgressBoard,
    storage: Path,
    sweep: str,
) -> None:
    from ray import tune

    from bench.sweep_progress import tune_callback
    from bench.sweep_trial import tune_trainable

    requests = {t.key: t.resources.as_ray() for t in runnable}
    distinct = {tuple(sorted(r.items())) for r in requests.values()}
    if len(distinct) == 1:
        resources: Any = tune.PlacementGroupFactory([next(iter(requests.values()))])
    else:

        def resources(config: dict) -> Any:
            return tune.PlacementGroupFactory([requests[config["run_key"]]])

    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, context=context), resources=resources
    )
    names = {t.key: f"{t.method}-{t.pair.replace('->', '-')}-s{t.seed}" for t in runnable}
    tuner = tune.Tuner(
        trainable,
        param_space={"run_key": tune.grid_search([t.key for t in runnable])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=options.max_concurrent,
            reuse_actors=True,
            trial_name_creator=lambda trial: names[trial.config["run_key"]],
            trial_dirname_creator=lambda trial: trial.config["run_key"],
        ),
        run_config=tune.RunConfig(
            name=f"{suite.name}-{sweep[:8]}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=suite.max_failures),
            verbose=0,
            callbacks=[tune_callback(board)],
            log_to_file=True,
        ),
    )
    with _quiet_tune():
        tuner.fit()


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's own status tables and resume hints would interleave with the sweep's view (and
    its hint to call Tuner.restore does not apply: the same command resumes)."""
    names = ("ray.tune", "ray.train", "ray.air")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _train_teachers(
    suite: Suite,
    todo: Sequence[PlannedTrial],
    home: str,
    plugins: tuple[str, ...],
    err: TextIO,
    interval: float,
) -> dict[str, str]:
    """Train every missing teacher of ``todo`` as Ray tasks; returns run key → reason for
    the trials whose teacher failed."""
    import ray

    from bench.sweep_trial import teacher_cached, train_teacher

    jobs = suite.teachers(todo)
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
    task = ray.remote(train_teacher)
    pending = {}
    for group in trainings:
        job = group[-1]
        pending[
            task.options(
                num_cpus=job.resources.cpu,
                num_gpus=job.resources.gpu,
                max_retries=suite.max_failures,
                name=f"teacher {job.spec.arch}",
            ).remote(job, home, plugins, tuple(j.epoch for j in group))
        ] = group
    failed: dict[TeacherJob, str] = {}
    started = time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=interval)
        for ref in ready:
            group = pending.pop(ref)
            job = group[-1]
            kept = (
                f", checkpoints after epochs {', '.join(str(j.epoch) for j in group)}"
                if len(group) > 1
                else ""
            )
            try:
                info = ray.get(ref)
            except Exception as exc:  # reported per trial; the other teachers go on
                reason = f"teacher {job.describe()}{kept} failed: {_first_line(exc)}"
                failed.update(dict.fromkeys(group, reason))
                print(f"  FAILED {reason}", file=err, flush=True)
                continue
            print(
                f"  teacher {job.describe()}{kept}: test_acc {info['test_acc']:.4f} "
                f"({info['seconds']:.0f}s)",
                file=err,
                flush=True,
            )
        if not ready:
            print(
                f"  teachers: {len(trainings) - len(pending)}/{len(trainings)} trained, "
                f"{format_seconds(time.perf_counter() - started)} elapsed",
                file=err,
                flush=True,
            )
    lost = {}
    for trial in todo:
        for job, reason in failed.items():
            if trial.config.teacher == job.spec and trial.config.dataset == job.dataset.name:
                lost[trial.key] = reason
    return lost


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    cause = exc.cause if hasattr(exc, "cause") else None  # RayTaskError wraps the original
    if cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    return text.splitlines()[-1] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Ray, locks, MLflow reads
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _ray(options: SweepOptions) -> Iterator[Any]:
    """Ray for the sweep: joined (``--address``; yields the cluster view for the preflight),
    started on this machine (yields None), or the one this process already runs."""
    import ray

    if ray.is_initialized():
        yield _view_if_cluster(options)
        return
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # The legacy reporter at verbose=0 prints nothing; the new one prints a header and a
    # results path on stdout whatever the verbosity. The sweep has its own view.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C reaches the sweep, which records the interruption and shuts Ray down; Tune's own
    # handler would swallow it and print a Tuner.restore hint that does not apply here.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    common = {"logging_level": logging.ERROR, "log_to_driver": False}
    if options.address:
        ray.init(address=options.address, **common)
    else:
        capacity = local_capacity()
        ray.init(
            address="local",
            num_cpus=int(capacity["CPU"]),
            num_gpus=int(capacity["GPU"]),
            include_dashboard=False,
            **common,
        )
    try:
        yield _view_if_cluster(options)
    finally:
        ray.shutdown()


def _view_if_cluster(options: SweepOptions) -> Any:
    if not options.address:
        return None
    from bench.sweep_preflight import cluster_view

    return cluster_view(options.cluster_config)


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


def _recorded_runs(uri: str, experiment: str) -> dict[str, list[Any]]:
    """Trial runs already recorded in ``experiment``, by run key. Reads only: a missing
    database or experiment is not created here."""
    client, found = _read_experiment(uri, experiment)
    if found is None:
        return {}
    from bench.tracking import search_all_runs

    query = f"{ledger.quoted(ledger.RUN_KEY_TAG)} LIKE '%'"
    return ledger.runs_by_key(search_all_runs(client, found.experiment_id, query))


def _read_experiment(uri: str, experiment: str) -> tuple[Any, Any]:
    """(client, experiment) for reading; (None, None) when the database or experiment does not
    exist yet (nothing is created just to look)."""
    from bench.tracking import _quiet_mlflow

    _quiet_mlflow()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return None, None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.get_experiment_by_name(experiment)


def _has_parent(uri: str, experiment: str, sweep: str) -> bool:
    client, found = _read_experiment(uri, experiment)
    if found is None:
        return False
    query = (
        f"{ledger.quoted(ledger.KIND_TAG)} = '{ledger.SWEEP_KIND}' and "
        f"{ledger.quoted(ledger.SWEEP_TAG)} = '{sweep}'"
    )
    return bool(client.search_runs([found.experiment_id], filter_string=query, max_results=1))


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _finish_report(
    report: SweepReport,
    grouped: dict[str, list[Any]],
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


def _status(run: Any) -> str:
    return run.info.status


def print_matrix(
    suite: Suite,
    trials: Sequence[PlannedTrial],
    done: dict[str, Any],
    uri: str,
    home: Path,
    out: TextIO,
) -> None:
    """The dry run: counts per method, pair and seed; what is done; the teachers."""
    from bench.sweep_trial import teacher_cached

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
    jobs = suite.teachers(trials)
    cached = [j for j in jobs if teacher_cached(j, str(home))]
    todo = teacher_trainings([j for j in jobs if j not in cached])
    print(
        f"teachers: {len(jobs)} ({len(cached)} cached), {len(todo)} "
        f"training{'' if len(todo) == 1 else 's'} to run",
        file=out,
    )
    for job in jobs:
        state = "cached" if job in cached else "to train"
        print(f"  {job.describe()}, {job.spec.recipe.epochs} epochs: {state}", file=out)
    if done:
        print("\nrun keys already done:", file=out)
        for t in trials:
            if t.key in done:
                run = done[t.key]
                print(
                    f"  {t.key}  {run.info.status:<8} {t.describe()}  run {run.info.run_id}",
                    file=out,
                )


def _print_local_fit(suite: Suite, out: TextIO) -> None:
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


def _print_summary(
    report: SweepReport,
    suite: Suite,
    grouped: dict[str, list[Any]],
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
            first = (reason or "failed").strip().splitlines()
            print(
                f"  {by_key[key].describe()} [{key}]: {first[0] if first else 'failed'}", file=out
            )
            if len(first) > 1:
                print(f"      {first[-1].strip()}", file=out)
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
    suite: Suite, grouped: dict[str, list[Any]], trials: Sequence[PlannedTrial], out: TextIO
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.sweep SUITE …``: the same as ``kdbench sweep``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="kdbench sweep", description=__doc__.splitlines()[0])
    add_sweep_arguments(parser)
    try:
        return sweep_main(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("kdbench sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
