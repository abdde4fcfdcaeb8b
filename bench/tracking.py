"""MLflow tracking: one run per trial, tagged with its run key.

The default store is SQLite under the kdbench home (``<home>/mlflow.db``, artifacts in
``<home>/mlartifacts``: an SQLite store keeps its artifacts beside it); ``MLFLOW_TRACKING_URI``
(or ``--tracking-uri``) selects another, such as a cluster's ``mlflow server``. Parameters go
in one ``log_batch`` per call and respect MLflow's length limits; the full config is an
artifact (``config.json``), which also gets how the method set itself up (``setup``: the stage
pairs of a feature method), as do the run's ``kdbench.setup.<name>`` tags.

MLflow itself is imported inside the functions that talk to it: the import takes over a second,
and commands that never record or read runs (a leaderboard rebuilt from ``results.csv``, a
sweep's ``--dry-run``) should not pay it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from bench.config import TrialConfig, key_fields, to_jsonable
from bench.paths import kdbench_home
from bench.plugins import method_code
from bench.store import ARTIFACTS_FOLDER, sqlite_path

if TYPE_CHECKING:
    from bench.api import Method

TAG_PREFIX = "kdbench."
RUN_KEY_TAG = "kdbench.run_key"
#: A run that trained a key again after it had finished (``kdbench train --rerun``); "true".
#: Leaderboards leave replicates out, so each key counts once.
REPLICATE_TAG = "kdbench.replicate"
#: The run a replicate repeats.
REPLICATE_OF_TAG = "kdbench.replicate_of"
#: Prefix of the tags of what a method reported of its setup (``Method.setup_facts``).
SETUP_TAG_PREFIX = "kdbench.setup."
#: MLflow accepts longer values, but short ones keep the UI and search usable.
MAX_PARAM_CHARS = 500
MAX_TAG_CHARS = 5000
DEFAULT_EXPERIMENT = "kdbench"
#: Artifact holding the trained student's state dict (``torch.save``; load with weights_only).
STUDENT_ARTIFACT = "student.pt"
#: Tags that say why a run did not finish; a run that ends FINISHED carries none of them.
FAILURE_TAGS = ("kdbench.error", "kdbench.superseded_by")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite in the kdbench home."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{kdbench_home() / 'mlflow.db'}"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested dicts → ``a.b.c`` keys."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def trial_params(config: TrialConfig) -> dict[str, str]:
    """MLflow params of a trial: the flattened config, each value within the length limit."""
    data = to_jsonable(config)
    data["params"] = dict(config.params)
    flat = flatten("", data)
    out = {}
    for k, v in flat.items():
        text = json.dumps(v) if isinstance(v, list | dict) else str(v)
        out[k[:250]] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"
    return out


def _quiet_mlflow() -> None:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"mlflow\..*")
    warnings.filterwarnings("ignore", message=r".*noload.*")


class Tracker:
    """Records trials as MLflow runs in one experiment.

    Args:
        uri: Tracking URI (default :func:`default_tracking_uri`).
        experiment: Experiment name.
    """

    def __init__(self, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> None:
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()  # after the import: importing mlflow configures its loggers

        self.uri = uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name = experiment
        self.experiment_id = self._ensure_experiment(experiment)

    def _ensure_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        database = sqlite_path(self.uri)
        if database is not None:
            # Beside the database: the two are one store, and artifacts whose database is gone
            # are how a missing store is recognised (bench.store).
            location = (database.parent.resolve() / ARTIFACTS_FOLDER / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    @contextmanager
    def trial_run(
        self,
        config: TrialConfig,
        key: str,
        method_cls: type[Method],
        *,
        parent_run_id: str | None = None,
        extra_tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
        facts: dict[str, str] | None = None,
    ) -> Iterator[RunHandle]:
        """A RUNNING MLflow run for one trial; ended FAILED if the block raises.

        Its params are the flattened config (``params.<name>`` for every resolved method
        param), its tags the key, the trial's identity and ``facts``, and its ``config.json``
        artifact holds the config, the fields of the key, and the facts.

        Args:
            config: The trial (params resolved, compute set: as it ran).
            key: Its run key.
            method_cls: Its method class (version, knowledge, code).
            parent_run_id: The sweep's parent run, if any.
            extra_tags: Further tags.
            resume_run_id: A RUNNING run of an interrupted attempt of the same trial to
                continue instead of creating one (its params and config are already there).
            facts: What defined the trial beyond its config (compute, versions, the teacher's
                key, file and hash; ``bench.trial.compose.trial_facts``): tags
                ``kdbench.<name>``.
        """
        from mlflow.entities import Param, RunTag

        if resume_run_id is not None:
            handle = RunHandle(self.client, resume_run_id)
            if extra_tags:
                run_tags = [RunTag(k, v) for k, v in extra_tags.items()]
                self.client.log_batch(resume_run_id, tags=run_tags)
            with self._ended_failed_on_error(handle):
                yield handle
            return

        pair = f"{config.student}<-{config.teacher.arch}" if config.teacher else config.student
        tags = {
            RUN_KEY_TAG: key,
            "kdbench.method": config.method,
            "kdbench.method_version": str(method_cls.version),
            "kdbench.dataset": config.dataset,
            "kdbench.student": config.student,
            "kdbench.teacher": config.teacher.arch if config.teacher else "",
            "kdbench.seed": str(config.seed),
            "kdbench.phase": config.phase,
            "kdbench.knowledge": method_cls.knowledge,
            "mlflow.runName": f"{config.method} {config.dataset} {pair} s{config.seed}",
            **{f"{TAG_PREFIX}{name}": value[:5000] for name, value in (facts or {}).items()},
            **(extra_tags or {}),
        }
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=tags)
        handle = RunHandle(self.client, run.info.run_id)
        with self._ended_failed_on_error(handle):
            params = [Param(k, v) for k, v in trial_params(config).items()]
            for i in range(0, len(params), 100):  # MLflow's per-batch param limit
                self.client.log_batch(handle.run_id, params=params[i : i + 100])
            handle.record = {
                "config": to_jsonable(config),
                "key_fields": _key_fields_or_error(config, method_cls),
                "run_key": key,
                "facts": dict(facts or {}),
            }
            handle.log_record()
            yield handle

    @contextmanager
    def _ended_failed_on_error(self, handle: RunHandle) -> Iterator[None]:
        """Ends the run FAILED, with the error as a tag, if the block raises or leaves it
        running."""
        from mlflow.entities import RunTag

        try:
            yield
        except BaseException as exc:
            if not handle.ended:
                self.client.log_batch(
                    handle.run_id,
                    tags=[RunTag("kdbench.error", f"{type(exc).__name__}: {exc}"[:5000])],
                )
                self.client.set_terminated(handle.run_id, "FAILED")
            raise
        if not handle.ended:
            self.client.set_terminated(handle.run_id, "FAILED")

    def finished_run(self, key: str) -> Any | None:
        """The first FINISHED run of ``key`` that is not a replicate; None when there is none."""
        runs = search_all_runs(
            self.client,
            self.experiment_id,
            f"attributes.status = 'FINISHED' and tags.`{RUN_KEY_TAG}` = '{key}'",
            order_by=["attributes.start_time ASC"],
        )
        originals = [r for r in runs if r.data.tags.get(REPLICATE_TAG) != "true"]
        return originals[0] if originals else None

    def is_running(self, run_id: str | None) -> bool:
        """Whether ``run_id`` names a run of this store that is still RUNNING."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.status == "RUNNING"
        except MlflowException:
            return False

    def finished_runs(self, filter_string: str = "") -> dict[str, str]:
        """run key → run id of every FINISHED run in the experiment."""
        query = "attributes.status = 'FINISHED'"
        if filter_string:
            query += f" and {filter_string}"
        out = {}
        for run in self.search(query):
            key = run.data.tags.get(RUN_KEY_TAG)
            if key:
                out[key] = run.info.run_id
        return out

    def search(self, filter_string: str = "") -> list:
        """Every run of the experiment matching ``filter_string`` (all pages)."""
        return search_all_runs(self.client, self.experiment_id, filter_string)


