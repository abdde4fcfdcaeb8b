"""Find a recorded trial by its run key and rebuild what an analysis needs from it: the trial's
config (``config.json``), its test data, its teacher (from the teacher cache) and its trained
student.

The student's weights are the run's ``student.pt`` artifact when the run has one. Older runs
have none: the student is then trained again from the recorded config, which on a CPU gives the
same weights (a trial is a pure function of its config), checked against the recorded test
accuracy, and the weights are added to the run as ``student.pt`` so this happens once.
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.analysis import AnalysisError, RunNotFoundError
from bench.checkpoint import CheckpointError, load_weights
from bench.config import Compute, Recipe, TeacherSpec, TrialConfig
from bench.data import load_dataset
from bench.tracking import (
    RUN_KEY_TAG,
    STUDENT_ARTIFACT,
    RunHandle,
    _quiet_mlflow,
    default_tracking_uri,
    search_all_runs,
)

#: Tag set on a run whose ``student.pt`` was rebuilt by training again, not logged by the trial.
WEIGHTS_SOURCE_TAG = "kdbench.student_weights"
#: Shortest run-key prefix accepted in place of the whole key.
MIN_PREFIX = 6


@dataclass
class RecordedRun:
    """A FINISHED trial run and its config.

    Attributes:
        run_id: MLflow run id.
        run_key: The trial's run key.
        config: The trial's config, rebuilt from its ``config.json`` artifact.
        metrics: The run's final metrics (``test_acc``…).
        experiment_id: MLflow experiment id.
        client: The MLflow client it was read with.
    """

    run_id: str
    run_key: str
    config: TrialConfig
    metrics: dict[str, float]
    experiment_id: str
    client: Any = field(repr=False)

    def describe(self) -> str:
        return f"{self.run_key} ({self.config.describe()})"


def mlflow_client(tracking_uri: str | None, experiment: str) -> tuple[Any, str]:
    """An MLflow client and the id of an existing experiment.

    Raises:
        RunNotFoundError: The experiment does not exist; names those that do.
    """
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    # Artifacts here are small files; MLflow's progress bars would only clutter stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise RunNotFoundError(
            f"no MLflow experiment {experiment!r} at {uri}; experiments there: "
            f"{', '.join(names) or 'none'}. Pass --experiment/--tracking-uri."
        )
    return client, found.experiment_id


def _search(client: Any, experiment_id: str, query: str) -> list[Any]:
    return search_all_runs(client, experiment_id, query, ["attributes.start_time DESC"])


def find_run(
    key: str, *, tracking_uri: str | None = None, experiment: str = "kdbench"
) -> RecordedRun:
    """The FINISHED run of a run key (or of a unique prefix of at least six characters).

    Raises:
        RunNotFoundError: No FINISHED run has that key; the message suggests close keys and
            lists the experiment's recent runs.
    """
    try:
        client, experiment_id = mlflow_client(tracking_uri, experiment)
    except RunNotFoundError as exc:
        raise RunNotFoundError(f"{exc}{_elsewhere(key, tracking_uri, experiment)}") from None
    finished = _search(client, experiment_id, "attributes.status = 'FINISHED'")
    by_key: dict[str, Any] = {}
    for run in finished:
        by_key.setdefault(run.data.tags.get(RUN_KEY_TAG, ""), run)
    by_key.pop("", None)
    if key in by_key:
        return recorded_run(by_key[key], client)
    matches = [k for k in by_key if len(key) >= MIN_PREFIX and k.startswith(key)]
    if len(matches) == 1:
        return recorded_run(by_key[matches[0]], client)
    where = f"experiment {experiment!r} at {tracking_uri or default_tracking_uri()}"
    if matches:
        raise RunNotFoundError(
            f"run key prefix {key!r} matches {len(matches)} runs in {where}: "
            f"{', '.join(sorted(matches))}; give more characters."
        )
    message = f"no FINISHED run with run key {key!r} in {where}."
    close = difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.5)
    if close:
        message += " Did you mean " + " or ".join(repr(k) for k in close) + "?"
    if by_key:
        recent = [_describe_run(run) for run in list(by_key.values())[:8]]
        message += " Recent runs (newest first):\n  " + "\n  ".join(recent)
    else:
        message += " It has no finished runs; train one with `kdbench train`."
    message += _elsewhere(key, tracking_uri, experiment)
    message += (
        "\nAll runs: `mlflow ui --backend-store-uri <tracking uri>`, or pass "
        "--experiment/--tracking-uri for another store."
    )
    raise RunNotFoundError(message)


def _elsewhere(key: str, tracking_uri: str | None, experiment: str) -> str:
    """A sentence naming the other experiments of the store that hold a FINISHED run of
    ``key`` (or of keys it is a prefix of), with the option that selects one; empty when
    none does. A sweep records its runs in its suite's experiment, not ``kdbench``."""
    from mlflow.tracking import MlflowClient

    if len(key) < MIN_PREFIX or not key.isalnum():  # run keys are hex; nothing to quote
        return ""
    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    others = {e.experiment_id: e.name for e in client.search_experiments() if e.name != experiment}
    if not others:
        return ""
    query = f"tags.`{RUN_KEY_TAG}` LIKE '{key}%' AND attributes.status = 'FINISHED'"
    runs = client.search_runs(list(others), filter_string=query, max_results=100)
    names = sorted({others[run.info.experiment_id] for run in runs})
    if not names:
        return ""
    where = " and ".join(repr(n) for n in names)
    return (
        f" Run key {key!r} is recorded in experiment {where}: pass --experiment "
        f"{shlex.quote(names[0])}."
    )


