"""Where and how a trial computes: the device, threads, seeding, precision and memory format.

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
from torch import nn

from bench.config import PRECISION, Compute, ConfigError, Recipe


def pick_device() -> torch.device:
    """CUDA when present, else CPU (never from Ray's GPU ids: they may be fake)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: torch's own thread count when kdbench was loaded (``OMP_NUM_THREADS``, else the physical
#: cores): the default of a trial, whatever earlier trials in the process set.
TORCH_THREADS = torch.get_num_threads()


def machine_compute(
    device: torch.device | str | None = None, threads: int | None = None
) -> Compute:
    """The compute a trial gets here unless told otherwise: ``device`` (default
    :func:`pick_device`) and ``threads`` (default :data:`TORCH_THREADS`)."""
    kind = torch.device(device).type if device is not None else pick_device().type
    return Compute(device=kind, threads=threads or TORCH_THREADS)  # type: ignore[arg-type]


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


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """The device's precision (:data:`bench.config.PRECISION`, part of every run key): bf16
    autocast on CUDA; full precision on CPU (where bf16 is slower than fp32)."""
    if PRECISION.get(device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Execution:
    """How a trial's models run on its device. None of it changes what a CPU trial computes.

    Attributes:
        channels_last: Models and training inputs in channels-last memory order (CUDA).
        compile: Run the models' forward passes through ``torch.compile``.
    """

    channels_last: bool = False
    compile: bool = False

    @classmethod
    def for_device(cls, device: torch.device, recipe: Recipe) -> Execution:
        """The fast settings for ``device``: channels-last on CUDA; compiled if the recipe
        asks."""
        return cls(channels_last=device.type == "cuda", compile=recipe.compile)

    def apply(self, model: nn.Module) -> nn.Module:
        """Put ``model`` in this execution's memory format and compiled form; returns the same
        module."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            compile_model(model)
        return model


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
