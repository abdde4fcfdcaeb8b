"""Obtain a teacher: train it once per (dataset, architecture, recipe, seed, classes) and cache
it by a content hash, or load a checkpoint file.

The cache lives under ``<kdbench home>/teachers/<key>/``: ``epoch_<k>.pt`` state dicts (loaded
with ``weights_only=True``) and ``meta.json`` (the spec, per-checkpoint test accuracy). An
early-stopped teacher is the checkpoint after ``stop_epoch`` epochs of the same training run.
One training keeps every checkpoint asked for at once (``obtain_teacher(..., keep=...)``), as well
as those already cached; asking later for an epoch that was not kept retrains deterministically
and keeps it too. Concurrent processes asking for the same teacher wait on a file lock, so it is
trained once.
"""

from __future__ import annotations

import fcntl
import json
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench import atomic
from bench.api import ModelInfo, TrialFailed
from bench.checkpoint import CheckpointError, load_weights, read_state_dict
from bench.config import TeacherSpec, stable_hash, to_jsonable
from bench.data import DataBundle, load_dataset
from bench.filehash import file_sha256
from bench.models import create_model, model_info
from bench.paths import kdbench_home
from bench.progress import Reporter, training
from bench.trial.context import make_context, task_info
from bench.trial.device import freeze, pick_device, seed_everything
from bench.trial.evaluate import labels_of, predict, topk_accuracy
from bench.trial.loop import EpochRecord, SupervisedOnly, train_loop

#: Bump when the way teachers are trained changes, to invalidate cached teachers.
TEACHER_FORMAT = 1


@dataclass
class Teacher:
    """A trained teacher ready for distillation."""

    model: nn.Module
    info: ModelInfo
    test_acc: float
    key: str
    path: Path


def teacher_key(dataset: str, spec: TeacherSpec) -> str:
    """Content hash of everything that defines a teacher's training run (not the stop epoch:
    early-stopped checkpoints of one run share the key)."""
    return stable_hash(
        {
            "dataset": dataset,
            "arch": spec.arch,
            "recipe": spec.recipe,
            "seed": spec.seed,
            "classes": spec.classes,
            "format": TEACHER_FORMAT,
        }
    )


def teacher_label(dataset: str, spec: TeacherSpec) -> str:
    """How a teacher's training names itself in progress lines."""
    classes = f", classes {','.join(map(str, spec.classes))}" if spec.classes else ""
    return f"teacher {spec.arch} on {dataset} (seed {spec.seed}{classes})"


def cache_dir() -> Path:
    return kdbench_home() / "teachers"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_save(obj: object, path: Path) -> None:
    atomic.torch_save(obj, path)


def _read_meta(folder: Path) -> dict:
    """The entry's ``meta.json``; empty when there is none, or when it is damaged (reported,
    and the entry is then trained again)."""
    meta = folder / "meta.json"
    if not meta.exists():
        return {}
    try:
        value = json.loads(meta.read_text(encoding="utf-8"))
        accs = value["test_acc"]
        if not all(isinstance(a, int | float) for a in accs.values()):
            raise TypeError("test_acc holds a value that is not a number")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        _report_damaged(meta, f"{type(exc).__name__}: {exc}")
        return {}
    return value


def _report_damaged(path: Path, problem: str) -> None:
    print(
        f"kdbench: teacher cache: {path} is damaged: {problem}; training the teacher again",
        file=sys.stderr,
    )


def load_checkpoint(path: str | Path, model: nn.Module) -> None:
    """Load a teacher's weights with ``weights_only=True``: a state dict saved by kdbench, or
    a training script's checkpoint (see :mod:`bench.checkpoint` for the forms read).

    Raises:
        CheckpointError: naming the file, what is wrong with it (missing, damaged, not a
            checkpoint, another architecture) and what to do.
    """
    load_weights(
        model,
        path,
        "teacher checkpoint",
        fix=f"give a checkpoint of {type(model).__name__} trained on this dataset's classes, "
        "or the --teacher architecture it was saved from",
    )


