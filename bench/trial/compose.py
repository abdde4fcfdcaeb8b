"""A trial end to end: validate a :class:`~bench.config.TrialConfig`, obtain its data and
teacher, build the student, the method and the context, train, evaluate, record."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.api import Method, ModelInfo, TrialFailed
from bench.config import ConfigError, Recipe, TeacherSpec, TrialConfig
from bench.data import SPLIT_SEED, DataBundle, load_dataset, with_loader, with_train_size
from bench.filehash import file_sha256
from bench.finetune import prepare_student
from bench.memory import PeakMemory
from bench.models import create_model, model_info, resolve
from bench.paths import kdbench_home
from bench.plugins import build_method, get_method, keyed_trial
from bench.progress import Reporter, training
from bench.teacher_cache import (
    SharedStreamOutputs,
    inputs_are_deterministic,
    shares_augmentation,
    teacher_outputs,
)
from bench.teachers import Teacher, obtain_teacher
from bench.tracking import REPLICATE_OF_TAG, REPLICATE_TAG, SETUP_TAG_PREFIX, Tracker
from bench.trial.context import (
    ContextServices,
    EpochOutputs,
    TrialContext,
    make_context,
    task_info,
)
from bench.trial.device import (
    Execution,
    apply_compute,
    fast_compute,
    freeze,
    machine_compute,
    machine_facts,
    seed_everything,
)
from bench.trial.evaluate import labels_of, predict, record_test_metrics, topk_accuracy
from bench.trial.loop import Checkpointer, EpochRecord, train_loop
from bench.trial.resume import CheckpointPolicy, TrainState, load_state, save_state


@dataclass
class TrialResult:
    """The outcome of one trial."""

    run_key: str
    status: str  # FINISHED | FAILED
    outcome: str  # ok | failed | refused
    test_acc: float = float("nan")
    test_top5: float = float("nan")
    val_acc: float = float("nan")
    teacher_test_acc: float = float("nan")
    agreement: float = float("nan")
    macro_precision: float = float("nan")
    macro_recall: float = float("nan")
    macro_f1: float = float("nan")
    ece: float = float("nan")
    student_flops: int = 0
    final_loss: float = float("nan")
    train_seconds: float = float("nan")
    peak_rss_mb: float = float("nan")
    peak_gpu_allocated_mb: float = float("nan")
    student_params: int = 0
    extra_params: int = 0
    error: str | None = None
    mlflow_run_id: str | None = None
    #: How the method set itself up for the pair (``Method.setup_facts``: its stage pairs).
    setup: dict[str, str] = field(default_factory=dict)
    #: True when the key had finished before and this is its recorded result: nothing ran.
    recorded: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    #: The trained student of a finished trial (logged with the run as ``student.pt``).
    student: nn.Module | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI prints (no per-epoch history or model; NaN → None so it is valid
        JSON)."""
        return {
            k: (None if isinstance(v, float) and v != v else v)
            for k, v in self.__dict__.items()
            if k not in ("history", "student")
        }


@dataclass
class Prepared:
    """A trial whose inputs are all validated and built, ready to train."""

    config: TrialConfig
    key: str
    method_cls: type[Method]
    data: DataBundle
    teacher: Teacher | None
    device: torch.device


def check_teacher_image_size(config: TrialConfig) -> None:
    """A teacher sees its student's batches, so it must have been trained at their size.

    Raises:
        ConfigError: the two recipes name different image sizes.
    """
    assert config.teacher is not None
    student, teacher = config.recipe.image_size, config.teacher.recipe.image_size
    if config.teacher.checkpoint is None and student != teacher:
        raise ConfigError(
            f"the student trains at image_size {student} but its teacher {config.teacher.arch} "
            f"at {teacher}; give both recipes the same image_size"
        )


