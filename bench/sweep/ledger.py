"""The MLflow record of a sweep: which run keys are done, the sweep's parent run, and the rules
that keep exactly one result per run key.

The rules (the driver and every trial follow them):

- A run key is *done* when it has a FINISHED run, or a FAILED run carrying the trial's own
  verdict (tag ``kdbench.outcome``: it diverged, the method refused the pair, the method
  raised). Done keys are never run again; ``--retry-failed`` re-runs the FAILED ones.
- Every attempt at a trial is a new MLflow run, a child of the sweep's parent run. Before it
  starts, an attempt marks the earlier attempts of the same sweep that are still RUNNING as
  KILLED (tag ``kdbench.superseded_by``): Ray runs one attempt of a trial at a time, so a
  RUNNING run of an earlier attempt belongs to a worker or node that died, or to a driver that
  was killed. A retried trial restarts from its first epoch, so its result is identical to an
  uninterrupted one.
- Before an attempt ends FINISHED it looks again; if another FINISHED run of the key appeared
  meanwhile (a second driver running the same trial), it ends KILLED with
  ``kdbench.duplicate_of`` instead. The driver repeats that check over the whole experiment at
  the end of every sweep (:func:`deduplicate`), keeping the earliest FINISHED run, so even a
  race between two drivers cannot leave two results for one key.
- A sweep is one parent run per (experiment, set of run keys): running the same suite again
  (to resume it) reuses it, so its children stay together.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.config import stable_hash
from bench.tracking import RUN_KEY_TAG, Tracker

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run
    from mlflow.tracking import MlflowClient

SWEEP_TAG = "kdbench.sweep"
KIND_TAG = "kdbench.kind"
OUTCOME_TAG = "kdbench.outcome"
ERROR_TAG = "kdbench.error"
ATTEMPT_TAG = "kdbench.attempt"
NODE_TAG = "kdbench.node"
SUPERSEDED_TAG = "kdbench.superseded_by"
#: On a trial that continued from a checkpoint: the epochs its saved state covered.
RESUMED_TAG = "kdbench.resumed_from_epoch"
DUPLICATE_TAG = "kdbench.duplicate_of"
PARENT_TAG = "mlflow.parentRunId"
#: On a sweep's parent run: how many teachers failed, and the artifact saying why.
TEACHERS_FAILED_TAG = "kdbench.teachers_failed"
TEACHER_FAILURES_FILE = "teachers_failed.txt"
SWEEP_KIND = "sweep"


def quoted(tag: str) -> str:
    """A tag name as MLflow's filter syntax needs it (dots inside backticks)."""
    return f"tags.`{tag}`"


def sweep_key(experiment: str, keys: Iterable[str]) -> str:
    """Identity of a sweep: its experiment and the set of run keys it covers."""
    return stable_hash({"experiment": experiment, "keys": sorted(set(keys))})


def is_done(run: Run, retry_failed: bool = False) -> bool:
    """Whether a run settles its run key (see the module docstring)."""
    status = run.info.status
    if status == "FINISHED":
        return True
    return status == "FAILED" and OUTCOME_TAG in run.data.tags and not retry_failed


def runs_by_key(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Trial runs grouped by run key, oldest first (runs without a key are left out)."""
    grouped: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        key = run.data.tags.get(RUN_KEY_TAG)
        if key:
            grouped[key].append(run)
    for group in grouped.values():
        group.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return dict(grouped)


def done_runs(grouped: Mapping[str, list[Run]], retry_failed: bool = False) -> dict[str, Run]:
    """Run key → the run that settles it (the first FINISHED, else the last verdict)."""
    out = {}
    for key, runs in grouped.items():
        finished = [r for r in runs if r.info.status == "FINISHED"]
        settled = finished[:1] or [r for r in runs if is_done(r, retry_failed)][-1:]
        if settled:
            out[key] = settled[0]
    return out


def key_runs(tracker: Tracker, key: str) -> list[Run]:
    """Every run of one run key in the tracker's experiment, oldest first."""
    runs = tracker.search(f"{quoted(RUN_KEY_TAG)} = '{key}'")
    return runs_by_key(runs).get(key, [])


def trial_runs(tracker: Tracker) -> dict[str, list[Run]]:
    """Every trial run of the experiment, by run key."""
    return runs_by_key(tracker.search(f"{quoted(RUN_KEY_TAG)} LIKE '%'"))


def mark_killed(tracker: Tracker, run_id: str, tags: dict[str, str]) -> None:
    """End a run KILLED, with tags saying why."""
    from mlflow.entities import RunTag

    tracker.client.log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])
    tracker.client.set_terminated(run_id, "KILLED")


def supersede_stale(tracker: Tracker, runs: Sequence[Run], sweep: str, by: str) -> list[str]:
    """Mark the RUNNING runs of ``sweep`` among ``runs`` KILLED (their attempts are dead);
    returns their ids."""
    stale = [r for r in runs if r.info.status == "RUNNING" and r.data.tags.get(SWEEP_TAG) == sweep]
    for run in stale:
        mark_killed(
            tracker,
            run.info.run_id,
            {
                SUPERSEDED_TAG: by,
                ERROR_TAG: "attempt lost (its worker, node or driver stopped); retried",
            },
        )
    return [r.info.run_id for r in stale]