def obtain_teacher(
    dataset: str,
    spec: TeacherSpec,
    *,
    data_root: str | None = None,
    device: torch.device | None = None,
    data: DataBundle | None = None,
    progress: Reporter | None = None,
    keep: Iterable[int] = (),
) -> Teacher:
    """A trained, frozen teacher for ``dataset`` (trained and cached on first use).

    Args:
        dataset: The dataset it is trained on.
        spec: Which teacher; ``spec.stop_epoch`` picks an early-stopped checkpoint.
        data_root: Where the dataset's files are.
        device: Where it runs (default: the best available).
        data: The dataset already loaded at the teacher's image size (reused unless the
            teacher trains on a class subset).
        progress: Where a training shows its progress (each epoch; nothing when None).
        keep: Further epochs of the same training to checkpoint: when a training is needed,
            it saves all of them (and the returned teacher is still ``spec``'s checkpoint),
            so the early-stopped teachers of one run cost one training. Any of them missing
            from the cache starts that training.

    Raises:
        ValueError: An epoch in ``keep`` is outside the teacher's training epochs.
    """
    device = device or pick_device()
    if data is None or spec.classes is not None:
        data = load_dataset(
            dataset,
            root=data_root,
            classes=spec.classes,
            device=device,
            image_size=spec.recipe.image_size,
        )
    image = data.info.input_size
    model = create_model(
        spec.arch, data.info.num_classes, image_size=image[1], in_chans=image[0]
    ).to(device)
    if spec.checkpoint is not None:
        load_checkpoint(spec.checkpoint, model)
        model.to(device)
        acc = topk_accuracy(predict(model, data.test, device), labels_of(data.test, device))
        # Keyed by content: a file overwritten with another teacher is another teacher.
        key = "file-" + file_sha256(spec.checkpoint)[:16]
        return Teacher(
            freeze(model), model_info(model, spec.arch, image), acc, key, Path(spec.checkpoint)
        )
    key = teacher_key(dataset, spec)
    folder = cache_dir() / key
    epoch = spec.stop_epoch or spec.recipe.epochs
    wanted = {epoch} | _checked_epochs(keep, spec)
    ckpt = folder / f"epoch_{epoch}.pt"
    with _locked(folder / ".lock"):
        meta = _read_meta(folder)
        if _missing(folder, meta, wanted):
            meta = _train_and_cache(
                dataset, spec, data, folder, device, keep=wanted, meta=meta, progress=progress
            )
    load_checkpoint(ckpt, model)
    model.to(device)
    return Teacher(
        freeze(model),
        model_info(model, spec.arch, image),
        float(meta["test_acc"][str(epoch)]),
        key,
        ckpt,
    )


def _checked_epochs(keep: Iterable[int], spec: TeacherSpec) -> set[int]:
    epochs = {int(e) for e in keep}
    wrong = sorted(e for e in epochs if not 1 <= e <= spec.recipe.epochs)
    if wrong:
        raise ValueError(
            f"teacher {spec.arch}: checkpoints to keep {wrong} are outside its training epochs "
            f"1..{spec.recipe.epochs}; keep epochs within the teacher recipe's epochs"
        )
    return epochs


def _missing(folder: Path, meta: dict, epochs: set[int]) -> set[int]:
    """The epochs whose checkpoint or recorded test accuracy is not in the cache (a damaged
    checkpoint is reported and counts as missing)."""
    recorded = meta.get("test_acc", {})
    return {e for e in epochs if str(e) not in recorded or not _usable(folder / f"epoch_{e}.pt")}


def _usable(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        read_state_dict(path, "cached teacher")
    except CheckpointError as exc:
        _report_damaged(path, exc.problem)
        return False
    return True


def _train_and_cache(
    dataset: str,
    spec: TeacherSpec,
    data: DataBundle,
    folder: Path,
    device: torch.device,
    *,
    keep: set[int],
    meta: dict,
    progress: Reporter | None,
) -> dict:
    """Train the teacher from scratch (deterministically) and keep the asked-for epochs."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = set(keep) | {spec.recipe.epochs} | {int(e) for e in meta.get("test_acc", {})}
    seed_everything(spec.seed)
    image = data.info.input_size
    model = create_model(
        spec.arch, data.info.num_classes, image_size=image[1], in_chans=image[0]
    ).to(device)
    info = model_info(model, spec.arch, image)
    task = task_info(dataset, data, spec.recipe)
    ctx = make_context(
        student=model,
        student_info=info,
        task=task,
        recipe=spec.recipe,
        device=device,
        data=data,
        seed=spec.seed,
    )
    method = SupervisedOnly().to(device)
    labels = labels_of(data.test, device)
    accs: dict[str, float] = {}
    started = time.perf_counter()

    def on_epoch(record: EpochRecord) -> None:
        done = record.epoch + 1
        if done in keep:
            accs[str(done)] = topk_accuracy(predict(model, data.test, device), labels)
            _atomic_save(model.state_dict(), folder / f"epoch_{done}.pt")

    try:
        with training(progress, teacher_label(dataset, spec)) as shown:
            history = train_loop(ctx, method, on_epoch=on_epoch, progress=shown)
    except TrialFailed as exc:
        raise TrialFailed(
            f"teacher {spec.arch} did not train: {exc.reason}",
            outcome=exc.outcome,
        ) from exc
    meta = {
        "dataset": dataset,
        "spec": to_jsonable(spec),
        "test_acc": accs,
        "val_acc": history[-1]["val_acc"],
        # Teachers train on the whole training split, whatever a student's train_size.
        "num_train": len(data.train),
        "train_seconds": time.perf_counter() - started,
        # Not part of the cache key; recorded so that a teacher trained elsewhere is visible.
        "trained_on": {
            "device": device.type,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "history": history,
    }
    atomic.write_json(folder / "meta.json", meta)
    return meta