def identify_trial(
    config: TrialConfig, device: torch.device | str | None = None
) -> tuple[TrialConfig, str]:
    """The trial as it will run here, and its run key; cheap (no data, no teacher).

    The compute is filled in when the config has none (:func:`machine_compute` for ``device``),
    and moved to ``device`` when one is given; the params are resolved
    (:func:`bench.plugins.keyed_trial`).

    Raises:
        KeyError, ParamError, ConfigError, FileNotFoundError: A bad name, param, compute or
            checkpoint file.
    """
    compute = config.compute or machine_compute(device)
    if device is not None and torch.device(device).type != compute.device:
        compute = fast_compute(device, compute.threads)
    return keyed_trial(config.with_changes(compute=compute))


def prepare_trial(
    config: TrialConfig,
    device: torch.device | str | None = None,
    *,
    progress: Reporter | None = None,
) -> Prepared:
    """Validate every name and parameter, set the trial's compute (device, torch threads), load
    the data, obtain the teacher. Raises before anything is recorded when an input is wrong.

    Args:
        config: The trial; its compute (this machine's when None) decides the device.
        device: Run on this device instead (the key follows).
        progress: Where the teacher's training, if it needs one, shows its progress.
    """
    config, key = identify_trial(config, device)
    assert config.compute is not None
    device = apply_compute(config.compute)
    method_cls = get_method(config.method)
    resolve(config.student)
    if config.teacher is not None:
        resolve(config.teacher.arch)
        check_teacher_image_size(config)
    # The whole training split, which teachers train on; the student's may be a subset.
    whole = load_dataset(
        config.dataset,
        root=config.data_root,
        download=config.download,
        val_fraction=config.val_fraction,
        device=device,
        image_size=config.recipe.image_size,
    )
    data = with_train_size(whole, config.train_size, SPLIT_SEED)
    if config.student_checkpoint is not None or config.recipe.trainable:
        # Checked on a throwaway student, so a checkpoint that cannot be read or does not
        # fit is bad input, found before anything is recorded.
        prepare_student(
            create_model(
                config.student,
                data.info.num_classes,
                image_size=data.info.input_size[1],
                in_chans=data.info.input_size[0],
            ),
            config,
        )
    teacher = None
    if method_cls.uses_teacher:
        if config.teacher is None:
            raise TrialFailed(
                f"method {config.method!r} distils from a teacher; give one (--teacher NAME)",
                outcome="refused",
            )
        teacher = obtain_teacher(
            config.dataset,
            config.teacher,
            data_root=config.data_root,
            device=device,
            data=whole,
            progress=progress,
        )
    if config.recipe.data_path == "loader":
        data = with_loader(data, loader_workers())
    return Prepared(config, key, method_cls, data, teacher, device)


def trial_facts(prepared: Prepared) -> dict[str, str]:
    """What defined a prepared trial beyond its config, for its record (MLflow tags
    ``kdbench.<name>``, ``config.json``): the compute, the torch version, the CPU and GPU
    models, and the teacher's cache key, checkpoint file and that file's SHA-256."""
    compute = prepared.config.compute
    facts = {"compute": compute.describe() if compute else "", **machine_facts(prepared.device)}
    if prepared.teacher is not None:
        facts["teacher_key"] = prepared.teacher.key
        facts["teacher_file"] = str(prepared.teacher.path)
        facts["teacher_sha256"] = file_sha256(prepared.teacher.path)
    if prepared.config.student_checkpoint is not None:
        facts["student_checkpoint_sha256"] = file_sha256(prepared.config.student_checkpoint)
    return facts


def setup_facts(method: Method) -> dict[str, str]:
    """What a method reports of its setup (:meth:`bench.api.Method.setup_facts`, called
    after ``setup``), checked: names and values are text.

    Raises:
        TypeError: The method reported something else.
    """
    facts = method.setup_facts()
    if not isinstance(facts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in facts.items()
    ):
        raise TypeError(
            f"{type(method).__name__}.setup_facts() must return a dict of str to str, got {facts!r}"
        )
    return facts


def loader_workers() -> int:
    """DataLoader workers of the ``loader`` data path (``KDBENCH_LOADER_WORKERS``, default 2,
    as the reference codebases use per GPU)."""
    raw = os.environ.get("KDBENCH_LOADER_WORKERS", "2")
    if not raw.isdigit():
        raise ValueError(f"KDBENCH_LOADER_WORKERS must be a whole number >= 0, got {raw!r}")
    return int(raw)


