"""One trial: build everything from a :class:`~bench.config.TrialConfig`, train, evaluate,
report. Small composable steps; nothing here is specific to a method.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.config import Recipe, TeacherSpec, TrialConfig, run_key
from bench.data import DataBundle, Split, load_dataset, with_loader
from bench.finetune import prepare_student
from bench.memory import PeakMemory
from bench.method import Batch, Method, ModelInfo, Outputs, TaskInfo, build_method, get_method
from bench.models import create_model, forward_outputs, model_info


class TrialFailed(RuntimeError):
    """A trial that started but could not finish (diverged, refused); carries the reason."""

    def __init__(self, reason: str, *, outcome: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


def pick_device() -> torch.device:
    """CUDA when present, else CPU (never from Ray's GPU ids: they may be fake)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU (where bf16 is slower than fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Execution:
    """How a trial's models run on its device. None of it changes what a CPU trial computes.

    Attributes:
        channels_last: Models and training inputs in channels-last memory order (CUDA).
        teacher_dtype: The frozen teacher's weights and inputs in this dtype, or None (the
            default everywhere) to keep fp32 weights: on CUDA the teacher then computes in
            bf16 under autocast like the student, with its BatchNorm statistics in fp32.
        compile: Run the models' forward passes through ``torch.compile``.
    """

    channels_last: bool = False
    teacher_dtype: torch.dtype | None = None
    compile: bool = False

    @classmethod
    def for_device(cls, device: torch.device, recipe: Recipe) -> Execution:
        """The fast settings for ``device``: channels-last on CUDA; compiled if the recipe
        asks."""
        return cls(channels_last=device.type == "cuda", compile=recipe.compile)

    def apply(self, model: nn.Module, *, teacher: bool = False) -> nn.Module:
        """Put ``model`` in this execution's memory format, dtype (for a frozen teacher) and
        compiled form; returns the same module."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if teacher and self.teacher_dtype is not None:
            model.to(self.teacher_dtype)
        if self.compile:
            compile_model(model)
        return model


def compile_model(model: nn.Module) -> nn.Module:
    """Compile the forward passes kdbench calls (``forward_features``,
    ``forward_intermediates``, ``forward_head``) in place; the module, its parameters and its
    state dict stay the same objects. ``KDBENCH_COMPILE_BACKEND`` picks the backend
    (default ``inductor``)."""
    backend = os.environ.get("KDBENCH_COMPILE_BACKEND", "inductor")
    for name in ("forward_features", "forward_intermediates", "forward_head"):
        method = getattr(model, name, None)
        if method is not None and not hasattr(method, "_torchdynamo_orig_callable"):
            object.__setattr__(model, name, torch.compile(method, backend=backend))
    return model


def make_optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` (BatchNorm and biases are decayed too, as in
    the reference KD codebases)."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` ∈ [0, 1] of training."""
    warm = recipe.warmup_epochs / recipe.epochs
    if progress < warm:
        return (progress + 1e-12) / warm
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.schedule == "step":
        return recipe.gamma ** sum(progress >= m for m in recipe.milestones)
    return 1.0


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: nn.Module, split: Split, device: torch.device, batch_size: int = 256) -> Tensor:
    """Logits of ``model`` on every sample of ``split`` in order (eval mode), on the CPU."""
    was_training = model.training
    model.eval()
    chunks = []
    # A reduced-precision teacher takes inputs of its own dtype; a quantised model has no
    # floating-point parameters and takes float32.
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    with autocast_for(device):
        for x, _, _ in split.batches(
            batch_size, shuffle=False, generator=None, augment=False, device=device
        ):
            chunks.append(model(x.to(dtype)).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


def labels_of(split: Split, device: torch.device) -> Tensor:
    return torch.cat(
        [
            y.cpu()
            for _, y, _ in split.batches(
                1024, shuffle=False, generator=None, augment=False, device=device
            )
        ]
    )


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of samples whose label is among the ``k`` highest logits (N×K, N)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


# --------------------------------------------------------------------------------------------
# The training context methods see
# --------------------------------------------------------------------------------------------


class TrainContext:
    """What a method's hooks can use during a trial (see ``bench/method.py``).

    Attributes:
        student: The model being trained.
        teacher: The frozen teacher (eval mode, no grad), or None.
        student_info: Shapes of the student.
        teacher_info: Shapes of the teacher, or None.
        task: The task.
        recipe: The student's recipe.
        device: The training device.
        generator: A seeded CPU generator for any randomness a method draws.
        data: The dataset bundle (methods read ``data.train`` through :meth:`train_batches`).
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        student_info: ModelInfo,
        teacher: nn.Module | None,
        teacher_info: ModelInfo | None,
        task: TaskInfo,
        recipe: Recipe,
        device: torch.device,
        data: DataBundle,
        seed: int,
        config: TrialConfig | None = None,
        log: Callable[[dict[str, float]], None] | None = None,
        execution: Execution | None = None,
        teacher_outputs: Any = None,
    ) -> None:
        self.student = student
        self.student_info = student_info
        self.teacher = teacher
        self.teacher_info = teacher_info
        self.task = task
        self.recipe = recipe
        self.device = device
        self.data = data
        self.seed = seed
        self.config = config
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._data_generator = torch.Generator().manual_seed(seed)
        self._log = log
        self._models_created = 0
        self.execution = execution or Execution()
        #: The frozen teacher's outputs on the training split, or None: a
        #: :class:`bench.teacher_cache.TeacherOutputs` when the inputs are the same every epoch,
        #: a :class:`bench.teacher_cache.SharedStreamOutputs` (one entry per epoch) when they
        #: come from the shared augmentation stream. Either answers ``for_epoch``.
        self.teacher_outputs = teacher_outputs
        self._batch: Batch | None = None
        self._batch_version = -1
        self._batch_outputs: Any = None

    # -- forward passes ----------------------------------------------------------------------

    def forward(
        self,
        model: nn.Module,
        x: Tensor,
        needs: frozenset[str] | set[str] = frozenset(),
        *,
        grad: bool = True,
    ) -> Outputs:
        """One forward pass of any model, computing only ``needs`` besides logits."""
        grad_mode = contextlib.nullcontext() if grad else torch.no_grad()
        with grad_mode, autocast_for(self.device):
            return forward_outputs(model, x, needs)

    def forward_student(self, x: Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        return self.forward(self.student, x, needs)

    def forward_teacher(self, x: Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        """The frozen teacher's outputs on ``x``: looked up in the teacher outputs cache when
        ``x`` is the current training batch, unmodified, else one forward pass without
        gradients in the teacher's dtype."""
        if self.teacher is None:
            raise RuntimeError("this trial has no teacher (the method declares uses_teacher)")
        cached = self._cached_teacher_outputs(x, needs)
        if cached is not None:
            return cached
        dtype = self.execution.teacher_dtype
        # no_grad rather than inference_mode: its outputs may be saved for the student's
        # backward pass as they are, where inference tensors would need a copy every step.
        with torch.no_grad(), autocast_for(self.device):
            return forward_outputs(self.teacher, x if dtype is None else x.to(dtype), needs)

    def _cached_teacher_outputs(self, x: Tensor, needs: frozenset[str]) -> Outputs | None:
        batch, cache = self._batch, self._batch_outputs
        if cache is None or batch is None or x is not batch.x:
            return None
        if x._version != self._batch_version or not cache.covers(needs):
            return None  # changed in place since it was yielded, or asks for more
        return cache.take(batch.index, needs)

    # -- building blocks for methods that change the step ------------------------------------

    def create_model(
        self, name: str, num_classes: int | None = None
    ) -> tuple[nn.Module, ModelInfo]:
        """A fresh model on the device, initialised from this trial's seed."""
        self._models_created += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + self._models_created)
            model = create_model(
                name, num_classes or self.task.num_classes, image_size=self.task.input_size[1]
            )
        model.to(self.device)
        return model, model_info(model, name, self.task.input_size)

    def obtain_teacher(
        self,
        arch: str,
        *,
        classes: tuple[int, ...] | list[int] | None = None,
        epochs: int | None = None,
    ) -> tuple[nn.Module, ModelInfo]:
        """A trained, frozen teacher from the cache (trained on this dataset; optionally on a
        class subset, or early-stopped at ``epochs``)."""
        from bench.teachers import obtain_teacher

        base = self.config.teacher if self.config and self.config.teacher else None
        recipe = base.recipe if base else self.recipe
        spec = TeacherSpec(
            arch=arch,
            recipe=recipe,
            seed=base.seed if base else 0,
            stop_epoch=epochs,
            classes=tuple(classes) if classes is not None else None,
        )
        dataset = self.config.dataset if self.config else self.task.dataset
        root = self.config.data_root if self.config else None
        teacher = obtain_teacher(dataset, spec, data_root=root, device=self.device)
        return teacher.model, teacher.info

    def train_batches(self, augment: bool = True, *, epoch: int = 0) -> Iterator[Batch]:
        """One epoch over the training split as :class:`Batch` objects (augmented by the
        shared stream of ``epoch`` when the recipe asks for it)."""
        steps = max(1, self.task.steps_per_epoch)
        augment = augment and self.recipe.augment
        shared = augment and self.recipe.augment_stream == "shared"
        cache = self.teacher_outputs
        outputs = None if cache is None else cache.for_epoch(epoch, augmented=augment)
        for i, (x, y, index) in enumerate(
            self.data.train.batches(
                self.recipe.batch_size,
                shuffle=True,
                generator=self._data_generator,
                augment=augment,
                device=self.device,
                drop_last=len(self.data.train) > self.recipe.batch_size,
                **({"shared_epoch": epoch} if shared else {}),
            )
        ):
            step = epoch * steps + i
            if self.execution.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch = Batch(
                x=x,
                y=y,
                index=index,
                epoch=epoch,
                step=step,
                progress=min(step / max(1, self.task.total_steps), 1.0 - 1e-9),
            )
            self._batch, self._batch_version = batch, x._version
            self._batch_outputs = outputs
            yield batch
        self._batch = self._batch_outputs = None

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        return make_optimizer(list(params), self.recipe)

    def fit(
        self,
        model: nn.Module,
        method: Method,
        *,
        teacher: nn.Module | None = None,
        epochs: int | None = None,
        name: str = "sub-model",
    ) -> list[dict[str, float]]:
        """Run the standard training loop on another (model, method, teacher) triple, as a
        chain step (a teacher assistant trained before the student)."""
        recipe = self.recipe if epochs is None else _replace(self.recipe, epochs=epochs)
        info = model_info(model, name, self.task.input_size)
        teacher_info = (
            model_info(teacher, name + "-teacher", self.task.input_size) if teacher else None
        )
        task = _replace(self.task, epochs=recipe.epochs)
        sub = TrainContext(
            student=model,
            student_info=info,
            teacher=teacher,
            teacher_info=teacher_info,
            task=task,
            recipe=recipe,
            device=self.device,
            data=self.data,
            seed=self.seed + 7919,
            config=self.config,
            log=None,
        )
        method.setup(info, teacher_info, task)
        method.to(self.device)
        return train_loop(sub, method)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self._log is not None:
            self._log(metrics)


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a frozen teacher's weights and BatchNorm statistics stay
    bit-identical however it is used."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class EpochRecord:
    """What one epoch produced."""

    epoch: int
    terms: dict[str, float]
    val_acc: float
    lr: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        out = {f"train/{k}": v for k, v in self.terms.items()}
        out.update({"val_acc": self.val_acc, "lr": self.lr, "epoch_seconds": self.seconds})
        return out


