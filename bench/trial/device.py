"""Where and how a trial computes: the device, threads, seeding, precision and memory format.

The execution policy (:func:`fast_compute`) is the harness's choice, recorded in every run
key: channels-last convolutions on every device; bf16 autocast on CUDA and on CPUs with
native bf16 arithmetic (AVX512-BF16 or AMX), fp32 elsewhere, where bf16 is emulated and
several times slower than fp32. Loss terms stay in fp32 (methods upcast logits and features).

kdbench sets no determinism flags: torch's defaults allow nondeterministic CUDA and cuDNN
kernels (atomic additions in some backward passes), so the same trial on the same GPU agrees
within seed noise, not bit for bit. On CPU the computation is
deterministic for a given torch build, CPU kind and thread count; the thread count is part of
the run key (:class:`~bench.config.Compute`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor, nn

from bench.config import PRECISION, Compute, ConfigError, Precision, Recipe


def pick_device() -> torch.device:
    """CUDA when present, else CPU (never from Ray's GPU ids: they may be fake)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: torch's own thread count when kdbench was loaded (``OMP_NUM_THREADS``, else the physical
#: cores): the default of a trial, whatever earlier trials in the process set.
TORCH_THREADS = torch.get_num_threads()


#: The processor flags (``/proc/cpuinfo``) of native bf16 arithmetic. A hypervisor may hide
#: them on a processor that has it; torch's kernels then emulate bf16 too, so the flags are
#: the right test.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_flags() -> frozenset[str]:
    """This processor's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where bf16 autocast is
    faster than fp32; ``KDBENCH_CPU_BF16=0``/``1`` overrides the detection."""
    override = os.environ.get("KDBENCH_CPU_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def fast_compute(device: torch.device | str, threads: int) -> Compute:
    """The harness's execution policy for a trial on ``device`` with ``threads`` torch
    threads: channels-last everywhere; bf16 on CUDA and on CPUs with native bf16, fp32 on
    other CPUs. The policy is recorded in the run key (a trial computed under another policy
    is another result)."""
    kind = torch.device(device).type
    precision: Precision = "bf16" if kind == "cuda" or cpu_has_native_bf16() else "fp32"
    return Compute(
        device=kind,  # type: ignore[arg-type]
        precision=precision,
        threads=threads,
        memory_format="channels_last",
    )


def machine_compute(
    device: torch.device | str | None = None,
    threads: int | None = None,
    *,
    precision: Precision | None = None,
    channels_last: bool | None = None,
) -> Compute:
    """The compute a trial gets here unless told otherwise: ``device`` (default
    :func:`pick_device`) and ``threads`` (default :data:`TORCH_THREADS`) under the execution
    policy (:func:`fast_compute`), whose ``precision`` and memory format a caller may
    override."""
    kind = torch.device(device).type if device is not None else pick_device().type
    policy = fast_compute(kind, threads or TORCH_THREADS)
    return Compute(
        device=policy.device,
        precision=precision or policy.precision,
        threads=policy.threads,
        memory_format=(
            policy.memory_format
            if channels_last is None
            else ("channels_last" if channels_last else "contiguous")
        ),
    )


def apply_compute(compute: Compute) -> torch.device:
    """Set this process's torch threads to ``compute.threads``; returns its device.

    Raises:
        ConfigError: ``compute`` asks for CUDA on a machine without it.
    """
    if compute.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "the trial computes on cuda (compute.device) but torch sees no CUDA device here; "
            "run it on a GPU machine, or ask for no GPU (a suite's resources: gpu 0)"
        )
    if torch.get_num_threads() != compute.threads:
        torch.set_num_threads(compute.threads)
    return torch.device(compute.device)


def machine_facts(device: torch.device | str) -> dict[str, str]:
    """What ran a trial, for its record: the torch version, the CPU model and the GPU's name
    (empty on CPU)."""
    kind = torch.device(device).type
    return {
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "gpu": torch.cuda.get_device_name() if kind == "cuda" else "",
    }


@cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: the platform's own description
    return platform.processor() or platform.machine()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(
    device: torch.device, precision: Precision | None = None
) -> contextlib.AbstractContextManager:
    """Forward passes in ``precision`` (default: the device's, :data:`bench.config.PRECISION`):
    bf16 autocast, or nothing for fp32."""
    if (precision or PRECISION.get(device.type)) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Execution:
    """How a trial's models run on its device: the compute's precision and memory format,
    and the recipe's compilation.

    Attributes:
        precision: ``fp32`` or ``bf16`` (autocast of the forward passes); None: the device's
            default (:data:`bench.config.PRECISION`), as a teacher trains.
        channels_last: Convolutional models and image batches in channels-last order.
        compile: Run the models' forward passes through ``torch.compile``.
    """

    precision: Precision | None = None
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def of(cls, compute: Compute, recipe: Recipe) -> Execution:
        """How a trial with ``compute`` and ``recipe`` runs."""
        return cls(
            precision=compute.precision,  # type: ignore[arg-type]
            channels_last=compute.memory_format == "channels_last",
            compile=recipe.compile,
        )

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The forward passes' precision on ``device``."""
        return autocast_for(device, self.precision)

    def images(self, x: Tensor) -> Tensor:
        """An image batch in this execution's memory format."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def apply(self, model: nn.Module) -> nn.Module:
        """Put ``model`` in this execution's memory format (when it has convolutions) and
        compiled form; returns the same module."""
        if self.channels_last and _is_convolutional(model):
            model.to(memory_format=torch.channels_last)
        if self.compile:
            compile_model(model)
        return model


def _is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def compile_model(model: nn.Module) -> nn.Module:
    """Compile the forward passes kdbench calls (``forward_features``,
    ``forward_intermediates``, ``forward_head``) in place; the module, its parameters and its
    state dict stay the same objects. ``KDBENCH_COMPILE_BACKEND`` picks the backend
    (default ``inductor``)."""
    backend = os.environ.get("KDBENCH_COMPILE_BACKEND", "inductor")
    for name in ("forward_features", "forward_intermediates", "forward_head"):
        method = getattr(model, name, None)
        if method is not None and not hasattr(method, "_torchdynamo_orig_callable"):
            object.__setattr__(model, name, torch.compile(method, backend=backend))
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a frozen teacher's weights and BatchNorm statistics stay
    bit-identical however it is used."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
