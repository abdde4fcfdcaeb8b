"""Fixed splits and their batches.

Carving: :func:`stratified_holdout` and its two uses (:func:`carve_validation`,
:func:`carve_test`), :func:`stratified_subset` for a training subset of a given size
(:func:`with_train_size`), and :class:`ClassSelection` for label subsets. Splits:
:class:`TensorSplit` (held on the training device, augmented a batch at a time there) and
:class:`FolderSplit` (image files decoded by a ``DataLoader``, then augmented alike).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.data.augment import BatchPipeline, shared_augment_draws
from bench.data.base import DataBundle, DataError

# Streams of the stratified carving; a carved test split uses a seed nobody can change, so
# every benchmark on a dataset without its own test split evaluates on the same samples.
_TEST_STREAM = 1
_VAL_STREAM = 2
_SUBSET_STREAM = 3
_FIXED_TEST_SEED = 0


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int, *, stream: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into sorted ``(kept, held)``, stratified by class.

    Each class holds out ``round(fraction × its size)`` samples (at most all but one), drawn
    from a random stream keyed on (stream, seed, class label): a class's split depends on
    nothing but its own members.
    """
    held_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_held = min(math.floor(fraction * len(members) + 0.5), len(members) - 1)
        if n_held > 0:
            rng = np.random.default_rng([stream, seed, int(label)])
            held_parts.append(rng.choice(members, size=n_held, replace=False))
    held = np.sort(np.concatenate(held_parts)) if held_parts else np.empty(0, dtype=np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep), held


def carve_validation(
    labels: np.ndarray, val_fraction: float, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(train, val)`` of a training split with these labels."""
    return stratified_holdout(labels, val_fraction, split_seed, stream=_VAL_STREAM)


def carve_test(labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(pool, test)`` for a dataset without a test split; always the same."""
    return stratified_holdout(labels, test_fraction, _FIXED_TEST_SEED, stream=_TEST_STREAM)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted positions of ``size`` samples of ``labels``, stratified by class.

    Each class's members are shuffled by a random stream keyed on (stream, seed, class label);
    the k-th of a class of n gets the rank k/n, and the ``size`` samples of lowest rank are
    kept (ties by class label). So every class keeps its share to within one sample, every
    class is present once ``size`` reaches the number of classes, and a smaller subset is
    part of every larger one.

    Raises:
        DataError: ``size`` is not in 1..len(labels).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"train_size must be a whole number ≥ 1, got {size!r}")
    if size > len(labels):
        raise DataError(
            f"train_size {size} is larger than the training split ({len(labels)} samples after "
            f"the validation hold-out); give at most {len(labels)}, or leave it out to train on "
            "the whole split"
        )
    ranks = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([_SUBSET_STREAM, seed, int(label)])
        ranks[rng.permutation(members)] = np.arange(len(members)) / len(members)
    order = np.lexsort((labels, ranks))
    return np.sort(order[:size])


def with_train_size(bundle: DataBundle, size: int | None, split_seed: int) -> DataBundle:
    """The same dataset with its training split cut to a stratified subset of ``size``
    samples (:func:`stratified_subset`, drawn with the split seed); None keeps it whole.

    Batch indices then run over the subset (0..size-1), and ``info.num_train`` is ``size``.

    Raises:
        DataError: ``size`` is below 1 or above the training split's size.
    """
    if size is None:
        return bundle
    train = bundle.train
    if not isinstance(train, TensorSplit | FolderSplit):
        raise DataError(
            f"train_size cuts in-memory or folder splits, not {type(train).__name__}; cut "
            "the split before switching it to the loader path"
        )
    labels = train.labels.cpu().numpy()
    subset = train.subset(stratified_subset(labels, size, split_seed))
    info = dataclasses.replace(bundle.info, num_train=len(subset))
    return DataBundle(info=info, train=subset, val=bundle.val, test=bundle.test)