#: Steps between finiteness checks. A check reads a value back from the device: on the CPU
#: that costs nothing and a diverged step is caught before it is applied; on an accelerator
#: each read stalls the queue of kernels, so the loss is checked once per window.
CHECK_EVERY = {"cpu": 1}
DEFAULT_CHECK_EVERY = 32


class StepLog:
    """One epoch's per-step loss terms, kept on the device as one small tensor per step;
    checked for finiteness every ``check_every`` steps and averaged at the end."""

    def __init__(self, device: torch.device) -> None:
        self.check_every = CHECK_EVERY.get(device.type, DEFAULT_CHECK_EVERY)
        self.names: list[str] | None = None
        self.rows: list[Tensor] = []
        self.steps: list[tuple[int, int]] = []
        self._checked = 0

    def add(self, terms: dict[str, Tensor], total: Tensor, batch: Batch) -> None:
        names = [*terms, "loss"]
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise TrialFailed(
                f"the method returned loss terms {names[:-1]} at step {batch.step} but "
                f"{self.names[:-1]} before; train_step must return the same terms every step"
            )
        row = torch.stack([v.detach().float() for v in terms.values()] + [total.detach().float()])
        self.rows.append(row)
        self.steps.append((batch.epoch, batch.step))
        if len(self.rows) - self._checked >= self.check_every:
            self.check()

    def check(self) -> None:
        """Raise :class:`TrialFailed` naming the first non-finite step since the last check."""
        if self._checked == len(self.rows):
            return
        window = torch.stack(self.rows[self._checked :])
        self._checked = len(self.rows)
        finite = torch.isfinite(window).all(dim=1)
        if bool(finite.all()):
            return
        first = int((~finite).nonzero()[0, 0])
        row = window[first].tolist()
        epoch, step = self.steps[len(self.rows) - len(window) + first]
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.names[:-1], row, strict=False))
        raise TrialFailed(
            f"non-finite loss at epoch {epoch}, step {step}: {values}. "
            "The trial diverged; try a smaller learning rate or loss weight."
        )

    def means(self) -> dict[str, float]:
        """Each term's mean over the epoch's steps (``loss`` is their sum's mean)."""
        self.check()
        if not self.rows:
            return {}
        means = torch.stack(self.rows).double().mean(dim=0).tolist()
        return dict(zip(self.names, means, strict=True))


