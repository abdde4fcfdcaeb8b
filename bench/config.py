"""Typed, frozen configuration of one trial and its training recipe, and the run key.

A trial is a pure function of its :class:`TrialConfig`: the run key is a hash of every field
that defines the result, its :class:`Compute` included, plus the method's version and code and
the content of the checkpoint files it loads, so the same key means the same trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.filehash import file_sha256
from bench.ranges import Range, value_problem

#: Bump when the meaning of a trial changes in the harness itself (data path, loop, metrics),
#: so that old run keys are not mistaken for new ones.
#: 2: teacher outputs computed once per split (batch-size numerics).
#: 3: keys hold the compute (device, precision, threads), checkpoint files' content hashes, the
#: method file's own code and every resolved param (defaults filled in).
#: 4: the compute holds the execution policy (precision and memory format), chosen per device
#: and processor (``bench.trial.device.fast_compute``).
HARNESS_VERSION = 4

Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["cosine", "step", "constant"]
Phase = Literal["tune", "final"]
DataPath = Literal["device", "loader"]
AugmentStream = Literal["trial", "shared"]
Device = Literal["cpu", "cuda"]
Precision = Literal["fp32", "bf16"]
MemoryFormat = Literal["contiguous", "channels_last"]

#: The precision a :class:`Compute` gets on each device when none is named: bf16 autocast on
#: CUDA, fp32 on CPU. The harness names one itself (``bench.trial.device.fast_compute``: bf16
#: on CPUs with native bf16 arithmetic too).
PRECISION: dict[str, Precision] = {"cpu": "fp32", "cuda": "bf16"}
#: The memory format a :class:`Compute` gets on each device when none is named.
MEMORY_FORMAT: dict[str, MemoryFormat] = {"cpu": "contiguous", "cuda": "channels_last"}

#: Field metadata of options added after the first release: at their default they are left out
#: of every hash (run keys, teacher cache keys), so adding them changed no existing key.
OMIT_DEFAULT_FROM_KEY = {"omit_default_from_key": True}


#: How often a running trial saves its resumable state by default: every this many epochs,
#: and after any epoch that ends this many minutes after the last save. Neither changes a
#: result, so neither is part of a run key.
CHECKPOINT_EVERY_EPOCHS = 10
CHECKPOINT_EVERY_MINUTES = 15.0


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


#: The valid range of each numeric recipe field (of each item, for milestones). A suite reports
#: a value outside it at the value's key; :class:`Recipe` refuses it on every other path.
RECIPE_RANGES: dict[str, Range] = {
    "epochs": Range(ge=1),
    "batch_size": Range(ge=1),
    "lr": Range(gt=0),
    "momentum": Range(ge=0, lt=1),
    "weight_decay": Range(ge=0),
    "milestones": Range(gt=0, lt=1),
    "gamma": Range(gt=0, le=1),
    "warmup_epochs": Range(ge=0),
    "image_size": Range(ge=8),
}
#: Seeds of trials and teachers: what every generator they seed accepts (NumPy's legacy one
#: takes 32 bits).
SEED_RANGE = Range(ge=0, lt=2**32)
#: The share of the training split held out for validation.
VAL_FRACTION_RANGE = Range(gt=0, lt=1)
#: The number of training samples a student may be limited to.
TRAIN_SIZE_RANGE = Range(ge=1)


def check_range(where: str, value: Any, valid: Range) -> None:
    """Refuse ``value`` outside ``valid`` (or a float that is not finite).

    Raises:
        ConfigError: naming ``where``, the value and the range.
    """
    problem = value_problem(value, valid)
    if problem is not None:
        raise ConfigError(f"{where} {problem}")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Samples per optimizer step.
        optimizer: ``sgd`` (with Nesterov-free momentum), ``adam`` or ``adamw``.
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty (decoupled for adamw).
        schedule: ``cosine`` (to zero), ``step`` (×gamma at the milestones) or ``constant``.
        milestones: Step-schedule milestones as fractions of training (the literature's
            150/180/210 of 240 epochs is 0.625/0.75/0.875).
        gamma: Step-schedule decay factor.
        warmup_epochs: Linear learning-rate warm-up.
        augment: Random crop (+ flip where the dataset allows it) on the training split.
        trainable: Train only these parts of the student, freezing the rest (weights and
            BatchNorm statistics): ``head`` is the classifier, any other entry a parameter
            name prefix (``layer3``, ``blocks.2``). Empty (the default) trains everything.
            For transfer learning from a pretrained ``student_checkpoint``.
        data_path: ``device``: in-memory datasets live on the training device and are
            augmented there a batch at a time; ``loader``: the training split streams through
            a ``DataLoader`` whose workers augment one sample at a time (the reference
            codebases' path). Folder datasets always stream.
        compile: Run the student and teacher through ``torch.compile`` (fused kernels may
            round differently, so a compiled trial has its own run key).
        image_size: Train and evaluate on images resized to this square size (None: the
            dataset's own). A teacher must be trained at its student's size.
        augment_stream: Where the crop offsets and flips come from. ``trial``: the trial's
            seeded generator, so every trial augments differently. ``shared``: a fixed
            stream keyed on (epoch, sample position) only, so every trial (any seed, order or
            batch size) sees the same augmented image of a sample in the same epoch, and a
            frozen teacher's outputs on it are computed once per epoch for all of them.
    """

    epochs: int = 30
    batch_size: int = 64
    optimizer: Optimizer = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)
    gamma: float = 0.1
    warmup_epochs: int = 0
    augment: bool = True
    trainable: tuple[str, ...] = field(default=(), metadata=OMIT_DEFAULT_FROM_KEY)
    data_path: DataPath = field(default="device", metadata=OMIT_DEFAULT_FROM_KEY)
    compile: bool = field(default=False, metadata=OMIT_DEFAULT_FROM_KEY)
    image_size: int | None = field(default=None, metadata=OMIT_DEFAULT_FROM_KEY)
    augment_stream: AugmentStream = field(default="trial", metadata=OMIT_DEFAULT_FROM_KEY)

    def __post_init__(self) -> None:
        for name, valid in RECIPE_RANGES.items():
            check_range(f"recipe.{name}", getattr(self, name), valid)
        if self.data_path not in ("device", "loader"):
            raise ConfigError(
                f"recipe.data_path {self.data_path!r} is not one of 'device', 'loader'"
            )
        object.__setattr__(self, "trainable", tuple(self.trainable))
        if any(not isinstance(t, str) or not t.strip() for t in self.trainable):
            raise ConfigError(
                f"recipe.trainable must list non-empty names ('head' or parameter name "
                f"prefixes), got {list(self.trainable)}"
            )
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ConfigError(
                f"recipe.optimizer {self.optimizer!r} is not one of 'sgd', 'adam', 'adamw'"
            )
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(
                f"recipe.schedule {self.schedule!r} is not one of 'cosine', 'step', 'constant'"
            )
        self._check_augment_stream()

    def _check_augment_stream(self) -> None:
        if self.augment_stream not in ("trial", "shared"):
            raise ConfigError(
                f"recipe.augment_stream {self.augment_stream!r} is not one of 'trial' (each "
                "trial draws its own crops and flips) or 'shared' (one stream for all trials)"
            )
        if self.augment_stream == "shared" and self.data_path == "loader":
            raise ConfigError(
                "recipe.augment_stream 'shared' needs data_path 'device' (the loader path "
                "draws per-sample crops in its workers from the trial's seed); drop one of them"
            )


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher a trial distils from.

    Attributes:
        arch: Model name.
        recipe: How it is (or was) trained; part of its cache key.
        seed: Its training seed.
        stop_epoch: Use the checkpoint after this many epochs of that training (an
            early-stopped teacher); ``None`` means the end of training.
        checkpoint: A checkpoint file to load instead of training (``weights_only``).
        classes: Train it on these classes only (their labels remapped to 0..k-1).
    """

    arch: str
    recipe: Recipe = field(default_factory=Recipe)
    seed: int = 0
    stop_epoch: int | None = None
    checkpoint: str | None = None
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_range("teacher.seed", self.seed, SEED_RANGE)
        if self.stop_epoch is not None and not 1 <= self.stop_epoch <= self.recipe.epochs:
            raise ConfigError(
                f"teacher.stop_epoch must be in 1..{self.recipe.epochs} (the teacher's epochs), "
                f"got {self.stop_epoch}"
            )


@dataclass(frozen=True)
class Compute:
    """Where and how a trial computes; part of its run key, since each changes its numbers.

    Attributes:
        device: ``cpu`` or ``cuda``.
        precision: ``fp32``, or ``bf16``: the models' forward passes under bf16 autocast
            (loss terms stay in fp32). Left empty, the device's default (:data:`PRECISION`).
        threads: torch's intra-op threads (``torch.set_num_threads``), which the trial sets
            before it trains: on CPU, reductions split across threads round differently.
        memory_format: ``channels_last`` puts convolutional models and their image batches
            in channels-last order (other kernels, other rounding); ``contiguous`` keeps
            torch's default NCHW. Left empty, the device's default (:data:`MEMORY_FORMAT`).
    """

    device: Device = "cpu"
    precision: Precision | Literal[""] = ""
    threads: int = 1
    memory_format: MemoryFormat | Literal[""] = ""

    def __post_init__(self) -> None:
        if self.device not in PRECISION:
            raise ConfigError(f"compute.device {self.device!r} is not one of 'cpu', 'cuda'")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"compute.threads must be a whole number ≥ 1, got {self.threads!r}")
        if not self.precision:
            object.__setattr__(self, "precision", PRECISION[self.device])
        elif self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"compute.precision {self.precision!r} is not one of 'fp32', 'bf16'")
        if not self.memory_format:
            object.__setattr__(self, "memory_format", MEMORY_FORMAT[self.device])
        elif self.memory_format not in ("contiguous", "channels_last"):
            raise ConfigError(
                f"compute.memory_format {self.memory_format!r} is not one of 'contiguous', "
                "'channels_last'"
            )

    def describe(self) -> str:
        """``cpu fp32 channels_last 4 threads``."""
        plural = "s" * (self.threads != 1)
        return f"{self.device} {self.precision} {self.memory_format} {self.threads} thread{plural}"


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one trial.

    Attributes:
        dataset: Dataset name.
        student: Student model name.
        method: Method name.
        params: Method hyperparameters as (name, value) pairs, sorted by name.
        seed: The student's seed (initialisation, data order, augmentation).
        recipe: The student's training recipe.
        teacher: The teacher, or ``None`` for methods that use none.
        phase: ``tune`` (selection on the validation split) or ``final``.
        val_fraction: Share of the training split held out for validation.
        train_size: Train the student on a stratified subset of this many samples of the
            training split (after the validation hold-out), drawn with the split's seed, so
            every trial of a size sees the same samples; None: the whole split. Teachers train
            on the whole split (their cache keys do not hold it). Part of the run key only
            when set.
        data_root: Where on-disk datasets live (not part of the run key).
        download: Whether a missing dataset may be downloaded (not part of the run key).
        student_checkpoint: A pretrained state dict the student starts from (transfer
            learning; ``weights_only``); tensors whose shape differs from the student's (a
            classifier for another number of classes) keep their fresh initialisation.
        compute: Device, precision and threads; None until the trial is prepared, which
            fills in this machine's (``bench.trial.compose.identify_trial``).
    """

    dataset: str
    student: str
    method: str
    params: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    recipe: Recipe = field(default_factory=Recipe)
    teacher: TeacherSpec | None = None
    phase: Phase = "final"
    val_fraction: float = 0.1
    train_size: int | None = field(default=None, metadata=OMIT_DEFAULT_FROM_KEY)
    data_root: str | None = field(default=None, compare=False)
    download: bool = field(default=False, compare=False)
    student_checkpoint: str | None = field(default=None, metadata=OMIT_DEFAULT_FROM_KEY)
    compute: Compute | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(sorted(_freeze(dict(self.params)).items())))
        check_range("seed", self.seed, SEED_RANGE)
        check_range("val_fraction", self.val_fraction, VAL_FRACTION_RANGE)
        if self.train_size is not None:
            check_range("train_size", self.train_size, TRAIN_SIZE_RANGE)
        if self.phase not in ("tune", "final"):
            raise ConfigError(f"phase {self.phase!r} is not 'tune' or 'final'")

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def with_changes(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        pair = f"{self.student}<-{self.teacher.arch}" if self.teacher else self.student
        return f"{self.method}:{self.dataset}:{pair}:seed{self.seed}"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _freeze(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def to_jsonable(value: Any) -> Any:
    """Plain JSON structure of a config object (dataclasses → dicts, tuples → lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def key_jsonable(value: Any) -> Any:
    """:func:`to_jsonable` for hashing: fields marked :data:`OMIT_DEFAULT_FROM_KEY` are left
    out while they hold their default, so keys made before those fields existed still hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: key_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not _omitted(f, getattr(value, f.name))
        }
    if isinstance(value, Mapping):
        return {str(k): key_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [key_jsonable(v) for v in value]
    return value


def _omitted(f: dataclasses.Field, value: Any) -> bool:
    if not f.metadata.get("omit_default_from_key"):
        return False
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return value == default


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (see :func:`key_jsonable`)."""
    text = json.dumps(key_jsonable(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def key_fields(
    config: TrialConfig, method_version: int, method_code: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The fields a run key is made of: every field that defines the result.

    Checkpoint files (the teacher's, the student's starting point) enter by the SHA-256 of
    their bytes, not their path: overwriting one gives new keys, moving one keeps them.

    Args:
        config: The trial.
        method_version: The method's declared ``version``.
        method_code: Content hashes of the method's own file and of the helper modules its
            loss runs through (``bench.plugins.method_code``).

    Raises:
        FileNotFoundError: A checkpoint file named by the trial does not exist.
    """
    fields = {
        f.name: key_jsonable(getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.compare and not _omitted(f, getattr(config, f.name))
    }
    if config.teacher is not None and config.teacher.checkpoint is not None:
        fields["teacher"]["checkpoint"] = _content_id(config.teacher.checkpoint, "teacher")
    if config.student_checkpoint is not None:
        fields["student_checkpoint"] = _content_id(config.student_checkpoint, "student")
    fields["method_version"] = method_version
    fields["harness_version"] = HARNESS_VERSION
    fields["method_code"] = dict(sorted((method_code or {}).items()))
    return fields


def _content_id(path: str, role: str) -> str:
    try:
        return "sha256:" + file_sha256(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{role} checkpoint {path}: no such file (the run key holds its content)"
        ) from None


def run_key(
    config: TrialConfig, method_version: int, method_code: Mapping[str, str] | None = None
) -> str:
    """Deterministic identity of a trial: the same key means the same trial and result."""
    return stable_hash(key_fields(config, method_version, method_code))
