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

On-disk datasets are looked for under ``root`` (the CLI's ``--data-root``), then the folders
of ``KDBENCH_DATA``, then where system packages install them (:mod:`~bench.data.locate`);
nothing is downloaded unless ``download=True``. Missing or damaged files raise
:class:`DataError`, which says what was found where, what was expected and how to get the
files. torchvision is imported only when a dataset on disk is loaded.

``train_size`` cuts the training split to a stratified subset (:func:`with_train_size`),
drawn with the split seed, so it does not move with the trial's seed either.

The package's modules, from the bottom up: :mod:`~bench.data.base` (types, registry,
:func:`load_dataset`), :mod:`~bench.data.augment`, :mod:`~bench.data.splits`,
:mod:`~bench.data.loader`, :mod:`~bench.data.locate` and :mod:`~bench.data.sources`; the
built-in datasets live in :mod:`bench.datasets` and import only those modules.
"""

# Importing the built-in datasets registers them, so every lookup by name sees them; they import
# the modules below, never this package's namespace, so the order here does not matter.
import bench.datasets  # noqa: F401
from bench.data.augment import SHARED_AUGMENT_SEED, AugmentDraws, shared_augment_draws
from bench.data.base import (
    DATASETS,
    SPLIT_SEED,
    DataBundle,
    DataError,
    DatasetInfo,
    DatasetSource,
    LoadOptions,
    RawImages,
    Split,
    list_datasets,
    load_dataset,
)
from bench.data.loader import LoaderSplit, with_loader
from bench.data.locate import DATA_ENV, DataFiles, DataRoot, Layout, data_roots
from bench.data.sources import TensorSource, register_dataset
from bench.data.splits import (
    ClassSelection,
    FolderSplit,
    TensorSplit,
    carve_test,
    carve_validation,
    stratified_holdout,
    stratified_subset,
    with_train_size,
)

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "SHARED_AUGMENT_SEED",
    "SPLIT_SEED",
    "AugmentDraws",
    "ClassSelection",
    "DataBundle",
    "DataError",
    "DataFiles",
    "DataRoot",
    "DatasetInfo",
    "DatasetSource",
    "FolderSplit",
    "Layout",
    "LoadOptions",
    "LoaderSplit",
    "RawImages",
    "Split",
    "TensorSource",
    "TensorSplit",
    "carve_test",
    "carve_validation",
    "data_roots",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "shared_augment_draws",
    "stratified_holdout",
    "stratified_subset",
    "with_loader",
    "with_train_size",
]
