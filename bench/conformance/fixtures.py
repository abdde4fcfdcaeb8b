"""What a conformance run trains on: tiny teacher/student pairs, a fixed 256-sample subset of
``digits``, a two-epoch recipe, frozen teachers fitted to that subset, and training contexts built
from the public pieces of :mod:`bench.trial`. Everything runs on the CPU in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from bench.api import Batch, Method, ModelInfo, TaskInfo
from bench.config import Recipe
from bench.data import DataBundle, DatasetInfo, Split, TensorSplit, load_dataset
from bench.models import create_model, list_models, model_info
from bench.progress import Reporter, training
from bench.trial.compose import trial_services
from bench.trial.context import TrialContext, make_context
from bench.trial.device import freeze, seed_everything
from bench.trial.loop import train_loop

DATASET = "digits"
TRAIN_SAMPLES = 256
HELD_OUT_SAMPLES = 64
BATCH_SIZE = 64
#: Two epochs of four steps: enough for the loss on a fixed batch to fall, short enough that
#: init stages (scaled to the recipe) stay at one epoch.
EPOCHS = 2
SEED = 0
#: The teachers fit the 256 samples (about 80-90 % accuracy), as real teachers fit their
#: training data; a barely trained teacher makes scale-free logit methods drive the student's
#: cross-entropy up, which says nothing about the method.
TEACHER_EPOCHS = 12
DEVICE = torch.device("cpu")


@dataclass(frozen=True)
class Pair:
    """A tiny (student, teacher) pair of registered test models."""

    student: str
    teacher: str

    def id_for(self, method: str) -> str:
        """The pair's id for ``method``: ``at-test_resnet_narrow<-test_resnet_wide``."""
        return f"{method}-{self.student}<-{self.teacher}"

    @classmethod
    def parse(cls, spec: Pair | str | tuple[str, str]) -> Pair:
        """A pair from ``Pair``, ``"student<-teacher"`` or ``(student, teacher)``.

        Raises:
            ValueError: ``spec`` is none of those forms.
        """
        if isinstance(spec, Pair):
            return spec
        if isinstance(spec, str) and spec.count("<-") == 1:
            student, teacher = (s.strip() for s in spec.split("<-"))
            if student and teacher:
                return cls(student, teacher)
        if (
            isinstance(spec, tuple | list)
            and len(spec) == 2
            and all(isinstance(s, str) for s in spec)
        ):
            return cls(spec[0], spec[1])
        raise ValueError(
            f"pair {spec!r}: expected 'student<-teacher' or a (student, teacher) tuple, "
            "e.g. 'test_resnet_narrow<-test_resnet_wide'"
        )


#: Same family with a different width; across families with a different number of stages
#: (the VGG has five, the ResNets four); a MobileNet whose first stage is already downsampled.
DEFAULT_PAIRS = (
    Pair("test_resnet_narrow", "test_resnet_wide"),
    Pair("test_vgg", "test_resnet_wide"),
    Pair("test_mobile", "test_resnet_narrow"),
)

#: Tried only when a method refuses every default pair: the same architecture on both sides
#: (equal widths at every stage), which methods such as FSP need.
FALLBACK_PAIRS = (Pair("test_resnet_narrow", "test_resnet_narrow"),)


def student_recipe() -> Recipe:
    """The conformance recipe: plain SGD at a constant rate, no augmentation (so a fixed
    batch means the same inputs before and after training)."""
    return Recipe(epochs=EPOCHS, batch_size=BATCH_SIZE, lr=0.05, schedule="constant", augment=False)


def teacher_recipe() -> Recipe:
    """How the teachers are trained: Adam fits the tiny subset in a few dozen steps."""
    return Recipe(
        epochs=TEACHER_EPOCHS,
        batch_size=BATCH_SIZE,
        optimizer="adam",
        lr=0.01,
        weight_decay=0.0,
        schedule="constant",
        augment=False,
    )


def _subset(split: Split, info: DatasetInfo, count: int, seed: int) -> TensorSplit:
    """A fixed random subset (all classes mixed) of an in-memory split."""
    assert isinstance(split, TensorSplit)  # DATASET is held in memory
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    return TensorSplit(
        split.images.index_select(0, order),
        split.labels.index_select(0, order),
        mean=info.mean,
        std=info.std,
        crop_padding=info.crop_padding,
        flip=info.flip,
        source_index=split.source_index.index_select(0, order),
    )


