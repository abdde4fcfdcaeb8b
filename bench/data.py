"""Datasets: a registry of image-classification datasets, fixed splits and fast batches.

:func:`load_dataset` turns a registered name into a :class:`DataBundle`: a :class:`DatasetInfo`
(sizes, class names, normalisation and augmentation facts) and three splits.

- ``train`` and ``val`` are carved from the dataset's own training split, stratified by class,
  with ``split_seed`` (fixed per benchmark, independent of the trial seed).
- ``test`` is the dataset's own test split and is never used for selection. A dataset without
  one (``digits``) gets a fixed stratified test split carved before anything else.
- Each class is split with its own random stream, so the split of a class does not depend on
  which other classes are loaded: with ``classes=[...]`` every split is exactly the full
  split restricted to those classes, so a teacher trained on a label subset has never
  trained on a sample that a student on all labels validates or tests on.

Datasets that fit in memory (digits, MNIST, Fashion-MNIST, CIFAR-10/100, SVHN, STL-10) live as
uint8 tensors on the training device (:class:`TensorSplit`) and are augmented there, a whole
batch at a time. ImageFolder trees stream through a ``DataLoader`` (:class:`FolderSplit`) and
get the same batch augmentation once decoded. Both yield ``(x, y, index)`` batches.

On-disk formats are read by torchvision's own dataset classes from ``root`` (the CLI's
``--data-root``); nothing is downloaded unless ``download=True``. Missing or damaged files
raise :class:`DataError`, which names the dataset, the files expected under ``root`` and how to
get them. torchvision is imported only when a dataset on disk is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.registry import Registry

__all__ = [
    "DATASETS",
    "AugmentDraws",
    "ClassSelection",
    "DataBundle",
    "DataError",
    "DatasetInfo",
    "DatasetSource",
    "FolderSplit",
    "LoadOptions",
    "LoaderSplit",
    "RawImages",
    "Split",
    "TensorSource",
    "TensorSplit",
    "carve_test",
    "carve_validation",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "shared_augment_draws",
    "stratified_holdout",
    "with_loader",
]


class DataError(Exception):
    """Data that cannot be loaded as asked: missing or damaged files, or bad arguments."""


@dataclass(frozen=True)
class DatasetInfo:
    """What training code needs to know about a loaded dataset.

    Attributes:
        name: The registered dataset name.
        num_classes: Number of classes after any ``classes`` selection.
        input_size: ``(C, H, W)`` of the images the splits yield.
        mean: Per-channel mean of the pixel values in [0, 1], used for normalisation.
        std: Per-channel standard deviation, used for normalisation.
        flip: Whether a horizontal flip keeps the label (False for digits).
        crop_padding: Zero padding of the random-crop augmentation, in pixels.
        class_names: Class names, indexed by label.
        num_train: Size of the train split (after the validation split was carved off).
    """

    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    crop_padding: int
    class_names: tuple[str, ...]
    num_train: int


@runtime_checkable
class Split(Protocol):
    """One split (train, val or test) of a loaded dataset."""

    def __len__(self) -> int: ...

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
        """Yield ``(x, y, index)`` batches covering the split once (one call, one epoch).

        ``x`` is float32, normalised, N×C×H×W on ``device``; ``y`` holds int64 labels;
        ``index`` holds the int64 positions of the samples in this split (0..len-1, stable
        across epochs, for methods that keep per-sample memory banks).

        With ``shared_epoch`` (and ``augment``), the crop and flip of each sample come from
        the shared augmentation stream of that epoch (:func:`shared_augment_draws`) instead
        of ``generator``, which then only orders the samples.
        """
        ...


@dataclass
class DataBundle:
    """A loaded dataset: its description and its three splits."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split


