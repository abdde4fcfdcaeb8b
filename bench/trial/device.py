"""Where and how a trial computes: the device, seeding, precision and memory format."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bench.config import Recipe


def pick_device() -> torch.device:
    """CUDA when present, else CPU (never from Ray's GPU ids: they may be fake)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU (where bf16 is slower than fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
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