@dataclass(frozen=True)
class ClassSelection:
    """The classes kept from a dataset and their new labels.

    Attributes:
        table: Original label → new label, -1 for dropped classes.
        class_names: Names of the kept classes, by new label.
    """

    table: np.ndarray
    class_names: tuple[str, ...]

    @classmethod
    def of(
        cls, classes: tuple[int, ...] | None, class_names: tuple[str, ...], dataset: str
    ) -> ClassSelection:
        """Keep ``classes`` (all if None), relabelled 0..k-1 in the given order.

        Raises:
            DataError: a class label does not exist in the dataset.
        """
        num_classes = len(class_names)
        if classes is None:
            return cls(np.arange(num_classes), class_names)
        unknown = [c for c in classes if c >= num_classes]
        if unknown:
            raise DataError(
                f"classes {unknown} do not exist in dataset {dataset!r}, whose labels are "
                f"0..{num_classes - 1}; choose labels in that range"
            )
        table = np.full(num_classes, -1, dtype=np.int64)
        table[list(classes)] = np.arange(len(classes))
        return cls(table, tuple(class_names[c] for c in classes))

    def apply(self, positions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The kept ``positions`` (labels indexed by position) and their new labels."""
        new_labels = self.table[labels[positions]]
        chosen = new_labels >= 0
        return positions[chosen], new_labels[chosen]


# --------------------------------------------------------------------------------------------
# Batches


def epoch_order(n: int, shuffle: bool, generator: torch.Generator | None) -> Tensor:
    """The order of one epoch over ``n`` samples, drawn from a CPU ``generator``."""
    if generator is not None and generator.device.type != "cpu":
        raise DataError(
            f"batches() needs a CPU torch.Generator (got one on {generator.device}); the "
            "permutation and augmentation draws are made on the CPU and moved to the device"
        )
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


def check_batch_size(batch_size: int) -> None:
    """Raise :class:`DataError` unless ``batch_size`` is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")


class TensorSplit:
    """A split held whole in memory as a uint8 N×C×H×W tensor, on the device it trains on.

    Args:
        images: uint8 N×C×H×W tensor.
        labels: int64 labels, on the same device as ``images``.
        mean: Per-channel normalisation mean (pixel values in [0, 1]).
        std: Per-channel normalisation standard deviation.
        crop_padding: Zero padding of the random crop.
        flip: Whether augmentation flips horizontally.
        source_index: Position of each sample in the dataset's own split (for tracing and
            disjointness checks); defaults to 0..N-1.
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
        source_index: Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"images must be a uint8 N×C×H×W tensor, got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(device=images.device, dtype=torch.int64)
        self.source_index = (
            torch.arange(len(images))
            if source_index is None
            else source_index.to("cpu", torch.int64)
        )
        self.pipeline = BatchPipeline(mean, std, crop_padding, flip)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, positions: np.ndarray) -> TensorSplit:
        """The samples at ``positions`` of this split, as a split of their own."""
        index = torch.from_numpy(np.asarray(positions, dtype=np.int64))
        pipeline = self.pipeline
        return TensorSplit(
            self.images.index_select(0, index.to(self.images.device)),
            self.labels.index_select(0, index.to(self.labels.device)),
            mean=pipeline.mean,
            std=pipeline.std,
            crop_padding=pipeline.crop_padding,
            flip=pipeline.flip,
            source_index=self.source_index.index_select(0, index),
        )

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
        """Yield ``(x, y, index)`` batches over the split once; see :class:`Split`."""
        check_batch_size(batch_size)
        order = epoch_order(len(self), shuffle, generator).to(self.images.device)
        shared = None
        if augment and shared_epoch is not None:
            shared = shared_augment_draws(self.pipeline, len(self), shared_epoch)
            shared = shared.to(self.images.device)
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            x = self.images.index_select(0, index).to(device, non_blocking=True)
            y = self.labels.index_select(0, index).to(device, non_blocking=True)
            draws = None if shared is None else shared.take(index)
            x = self.pipeline(x, augment=augment, generator=generator, draws=draws)
            yield x, y, index.to(device, non_blocking=True)


class _Picked(torch.utils.data.Dataset):
    """The samples of a folder split in one epoch's order: item k → (image, split position)."""

    def __init__(self, dataset: Any, positions: np.ndarray, order: Tensor) -> None:
        self.dataset = dataset
        self.positions = positions
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[Tensor, int]:
        position = int(self.order[k])
        item = int(self.positions[position])
        try:
            image, _ = self.dataset[item]
        except Exception as exc:  # PIL and the transforms fail with many types
            samples = getattr(self.dataset, "samples", None)
            name = samples[item][0] if samples else f"item {item} of the dataset"
            raise DataError(
                f"{name}: cannot be read as an image ({type(exc).__name__}: {exc}) — delete "
                "or replace the file"
            ) from exc
        return image, position


class FolderSplit:
    """A split of image files decoded on the fly by a ``DataLoader``.

    Args:
        dataset: A map-style dataset whose items are ``(uint8 C×H×W tensor, anything)``,
            e.g. a torchvision ``ImageFolder`` ending in ``PILToTensor``.
        positions: Which items of ``dataset`` form this split, in split order.
        labels: The int64 label of each position (after any class selection).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        crop_padding: Zero padding of the random crop.
        flip: Whether augmentation flips horizontally.
        num_workers: DataLoader worker processes (0: decode in the calling process).
    """

    def __init__(
        self,
        dataset: Any,
        positions: np.ndarray,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int,
        flip: bool,
        num_workers: int = 0,
    ) -> None:
        if labels.shape != (len(positions),):
            raise DataError(
                f"labels must have shape ({len(positions)},), got {tuple(labels.shape)}"
            )
        self.dataset = dataset
        self.positions = np.asarray(positions, dtype=np.int64)
        self.labels = labels.to("cpu", torch.int64)
        self.source_index = torch.from_numpy(self.positions)
        self.num_workers = num_workers
        self.pipeline = BatchPipeline(mean, std, crop_padding, flip)

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, positions: np.ndarray) -> FolderSplit:
        """The samples at ``positions`` of this split, as a split of their own."""
        chosen = np.asarray(positions, dtype=np.int64)
        pipeline = self.pipeline
        return FolderSplit(
            self.dataset,
            self.positions[chosen],
            self.labels.index_select(0, torch.from_numpy(chosen)),
            mean=pipeline.mean,
            std=pipeline.std,
            crop_padding=pipeline.crop_padding,
            flip=pipeline.flip,
            num_workers=self.num_workers,
        )

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
        """Yield ``(x, y, index)`` batches over the split once; see :class:`Split`."""
        check_batch_size(batch_size)
        device = torch.device(device)
        order = epoch_order(len(self), shuffle, generator)
        shared = None
        if augment and shared_epoch is not None:
            shared = shared_augment_draws(self.pipeline, len(self), shared_epoch)
        loader = torch.utils.data.DataLoader(
            _Picked(self.dataset, self.positions, order),
            batch_size=batch_size,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
        )
        for images, index in loader:
            y = self.labels.index_select(0, index).to(device, non_blocking=True)
            x = self.pipeline(
                images.to(device, non_blocking=True),
                augment=augment,
                generator=generator,
                draws=None if shared is None else shared.take(index),
            )
            yield x, y, index.to(device, non_blocking=True)