@dataclass(frozen=True)
class RawImages:
    """A dataset's own splits as read from disk, before any carving.

    Attributes:
        train_images: uint8 N×C×H×W CPU tensor of the dataset's training split.
        train_labels: int64 labels of ``train_images``.
        test_images: The dataset's test split, or None if it has none.
        test_labels: Labels of ``test_images``, or None.
        class_names: Class names, indexed by label.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor | None
    test_labels: Tensor | None
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class LoadOptions:
    """The arguments of :func:`load_dataset`, checked, as every source receives them."""

    root: Path | None
    download: bool
    val_fraction: float
    split_seed: int
    classes: tuple[int, ...] | None
    device: torch.device
    image_size: int | None
    num_workers: int


class DatasetSource(Protocol):
    """What the dataset registry holds: something that loads a named dataset."""

    name: str
    summary: str

    def load(self, options: LoadOptions) -> DataBundle: ...


DATASETS: Registry[DatasetSource] = Registry("dataset")

# Streams of the stratified carving; a carved test split uses a seed nobody can change, so
# every benchmark on a dataset without its own test split evaluates on the same samples.
_TEST_STREAM = 1
_VAL_STREAM = 2
_FIXED_TEST_SEED = 0
# Seed of the shared augmentation stream (recipe.augment_stream "shared"); changing it changes
# what every shared-stream trial trains on.
SHARED_AUGMENT_SEED = 0x5EED_A06


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, sorted, optionally filtered by a glob such as ``cifar*``."""
    return DATASETS.names(pattern)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    classes: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    num_workers: int = 0,
) -> DataBundle:
    """Load a registered dataset with its train, val and test splits.

    Args:
        name: A registered name (see :func:`list_datasets`).
        root: Folder holding the files of on-disk datasets (the CLI's ``--data-root``).
            ``digits`` needs none.
        download: Fetch missing files into ``root`` (torchvision's download). Never implied.
        val_fraction: Fraction of each class of the training split held out as ``val``,
            in [0, 1).
        split_seed: Seed of the validation carving; keep it fixed across a benchmark.
        classes: Keep only these original class labels, relabelled 0..k-1 in this order.
        device: Where in-memory datasets are stored (and augmented).
        image_size: Resize images to ``image_size`` × ``image_size``. None keeps the
            dataset's own size (32 for ``imagefolder``). The crop padding scales with it.
        num_workers: DataLoader workers of folder datasets; ignored by in-memory ones.

    Raises:
        UnknownNameError: ``name`` is not registered; suggests close names.
        DataError: missing or damaged files, or invalid arguments.
    """
    source = DATASETS.get(name)
    options = LoadOptions(
        root=Path(root).expanduser() if root is not None else None,
        download=bool(download),
        val_fraction=_checked_fraction(val_fraction),
        split_seed=_checked_seed(split_seed),
        classes=_checked_classes(classes),
        device=torch.device(device),
        image_size=_checked_image_size(image_size),
        num_workers=_checked_workers(num_workers),
    )
    return source.load(options)


