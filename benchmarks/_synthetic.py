"""Shared pieces of the benchmarks: CIFAR-shaped synthetic data and a kdbench training context
over it (random images and labels: speed does not depend on what the pixels show)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench.config import Recipe
from bench.data import DataBundle, DatasetInfo, TensorSplit
from bench.models import create_model, model_info
from bench.plugins import build_method
from bench.trial.context import make_context, task_info
from bench.trial.device import Execution, fast_compute, freeze

CIFAR_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR_STD = (0.2673, 0.2564, 0.2762)


def synthetic_images(n: int, classes: int = 100, size: int = 32, seed: int = 0):
    """uint8 n×3×size×size images and int64 labels, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return images, labels


def synthetic_bundle(
    n: int, device: torch.device, classes: int = 100, size: int = 32
) -> DataBundle:
    """A CIFAR-100-shaped in-memory dataset (crop padding 4, flips) of ``n`` training images."""
    images, labels = synthetic_images(n, classes, size)

    def split(part_images, part_labels) -> TensorSplit:
        return TensorSplit(
            part_images.to(device),
            part_labels.to(device),
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
            crop_padding=4,
            flip=True,
        )

    info = DatasetInfo(
        name="synthetic-cifar",
        num_classes=classes,
        input_size=(3, size, size),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        flip=True,
        crop_padding=4,
        class_names=tuple(str(c) for c in range(classes)),
        num_train=n,
    )
    small = slice(0, min(n, 256))
    return DataBundle(
        info=info,
        train=split(images, labels),
        val=split(images[small], labels[small]),
        test=split(images[small], labels[small]),
    )


def kd_context(
    data: DataBundle,
    student_name: str,
    teacher_name: str | None,
    method_name: str,
    recipe: Recipe,
    device: torch.device,
    *,
    seed: int = 0,
    teacher_outputs=None,
):
    """A kdbench training context and method over ``data`` (random-init models)."""
    image = data.info.input_size
    classes = data.info.num_classes
    execution = Execution.of(fast_compute(device, torch.get_num_threads()), recipe)
    torch.manual_seed(seed)
    student = execution.apply(create_model(student_name, classes).to(device))
    s_info = model_info(student, student_name, image)
    teacher = t_info = None
    if teacher_name is not None:
        teacher = freeze(create_model(teacher_name, classes).to(device))
        t_info = model_info(teacher, teacher_name, image)
        execution.apply(teacher)
    task = task_info("synthetic-cifar", data, recipe)
    method = build_method(method_name)
    method.setup(s_info, t_info, task)
    method.to(device)
    ctx = make_context(
        student=student,
        student_info=s_info,
        teacher=teacher,
        teacher_info=t_info,
        task=task,
        recipe=recipe,
        device=device,
        data=data,
        seed=seed,
        execution=execution,
        teacher_outputs=teacher_outputs,
    )
    return ctx, method


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