def _describe_run(run: Any) -> str:
    tags = run.data.tags
    teacher = tags.get("kdbench.teacher", "")
    pair = (
        f"{tags.get('kdbench.student', '?')}<-{teacher}"
        if teacher
        else tags.get("kdbench.student", "?")
    )
    return (
        f"{tags.get(RUN_KEY_TAG)}  {tags.get('kdbench.method', '?')} "
        f"{tags.get('kdbench.dataset', '?')} {pair} seed {tags.get('kdbench.seed', '?')}"
    )


def recorded_run(run: Any, client: Any) -> RecordedRun:
    """The :class:`RecordedRun` of an MLflow trial run (a ``search_runs`` result) read with
    ``client``; its config comes from the run's ``config.json`` artifact."""
    data = _load_json_artifact(client, run.info.run_id, "config.json")
    try:
        config = config_from_json(data["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AnalysisError(
            f"run {run.info.run_id}: its config.json artifact does not describe a trial "
            f"({type(exc).__name__}: {exc}) — run the trial again to analyse it"
        ) from None
    return RecordedRun(
        run_id=run.info.run_id,
        run_key=run.data.tags[RUN_KEY_TAG],
        config=config,
        metrics=dict(run.data.metrics),
        experiment_id=run.info.experiment_id,
        client=client,
    )


def _load_json_artifact(client: Any, run_id: str, name: str) -> dict:
    import json

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, name, tmp)
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as exc:  # UnicodeDecodeError is one
            raise AnalysisError(
                f"run {run_id}: its {name} artifact is damaged ({type(exc).__name__}: {exc}) "
                "— run the trial again to analyse it"
            ) from None


def config_from_json(data: dict[str, Any]) -> TrialConfig:
    """The :class:`TrialConfig` a run recorded in its ``config.json`` (``to_jsonable`` form)."""
    values = _tuples(data)
    values["recipe"] = Recipe(**_tuples(values["recipe"]))
    values["params"] = tuple((name, value) for name, value in values.get("params", ()))
    teacher = values.get("teacher")
    if teacher is not None:
        teacher = _tuples(teacher)
        teacher["recipe"] = Recipe(**_tuples(teacher["recipe"]))
        values["teacher"] = TeacherSpec(**teacher)
    if values.get("compute") is not None:  # runs recorded before it was part of the config
        values["compute"] = Compute(**values["compute"])
    return TrialConfig(**values)


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples the frozen config classes hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def find_baseline_run(run: RecordedRun, method: str = "ce") -> RecordedRun:
    """The run of the same student trained alone: ``method`` on the same dataset, student,
    seed, recipe and phase, in the same experiment.

    Raises:
        RunNotFoundError: There is none; says how to train it.
    """
    config = run.config
    query = (
        "attributes.status = 'FINISHED'"
        f" and tags.`kdbench.method` = '{method}'"
        f" and tags.`kdbench.dataset` = '{config.dataset}'"
        f" and tags.`kdbench.student` = '{config.student}'"
        f" and tags.`kdbench.seed` = '{config.seed}'"
    )
    for candidate in _search(run.client, run.experiment_id, query):
        recorded = recorded_run(candidate, run.client)
        same = recorded.config
        if (same.recipe, same.phase, same.val_fraction, same.train_size) == (
            config.recipe,
            config.phase,
            config.val_fraction,
            config.train_size,
        ):
            return recorded
    recipe = config.recipe
    subset = "" if config.train_size is None else f" --train-size {config.train_size}"
    raise RunNotFoundError(
        f"no FINISHED {method!r} run of {config.student} on {config.dataset} with seed "
        f"{config.seed} and the same recipe as run {run.run_key} in its experiment; train it "
        f"with `kdbench train --method {method} --dataset {config.dataset} --student "
        f"{config.student} --seed {config.seed} --epochs {recipe.epochs} --batch-size "
        f"{recipe.batch_size} --lr {recipe.lr}{subset}` (same recipe) and try again."
    )