def deduplicate(tracker: Tracker, grouped: Mapping[str, list[Run]]) -> list[str]:
    """Keep the earliest FINISHED run of each key; end any other FINISHED run KILLED with
    ``kdbench.duplicate_of``. Returns the ids demoted."""
    demoted = []
    for runs in grouped.values():
        finished = sorted(
            (r for r in runs if r.info.status == "FINISHED"),
            key=lambda r: (r.info.end_time or 0, r.info.run_id),
        )
        for run in finished[1:]:
            mark_killed(tracker, run.info.run_id, {DUPLICATE_TAG: finished[0].info.run_id})
            demoted.append(run.info.run_id)
    return demoted


@dataclass
class ParentRun:
    """The sweep's parent run."""

    run_id: str
    resumed: bool


def find_parent(tracker: Tracker, sweep: str) -> Run | None:
    """The latest parent run of ``sweep``, if one exists."""
    runs = tracker.search(
        f"{quoted(KIND_TAG)} = '{SWEEP_KIND}' and {quoted(SWEEP_TAG)} = '{sweep}'"
    )
    return max(runs, key=lambda r: r.info.start_time or 0) if runs else None


def open_parent(
    tracker: Tracker, sweep: str, *, suite_name: str, phase: str, suite_text: str, plan: dict
) -> ParentRun:
    """Reuse the parent run of ``sweep`` (set RUNNING again) or create it."""
    from mlflow.entities import Param

    found = find_parent(tracker, sweep)
    if found is not None:
        tracker.client.update_run(found.info.run_id, status="RUNNING")
        return ParentRun(found.info.run_id, resumed=True)
    run = tracker.client.create_run(
        tracker.experiment_id,
        tags={
            KIND_TAG: SWEEP_KIND,
            SWEEP_TAG: sweep,
            "kdbench.suite": suite_name,
            "kdbench.phase": phase,
            "mlflow.runName": f"sweep {suite_name}",
        },
    )
    run_id = run.info.run_id
    tracker.client.log_batch(
        run_id,
        params=[
            Param("suite", suite_name),
            Param("phase", phase),
            Param("trials", str(len(plan["trials"]))),
        ],
    )
    tracker.client.log_text(run_id, suite_text, "suite.yaml")
    tracker.client.log_dict(run_id, plan, "plan.json")
    return ParentRun(run_id, resumed=False)


def record_teacher_failures(
    tracker: Tracker, run_id: str, described: Mapping[str, str], lost: Mapping[str, str]
) -> None:
    """Record on the sweep's parent run why teachers failed (the whole reason of each) and
    the trials each cost, which are not started and so have no run of their own: the tag
    ``kdbench.teachers_failed`` counts them, the artifact ``teachers_failed.txt`` says why.

    Args:
        tracker: The sweep's tracker.
        run_id: The parent run.
        described: Run key → its trial's description.
        lost: Run key → the reason its teacher failed.
    """
    from mlflow.entities import RunTag

    trials: dict[str, list[str]] = defaultdict(list)
    for key, reason in lost.items():
        trials[reason].append(f"  {described.get(key, key)} [{key}]")
    text = "\n\n".join(
        f"{reason}\ntrials not run:\n" + "\n".join(t) for reason, t in trials.items()
    )
    tracker.client.log_text(run_id, text + "\n", TEACHER_FAILURES_FILE)
    tracker.client.log_batch(run_id, tags=[RunTag(TEACHERS_FAILED_TAG, str(len(trials)))])


def close_parent(tracker: Tracker, run_id: str, status: str, metrics: dict[str, float]) -> None:
    """Record the sweep's counts and end its parent run with ``status``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    tracker.client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
    )
    tracker.client.set_terminated(run_id, status)


# --------------------------------------------------------------------------------------------
# Reads before the sweep opens a tracker (which would create the database and experiment)
# --------------------------------------------------------------------------------------------


def recorded_runs(uri: str, experiment: str) -> dict[str, list[Run]]:
    """Trial runs already recorded in ``experiment``, by run key. Reads only: a missing
    database or experiment is not created here."""
    client, found = read_experiment(uri, experiment)
    if client is None or found is None:
        return {}
    from bench.tracking import search_all_runs

    query = f"{quoted(RUN_KEY_TAG)} LIKE '%'"
    return runs_by_key(search_all_runs(client, found.experiment_id, query))


def read_experiment(uri: str, experiment: str) -> tuple[MlflowClient | None, Experiment | None]:
    """(client, experiment) for reading; (None, None) when the database or experiment does not
    exist yet (nothing is created just to look)."""
    from bench.tracking import _quiet_mlflow

    _quiet_mlflow()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return None, None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.get_experiment_by_name(experiment)


def has_parent(uri: str, experiment: str, sweep: str) -> bool:
    """Whether ``sweep`` already has a parent run in ``experiment`` (it started before)."""
    client, found = read_experiment(uri, experiment)
    if client is None or found is None:
        return False
    query = f"{quoted(KIND_TAG)} = '{SWEEP_KIND}' and {quoted(SWEEP_TAG)} = '{sweep}'"
    return bool(client.search_runs([found.experiment_id], filter_string=query, max_results=1))
