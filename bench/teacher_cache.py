"""Teacher outputs computed once and reused across epochs and trials.

A frozen teacher fed deterministic inputs (no augmentation, or an augmentation that changes
nothing) gives every training sample the same outputs in every epoch of every trial. Those
outputs (the logits, plus whatever the method's ``needs`` asks of the teacher) are computed in
one pass over the training split and looked up by sample position during training.

Entries are kept in memory within a process and on disk under
``<kdbench home>/teacher_outputs/<key>.pt``, keyed by the teacher's checkpoint, a fingerprint
of the split's images and labels, the needs, the device type and the execution policy (the
precision and memory format the trial's run key holds), and on CPU the torch thread count
(part of the trial's run key too). Outputs are stored as the teacher's forward pass returns
them (bf16 under bf16 autocast), which is what the loss sees without the cache; methods upcast
to fp32 where their loss needs it. A teacher
evaluates in eval mode, one sample independently of the others, so a looked-up row equals
what the same forward pass on a training batch computes; the tests check that a cached trial
and an uncached one end bit-identical.

With ``recipe.augment_stream: shared`` the inputs are augmented, but alike in every trial: the
crop and flip of a sample depend only on the epoch and its position (see
:func:`bench.data.shared_augment_draws`). The teacher's outputs then get one entry per epoch,
over the split augmented as that epoch's stream augments it, keyed like the others plus the
stream, its augmentation settings and the epoch (:class:`SharedStreamOutputs`). The first
trial of a teacher builds each epoch's entry as it reaches that epoch; later trials load them.

``KDBENCH_TEACHER_CACHE_MB`` bounds one entry's size (default 2048; 0 turns the cache off):
features of a deep teacher on a large split are left to be computed per step instead.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from bench import atomic
from bench.api import Outputs
from bench.checkpoint import CheckpointError, read_checkpoint
from bench.config import PRECISION, Recipe, stable_hash
from bench.data import SHARED_AUGMENT_SEED, DatasetInfo, Split
from bench.data.augment import BatchPipeline
from bench.models import forward_outputs
from bench.paths import kdbench_home
from bench.trial.device import Execution

__all__ = [
    "SharedStreamOutputs",
    "TeacherOutputs",
    "budget_bytes",
    "inputs_are_deterministic",
    "shares_augmentation",
    "split_fingerprint",
    "teacher_outputs",
]

#: Bump when the stored format or the way outputs are computed changes.
OUTPUTS_FORMAT = 2
_MEMORY_ENTRIES = 4
_memory: OrderedDict[str, TeacherOutputs] = OrderedDict()


@dataclass
class TeacherOutputs:
    """A teacher's outputs for every sample of a split, by split position, on the device.

    Attributes:
        key: The cache key.
        needs: What besides logits is stored (``features``, ``preact_features``, ``embedding``).
        logits: N×K.
        embedding: N×D, or None.
        features: Per-stage N×… tensors (empty unless in ``needs``).
        preact_features: The same before the stages' last ReLU (empty unless in ``needs``).
    """

    key: str
    needs: frozenset[str]
    logits: Tensor
    embedding: Tensor | None = None
    features: list[Tensor] = field(default_factory=list)
    preact_features: list[Tensor] = field(default_factory=list)

    def covers(self, needs: frozenset[str] | set[str]) -> bool:
        return set(needs) <= self.needs

    def for_epoch(self, epoch: int, *, augmented: bool) -> TeacherOutputs:
        """This entry: its inputs are the same in every epoch, augmented or not."""
        return self

    def take(self, index: Tensor, needs: frozenset[str] | set[str]) -> Outputs:
        """The outputs of the samples at ``index``, with only what ``needs`` asks for (as an
        uncached forward pass would return them)."""
        pick = lambda t: _same_layout(t.index_select(0, index), t)  # noqa: E731
        return Outputs(
            logits=pick(self.logits),
            features=[pick(f) for f in self.features] if "features" in needs else [],
            preact_features=(
                [pick(f) for f in self.preact_features] if "preact_features" in needs else []
            ),
            embedding=pick(self.embedding) if "embedding" in needs else None,
        )

    def nbytes(self) -> int:
        tensors = [self.logits, *self.features, *self.preact_features]
        if self.embedding is not None:
            tensors.append(self.embedding)
        return sum(t.numel() * t.element_size() for t in tensors)

    def state(self) -> dict:
        return {
            "format": OUTPUTS_FORMAT,
            "needs": sorted(self.needs),
            "logits": self.logits.cpu(),
            "embedding": None if self.embedding is None else self.embedding.cpu(),
            "features": [f.cpu() for f in self.features],
            "preact_features": [f.cpu() for f in self.preact_features],
        }

    @classmethod
    def from_state(cls, key: str, state: dict, device: torch.device) -> TeacherOutputs:
        embedding = state["embedding"]
        return cls(
            key=key,
            needs=frozenset(state["needs"]),
            logits=state["logits"].to(device),
            embedding=None if embedding is None else embedding.to(device),
            features=[f.to(device) for f in state["features"]],
            preact_features=[f.to(device) for f in state["preact_features"]],
        )


def inputs_are_deterministic(recipe: Recipe, info: DatasetInfo) -> bool:
    """Whether every epoch feeds each training sample to the teacher unchanged."""
    return not recipe.augment or (info.crop_padding == 0 and not info.flip)


def shares_augmentation(recipe: Recipe, info: DatasetInfo) -> bool:
    """Whether the training inputs are augmented by the stream all trials share."""
    return recipe.augment_stream == "shared" and not inputs_are_deterministic(recipe, info)


def budget_bytes() -> int:
    """The largest cache entry allowed (``KDBENCH_TEACHER_CACHE_MB``, default 2048 MB)."""
    raw = os.environ.get("KDBENCH_TEACHER_CACHE_MB", "2048")
    try:
        megabytes = float(raw)
    except ValueError:
        raise ValueError(
            f"KDBENCH_TEACHER_CACHE_MB must be a number of megabytes (0 turns the teacher "
            f"outputs cache off), got {raw!r}"
        ) from None
    return int(megabytes * 2**20)


def split_fingerprint(split: Split) -> str:
    """A digest of the split's images, labels and positions (computed once per split)."""
    cached = getattr(split, "_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.blake2b(digest_size=16)
    for name in ("images", "labels", "source_index"):
        tensor = getattr(split, name, None)
        if tensor is None:
            raise TypeError(
                f"the teacher outputs cache needs an in-memory split with .{name}; "
                f"{type(split).__name__} has none"
            )
        digest.update(str((name, tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    value = digest.hexdigest()
    split._fingerprint = value  # type: ignore[attr-defined]
    return value


def _checkpoint_id(path: Path) -> str:
    try:
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        return str(path)


def outputs_key(
    teacher_key: str,
    checkpoint: Path,
    split: Split,
    needs: frozenset[str],
    device: torch.device,
    *,
    execution: Execution | None = None,
    shared_epoch: int | None = None,
) -> str:
    """The cache key of a teacher's outputs on a split (augmented by the shared stream of
    ``shared_epoch`` when given), computed under ``execution`` (default: the device's)."""
    execution = execution or Execution()
    fields: dict[str, object] = {
        "teacher": teacher_key,
        "checkpoint": checkpoint.name if not teacher_key.startswith("file-") else None,
        "file": _checkpoint_id(checkpoint) if teacher_key.startswith("file-") else None,
        "split": split_fingerprint(split),
        "needs": sorted(needs),
        "device": device.type,
        "precision": execution.precision or PRECISION[device.type],
        "channels_last": execution.channels_last,
        "format": OUTPUTS_FORMAT,
    }
    if device.type == "cpu":  # CPU kernels split work by thread count, which may round apart
        fields["threads"] = torch.get_num_threads()
    if shared_epoch is not None:  # absent otherwise: the unaugmented entries keep their keys
        pipeline = getattr(split, "pipeline", None)
        if not isinstance(pipeline, BatchPipeline):
            raise TypeError(
                "the shared augmentation stream needs a split with a batch pipeline; "
                f"{type(split).__name__} has none"
            )
        fields["augment"] = {
            "stream": "shared",
            "seed": SHARED_AUGMENT_SEED,
            "crop_padding": pipeline.crop_padding,
            "flip": pipeline.flip,
            "epoch": shared_epoch,
        }
    return stable_hash(fields, length=24)


def teacher_outputs(
    teacher: nn.Module,
    teacher_key: str,
    checkpoint: Path,
    split: Split,
    needs: frozenset[str],
    device: torch.device,
    *,
    execution: Execution | None = None,
    batch_size: int = 256,
    shared_epoch: int | None = None,
) -> TeacherOutputs | None:
    """The teacher's outputs on every sample of ``split``, from memory, disk, or one pass.

    With ``shared_epoch``, on the split as the shared augmentation stream augments it in that
    epoch. Returns None when they would not fit the budget (see :func:`budget_bytes`) or the
    split is not held in memory.
    """
    budget = budget_bytes()
    if budget <= 0 or not hasattr(split, "images"):
        return None
    needs = frozenset(needs)
    execution = execution or Execution()
    key = outputs_key(
        teacher_key,
        checkpoint,
        split,
        needs,
        device,
        execution=execution,
        shared_epoch=shared_epoch,
    )
    if key in _memory:
        _memory.move_to_end(key)
        return _memory[key]
    path = kdbench_home() / "teacher_outputs" / f"{key}.pt"
    entry = _load(path, key, len(split), device) if path.is_file() else None
    if entry is None:
        if _estimated_bytes(teacher, split, needs, device, execution) > budget:
            return None
        entry = compute_outputs(
            teacher,
            split,
            needs,
            device,
            execution=execution,
            key=key,
            batch_size=batch_size,
            shared_epoch=shared_epoch,
        )
        _save(entry, path)
    _memory[key] = entry
    while len(_memory) > _MEMORY_ENTRIES:
        _memory.popitem(last=False)
    return entry


def _estimated_bytes(
    teacher: nn.Module,
    split: Split,
    needs: frozenset[str],
    device: torch.device,
    execution: Execution,
) -> int:
    x, _, _ = next(split.batches(2, shuffle=False, generator=None, augment=False, device=device))
    entry = _forward(teacher, x, needs, device, execution)
    return entry.nbytes() * len(split) // max(1, len(x))


def _forward(
    teacher: nn.Module,
    x: Tensor,
    needs: frozenset[str],
    device: torch.device,
    execution: Execution,
) -> TeacherOutputs:
    # The same memory format as a training batch: channels-last kernels may round apart.
    x = execution.images(x)
    with torch.inference_mode(), execution.autocast(device):
        out = forward_outputs(teacher, x, needs)
    return TeacherOutputs(
        key="",
        needs=needs,
        logits=out.logits,
        embedding=out.embedding,
        features=list(out.features),
        preact_features=list(out.preact_features),
    )


def compute_outputs(
    teacher: nn.Module,
    split: Split,
    needs: frozenset[str],
    device: torch.device,
    *,
    execution: Execution | None = None,
    key: str = "",
    batch_size: int = 256,
    shared_epoch: int | None = None,
) -> TeacherOutputs:
    """One eval-mode pass of ``teacher`` over ``split`` in order, kept on ``device``: the
    images as they are, or as the shared augmentation stream of ``shared_epoch`` crops and
    flips them."""
    execution = execution or Execution()
    was_training = teacher.training
    teacher.eval()
    parts = []
    try:
        for x, _, _ in split.batches(
            batch_size,
            shuffle=False,
            generator=None,
            augment=shared_epoch is not None,
            device=device,
            shared_epoch=shared_epoch,
        ):
            parts.append(_forward(teacher, x, needs, device, execution))
    finally:
        teacher.train(was_training)
    # Concatenated outside inference mode: the result is a normal tensor, which training code
    # may save for backward (an inference tensor may not be).
    cat = lambda ts: torch.cat(list(ts))  # noqa: E731
    stages = len(parts[0].features)
    pre_stages = len(parts[0].preact_features)
    return TeacherOutputs(
        key=key,
        needs=needs,
        logits=cat([p.logits for p in parts]),
        embedding=cat([p.embedding for p in parts]) if "embedding" in needs else None,
        features=[cat([p.features[i] for p in parts]) for i in range(stages)],
        preact_features=[cat([p.preact_features[i] for p in parts]) for i in range(pre_stages)],
    )


def _same_layout(rows: Tensor, stored: Tensor) -> Tensor:
    """``rows`` in ``stored``'s memory format: a channels-last feature map stays channels-last
    (the loss reduces it in that order, as it would the teacher's own output)."""
    channels_last = stored.dim() == 4 and not stored.is_contiguous()
    if channels_last and stored.is_contiguous(memory_format=torch.channels_last):
        return rows.contiguous(memory_format=torch.channels_last)
    return rows


@dataclass
class SharedStreamOutputs:
    """A frozen teacher's outputs under the shared augmentation stream, one cache entry per
    epoch, looked up (or built) when a trial first asks for that epoch.

    Attributes:
        teacher: The frozen teacher.
        teacher_key: Its cache key (see :mod:`bench.teachers`).
        checkpoint: Its checkpoint file.
        split: The training split (in memory).
        needs: What besides logits to keep.
        device: The training device.
        execution: The trial's precision and memory format.
    """

    teacher: nn.Module
    teacher_key: str
    checkpoint: Path
    split: Split
    needs: frozenset[str]
    device: torch.device
    execution: Execution | None = None

    def for_epoch(self, epoch: int, *, augmented: bool) -> TeacherOutputs | None:
        """The entry of ``epoch``, or None when it does not fit the budget, the split is not
        in memory, or the batches are drawn without augmentation (no entry holds those)."""
        if not augmented:
            return None
        return teacher_outputs(
            self.teacher,
            self.teacher_key,
            self.checkpoint,
            self.split,
            self.needs,
            self.device,
            execution=self.execution,
            shared_epoch=epoch,
        )


def _save(entry: TeacherOutputs, path: Path) -> None:
    atomic.torch_save(entry.state(), path)


def _load(path: Path, key: str, rows: int, device: torch.device) -> TeacherOutputs | None:
    """The entry stored at ``path``; None when it is damaged (reported, then computed again)."""
    try:
        state = read_checkpoint(path, "teacher outputs cache entry")
        if not isinstance(state, dict) or state.get("format") != OUTPUTS_FORMAT:
            raise ValueError(f"not a format-{OUTPUTS_FORMAT} entry")
        entry = TeacherOutputs.from_state(key, state, device)
        if len(entry.logits) != rows:
            raise ValueError(f"{len(entry.logits)} rows of logits for {rows} samples")
    except (CheckpointError, ValueError, KeyError, TypeError, AttributeError) as exc:
        problem = exc.problem if isinstance(exc, CheckpointError) else str(exc)
        print(
            f"kdbench: teacher outputs cache: {path} is damaged: {problem}; computing the "
            "teacher's outputs again",
            file=sys.stderr,
        )
        return None
    return entry


def clear_memory() -> None:
    """Forget the entries held in this process (the files on disk stay)."""
    _memory.clear()