def _checked_fraction(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise DataError(f"val_fraction must be a number in [0, 1), got {value!r}")
    return float(value)


def _checked_seed(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"split_seed must be a non-negative integer, got {value!r}")
    return int(value)


def _checked_classes(classes: Sequence[int] | None) -> tuple[int, ...] | None:
    if classes is None:
        return None
    chosen = tuple(classes)
    if not chosen or any(
        isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in chosen
    ):
        raise DataError(
            f"classes must be a non-empty list of class labels (ints >= 0), got {classes!r}"
        )
    if len(set(chosen)) != len(chosen):
        raise DataError(f"classes lists a label twice: {list(chosen)}")
    return tuple(int(c) for c in chosen)


def _checked_image_size(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"image_size must be a positive integer or None, got {value!r}")
    return int(value)


def _checked_workers(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"num_workers must be a non-negative integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Splitting


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
# Batches: augmentation and normalisation, shared by both kinds of split


class _BatchPipeline:
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


def shared_augment_draws(pipeline: _BatchPipeline, n: int, epoch: int) -> AugmentDraws:
    """The shared augmentation stream's draws for the ``n`` samples of a split in ``epoch``.

    They depend on the epoch, the split's size and its crop padding and flip only: every
    trial on the split, whatever its seed, order or batch size, crops and flips sample ``i``
    of epoch ``e`` alike.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise DataError(f"shared_epoch must be an epoch number >= 0, got {epoch!r}")
    generator = torch.Generator().manual_seed(SHARED_AUGMENT_SEED + 1_000_003 * epoch)
    return pipeline.draw(n, generator)


def _epoch_order(n: int, shuffle: bool, generator: torch.Generator | None) -> Tensor:
    if generator is not None and generator.device.type != "cpu":
        raise DataError(
            f"batches() needs a CPU torch.Generator (got one on {generator.device}); the "
            "permutation and augmentation draws are made on the CPU and moved to the device"
        )
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


def _check_batch_size(batch_size: int) -> None:
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
        self.pipeline = _BatchPipeline(mean, std, crop_padding, flip)

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
        """Yield ``(x, y, index)`` batches over the split once; see :class:`Split`."""
        _check_batch_size(batch_size)
        order = _epoch_order(len(self), shuffle, generator).to(self.images.device)
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
        image, _ = self.dataset[int(self.positions[position])]
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
        self.pipeline = _BatchPipeline(mean, std, crop_padding, flip)

    def __len__(self) -> int:
        return len(self.positions)

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
        _check_batch_size(batch_size)
        device = torch.device(device)
        order = _epoch_order(len(self), shuffle, generator)
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
        self.num_workers = _checked_workers(num_workers)
        self.pipeline = _BatchPipeline(mean, std, crop_padding, flip)

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
        _check_batch_size(batch_size)
        if augment and shared_epoch is not None:
            raise DataError(
                "the loader data path augments one sample at a time from the trial's seed and "
                "has no shared augmentation stream; use data_path 'device' with "
                "augment_stream 'shared'"
            )
        device = torch.device(device)
        order = _epoch_order(len(self), shuffle, generator)
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


# --------------------------------------------------------------------------------------------
# In-memory datasets: registration, reading with a small cache, building splits


_CACHE_ENTRIES = 4
# (source, root, size, file stamps) → (images at that size, their height before resizing)
_raw_cache: dict[tuple, tuple[RawImages, int]] = {}


@dataclass(frozen=True)
class TensorSource:
    """A registered dataset that is read whole into uint8 tensors.

    Attributes:
        name: Registered name.
        read: ``read(root, download) -> RawImages``; raises :class:`DataError` on failure.
        mean: Per-channel mean of the pixel values in [0, 1] of the training split.
        std: Per-channel standard deviation.
        flip: Whether a horizontal flip keeps the label.
        crop_padding: Random-crop zero padding at the dataset's own image size.
        expected: Files ``read`` needs, relative to root (for messages and cache keys).
        test_fraction: For datasets without a test split: the stratified fraction carved
            off as the fixed test split; 0 for datasets with one.
        summary: One line for listings.
    """

    name: str
    read: Callable[[Path | None, bool], RawImages] = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    crop_padding: int
    expected: tuple[str, ...] = ()
    test_fraction: float = 0.0
    summary: str = ""

    def load(self, options: LoadOptions) -> DataBundle:
        """Read (or reuse) the images, carve the splits and place them on the device."""
        raw, native_height = self._raw(options.root, options.download, options.image_size)
        train_labels = raw.train_labels.numpy()
        if raw.test_images is None or raw.test_labels is None:
            if not 0 < self.test_fraction < 1:
                raise DataError(
                    f"dataset {self.name!r} has no test split and no test_fraction in (0, 1) "
                    "to carve one; register it with test_fraction=..."
                )
            pool, test_pos = carve_test(train_labels, self.test_fraction)
            test_images, test_labels = raw.train_images, train_labels
        else:
            pool, test_pos = np.arange(len(train_labels)), np.arange(len(raw.test_labels))
            test_images, test_labels = raw.test_images, raw.test_labels.numpy()
        kept, held = carve_validation(train_labels[pool], options.val_fraction, options.split_seed)
        train_pos, val_pos = pool[kept], pool[held]
        selection = ClassSelection.of(options.classes, raw.class_names, self.name)
        _, c, h, w = raw.train_images.shape
        crop_padding = round(self.crop_padding * h / native_height)

        def split(images: Tensor, labels: np.ndarray, positions: np.ndarray) -> TensorSplit:
            positions, new_labels = selection.apply(positions, labels)
            index = torch.from_numpy(positions)
            return TensorSplit(
                images.index_select(0, index).to(options.device),
                torch.from_numpy(new_labels).to(options.device),
                mean=self.mean,
                std=self.std,
                crop_padding=crop_padding,
                flip=self.flip,
                source_index=index,
            )

        train = split(raw.train_images, train_labels, train_pos)
        info = DatasetInfo(
            name=self.name,
            num_classes=len(selection.class_names),
            input_size=(c, h, w),
            mean=self.mean,
            std=self.std,
            flip=self.flip,
            crop_padding=crop_padding,
            class_names=selection.class_names,
            num_train=len(train),
        )
        return DataBundle(
            info=info,
            train=train,
            val=split(raw.train_images, train_labels, val_pos),
            test=split(test_images, test_labels, test_pos),
        )

    def _raw(
        self, root: Path | None, download: bool, image_size: int | None
    ) -> tuple[RawImages, int]:
        """Images at ``image_size`` and their own height; cached while the files are unchanged."""
        key = (self.name, id(self.read), str(root), image_size, _files_stamp(root, self.expected))
        if key not in _raw_cache:
            raw = self.read(root, download)
            entry = (_resized(raw, image_size), raw.train_images.shape[2])
            if download:  # the stamp changes once files have been fetched
                key = (*key[:-1], _files_stamp(root, self.expected))
            _raw_cache[key] = entry
            while len(_raw_cache) > _CACHE_ENTRIES:
                del _raw_cache[next(iter(_raw_cache))]
        return _raw_cache[key]


def _files_stamp(root: Path | None, files: Sequence[str]) -> tuple:
    if root is None:
        return ()
    stamp = []
    for name in files:
        try:
            st = (root / name).stat()
            stamp.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((name, None, None))
    return tuple(stamp)


def _resized(raw: RawImages, size: int | None) -> RawImages:
    if size is None or raw.train_images.shape[-2:] == (size, size):
        return raw
    test = None if raw.test_images is None else _resize_images(raw.test_images, size)
    return RawImages(
        _resize_images(raw.train_images, size),
        raw.train_labels,
        test,
        raw.test_labels,
        raw.class_names,
    )


def _resize_images(images: Tensor, size: int, chunk: int = 1024) -> Tensor:
    """Bilinear resize (antialiased when shrinking), in chunks to bound float memory."""
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(
            part, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def register_dataset(
    name: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool,
    crop_padding: int,
    expected: Sequence[str] = (),
    test_fraction: float = 0.0,
    summary: str = "",
) -> Callable[[Callable[[Path | None, bool], RawImages]], Callable[[Path | None, bool], RawImages]]:
    """Register an in-memory dataset by decorating its reader.

    The reader takes ``(root, download)`` and returns :class:`RawImages` (uint8 N×C×H×W CPU
    tensors), raising :class:`DataError` when it cannot.

    Args:
        name: The dataset's name in suites and on the command line.
        mean: Per-channel mean of the training pixels in [0, 1].
        std: Per-channel standard deviation of the training pixels.
        flip: Whether horizontal flips keep the label.
        crop_padding: Random-crop zero padding at the dataset's own image size.
        expected: Files the reader needs, relative to root.
        test_fraction: Fraction carved off as a fixed test split if the reader returns none.
        summary: One line for listings.
    """

    def decorate(
        read: Callable[[Path | None, bool], RawImages],
    ) -> Callable[[Path | None, bool], RawImages]:
        code = getattr(read, "__code__", None)
        origin = f"{code.co_filename}:{code.co_firstlineno}" if code else None
        source = TensorSource(
            name=name,
            read=read,
            mean=tuple(mean),
            std=tuple(std),
            flip=flip,
            crop_padding=crop_padding,
            expected=tuple(expected),
            test_fraction=test_fraction,
            summary=summary,
        )
        DATASETS.register(name, source, origin=origin)
        return read

    return decorate


# The built-in datasets register themselves on import; they need the names defined above.
import bench.datasets  # noqa: E402, F401