@dataclass
class Built:
    """A prepared trial's models, method and context, ready for :func:`train_loop`."""

    ctx: TrialContext
    method: Method
    student: nn.Module
    student_info: ModelInfo
    teacher: nn.Module | None
    teacher_info: ModelInfo | None


def build_trial(
    prepared: Prepared,
    *,
    log: Callable[[dict[str, float]], None] | None = None,
    progress: Reporter | None = None,
) -> Built:
    """Seed, build the student and the method, set up the teacher (and its outputs cache when
    the inputs are deterministic) and the training context. Raises :class:`TrialFailed` when
    the method refuses the pair. ``progress``: where further teachers the method asks for
    show their training."""
    config, data, device = prepared.config, prepared.data, prepared.device
    assert config.compute is not None
    execution = Execution.of(config.compute, config.recipe)
    seed_everything(config.seed)
    image = data.info.input_size
    student = create_model(
        config.student, data.info.num_classes, image_size=image[1], in_chans=image[0]
    )
    prepare_student(student, config)  # pretrained start and frozen parts (transfer)
    student.to(device)
    s_info = model_info(student, config.student, image)
    execution.apply(student)
    teacher_model = teacher_info = None
    if prepared.teacher is not None:
        teacher_model = execution.apply(freeze(prepared.teacher.model))
        teacher_info = prepared.teacher.info
    task = task_info(config.dataset, data, config.recipe)
    method = build_method(config.method, config.params_dict)
    ok, reason = method.supports(s_info, teacher_info, task)
    if not ok:
        raise TrialFailed(
            f"{config.method} does not support this pair: {reason}", outcome="refused"
        )
    method.setup(s_info, teacher_info, task)
    method.to(device)
    ctx = make_context(
        student=student,
        student_info=s_info,
        teacher=teacher_model,
        teacher_info=teacher_info,
        task=task,
        recipe=config.recipe,
        device=device,
        data=data,
        seed=config.seed,
        execution=execution,
        services=trial_services(
            config.dataset,
            config.teacher,
            config.recipe,
            device,
            data_root=config.data_root,
            log=log,
            progress=progress,
        ),
        teacher_outputs=_teacher_outputs_for(prepared, method, teacher_model),
    )
    return Built(ctx, method, student, s_info, teacher_model, teacher_info)


def trial_services(
    dataset: str,
    teacher: TeacherSpec | None,
    recipe: Recipe,
    device: torch.device,
    *,
    data_root: str | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    progress: Reporter | None = None,
) -> ContextServices:
    """What a trial's context is lent: further teachers trained on ``dataset`` with the
    trial's teacher recipe and seed (``recipe`` and seed 0 when it has no teacher; their
    training shown on ``progress``), the training loop for sub-models, and ``log``."""

    def obtain(
        arch: str, classes: tuple[int, ...] | None, epochs: int | None
    ) -> tuple[nn.Module, ModelInfo]:
        spec = TeacherSpec(
            arch=arch,
            recipe=teacher.recipe if teacher else recipe,
            seed=teacher.seed if teacher else 0,
            stop_epoch=epochs,
            classes=classes,
        )
        found = obtain_teacher(dataset, spec, data_root=data_root, device=device, progress=progress)
        return found.model, found.info

    return ContextServices(obtain_teacher=obtain, train=train_loop, log=log)


def _teacher_outputs_for(
    prepared: Prepared, method: Method, teacher: nn.Module | None
) -> EpochOutputs | None:
    """The teacher outputs cache of this trial when its teacher is frozen and every trial on
    the split feeds it the same inputs: one entry when they never change, one per epoch under
    the shared augmentation stream; else None."""
    if teacher is None or method.mode != "offline" or prepared.teacher is None:
        return None
    recipe, info = prepared.config.recipe, prepared.data.info
    source = (
        teacher,
        prepared.teacher.key,
        Path(prepared.teacher.path),
        prepared.data.train,
        frozenset(method.needs_of_teacher()),
        prepared.device,
    )
    execution = Execution.of(prepared.config.compute or machine_compute(prepared.device), recipe)
    if inputs_are_deterministic(recipe, info):
        return teacher_outputs(*source, execution=execution)
    if shares_augmentation(recipe, info):
        return SharedStreamOutputs(*source, execution=execution)
    return None


