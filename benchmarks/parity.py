"""Accuracy parity of the fast execution path: the same trials under a fast policy and under
the reference path (fp32, NCHW), seed by seed, with the mean difference and its 95 %
confidence interval (paired t over the seeds, which share everything but the execution).

    python benchmarks/parity.py --dataset digits [--seeds 5] [--fast default|bf16|...]

``--fast default`` is the harness's policy on this machine (:func:`fast_compute`); ``bf16``
forces bf16 autocast with channels-last (emulated, and slow, on CPUs without native bf16), to
check the precision that CPUs with native bf16 and GPUs get by default. Each trial is keyed
by its compute, so the two paths never share a result. Prints one Markdown table row per
method, for ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from scipy import stats

from bench.config import Compute, Recipe, TeacherSpec, TrialConfig
from bench.trial.compose import run_trial
from bench.trial.device import TORCH_THREADS, fast_compute

#: Per dataset: (teacher, student, student recipe, teacher recipe, students' training
#: subset). Digits as the digits leaderboard trains them; Fashion-MNIST at its native
#: 1×28×28, students on a stratified 10,000-image subset (teachers on the whole split).
SETUPS: dict[str, tuple[str, str, Recipe, Recipe, int | None]] = {
    "digits": (
        "resnet20",
        "resnet8",
        Recipe(epochs=2, batch_size=32, lr=0.05, augment=False, image_size=16),
        Recipe(epochs=6, batch_size=32, lr=0.05, augment=False, image_size=16),
        None,
    ),
    "fashion_mnist_native": (
        "resnet20",
        "resnet8",
        Recipe(epochs=3, batch_size=64, lr=0.05, augment=False),
        Recipe(epochs=3, batch_size=128, lr=0.05, augment=False),
        10_000,
    ),
}

METHODS = ("ce", "kd", "at")


def compute_of(policy: str, threads: int) -> Compute:
    if policy == "default":
        return fast_compute("cpu", threads)
    if policy == "bf16":
        return Compute("cpu", precision="bf16", threads=threads, memory_format="channels_last")
    if policy == "reference":
        return Compute("cpu", precision="fp32", threads=threads, memory_format="contiguous")
    raise SystemExit(f"--fast {policy!r}: give default or bf16")


def accuracy(config: TrialConfig) -> float:
    result = run_trial(config)
    if result.status != "FINISHED":
        raise SystemExit(f"{config.method} seed {config.seed} failed: {result.error}")
    return result.test_acc


def paired_interval(diffs: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-seed differences (n,) and its 95 % t interval."""
    mean = float(diffs.mean())
    if len(diffs) < 2 or np.all(diffs == diffs[0]):
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(SETUPS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fast", default="default", help="default or bf16")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=TORCH_THREADS)
    args = parser.parse_args()
    teacher, student, recipe, teacher_recipe, train_size = SETUPS[args.dataset]
    fast, reference = compute_of(args.fast, args.threads), compute_of("reference", args.threads)
    print(f"fast: {fast.describe()}; reference: {reference.describe()}")
    print("| dataset | method | fast (%) | fp32 NCHW (%) | difference (points) | 95 % CI |")
    print("|---|---|---:|---:|---:|---|")
    started = time.perf_counter()
    for method in args.methods:
        accs = {"fast": [], "reference": []}
        for seed in range(args.seeds):
            for name, compute in (("fast", fast), ("reference", reference)):
                config = TrialConfig(
                    dataset=args.dataset,
                    student=student,
                    method=method,
                    seed=seed,
                    recipe=recipe,
                    teacher=TeacherSpec(arch=teacher, recipe=teacher_recipe),
                    compute=compute,
                    train_size=train_size,
                )
                accs[name].append(100 * accuracy(config))
        a, b = np.array(accs["fast"]), np.array(accs["reference"])
        mean, low, high = paired_interval(a - b)
        print(
            f"| {args.dataset} | {method} | {a.mean():.2f} ± {a.std(ddof=1):.2f} | "
            f"{b.mean():.2f} ± {b.std(ddof=1):.2f} | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] |",
            flush=True,
        )
    print(f"({args.seeds} seeds, {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
