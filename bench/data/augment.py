"""Batch augmentation and normalisation, shared by every kind of split.

A :class:`BatchPipeline` crops, flips and normalises whole uint8 batches on their device;
:func:`shared_augment_draws` gives the shared augmentation stream's crops and flips of an epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.data.base import DataError

# Seed of the shared augmentation stream (recipe.augment_stream "shared"); changing it changes
# what every shared-stream trial trains on.
SHARED_AUGMENT_SEED = 0x5EED_A06


class BatchPipeline:
    """uint8 batch → (random crop with zero padding, random flip) → float, /255, normalised.

    All randomness comes from the caller's CPU generator (drawn as small CPU tensors and moved
    to the batch's device), so a seeded generator replays the same stream on any device.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], crop_padding: int, flip: bool):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise DataError(f"mean {tuple(mean)} and std {tuple(std)} need equal lengths, std > 0")
        if crop_padding < 0:
            raise DataError(f"crop_padding must be >= 0, got {crop_padding}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self._affine: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(
        self,
        x: Tensor,
        *,
        augment: bool,
        generator: torch.Generator | None,
        draws: AugmentDraws | None = None,
    ) -> Tensor:
        if augment:
            x = self.augment(x, generator, draws=draws)
        return self.normalise(x)

    def normalise(self, x: Tensor) -> Tensor:
        """``(x / 255 - mean) / std`` per channel, computed as ``x · scale + shift``."""
        if x.shape[1] != len(self.mean):
            raise DataError(f"images have {x.shape[1]} channels but mean/std have {len(self.mean)}")
        if x.device not in self._affine:
            std = torch.tensor(self.std, dtype=torch.float32)
            mean = torch.tensor(self.mean, dtype=torch.float32)
            scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(x.device)
            shift = (-mean / std).view(1, -1, 1, 1).to(x.device)
            self._affine[x.device] = (scale, shift)
        scale, shift = self._affine[x.device]
        return x.float().mul_(scale).add_(shift)

    def draw(self, n: int, generator: torch.Generator | None) -> AugmentDraws:
        """Crop offsets and flips of ``n`` samples, drawn on the CPU in this order: offsets
        (2×n), then flips (n, only where the dataset allows them)."""
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (2, n), generator=generator)
        flipped = None
        if self.flip:
            flipped = torch.randint(0, 2, (n, 1), generator=generator).bool()
        return AugmentDraws(offsets, flipped)

    def augment(
        self, x: Tensor, generator: torch.Generator | None, *, draws: AugmentDraws | None = None
    ) -> Tensor:
        """Random crop (zero padding ``crop_padding``) and, if allowed, horizontal flip.

        One gather does both: output pixel (i, j) of sample n is padded pixel
        (dy[n] + i, dx[n] + j), with j mirrored for flipped samples. The draws come from
        ``draws`` (one row per sample of ``x``) when given, else from ``generator`` (see
        :meth:`draw`).
        """
        pad, n = self.crop_padding, x.shape[0]
        if n == 0 or (pad == 0 and not self.flip):
            return x
        _, c, h, w = x.shape
        device = x.device
        draws = self.draw(n, generator) if draws is None else draws
        offsets = draws.offsets.to(device)
        rows = offsets[0, :, None] + torch.arange(h, device=device)
        cols = offsets[1, :, None] + torch.arange(w, device=device)
        if self.flip:
            assert draws.flipped is not None  # drawn wherever the dataset flips
            flipped = draws.flipped.to(device)
            cols = torch.where(flipped, cols.flip(1), cols)
        padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
        width = w + 2 * pad
        flat = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)


@dataclass(frozen=True)
class AugmentDraws:
    """The random choices of a crop-and-flip augmentation, one per sample.

    Attributes:
        offsets: 2×N crop offsets (row, column) into the zero-padded image.
        flipped: N×1 booleans, or None where the dataset does not flip.
    """

    offsets: Tensor
    flipped: Tensor | None

    def take(self, index: Tensor) -> AugmentDraws:
        """The draws of the samples at ``index`` (on the draws' device)."""
        flipped = None if self.flipped is None else self.flipped.index_select(0, index)
        return AugmentDraws(self.offsets.index_select(1, index), flipped)

    def to(self, device: torch.device) -> AugmentDraws:
        flipped = None if self.flipped is None else self.flipped.to(device)
        return AugmentDraws(self.offsets.to(device), flipped)


def shared_augment_draws(pipeline: BatchPipeline, n: int, epoch: int) -> AugmentDraws:
    """The shared augmentation stream's draws for the ``n`` samples of a split in ``epoch``.

    They depend on the epoch, the split's size and its crop padding and flip only: every
    trial on the split, whatever its seed, order or batch size, crops and flips sample ``i``
    of epoch ``e`` alike.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise DataError(f"shared_epoch must be an epoch number >= 0, got {epoch!r}")
    generator = torch.Generator().manual_seed(SHARED_AUGMENT_SEED + 1_000_003 * epoch)
    return pipeline.draw(n, generator)
