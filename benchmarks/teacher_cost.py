"""Teacher cost: the step time of KD (resnet56 -> resnet20) over the step time of CE (resnet20
alone), with the teacher run every step and with its outputs read from the teacher outputs
cache, measured side by side in one process.

Two settings, each with its own CE baseline:

- without augmentation (deterministic inputs): one cache entry serves every epoch;
- with augmentation (random crop + flip) drawn from the shared stream
  (``recipe.augment_stream: shared``): one entry per epoch, built by the first trial of a
  teacher as it reaches that epoch and read by every later trial. The timed steps are those of
  a later trial; the first trial pays the entry's build (one eval pass of the teacher over the
  split) instead of the teacher's forward passes during its steps.

Every variant trains through kdbench's own loop (``train_loop``) on the same CIFAR-100-shaped
synthetic split, for the same number of steps; variants are timed in turn, several times each,
and medians are compared. The entries are built before timing; their cost is printed too.
Target: KD with the cache ≤ 1.10 × CE, in both settings.

    python benchmarks/teacher_cost.py [--n 5000] [--steps 20] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _synthetic as syn
import torch

from bench.config import Recipe
from bench.teacher_cache import TeacherOutputs, compute_outputs
from bench.trial.loop import train_loop


class FirstEpochOutputs:
    """The shared stream's teacher outputs of epoch 0 (the only epoch the timed steps reach),
    in the place of :class:`bench.teacher_cache.SharedStreamOutputs`, which needs a teacher
    checkpoint on disk."""

    def __init__(self, outputs: TeacherOutputs) -> None:
        self.outputs = outputs

    def for_epoch(self, epoch: int, *, augmented: bool) -> TeacherOutputs | None:
        return self.outputs if epoch == 0 and augmented else None


def timed_steps(ctx, method, steps: int, device: torch.device) -> float:
    """Seconds per optimizer step over ``steps`` steps of ``train_loop``."""
    syn.synchronize(device)
    started = time.perf_counter()
    train_loop(ctx, method, evaluate_val=False, max_steps=steps)
    syn.synchronize(device)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--n", type=int, default=5000, help="training images (default 5000)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    device = syn.pick_device(args.device)
    data = syn.synthetic_bundle(args.n, device)
    recipe = Recipe(epochs=1, batch_size=args.batch_size, augment=False, schedule="constant")
    ce = syn.kd_context(data, args.student, None, "ce", recipe, device)
    kd = syn.kd_context(data, args.student, args.teacher, "kd", recipe, device)
    kd_ctx = kd[0]

    started = time.perf_counter()
    outputs = compute_outputs(kd_ctx.teacher, data.train, frozenset(), device)
    syn.synchronize(device)
    cache_seconds = time.perf_counter() - started
    cached = syn.kd_context(
        data, args.student, args.teacher, "kd", recipe, device, teacher_outputs=outputs
    )
    cached[0].teacher.load_state_dict(kd_ctx.teacher.state_dict())

    shared = Recipe(
        epochs=1, batch_size=args.batch_size, augment_stream="shared", schedule="constant"
    )
    started = time.perf_counter()
    epoch_outputs = compute_outputs(kd_ctx.teacher, data.train, frozenset(), device, shared_epoch=0)
    syn.synchronize(device)
    shared_seconds = time.perf_counter() - started
    ce_aug = syn.kd_context(data, args.student, None, "ce", shared, device)
    kd_aug = syn.kd_context(data, args.student, args.teacher, "kd", shared, device)
    shared_cached = syn.kd_context(
        data,
        args.student,
        args.teacher,
        "kd",
        shared,
        device,
        teacher_outputs=FirstEpochOutputs(epoch_outputs),
    )
    for ctx, _ in (kd_aug, shared_cached):
        ctx.teacher.load_state_dict(kd_ctx.teacher.state_dict())

    variants = {
        "ce": ce,
        "kd uncached": kd,
        "kd cached": cached,
        "ce aug": ce_aug,
        "kd aug uncached": kd_aug,
        "kd aug shared": shared_cached,
    }
    for ctx, method in variants.values():  # warm-up
        timed_steps(ctx, method, 2, device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (ctx, method) in variants.items():
            times[name].append(timed_steps(ctx, method, args.steps, device))
    median = {name: statistics.median(values) for name, values in times.items()}

    print(
        f"{args.teacher} -> {args.student}, synthetic CIFAR-100 shape, {args.n} images, batch "
        f"{args.batch_size}, {device}, {torch.get_num_threads()} threads, {args.steps} steps x "
        f"{args.repeats} repeats"
    )
    for name, values in times.items():
        spread = ", ".join(f"{1000 * v:.0f}" for v in values)
        print(f"{name:16s} step median {1000 * median[name]:7.1f} ms  ({spread})")
    saved = median["kd uncached"] - median["kd cached"]
    epoch_steps = args.n // args.batch_size
    pays_off = cache_seconds / max(saved * epoch_steps, 1e-9)
    print(
        f"teacher outputs cache built in {cache_seconds:.1f} s ({args.n} images); it saves "
        f"{1000 * saved:.1f} ms a step, so it pays for itself after {pays_off:.2f} epochs "
        "(and is reused by every later trial on this teacher and split)"
    )
    print(f"ratio kd uncached / ce: {median['kd uncached'] / median['ce']:.3f}")
    print(f"ratio kd cached / ce:   {median['kd cached'] / median['ce']:.3f}  (target ≤ 1.10)")
    print(
        f"augmented, shared stream: epoch 0's entry built in {shared_seconds:.1f} s, by the "
        "first trial of this teacher (one entry per epoch); later trials read it"
    )
    print(f"ratio kd aug uncached / ce aug: {median['kd aug uncached'] / median['ce aug']:.3f}")
    print(
        f"ratio kd aug shared / ce aug:   {median['kd aug shared'] / median['ce aug']:.3f}  "
        "(a later trial; target ≤ 1.10)"
    )


if __name__ == "__main__":
    main()
