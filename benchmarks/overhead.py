"""Harness overhead: one epoch of a kdbench KD trial against a minimal hand-written PyTorch loop
doing the same work (same models, data, batch size, loss, optimizer), in one process.

The two are timed alternately, several times each (which one goes first alternates too, so a
drift in machine load falls on both), and the ratio of the medians is printed: kdbench seconds
/ hand-written seconds, in wall time and in process CPU time (the CPU-time ratio is the one to
read on a machine that other jobs share). Target: ≤ 1.05.

    python benchmarks/overhead.py [--teacher resnet20] [--student resnet8] [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from bench.config import Recipe
from bench.data import load_dataset
from bench.models import create_model, model_info
from bench.plugins import build_method
from bench.trial.context import make_context, make_optimizer, task_info
from bench.trial.device import freeze
from bench.trial.loop import train_loop


def build(args: argparse.Namespace):
    data = load_dataset("digits")
    torch.manual_seed(0)
    teacher = freeze(create_model(args.teacher, data.info.num_classes))
    student = create_model(args.student, data.info.num_classes)
    return data, teacher, student


def timed(epoch, data, teacher, student, args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one epoch."""
    cpu = time.process_time()
    wall = epoch(data, teacher, student, args)
    return wall, time.process_time() - cpu


def kdbench_epoch(data, teacher, student, args) -> float:
    """One epoch through kdbench's training loop (no validation pass, as the hand loop)."""
    recipe = Recipe(epochs=1, batch_size=args.batch_size, augment=False, schedule="constant")
    image = data.info.input_size
    s_info, t_info = (
        model_info(student, args.student, image),
        model_info(teacher, args.teacher, image),
    )
    task = task_info("digits", data, recipe)
    method = build_method("kd")
    method.setup(s_info, t_info, task)
    ctx = make_context(
        student=student,
        student_info=s_info,
        teacher=teacher,
        teacher_info=t_info,
        task=task,
        recipe=recipe,
        device=torch.device("cpu"),
        data=data,
        seed=0,
    )
    started = time.perf_counter()
    train_loop(ctx, method, evaluate_val=False)
    return time.perf_counter() - started


def hand_written_epoch(data, teacher, student, args) -> float:
    """What a researcher would write: tensors in memory, shuffle, forward both, KD + CE."""
    images, labels = data.train.images, data.train.labels
    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    recipe = Recipe(epochs=1, batch_size=args.batch_size)
    optimizer = make_optimizer(list(student.parameters()), recipe)
    temperature, alpha = 4.0, 0.9
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    student.train()
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
        idx = order[start : start + args.batch_size]
        x = (images[idx].float() / 255 - mean) / std
        y = labels[idx]
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        kl = F.kl_div(
            F.log_softmax(s_logits / temperature, 1),
            F.log_softmax(t_logits / temperature, 1),
            reduction="batchmean",
            log_target=True,
        )
        loss = (1 - alpha) * F.cross_entropy(s_logits, y) + alpha * temperature**2 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, teacher, student = build(args)
    kdbench_epoch(data, teacher, student, args)  # warm-up both paths
    hand_written_epoch(data, teacher, student, args)
    runs: dict[str, list[tuple[float, float]]] = {"kdbench": [], "hand": []}
    for repeat in range(args.repeats):
        order = [("kdbench", kdbench_epoch), ("hand", hand_written_epoch)]
        for name, epoch in order if repeat % 2 == 0 else order[::-1]:
            runs[name].append(timed(epoch, data, teacher, student, args))
    ours = [wall for wall, _ in runs["kdbench"]]
    theirs = [wall for wall, _ in runs["hand"]]
    ratio = statistics.median(ours) / statistics.median(theirs)
    cpu_ratio = statistics.median(c for _, c in runs["kdbench"]) / statistics.median(
        c for _, c in runs["hand"]
    )
    print(
        f"models: {args.teacher} -> {args.student}, digits train {len(data.train)} images, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.repeats} repeats"
    )
    print(
        f"kdbench epoch      median {statistics.median(ours):.3f} s  "
        f"({', '.join(f'{t:.2f}' for t in ours)})"
    )
    print(
        f"hand-written epoch median {statistics.median(theirs):.3f} s  "
        f"({', '.join(f'{t:.2f}' for t in theirs)})"
    )
    print(f"overhead ratio (kdbench / hand-written): {ratio:.3f}  (target ≤ 1.05)")
    print(f"overhead ratio in process CPU time:      {cpu_ratio:.3f}")


if __name__ == "__main__":
    main()
