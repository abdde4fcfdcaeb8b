"""The quick tour on the embedded digits data: a teacher, the student alone, and the student
distilled with Hinton KD, each recorded in MLflow; prints their test accuracies."""

from __future__ import annotations

import sys
import time

from bench.config import Recipe, TeacherSpec, TrialConfig
from bench.progress import Reporter
from bench.teachers import obtain_teacher
from bench.tracking import Tracker
from bench.trial.compose import run_trial

TEACHER = "resnet20"
STUDENT = "resnet8"


def run_demo(
    *,
    epochs: int = 15,
    teacher_epochs: int = 15,
    seed: int = 0,
    tracking_uri: str | None = None,
    progress: Reporter | None = None,
) -> int:
    """Train the three models and print a table; returns the process exit status.
    ``progress`` shows each step and each training's epochs (nothing when None)."""
    started = time.perf_counter()
    teacher = TeacherSpec(arch=TEACHER, recipe=Recipe(epochs=teacher_epochs), seed=0)
    # Built first, so that a value out of range is refused before any training or recording.
    configs = {
        method: TrialConfig(
            dataset="digits",
            student=STUDENT,
            method=method,
            seed=seed,
            recipe=Recipe(epochs=epochs),
            teacher=teacher if method != "ce" else None,
        )
        for method in ("ce", "kd")
    }
    tracker = Tracker(tracking_uri, experiment="kdbench-demo")

    def say(text: str) -> None:
        if progress is not None:
            print(text, file=progress.stream, flush=True)

    say(f"kdbench demo: digits, teacher {TEACHER}, student {STUDENT}, seed {seed}")
    say(f"[1/3] teacher {TEACHER}: {teacher_epochs} epochs (cached after the first run)")
    trained = obtain_teacher("digits", teacher, progress=progress)
    rows = [(f"teacher {TEACHER}", trained.test_acc, "")]
    for step, method in ((2, "ce"), (3, "kd")):
        say(f"[{step}/3] student {STUDENT} with {method}: {epochs} epochs")
        result = run_trial(configs[method], tracker=tracker, progress=progress)
        if result.status != "FINISHED":
            print(f"kdbench demo: {method} failed: {result.error}", file=sys.stderr)
            return 1
        label = "student alone (ce)" if method == "ce" else "student + KD (kd)"
        rows.append((f"{label} {STUDENT}", result.test_acc, result.run_key))
    print()
    print(f"{'model':<32} {'test accuracy':>13}  run key")
    for name, acc, key in rows:
        print(f"{name:<32} {acc:>13.4f}  {key}")
    print(
        f"\nMLflow: {tracker.uri} (experiment kdbench-demo); "
        f"took {time.perf_counter() - started:.0f} s"
    )
    return 0