@functools.lru_cache(maxsize=1)
def data() -> DataBundle:
    """256 training, 64 validation and 64 test samples of ``digits``, fixed."""
    bundle = load_dataset(DATASET, device=DEVICE)
    train = _subset(bundle.train, bundle.info, TRAIN_SAMPLES, seed=1)
    val = _subset(bundle.val, bundle.info, HELD_OUT_SAMPLES, seed=2)
    test = _subset(bundle.test, bundle.info, HELD_OUT_SAMPLES, seed=3)
    info = dataclasses.replace(bundle.info, num_train=len(train))
    return DataBundle(info=info, train=train, val=val, test=test)


def task() -> TaskInfo:
    info = data().info
    return TaskInfo(
        dataset=DATASET,
        num_classes=info.num_classes,
        input_size=info.input_size,
        num_train=info.num_train,
        epochs=EPOCHS,
        steps_per_epoch=info.num_train // BATCH_SIZE,
        models=tuple(list_models()),
    )


def fixed_batch() -> Batch:
    """The first training batch in dataset order, placed at the last step of training (so
    warm-up weights are at their full values, before and after training alike)."""
    x, y, index = next(
        data().train.batches(
            BATCH_SIZE, shuffle=False, generator=None, augment=False, device=DEVICE
        )
    )
    info = task()
    last = info.total_steps - 1
    return Batch(
        x=x,
        y=y,
        index=index,
        epoch=EPOCHS - 1,
        step=last,
        progress=last / info.total_steps,
    )


@contextlib.contextmanager
def isolated_rng(seed: int = SEED) -> Iterator[None]:
    """Seed every RNG for the block and give the caller's RNG states back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the block. Tiny models gain nothing from more,
    and on a busy machine two threads contending for two cores run ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def student(name: str) -> tuple[nn.Module, ModelInfo]:
    """A fresh student, initialised from the conformance seed."""
    info = task()
    with isolated_rng(SEED):
        model = create_model(name, info.num_classes, image_size=info.input_size[1])
    model.to(DEVICE)
    return model, model_info(model, name, info.input_size)


@functools.cache
def describe(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a tiny model, without training it."""
    return student(name)[1]


_teacher_states: dict[str, dict[str, Tensor]] = {}


def teacher(name: str, progress: Reporter | None = None) -> tuple[nn.Module, ModelInfo]:
    """A frozen teacher: trained briefly with cross-entropy once per process (so its BatchNorm
    statistics are real; the training shown on ``progress``), then rebuilt from that state for
    every caller."""
    info = task()
    if name not in _teacher_states:
        model, _ = student(name)
        with isolated_rng(SEED + 1), training(progress, f"teacher {name}") as shown:
            ctx = context(model, None, recipe=teacher_recipe())
            # The teacher trains through ctx.fit, as sub-models do; its loop shows progress.
            loop = functools.partial(train_loop, progress=shown)
            ctx.services = dataclasses.replace(ctx.services, train=loop)
            ctx.fit(model, Method(), name=name)
        _teacher_states[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with isolated_rng(SEED):
        model = create_model(name, info.num_classes, image_size=info.input_size[1])
    model.load_state_dict(_teacher_states[name])
    model.to(DEVICE)
    return freeze(model), model_info(model, name, info.input_size)


def context(
    student_model: nn.Module,
    teacher_model: nn.Module | None,
    student_info: ModelInfo | None = None,
    teacher_info: ModelInfo | None = None,
    *,
    recipe: Recipe | None = None,
) -> TrialContext:
    """A training context over the conformance data and recipe, seeded alike every time."""
    info = task()
    recipe = recipe or student_recipe()
    return make_context(
        student=student_model,
        student_info=student_info
        or model_info(student_model, _name_of(student_model), info.input_size),
        teacher=teacher_model,
        teacher_info=teacher_info,
        task=info,
        recipe=recipe,
        device=DEVICE,
        data=data(),
        seed=SEED,
        services=trial_services(info.dataset, None, recipe, DEVICE),
    )


def _name_of(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__
