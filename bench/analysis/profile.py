"""The cost of a model: parameters, FLOPs and CPU latency.

- Parameters: ``sum(p.numel())`` over every parameter (buffers such as BatchNorm statistics
  are not parameters).
- FLOPs: :func:`bench.trial.metrics.count_flops`, the count every trial logs as
  ``student_flops``: PyTorch's ``FlopCounterMode`` on one input in eval mode, counting
  convolutions and matrix products with a multiply-add as 2 FLOPs (multiply-accumulates =
  FLOPs / 2); element-wise operations, normalisation and pooling count 0.
- Latency: wall time of one forward pass in eval mode under ``torch.inference_mode`` on the
  CPU, the median of ``repeats`` timed passes after ``warmup`` untimed ones, on a random input
  of the given batch size, with the stated number of torch threads.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bench.analysis import RunNotFoundError
from bench.analysis.runs import find_run
from bench.data import load_dataset
from bench.registry import UnknownNameError
from bench.trial.metrics import count_flops

#: digits' shape, the default when no dataset is given.
DEFAULT_INPUT_SIZE = (3, 32, 32)
DEFAULT_NUM_CLASSES = 10
BATCH_SIZES = (1, 64)


@dataclass(frozen=True)
class ModelProfile:
    """The cost of one model on one input shape.

    Attributes:
        name: Model name.
        role: ``teacher``, ``student`` or ``model`` (given by name).
        params: Number of parameters.
        flops: FLOPs of one forward pass on one input (multiply-add = 2).
        latency_ms: Batch size → median CPU latency of one forward pass, in milliseconds.
        threads: torch threads the latency was measured with.
        repeats: Timed passes per batch size.
        input_size: (C, H, W) of one input.
        num_classes: Classifier width.
    """

    name: str
    role: str
    params: int
    flops: int
    latency_ms: dict[int, float]
    threads: int
    repeats: int
    input_size: tuple[int, int, int]
    num_classes: int

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        out["input_size"] = list(self.input_size)
        return out


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def measure_latency(
    model: nn.Module,
    input_size: Sequence[int],
    batch_size: int,
    *,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> float:
    """Median CPU wall time of one forward pass, in milliseconds.

    Args:
        model: Any module; it is timed in eval mode on the CPU where its parameters are
            (quantized models included), and its training mode is restored afterwards.
        input_size: One input's shape, e.g. (3, 32, 32).
        batch_size: Inputs per forward pass.
        repeats: Timed passes; the median is returned.
        warmup: Untimed passes first (allocations, kernel selection).
        seed: Seed of the random input.

    Returns:
        The median latency in milliseconds, with ``torch.get_num_threads()`` threads.
    """
    if repeats < 1 or batch_size < 1:
        raise ValueError(f"repeats and batch_size must be ≥ 1, got {repeats} and {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *input_size), generator=generator)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                started = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - started)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def profile_model(
    model: nn.Module,
    name: str,
    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
    *,
    role: str = "model",
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = 20,
    warmup: int = 3,
) -> ModelProfile:
    """Parameters, FLOPs and CPU latency of a built model (see the module docstring)."""
    model = model.cpu().eval()
    size = tuple(int(s) for s in input_size)
    with torch.no_grad():
        num_classes = int(model(torch.zeros((1, *size))).shape[1])
    return ModelProfile(
        name=name,
        role=role,
        params=count_params(model),
        flops=count_flops(model, size),
        latency_ms={
            b: measure_latency(model, size, b, repeats=repeats, warmup=warmup) for b in batch_sizes
        },
        threads=torch.get_num_threads(),
        repeats=repeats,
        input_size=size,  # type: ignore[arg-type]
        num_classes=num_classes,
    )


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def profile_names(
    names: Sequence[str],
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = 20,
    tracking_uri: str | None = None,
    experiment: str = "kdbench",
) -> list[ModelProfile]:
    """Profiles of models given by name, built with random weights for ``dataset``'s input
    size and classes (digits' 3×32×32 and 10 classes when None). A name that is not a model
    but a run key (or a unique prefix of one) stands for that run's teacher and student, on
    the run's dataset.

    Raises:
        UnknownNameError: A name is neither a model nor shaped like a run key (hex).
        RunNotFoundError: A name shaped like a run key that is not a model names no
            FINISHED run of ``experiment``; the message says which experiments hold it.
    """
    from bench.models import create_model, resolve  # timm: loaded only to profile

    input_size, num_classes = _shape_of(dataset, data_root)
    profiles = []
    for name in names:
        try:
            resolve(name)
        except UnknownNameError as unknown:
            models = _run_models(name, unknown, tracking_uri, experiment)
        else:
            models = [(name, "model", dataset, data_root, None)]
        for arch, role, model_dataset, root, image_size in models:
            size, classes = (
                (input_size, num_classes)
                if (model_dataset, image_size) == (dataset, None)
                else _shape_of(model_dataset, root, image_size)
            )
            model = create_model(arch, classes, image_size=size[1], in_chans=size[0])
            profiles.append(
                profile_model(
                    model, arch, size, role=role, batch_sizes=batch_sizes, repeats=repeats
                )
            )
    return profiles


def _shape_of(
    dataset: str | None, data_root: str | None, image_size: int | None = None
) -> tuple[tuple[int, int, int], int]:
    if dataset is None:
        return DEFAULT_INPUT_SIZE, DEFAULT_NUM_CLASSES
    info = load_dataset(dataset, root=data_root, image_size=image_size).info
    return info.input_size, info.num_classes


def _run_models(
    name: str, unknown: Exception, tracking_uri: str | None, experiment: str
) -> list[tuple[str, str, str | None, str | None, int | None]]:
    """(arch, role, dataset, data root, image size) of a run's teacher and student (at the
    run's image size); re-raises ``unknown`` when ``name`` does not look like a run key, and
    says what is missing when it does but names no recorded run."""
    import re

    if not re.fullmatch(r"[0-9a-f]{6,}", name):
        raise unknown
    try:
        run = find_run(name, tracking_uri=tracking_uri, experiment=experiment)
    except RunNotFoundError as exc:
        # Shaped like a run key: what is missing is the run (or its experiment), not a model.
        raise RunNotFoundError(f"{name!r} is not a model name, nor a run key here: {exc}") from None
    config = run.config
    models: list[tuple[str, str, str | None, str | None, int | None]] = []
    size = config.recipe.image_size
    if config.teacher is not None:
        models.append((config.teacher.arch, "teacher", config.dataset, config.data_root, size))
    models.append((config.student, "student", config.dataset, config.data_root, size))
    return models


def format_table(profiles: Sequence[ModelProfile]) -> str:
    """A plain-text table, one row per profile, with the threads and repeats underneath."""
    if not profiles:
        return "no models"
    batches = sorted({b for p in profiles for b in p.latency_ms})
    header = ["model", "role", "input", "params", "MFLOPs"] + [f"ms@batch{b}" for b in batches]
    rows = [
        [
            p.name,
            p.role,
            "x".join(str(s) for s in p.input_size),
            f"{p.params:,}",
            f"{p.flops / 1e6:.2f}",
            *(f"{p.latency_ms[b]:.2f}" if b in p.latency_ms else "" for b in batches),
        ]
        for p in profiles
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    first = profiles[0]
    lines.append(
        f"FLOPs: convolutions and matrix products, multiply-add = 2, one input. Latency: "
        f"median of {first.repeats} CPU forward passes, {first.threads} torch thread(s)."
    )
    return "\n".join(lines)
