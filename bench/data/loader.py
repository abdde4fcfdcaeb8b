"""The reference codebases' data path: per-sample augmentation in ``DataLoader`` workers.

:class:`LoaderSplit` streams an in-memory split through a ``DataLoader``, kept to check that
the device-resident path changes nothing but speed; :func:`with_loader` switches a loaded
dataset's training split to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.data.augment import BatchPipeline
from bench.data.base import DataBundle, DataError, checked_workers
from bench.data.splits import TensorSplit, check_batch_size, epoch_order


class _SampleAugmented(torch.utils.data.Dataset):
    """One epoch of an in-memory split, augmented one sample at a time (in loader workers).

    Item k is the sample at position ``order[k]``: randomly cropped from its zero-padded
    image and, where allowed, flipped, as torchvision's ``RandomCrop(padding=…)`` and
    ``RandomHorizontalFlip`` do. The draws of item k come from a generator seeded with
    ``(epoch_seed, k)``, so the epoch is the same whatever the number of workers.
    """

    def __init__(
        self, images: Tensor, order: Tensor, epoch_seed: int, pad: int, flip: bool, augment: bool
    ) -> None:
        self.images = images
        self.order = order
        self.epoch_seed = epoch_seed
        self.pad = pad
        self.flip = flip
        self.augment = augment

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[Tensor, int]:
        position = int(self.order[k])
        image = self.images[position]
        if not self.augment or (self.pad == 0 and not self.flip):
            return image, position
        draws = torch.Generator().manual_seed(self.epoch_seed * 1_000_003 + k)
        _, h, w = image.shape
        if self.pad:
            top, left = torch.randint(0, 2 * self.pad + 1, (2,), generator=draws).tolist()
            padded = F.pad(image, (self.pad,) * 4)
            image = padded[:, top : top + h, left : left + w]
        if self.flip and torch.randint(0, 2, (1,), generator=draws).item():
            image = image.flip(-1)
        return image.contiguous(), position


class LoaderSplit:
    """An in-memory split streamed through a ``DataLoader`` whose workers augment one sample
    at a time: the reference codebases' data path, kept to check that the device-resident path
    changes nothing but speed. Normalisation happens per batch on the training device.

    Args:
        images: uint8 N×C×H×W CPU tensor.
        labels: int64 labels.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        crop_padding: Zero padding of the random crop.
        flip: Whether augmentation flips horizontally.
        num_workers: DataLoader worker processes (0: in the calling process).
        source_index: Positions of the samples in the dataset's own split.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int,
        flip: bool,
        num_workers: int = 2,
        source_index: Tensor | None = None,
    ) -> None:
        self.images = images.to("cpu")
        self.labels = labels.to("cpu", torch.int64)
        self.source_index = (
            torch.arange(len(images)) if source_index is None else source_index.to("cpu")
        )
        self.num_workers = checked_workers(num_workers)
        self.pipeline = BatchPipeline(mean, std, crop_padding, flip)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        augment: bool,
        device: torch.device,
        drop_last: bool = False,
        shared_epoch: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield ``(x, y, index)`` batches over the split once; see :class:`Split`. The shared
        augmentation stream is not available here (``shared_epoch`` raises)."""
        check_batch_size(batch_size)
        if augment and shared_epoch is not None:
            raise DataError(
                "the loader data path augments one sample at a time from the trial's seed and "
                "has no shared augmentation stream; use data_path 'device' with "
                "augment_stream 'shared'"
            )
        device = torch.device(device)
        order = epoch_order(len(self), shuffle, generator)
        epoch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        epoch = _SampleAugmented(
            self.images,
            order,
            epoch_seed,
            self.pipeline.crop_padding,
            self.pipeline.flip,
            augment,
        )
        loader = torch.utils.data.DataLoader(
            epoch,
            batch_size=batch_size,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
        )
        for images, index in loader:
            y = self.labels.index_select(0, index).to(device, non_blocking=True)
            x = self.pipeline.normalise(images.to(device, non_blocking=True))
            yield x, y, index.to(device, non_blocking=True)


def with_loader(bundle: DataBundle, num_workers: int = 2) -> DataBundle:
    """The same dataset with its training split streamed through a :class:`LoaderSplit`
    (validation and test splits, never augmented, stay as they are)."""
    train = bundle.train
    if not isinstance(train, TensorSplit):
        return bundle  # folder splits stream already
    loader = LoaderSplit(
        train.images,
        train.labels,
        mean=train.pipeline.mean,
        std=train.pipeline.std,
        crop_padding=train.pipeline.crop_padding,
        flip=train.pipeline.flip,
        num_workers=num_workers,
        source_index=train.source_index,
    )
    return DataBundle(info=bundle.info, train=loader, val=bundle.val, test=bundle.test)
