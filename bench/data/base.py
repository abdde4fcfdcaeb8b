"""What a dataset is and how one is asked for.

The types every data module shares (:class:`DataError`, :class:`DatasetInfo`, the
:class:`Split` protocol, :class:`DataBundle`, :class:`RawImages`, :class:`LoadOptions`,
:class:`DatasetSource`), the :data:`DATASETS` registry, and :func:`load_dataset`, which checks
its arguments and hands them to the registered source.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from bench.registry import Registry


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
    train_size: int | None = None


class DatasetSource(Protocol):
    """What the dataset registry holds: something that loads a named dataset."""

    @property
    def name(self) -> str:
        """The registered name."""
        ...

    @property
    def summary(self) -> str:
        """One line for listings."""
        ...

    def load(self, options: LoadOptions) -> DataBundle: ...


DATASETS: Registry[DatasetSource] = Registry("dataset")

#: The seed of the validation carving and of training subsets (``train_size``) that every
#: trial uses: fixed, so the splits of a benchmark never move with the trial's seed.
SPLIT_SEED = 0


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, sorted, optionally filtered by a glob such as ``cifar*``."""
    return DATASETS.names(pattern)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = SPLIT_SEED,
    classes: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    num_workers: int = 0,
    train_size: int | None = None,
) -> DataBundle:
    """Load a registered dataset with its train, val and test splits.

    Args:
        name: A registered name (see :func:`list_datasets`).
        root: A folder holding the files of on-disk datasets (the CLI's ``--data-root``),
            searched before ``KDBENCH_DATA``'s folders and the system's
            (:mod:`bench.data.locate`). ``digits`` needs none.
        download: Fetch files found in none of those folders into ``root`` (else the first
            folder of ``KDBENCH_DATA``) with torchvision's download. Never implied.
        val_fraction: Fraction of each class of the training split held out as ``val``,
            in [0, 1).
        split_seed: Seed of the validation carving; keep it fixed across a benchmark.
        classes: Keep only these original class labels, relabelled 0..k-1 in this order.
        device: Where in-memory datasets are stored (and augmented).
        image_size: Resize images to ``image_size`` × ``image_size``. None keeps the
            dataset's own size (32 for ``imagefolder``). The crop padding scales with it.
        num_workers: DataLoader workers of folder datasets; ignored by in-memory ones.
        train_size: Cut the training split (after the validation hold-out and any class
            selection) to a stratified subset of this many samples, drawn with
            ``split_seed`` (:func:`bench.data.splits.stratified_subset`). None keeps it whole.

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
        num_workers=checked_workers(num_workers),
        train_size=train_size,
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


def checked_workers(value: int) -> int:
    """``value`` as a DataLoader worker count, or :class:`DataError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"num_workers must be a non-negative integer, got {value!r}")
    return int(value)