# --------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------


def load_test_data(config: TrialConfig) -> Any:
    """The trial's dataset, loaded as the trial loaded it (its training subset included),
    on the CPU."""
    return load_dataset(
        config.dataset,
        root=config.data_root,
        val_fraction=config.val_fraction,
        device="cpu",
        image_size=config.recipe.image_size,
        train_size=config.train_size,
    )


def load_teacher(config: TrialConfig) -> nn.Module:
    """The trial's teacher from the teacher cache (trained there first if missing), in eval
    mode on the CPU.

    Raises:
        RunNotFoundError: The trial has no teacher.
    """
    from bench.teachers import obtain_teacher  # timm and the trial: loaded when needed

    if config.teacher is None:
        raise RunNotFoundError(
            f"trial {config.describe()} has no teacher; pass the run key of a distillation run."
        )
    teacher = obtain_teacher(
        config.dataset, config.teacher, data_root=config.data_root, device=torch.device("cpu")
    )
    return teacher.model.eval()


def load_student(run: RecordedRun) -> nn.Module:
    """The run's trained student in eval mode on the CPU, from its ``student.pt`` artifact, or
    trained again from its config (then stored as that artifact)."""
    from bench.models import create_model  # timm: loaded only when a student is rebuilt

    names = {a.path for a in run.client.list_artifacts(run.run_id)}
    if STUDENT_ARTIFACT not in names:
        return _reproduce_and_store(run)
    data = load_test_data(run.config)
    student = create_model(
        run.config.student,
        data.info.num_classes,
        image_size=data.info.input_size[1],
        in_chans=data.info.input_size[0],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = run.client.download_artifacts(run.run_id, STUDENT_ARTIFACT, tmp)
        try:
            load_weights(student, path, STUDENT_ARTIFACT)
        except CheckpointError as exc:
            print(
                f"kdbench: the {STUDENT_ARTIFACT} artifact of run {run.run_key} is damaged: "
                f"{exc.problem}; training the student again",
                file=sys.stderr,
            )
            return _reproduce_and_store(run)
    return student.eval()


def _reproduce_and_store(run: RecordedRun) -> nn.Module:
    student, test_acc = reproduce_student(run.config)
    recorded = run.metrics.get("test_acc")
    if recorded is not None and abs(recorded - test_acc) > 1e-9:
        print(
            f"warning: the student of run {run.run_key}, trained again on the CPU, has test "
            f"accuracy {test_acc:.4f}; the run recorded {recorded:.4f} (another device or "
            "thread count). Analysing the retrained student.",
            file=sys.stderr,
        )
    RunHandle(run.client, run.run_id).log_state_dict(student.state_dict())
    run.client.set_tag(run.run_id, WEIGHTS_SOURCE_TAG, "retrained")
    return student


def reproduce_student(config: TrialConfig) -> tuple[nn.Module, float]:
    """Train a trial's student again, on the CPU, through :func:`bench.trial.compose.execute` (so
    with the same seeding and order of construction), without recording anything.

    Returns:
        The student in eval mode and its test accuracy.

    Raises:
        AnalysisError: The trial failed when trained again.
    """
    from bench.trial.compose import execute, prepare_trial  # the whole trial: loaded when needed

    result = execute(prepare_trial(config, torch.device("cpu")))
    if result.student is None:
        raise AnalysisError(
            f"training the student of {config.describe()} again failed: {result.error}"
        )
    return result.student.eval(), result.test_acc