def execute(
    prepared: Prepared,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    resume: TrainState | None = None,
    checkpoint: Checkpointer | None = None,
    on_setup: Callable[[dict[str, str]], None] | None = None,
    progress: Reporter | None = None,
) -> TrialResult:
    """Train and evaluate a prepared trial. Failures are returned, not raised.

    Args:
        prepared: The trial.
        on_epoch: Called after each epoch trained in this call.
        log: Where the method's extra metrics go.
        resume: A state saved by an earlier attempt: the trial is built as usual (the
            method's ``before_training`` included, which builds what only it can build), then
            loaded from it and continued after its epochs.
        checkpoint: Saves the trial's state between epochs, as its policy says.
        on_setup: Given what the method reports of its setup (:func:`setup_facts`), once
            it is set up.
        progress: Where the training shows its progress (each epoch; nothing when None).
    """
    data, device = prepared.data, prepared.device
    result = TrialResult(run_key=prepared.key, status="RUNNING", outcome="ok")
    if prepared.teacher is not None:
        result.teacher_test_acc = prepared.teacher.test_acc
    started = time.perf_counter()
    memory = PeakMemory(device).start()
    try:
        built = build_trial(prepared, log=log, progress=progress)
        ctx, method, student = built.ctx, built.method, built.student
        teacher_model, teacher_info, s_info = built.teacher, built.teacher_info, built.student_info
        result.student_params = s_info.num_params
        result.setup = setup_facts(method)
        if on_setup is not None:
            on_setup(result.setup)
        _before_training(ctx, method, resumed=resume is not None)
        result.extra_params = method.extra_parameters()
        with training(progress, prepared.config.describe()) as shown:
            result.history = train_loop(
                ctx, method, on_epoch=on_epoch, resume=resume, checkpoint=checkpoint, progress=shown
            )
        result.final_loss = result.history[-1]["train/loss"]
        result.val_acc = result.history[-1]["val_acc"]
        test_logits = predict(student, data.test, device, execution=ctx.execution)
        test_labels = labels_of(data.test, device)
        result.test_acc = topk_accuracy(test_logits, test_labels, 1)
        result.test_top5 = topk_accuracy(test_logits, test_labels, 5)
        record_test_metrics(result, student, test_logits, test_labels, data.info)
        if (
            teacher_model is not None
            and teacher_info is not None
            and teacher_info.num_classes == s_info.num_classes
        ):
            teacher_pred = predict(
                teacher_model, data.test, device, execution=ctx.execution
            ).argmax(1)
            result.agreement = (test_logits.argmax(1) == teacher_pred).float().mean().item()
        result.student = student
        result.status = "FINISHED"
    except TrialFailed as exc:
        result.status, result.outcome, result.error = "FAILED", exc.outcome, exc.reason
    except Exception as exc:  # a broken method must not stop a sweep; record why
        tail = "".join(traceback.format_exception(exc)[-6:])
        result.status, result.outcome = "FAILED", "failed"
        result.error = f"{type(exc).__name__}: {exc}\n{tail}"
    result.train_seconds = time.perf_counter() - started
    peak = memory.read()
    result.peak_rss_mb = peak.rss / 2**20
    if peak.gpu_reserved:
        result.peak_gpu_allocated_mb = peak.gpu_allocated / 2**20
    return result


def _before_training(ctx: TrialContext, method: Method, *, resumed: bool) -> None:
    """The method's initialisation stage; on a resumed trial it runs unrecorded, since the
    first attempt recorded it and the loaded state replaces what it trained."""
    if not resumed:
        method.before_training(ctx)
        return
    services = ctx.services
    ctx.services = dataclasses.replace(services, log=None)
    try:
        method.before_training(ctx)
    finally:
        ctx.services = services


def checkpoint_file(key: str) -> Path:
    """Where ``kdbench train`` keeps the resumable state of the trial ``key``."""
    return kdbench_home() / "checkpoints" / key / "state.pt"