def _key_fields_or_error(config: TrialConfig, method_cls: type[Method]) -> dict[str, Any]:
    """The fields of the trial's key; a trial whose setup failed on a missing checkpoint file
    is still recorded, with the reason in their place."""
    try:
        return key_fields(config, method_cls.version, method_code(method_cls))
    except FileNotFoundError as exc:
        return {"error": str(exc)}


def search_all_runs(
    client: Any,
    experiment_id: str,
    filter_string: str = "",
    order_by: list[str] | None = None,
) -> list:
    """Every run of one experiment that matches ``filter_string``, over all result pages.

    Args:
        client: An ``MlflowClient``.
        experiment_id: The experiment's id.
        filter_string: MLflow's search syntax; empty matches every run.
        order_by: MLflow's ordering clauses, e.g. ``["attributes.start_time ASC"]``.
    """
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=5000,
            page_token=token,
            order_by=order_by,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class RunHandle:
    """Logging into one MLflow run."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.ended = False
        self._extra_step = 0
        #: The ``config.json`` this handle wrote (None for a resumed run, which has one).
        self.record: dict[str, Any] | None = None

    def log_record(self) -> None:
        """(Re)write the run's ``config.json`` from :attr:`record`."""
        if self.record is not None:
            self.client.log_dict(self.run_id, self.record, "config.json")

    def record_setup(self, facts: dict[str, str]) -> None:
        """What the method reported of its setup: tags ``kdbench.setup.<name>`` and the
        ``setup`` entry of ``config.json``."""
        from mlflow.entities import RunTag

        if not facts:
            return
        tags = [
            RunTag(f"{SETUP_TAG_PREFIX}{k}", v[:MAX_TAG_CHARS]) for k, v in sorted(facts.items())
        ]
        self.client.log_batch(self.run_id, tags=tags)
        if self.record is not None:
            self.record["setup"] = dict(facts)
            self.log_record()

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def logged_epochs(self) -> set[int]:
        """The epochs this run already holds (a resumed attempt does not log them twice)."""
        history = self.client.get_metric_history(self.run_id, "epoch_seconds")
        return {int(m.step) for m in history}

    def log_epoch(self, record: Any) -> None:
        """Per-epoch metrics (train loss terms, val accuracy, lr, time) at step = epoch."""
        self._log(record.metrics(), step=record.epoch)

    def log_history_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """An epoch an earlier attempt trained, from its saved history, at step = epoch."""
        self._log(metrics, step=epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Extra metrics a method reports; stepped by call."""
        self._log(metrics, step=self._extra_step)
        self._extra_step += 1

    def log_state_dict(self, state: dict[str, Any], name: str = STUDENT_ARTIFACT) -> None:
        """A model's state dict as an artifact (CPU tensors, ``torch.save``), for analyses that
        load the trained model later (``kdbench explain``, ``kdbench compress``)."""
        import tempfile
        from pathlib import Path

        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            torch.save({k: v.detach().cpu() for k, v in state.items()}, path)
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, result: Any) -> None:
        """Final metrics, the trained student's weights (``student.pt``, when the result
        carries the model as ``student``) and the run's end status (FINISHED, or FAILED with
        the reason)."""
        from mlflow.entities import RunTag

        # Result attribute → MLflow metric name; absent or NaN values are not logged.
        names = {
            "test_acc": "test_acc",
            "test_top5": "test_top5",
            "val_acc": "final_val_acc",
            "teacher_test_acc": "teacher_test_acc",
            "agreement": "agreement",
            "macro_precision": "macro_precision",
            "macro_recall": "macro_recall",
            "macro_f1": "macro_f1",
            "ece": "ece",
            "student_flops": "student_flops",
            "train_seconds": "train_seconds",
            "peak_rss_mb": "peak_rss_mb",
            "peak_gpu_allocated_mb": "peak_gpu_allocated_mb",
            "student_params": "student_params",
            "extra_params": "extra_params",
        }
        final = {metric: getattr(result, attr, float("nan")) for attr, metric in names.items()}
        self._log({k: v for k, v in final.items() if v == v}, step=0)
        student = getattr(result, "student", None)
        if student is not None and result.status == "FINISHED":
            self.log_state_dict(student.state_dict())
        tags = [RunTag("kdbench.outcome", result.outcome)]
        if result.error:
            tags.append(RunTag("kdbench.error", result.error[-5000:]))
        self.client.log_batch(self.run_id, tags=tags)
        self.client.set_terminated(self.run_id, result.status)
        self.ended = True
        if result.status == "FINISHED":
            # Another driver may have taken this attempt for lost and tagged it so while it
            # ran on; it finished, so those tags no longer hold.
            stale = self.client.get_run(self.run_id).data.tags
            for name in FAILURE_TAGS:
                if name in stale:
                    self.client.delete_tag(self.run_id, name)