def train_loop(
    ctx: TrainContext,
    method: Method,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    start_epoch: int = 0,
    evaluate_val: bool = True,
    max_steps: int | None = None,
) -> list[dict[str, float]]:
    """Train ``ctx.student`` with ``method`` for ``ctx.recipe.epochs``; returns per-epoch
    metrics. Raises :class:`TrialFailed` on a non-finite loss. ``max_steps`` stops after that
    many optimizer steps (a pilot run), ending the epoch there."""
    recipe = ctx.recipe
    params = list(ctx.student.parameters())
    seen = {id(p) for p in params}
    params += [p for p in method.trainable_parameters() if id(p) not in seen and p.requires_grad]
    optimizer = make_optimizer(params, recipe)
    total_steps = max(1, ctx.task.total_steps)
    history: list[dict[str, float]] = []
    for epoch in range(start_epoch, recipe.epochs):
        started = time.perf_counter()
        ctx.student.train()
        method.train()
        steps = StepLog(ctx.device)
        lr = recipe.lr
        for batch in ctx.train_batches(epoch=epoch):
            lr = recipe.lr * lr_factor(recipe, batch.step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            terms = method.train_step(ctx, batch)
            total = sum(terms.values())
            steps.add(terms, total, batch)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            method.after_step(ctx, batch)
            if max_steps is not None and len(steps.rows) >= max_steps:
                break
        val_acc = float("nan")
        if evaluate_val and len(ctx.data.val):
            val_acc = topk_accuracy(
                predict(ctx.student, ctx.data.val, ctx.device), labels_of(ctx.data.val, ctx.device)
            )
        record = EpochRecord(
            epoch=epoch,
            terms=steps.means(),
            val_acc=val_acc,
            lr=lr,
            seconds=time.perf_counter() - started,
        )
        history.append(record.metrics())
        if on_epoch is not None:
            on_epoch(record)
        if max_steps is not None:
            break
    return history


# --------------------------------------------------------------------------------------------
# One trial, end to end
# --------------------------------------------------------------------------------------------


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
    teacher: Any  # bench.teachers.Teacher | None
    device: torch.device


def task_info(dataset: str, data: DataBundle, recipe: Recipe) -> TaskInfo:
    """The task a method is set up for: ``data``'s classes, input size and training split,
    trained for ``recipe``'s epochs in steps of its batch size (at least one per epoch)."""
    batch = recipe.batch_size
    return TaskInfo(
        dataset=dataset,
        num_classes=data.info.num_classes,
        input_size=data.info.input_size,
        num_train=len(data.train),
        epochs=recipe.epochs,
        steps_per_epoch=len(data.train) // batch if len(data.train) > batch else 1,
    )


def check_teacher_image_size(config: TrialConfig) -> None:
    """A teacher sees its student's batches, so it must have been trained at their size.

    Raises:
        ConfigError: the two recipes name different image sizes.
    """
    from bench.config import ConfigError

    student, teacher = config.recipe.image_size, config.teacher.recipe.image_size
    if config.teacher.checkpoint is None and student != teacher:
        raise ConfigError(
            f"the student trains at image_size {student} but its teacher {config.teacher.arch} "
            f"at {teacher}; give both recipes the same image_size"
        )


def prepare_trial(config: TrialConfig, device: torch.device | None = None) -> Prepared:
    """Validate every name and parameter, load the data, obtain the teacher. Raises before
    anything is recorded when an input is wrong."""
    from bench.models import resolve
    from bench.teachers import obtain_teacher

    device = device or pick_device()
    method_cls = get_method(config.method)
    method_cls.Params.from_mapping(config.params_dict, where=f"{config.method} params")
    resolve(config.student)
    if config.teacher is not None:
        resolve(config.teacher.arch)
        check_teacher_image_size(config)
    data = load_dataset(
        config.dataset,
        root=config.data_root,
        download=config.download,
        val_fraction=config.val_fraction,
        device=device,
        image_size=config.recipe.image_size,
    )
    teacher = None
    if method_cls.uses_teacher:
        if config.teacher is None:
            raise TrialFailed(
                f"method {config.method!r} distils from a teacher; give one (--teacher NAME)",
                outcome="refused",
            )
        teacher = obtain_teacher(
            config.dataset, config.teacher, data_root=config.data_root, device=device, data=data
        )
    if config.recipe.data_path == "loader":
        data = with_loader(data, loader_workers())
    key = run_key(config, method_cls.version)
    return Prepared(config, key, method_cls, data, teacher, device)


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

    ctx: TrainContext
    method: Method
    student: nn.Module
    student_info: ModelInfo
    teacher: nn.Module | None
    teacher_info: ModelInfo | None


def build_trial(
    prepared: Prepared, *, log: Callable[[dict[str, float]], None] | None = None
) -> Built:
    """Seed, build the student and the method, set up the teacher (and its outputs cache when
    the inputs are deterministic) and the training context. Raises :class:`TrialFailed` when
    the method refuses the pair."""
    config, data, device = prepared.config, prepared.data, prepared.device
    execution = Execution.for_device(device, config.recipe)
    seed_everything(config.seed)
    image = data.info.input_size
    student = create_model(config.student, data.info.num_classes, image_size=image[1])
    prepare_student(student, config)  # pretrained start and frozen parts (transfer)
    student.to(device)
    s_info = model_info(student, config.student, image)
    execution.apply(student)
    teacher_model = teacher_info = None
    if prepared.teacher is not None:
        teacher_model = execution.apply(freeze(prepared.teacher.model), teacher=True)
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
    ctx = TrainContext(
        student=student,
        student_info=s_info,
        teacher=teacher_model,
        teacher_info=teacher_info,
        task=task,
        recipe=config.recipe,
        device=device,
        data=data,
        seed=config.seed,
        config=config,
        log=log,
        execution=execution,
        teacher_outputs=_teacher_outputs_for(prepared, method, teacher_model),
    )
    return Built(ctx, method, student, s_info, teacher_model, teacher_info)


def _teacher_outputs_for(prepared: Prepared, method: Method, teacher: nn.Module | None) -> Any:
    """The teacher outputs cache of this trial when its teacher is frozen and every trial on
    the split feeds it the same inputs: one entry when they never change, one per epoch under
    the shared augmentation stream; else None."""
    from bench.teacher_cache import (
        SharedStreamOutputs,
        inputs_are_deterministic,
        shares_augmentation,
        teacher_outputs,
    )

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
    if inputs_are_deterministic(recipe, info):
        return teacher_outputs(*source)
    if shares_augmentation(recipe, info):
        return SharedStreamOutputs(*source)
    return None


def execute(
    prepared: Prepared,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
) -> TrialResult:
    """Train and evaluate a prepared trial. Failures are returned, not raised."""
    data, device = prepared.data, prepared.device
    result = TrialResult(run_key=prepared.key, status="RUNNING", outcome="ok")
    if prepared.teacher is not None:
        result.teacher_test_acc = prepared.teacher.test_acc
    started = time.perf_counter()
    memory = PeakMemory(device).start()
    try:
        built = build_trial(prepared, log=log)
        ctx, method, student = built.ctx, built.method, built.student
        teacher_model, teacher_info, s_info = built.teacher, built.teacher_info, built.student_info
        result.student_params = s_info.num_params
        method.before_training(ctx)
        result.extra_params = method.extra_parameters()
        result.history = train_loop(ctx, method, on_epoch=on_epoch)
        result.final_loss = result.history[-1]["train/loss"]
        result.val_acc = result.history[-1]["val_acc"]
        test_logits = predict(student, data.test, device)
        test_labels = labels_of(data.test, device)
        result.test_acc = topk_accuracy(test_logits, test_labels, 1)
        result.test_top5 = topk_accuracy(test_logits, test_labels, 5)
        record_test_metrics(result, student, test_logits, test_labels, data.info)
        if teacher_model is not None and teacher_info.num_classes == s_info.num_classes:
            teacher_pred = predict(teacher_model, data.test, device).argmax(1)
            result.agreement = (test_logits.argmax(1) == teacher_pred).float().mean().item()
        result.student = student
        result.status = "FINISHED"
    except TrialFailed as exc:
        result.status, result.outcome, result.error = "FAILED", exc.outcome, exc.reason
    except Exception as exc:  # a broken method must not stop a sweep; record why
        import traceback

        tail = "".join(traceback.format_exception(exc)[-6:])
        result.status, result.outcome = "FAILED", "failed"
        result.error = f"{type(exc).__name__}: {exc}\n{tail}"
    result.train_seconds = time.perf_counter() - started
    peak = memory.read()
    result.peak_rss_mb = peak.rss / 2**20
    if peak.gpu_reserved:
        result.peak_gpu_allocated_mb = peak.gpu_allocated / 2**20
    return result


def record_test_metrics(
    result: TrialResult, student: nn.Module, logits: Tensor, labels: Tensor, info: Any
) -> None:
    """Macro precision/recall/F1, calibration error and the student's FLOPs."""
    from bench.leaderboard.metrics import count_flops, expected_calibration_error, macro_prf

    prf = macro_prf(logits, labels, num_classes=info.num_classes)
    result.macro_precision, result.macro_recall, result.macro_f1 = prf.precision, prf.recall, prf.f1
    result.ece = expected_calibration_error(logits.softmax(1), labels)
    result.student_flops = count_flops(student, info.input_size)


def run_trial(
    config: TrialConfig,
    *,
    tracker: Any | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    device: torch.device | None = None,
) -> TrialResult:
    """Prepare (validating inputs: raises on bad input, recording nothing), then train and
    record the trial as one MLflow run through ``tracker`` when given."""
    prepared = prepare_trial(config, device)
    if tracker is None:
        return execute(prepared, on_epoch=on_epoch)
    with tracker.trial_run(prepared.config, prepared.key, prepared.method_cls) as run:

        def epoch_done(record: EpochRecord) -> None:
            run.log_epoch(record)
            if on_epoch is not None:
                on_epoch(record)

        result = execute(prepared, on_epoch=epoch_done, log=run.log_metrics)
        result.mlflow_run_id = run.run_id
        run.finish(result)
    return result
