"""CPU speed: one KD epoch under kdbench's default CPU execution against the same work written
by hand in eager fp32 NCHW, in one process, interleaved.

The work: resnet56 → resnet20 (CIFAR ResNets), KD (T = 4, α = 0.9), SGD, batch 64, on the
embedded digits data shown at 32×32 without augmentation (so the teacher outputs cache
applies). Three epochs are timed in turn, several times each, in rotating order:

- ``hand``: a hand-written loop, eager fp32 NCHW, the teacher's forward pass every step;
- ``kdbench``: kdbench's training loop under the harness's CPU policy
  (:func:`bench.trial.device.fast_compute`), the teacher's forward pass every step;
- ``kdbench+cache``: the same with the teacher's outputs looked up from the cache, as every
  trial after the first on a split finds them (a sweep's steady state).

Printed: each path's median epoch time, the ratios kdbench / hand and kdbench+cache / hand
(targets ≤ 0.55 and ≤ 0.35 on a CPU with native bf16), the achieved GFLOP/s of each path
(convolution and matrix FLOPs counted by PyTorch; a training step is the student's forward and
backward, about 3× its forward, plus the teacher's forward unless cached), and the peak a
2048×2048 matrix product reaches here in fp32 and in bf16, measured in the same run.

    python benchmarks/cpu_speed.py [--repeats 5] [--threads N] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import Recipe
from bench.data import DataBundle, load_dataset
from bench.models import create_model, model_info
from bench.plugins import build_method
from bench.teacher_cache import compute_outputs
from bench.trial.context import make_context, make_optimizer, task_info
from bench.trial.device import (
    TORCH_THREADS,
    Execution,
    cpu_has_native_bf16,
    fast_compute,
    freeze,
)
from bench.trial.loop import train_loop
from bench.trial.metrics import count_flops

TEACHER, STUDENT = "resnet56", "resnet20"
TEMPERATURE, ALPHA = 4.0, 0.9


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of repeated ``size``×``size`` matrix products in ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


class Paths:
    """The three epochs, each on fresh copies of the same initial models."""

    def __init__(self, data: DataBundle, recipe: Recipe, execution: Execution) -> None:
        self.data, self.recipe, self.execution = data, recipe, execution
        classes = data.info.num_classes
        torch.manual_seed(0)
        self.teacher_state = create_model(TEACHER, classes).state_dict()
        self.student_state = create_model(STUDENT, classes).state_dict()
        teacher = self.teacher(fast=True)
        self.cache = compute_outputs(
            teacher, data.train, frozenset(), torch.device("cpu"), execution=execution
        )

    def teacher(self, *, fast: bool) -> nn.Module:
        model = create_model(TEACHER, self.data.info.num_classes)
        model.load_state_dict(self.teacher_state)
        freeze(model)
        return self.execution.apply(model) if fast else model

    def student(self, *, fast: bool) -> nn.Module:
        model = create_model(STUDENT, self.data.info.num_classes)
        model.load_state_dict(self.student_state)
        return self.execution.apply(model) if fast else model

    def kdbench(self, *, cached: bool) -> float:
        """One epoch through kdbench's loop under its CPU execution policy."""
        data, image = self.data, self.data.info.input_size
        teacher, student = self.teacher(fast=True), self.student(fast=True)
        task = task_info("digits", data, self.recipe)
        method = build_method("kd", {"temperature": TEMPERATURE, "alpha": ALPHA})
        t_info = model_info(teacher, TEACHER, image)
        s_info = model_info(student, STUDENT, image)
        method.setup(s_info, t_info, task)
        ctx = make_context(
            student=student,
            student_info=s_info,
            teacher=teacher,
            teacher_info=t_info,
            task=task,
            recipe=self.recipe,
            device=torch.device("cpu"),
            data=data,
            seed=0,
            execution=self.execution,
            teacher_outputs=self.cache if cached else None,
        )
        started = time.perf_counter()
        train_loop(ctx, method, evaluate_val=False)
        return time.perf_counter() - started

    def hand(self) -> float:
        """What a researcher writes: eager fp32 NCHW, both models forward every step."""
        teacher, student = self.teacher(fast=False), self.student(fast=False)
        images, labels = self.data.train.images, self.data.train.labels
        info = self.data.info
        mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        std = torch.tensor(info.std).view(1, -1, 1, 1)
        optimizer = make_optimizer(list(student.parameters()), self.recipe)
        batch = self.recipe.batch_size
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        started = time.perf_counter()
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start : start + batch]
            x = (images[idx].float() / 255 - mean) / std
            if x.shape[-1] != info.input_size[-1]:
                x = F.interpolate(x, size=info.input_size[1:], mode="bilinear")
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            kl = F.kl_div(
                F.log_softmax(s_logits / TEMPERATURE, 1),
                F.log_softmax(t_logits / TEMPERATURE, 1),
                reduction="batchmean",
                log_target=True,
            )
            ce = F.cross_entropy(s_logits, labels[idx])
            loss = (1 - ALPHA) * ce + ALPHA * TEMPERATURE**2 * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--compile", action="store_true", help="kdbench's paths through torch.compile too"
    )
    args = parser.parse_args()
    threads = args.threads or TORCH_THREADS
    torch.set_num_threads(threads)
    compute = fast_compute("cpu", threads)
    recipe = Recipe(
        epochs=1,
        batch_size=args.batch_size,
        augment=False,
        schedule="constant",
        image_size=32,
        compile=args.compile,
    )
    data = load_dataset("digits", image_size=32)
    paths = Paths(data, recipe, Execution.of(compute, recipe))
    epochs: dict[str, Callable[[], float]] = {
        "hand": paths.hand,
        "kdbench": lambda: paths.kdbench(cached=False),
        "kdbench+cache": lambda: paths.kdbench(cached=True),
    }
    for epoch in epochs.values():  # warm-up (and compilation) outside the timing
        epoch()
    times: dict[str, list[float]] = {name: [] for name in epochs}
    names = list(epochs)
    for repeat in range(args.repeats):
        for name in names[repeat % 3 :] + names[: repeat % 3]:
            times[name].append(epochs[name]())
    fp32_peak, bf16_peak = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)

    image = data.info.input_size
    steps = len(data.train) // args.batch_size
    student_flops = count_flops(create_model(STUDENT, data.info.num_classes), image)
    teacher_flops = count_flops(create_model(TEACHER, data.info.num_classes), image)
    per_image = {"hand": 3 * student_flops + teacher_flops}
    per_image["kdbench"] = per_image["hand"]
    per_image["kdbench+cache"] = 3 * student_flops
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{TEACHER} -> {STUDENT}, KD, digits at 32x32, {steps} steps of batch "
        f"{args.batch_size}, {threads} threads, {args.repeats} repeats interleaved"
    )
    print(
        f"kdbench's CPU execution: {compute.describe()} (native bf16: "
        f"{'yes' if cpu_has_native_bf16() else 'no'}){', compiled' if args.compile else ''}"
    )
    print(f"peak (2048x2048 matmul): fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s")
    for name, median in medians.items():
        achieved = per_image[name] * steps * args.batch_size / median / 1e9
        print(
            f"{name:14s} median {median:6.3f} s/epoch  {achieved:6.1f} GFLOP/s  "
            f"({', '.join(f'{t:.2f}' for t in times[name])})"
        )
    print(
        f"ratio kdbench / hand:       {medians['kdbench'] / medians['hand']:.3f}  "
        "(target ≤ 0.55 with native bf16)"
    )
    print(
        f"ratio kdbench+cache / hand: {medians['kdbench+cache'] / medians['hand']:.3f}  "
        "(target ≤ 0.35 with native bf16)"
    )


if __name__ == "__main__":
    main()