@dataclass
class FileCheckpointer:
    """Saves a trial's state to one file, tagged with the MLflow run it records into."""

    path: Path
    run_id: str | None
    policy: CheckpointPolicy = field(default_factory=CheckpointPolicy)

    def save(self, state: TrainState) -> None:
        state.run_id = self.run_id
        save_state(state, self.path)

    def clear(self) -> None:
        """Delete the state and its folder (the trial ended; nothing is left to resume)."""
        shutil.rmtree(self.path.parent, ignore_errors=True)


def run_trial(
    config: TrialConfig,
    *,
    tracker: Tracker | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    device: torch.device | None = None,
    policy: CheckpointPolicy | None = None,
    rerun: bool = False,
    progress: Reporter | None = None,
) -> TrialResult:
    """Prepare (validating inputs: raises on bad input, recording nothing), then train and
    record the trial as one MLflow run through ``tracker`` when given.

    A key that already has a FINISHED run in the tracker's experiment is not trained again:
    its recorded result comes back (``recorded`` set) and nothing is recorded, unless
    ``rerun``, which trains it again as a replicate run (tags :data:`REPLICATE_TAG` and
    :data:`REPLICATE_OF_TAG`) that leaderboards leave out.

    With a tracker the trial checkpoints itself under :func:`checkpoint_file` as ``policy``
    says; a run of the same key interrupted earlier (its MLflow run still RUNNING and its
    state on disk) is continued in the same MLflow run from its last checkpoint.

    ``progress`` shows the teacher's training (when it needs one) and the trial's.
    """
    if tracker is None:
        prepared = prepare_trial(config, device, progress=progress)
        return execute(prepared, on_epoch=on_epoch, progress=progress)
    _, key = identify_trial(config, device)
    finished = tracker.finished_run(key)
    if finished is not None and not rerun:
        return recorded_result(key, finished)
    prepared = prepare_trial(config, device, progress=progress)
    path = checkpoint_file(prepared.key)
    state = load_state(path)
    if state is not None and not tracker.is_running(state.run_id):
        state = None  # its run ended (or is gone): this is a new attempt
    tags = {}
    if finished is not None:
        tags = {REPLICATE_TAG: "true", REPLICATE_OF_TAG: finished.info.run_id}
    with tracker.trial_run(
        prepared.config,
        prepared.key,
        prepared.method_cls,
        resume_run_id=state.run_id if state else None,
        extra_tags=tags,
        facts=trial_facts(prepared),
    ) as run:
        logged = run.logged_epochs() if state else set()

        def epoch_done(record: EpochRecord) -> None:
            if record.epoch not in logged:
                run.log_epoch(record)
            if on_epoch is not None:
                on_epoch(record)

        saver = FileCheckpointer(path, run.run_id, policy or CheckpointPolicy())
        result = execute(
            prepared,
            on_epoch=epoch_done,
            log=run.log_metrics,
            resume=state,
            checkpoint=saver,
            on_setup=run.record_setup,
            progress=progress,
        )
        result.mlflow_run_id = run.run_id
        run.finish(result)
        saver.clear()
    return result


def recorded_result(key: str, run: Any) -> TrialResult:
    """The result an MLflow run recorded for ``key``, marked ``recorded`` (nothing ran)."""
    metrics, tags = run.data.metrics, run.data.tags
    nan = float("nan")
    return TrialResult(
        run_key=key,
        status=run.info.status,
        outcome=tags.get("kdbench.outcome", "ok"),
        test_acc=metrics.get("test_acc", nan),
        test_top5=metrics.get("test_top5", nan),
        val_acc=metrics.get("final_val_acc", nan),
        teacher_test_acc=metrics.get("teacher_test_acc", nan),
        train_seconds=metrics.get("train_seconds", nan),
        mlflow_run_id=run.info.run_id,
        setup={
            k.removeprefix(SETUP_TAG_PREFIX): v
            for k, v in tags.items()
            if k.startswith(SETUP_TAG_PREFIX)
        },
        recorded=True,
    )
