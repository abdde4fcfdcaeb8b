"""Ray for a sweep: the session (started on this machine, or joined with ``--address``) and
the student trials as one Ray Tune experiment.

Students run as a function trainable (:func:`bench.sweep.worker.tune_trainable`) with
per-trial resources, in FIFO order, under ``FailureConfig(max_failures)`` so a trial on a
dead node is retried elsewhere. Tune's own console output is silenced: the sweep has its own
view (:mod:`bench.sweep.progress`), and Tune's hint to call ``Tuner.restore`` does not apply
(the same command resumes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from bench.suite.expand import PlannedTrial
from bench.suite.schema import Suite
from bench.sweep.localray import local_ray
from bench.sweep.preflight import ClusterView, local_capacity
from bench.sweep.progress import ProgressBoard
from bench.sweep.worker import SweepContext

if TYPE_CHECKING:
    from ray.tune import PlacementGroupFactory


class _InitOptions(TypedDict):
    """The ``ray.init`` options a sweep's session has whether it joins or starts Ray."""

    logging_level: int
    log_to_driver: bool


@contextlib.contextmanager
def ray_session(
    address: str | None, cluster_config: str | None = None
) -> Iterator[ClusterView | None]:
    """Ray for the sweep: joined (``address``; yields the cluster view for the preflight),
    started on this machine (on loopback only, watched; :mod:`bench.sweep.localray`; yields
    None), or the one this process already runs.

    Args:
        address: Ray cluster to join (``auto``, ``ray://…``, ``host:port``); None starts Ray
            on this machine.
        cluster_config: Ray launcher file whose node types the cluster view counts.
    """
    import ray

    if ray.is_initialized():
        yield _view_if_cluster(address, cluster_config)
        return
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # The legacy reporter at verbose=0 prints nothing; the new one prints a header and a
    # results path on stdout whatever the verbosity. The sweep has its own view.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C reaches the sweep, which records the interruption and shuts Ray down; Tune's own
    # handler would swallow it and print a Tuner.restore hint that does not apply here.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    common: _InitOptions = {"logging_level": logging.ERROR, "log_to_driver": False}
    if not address:
        capacity = local_capacity()
        with local_ray(int(capacity["CPU"]), int(capacity["GPU"]), **common):
            yield None
        return
    # A cluster listens as its launcher configured it; the driver only joins.
    ray.init(address=address, **common)
    try:
        yield _view_if_cluster(address, cluster_config)
    finally:
        ray.shutdown()


def _view_if_cluster(address: str | None, cluster_config: str | None) -> ClusterView | None:
    if not address:
        return None
    from bench.sweep.preflight import cluster_view

    return cluster_view(cluster_config)


def tune_students(
    suite: Suite,
    runnable: Sequence[PlannedTrial],
    context: SweepContext,
    board: ProgressBoard,
    storage: Path,
    sweep: str,
    max_concurrent: int | None = None,
) -> None:
    """Run ``runnable`` as one Ray Tune experiment, one trial per run key, feeding ``board``.

    Args:
        suite: The suite (its name and ``max_failures``).
        runnable: The trials to run, with the resources each asks for.
        context: What every trial needs, shipped once to the workers.
        board: The live view the trials' events go to.
        storage: Ray Tune's storage path.
        sweep: The sweep key (part of the experiment's name).
        max_concurrent: At most this many trials at once (None: as resources allow).
    """
    from ray import tune

    from bench.sweep.progress import tune_callback
    from bench.sweep.worker import tune_trainable

    requests = {t.key: t.resources.as_ray() for t in runnable}
    distinct = {tuple(sorted(r.items())) for r in requests.values()}
    resources: PlacementGroupFactory | Callable[[dict], PlacementGroupFactory]
    if len(distinct) == 1:
        resources = tune.PlacementGroupFactory([next(iter(requests.values()))])
    else:

        def resources(config: dict) -> PlacementGroupFactory:
            return tune.PlacementGroupFactory([requests[config["run_key"]]])

    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, context=context), resources=resources
    )
    names = {t.key: f"{t.method}-{t.pair.replace('->', '-')}-s{t.seed}" for t in runnable}
    tuner = tune.Tuner(
        trainable,
        param_space={"run_key": tune.grid_search([t.key for t in runnable])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
            trial_name_creator=lambda trial: names[trial.config["run_key"]],
            trial_dirname_creator=lambda trial: trial.config["run_key"],
        ),
        run_config=tune.RunConfig(
            name=f"{suite.name}-{sweep[:8]}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=suite.max_failures),
            # A restarted attempt needs only the last state; the trial deletes it when it ends.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
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
