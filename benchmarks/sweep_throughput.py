"""Sweep throughput: the same N short trials one after another in one process, and through
``kdbench sweep`` (local Ray, one trial per core), in one run.

    python benchmarks/sweep_throughput.py [--trials 24] [--epochs 2] [--student resnet8]

The defaults are the trials of the main job (``leaderboards/digits``): resnet8 students, two
epochs of batch 32 at 16x16 without augmentation.

What is measured:

- *one process*: the N trials run back to back by :func:`bench.trial.compose.run_trial` in this
  process, each recorded in MLflow (SQLite). Imports, data and the teacher are warm (a
  throw-away trial runs first), so this is the best a hand-written loop can do. Torch uses
  every core.
- *sweep*: ``python -m bench.cli sweep SUITE`` (the code behind ``kdbench sweep``) from launch to
  exit: interpreter start, suite validation, Ray start, workers, one MLflow run per trial, the
  summary. Each trial gets one core and one torch thread.

Printed: wall times; the ceiling of the speed-up, since torch already spreads one trial over
every core and the sweep gives each trial one (``cores × t(all threads) / t(1 thread)``,
measured on a few trials); the sweep's start-up (launch to its first trial's MLflow run) and
trial phase (first trial start to last trial end); the per-trial overhead, i.e. the slot time
of the trial phase not spent in training and evaluation (``(phase × slots − Σ train_seconds) /
N``: MLflow writes, run-key lookups, building data and models, Tune's scheduling, an idle slot
at the end); and the speed-up end to end and over the trial phase (what a long sweep
approaches, since the start-up is paid once per sweep). Targets on 2 cores: overhead < 1 s per
trial, speed-up ≥ 1.6×. Time it on an otherwise idle machine: torch's threads wait for each
other, so a second job on one core slows the all-threads run far more than the one-core trials.

Ray runs its workers at niceness 15; on a machine shared with other jobs that would starve
the sweep against the one-process run at niceness 0, so both run at niceness 0 here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """\
name: throughput
datasets: [digits]
pairs:
  - {{teacher: {teacher}, student: {student}}}
methods: [{method}]
seeds: {trials}
recipe:
  student:
    {{epochs: {epochs}, batch_size: {batch_size}, lr: 0.05, augment: false,
     image_size: {image_size}}}
  teacher: {{epochs: 1}}
resources: {{cpu: 1}}
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="N, the number of trials")
    parser.add_argument("--epochs", type=int, default=2, help="student epochs per trial")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--image-size", type=int, default=16, help="pixels per side (digits: 8x8 scans)"
    )
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher", default="test_resnet_wide", help="used by --method kd")
    parser.add_argument("--method", default="ce", help="ce (no teacher) or a KD method")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the one-process run (default: torch's own, every core)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="kdbench-sweep-throughput-"))
    os.environ["KDBENCH_HOME"] = str(work / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (the name Ray reads)
    suite_dir = work / "suite"
    suite_dir.mkdir()
    (suite_dir / "suite.yaml").write_text(SUITE.format(**vars(args)))
    cores = os.cpu_count() or 1

    import torch

    from bench.suite.expand import plan_trials
    from bench.suite.load import load_suite
    from bench.tracking import Tracker
    from bench.trial.compose import run_trial

    if args.threads:
        torch.set_num_threads(args.threads)

    trials = plan_trials(load_suite(suite_dir))
    print(
        f"sweep throughput: {len(trials)} trials of {args.method} on digits "
        f"({args.student}, {args.epochs} epochs), {cores} cores; work folder {work}",
        flush=True,
    )
    warm = trials[0].config.with_changes(seed=10_000)
    run_trial(warm, tracker=Tracker(f"sqlite:///{work / 'warm.db'}", experiment="warm"))

    tracker = Tracker(f"sqlite:///{work / 'sequential.db'}", experiment="throughput")
    started = time.perf_counter()
    sequential = [run_trial(t.config, tracker=tracker) for t in trials]
    wall_sequential = time.perf_counter() - started
    assert all(r.status == "FINISHED" for r in sequential), [r.error for r in sequential]

    # What process-level parallelism can gain at most: the sweep gives each trial one core,
    # while torch already spreads one trial over every core (well for large operations,
    # poorly for small ones), so the ceiling is cores x (1-thread time / all-thread time).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single = [
        run_trial(t.config.with_changes(seed=20_000 + i), tracker=tracker)
        for i, t in enumerate(trials[: min(4, len(trials))])
    ]
    torch.set_num_threads(threads)

    uri = f"sqlite:///{work / 'sweep.db'}"
    command = [sys.executable, "-m", "bench.cli", "sweep", str(suite_dir), "--tracking-uri", uri]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall_sweep = time.time() - launched
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        return 1

    runs = [
        r
        for r in Tracker(uri, experiment="throughput").search()
        if "kdbench.run_key" in r.data.tags
    ]
    assert len(runs) == len(trials) and all(r.info.status == "FINISHED" for r in runs)
    first_start = min(r.info.start_time for r in runs) / 1000
    last_end = max(r.info.end_time for r in runs) / 1000
    phase = last_end - first_start
    startup = first_start - launched
    trained = sum(r.data.metrics["train_seconds"] for r in runs)
    slots = min(cores, len(trials))
    overhead = (phase * slots - trained) / len(trials)
    n = len(trials)
    print()
    print(f"{'':34}{'wall (s)':>10}{'per trial (s)':>15}")
    print(
        f"{'one process, one after another':34}{wall_sequential:>10.1f}{wall_sequential / n:>15.2f}"
    )
    print(f"{'kdbench sweep, end to end':34}{wall_sweep:>10.1f}{wall_sweep / n:>15.2f}")
    print(f"{'  start-up (launch to 1st trial)':34}{startup:>10.1f}")
    print(f"{'  trial phase':34}{phase:>10.1f}{phase / n:>15.2f}")
    train_one = statistics.fmean(r.train_seconds for r in sequential)
    train_sweep = trained / n
    print(
        f"\ntraining per trial: {train_one:.2f} s in one process "
        f"({torch.get_num_threads()} threads), "
        f"{train_sweep:.2f} s in the sweep (1 thread, {slots} at once)"
    )
    train_single = statistics.fmean(r.train_seconds for r in single)
    ceiling = slots * train_one / train_single
    print(
        f"one trial alone on 1 thread trains in {train_single:.2f} s, so {slots} trials at once "
        f"can be at most {ceiling:.2f}x as fast as one trial on {threads} threads"
    )
    print(f"per-trial overhead of the sweep: {overhead:.2f} s (target < 1 s)")
    print(
        f"speed-up: {wall_sequential / wall_sweep:.2f}x end to end, "
        f"{wall_sequential / phase:.2f}x over the trial phase (target ≥ 1.6x on 2 cores); "
        f"the trial phase reaches {wall_sequential / phase / ceiling:.0%} of the ceiling"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
