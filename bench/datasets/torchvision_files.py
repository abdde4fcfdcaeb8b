"""Datasets in their official on-disk formats, read by torchvision's own dataset classes.

Each reader opens a data root exactly as ``torchvision.datasets.<Class>(root, ...)`` does, so
a folder already filled by torchvision works as is, and ``--download`` uses torchvision's
download (official URLs and checksums). The root is the first of the searched folders
(:mod:`bench.data.locate`: ``--data-root``, ``KDBENCH_DATA``, the system's) that holds every
file; files expected under it:

- cifar10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
- cifar100: ``cifar-100-python/{train, test, meta}``
- svhn: ``train_32x32.mat`` and ``test_32x32.mat`` directly in root (torchvision's layout)
- stl10: ``stl10_binary/{train_X, train_y, test_X, test_y, unlabeled_X}.bin`` (torchvision
  checks the unlabeled file too, even for the labelled splits)

torchvision verifies the MD5 of every CIFAR, SVHN and STL-10 file against the official
release. MNIST and Fashion-MNIST are read by :mod:`bench.datasets.idx`. Failures become
:class:`DataError` naming the files and how to get them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.data.base import DataError, RawImages
from bench.data.locate import DataFiles, DownloadFailed, Layout
from bench.data.sources import register_dataset


def layout(root: Path | str, files: Sequence[str]) -> str:
    """One indented line per expected path, for error messages."""
    return "\n".join(f"  {Path(root) / f}" for f in files)


def require_root(dataset: str, root: Path | None, expected: Sequence[str], how: str) -> Path:
    """``root``, or a :class:`DataError` saying that the dataset needs one and what goes in it."""
    if root is None:
        raise DataError(
            f"dataset {dataset!r} is read from files under a data root, and none was given. "
            f"It expects:\n{layout('<root>', expected)}\n{how}"
        )
    return root


def in_one_folder(folder: str, names: Sequence[str], url: str) -> DataFiles:
    """The files of a torchvision dataset: ``names`` in ``folder`` under a data root."""
    return DataFiles(layouts=(Layout(folder, tuple(names)),), url=url)


def open_torchvision(
    dataset: str,
    root: Path | None,
    download: bool,
    files: DataFiles,
    factory: Callable[[str], Any],
) -> Any:
    """Run ``factory(root)`` (a torchvision dataset constructor), rewriting its failures.

    Raises:
        DownloadFailed: ``download`` was asked and the files are still missing.
        DataError: the files are there but torchvision cannot load them (a checksum).
    """
    assert root is not None  # files datasets are given the root their files are under
    try:
        return factory(str(root))
    # torchvision reports missing, damaged and undownloadable files with many exception types
    # (RuntimeError, OSError, pickle and tar errors); to the user they all mean that these
    # files cannot be used.
    except Exception as error:
        cause = f"{type(error).__name__}: {error}"
        if files.layouts[0].files(root) is None:
            if download:
                raise DownloadFailed(cause) from error
            raise DataError(f"dataset {dataset!r}: files missing under {root} ({cause})") from error
        redo = "" if download else "Delete them and run with --download, or r"
        raise DataError(
            f"dataset {dataset!r}: the files under {root} are present but torchvision could "
            f"not load them ({cause}). torchvision verifies the checksums of the official "
            f"release, so partial or modified files fail. {redo or 'R'}eplace them with the "
            f"official files ({files.url}). Expected files:\n"
            f"{layout(files.layouts[0].where(root), files.names)}"
        ) from error


def padded_stats(mean: float, std: float, size: int, padded: int) -> tuple[float, float]:
    """Mean and std of images zero-padded from size×size to padded×padded."""
    keep = size * size / (padded * padded)
    new_mean = mean * keep
    second_moment = (std * std + mean * mean) * keep
    return new_mean, math.sqrt(second_moment - new_mean * new_mean)


# ---------------------------------------------------------------------------- CIFAR

_CIFAR10 = in_one_folder(
    "cifar-10-batches-py",
    (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
)
_CIFAR100 = in_one_folder(
    "cifar-100-python",
    ("train", "test", "meta"),
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
)


def _read_cifar(
    dataset: str, class_name: str, root: Path | None, download: bool, files: DataFiles
) -> RawImages:
    from torchvision import datasets

    cls = getattr(datasets, class_name)

    def part(train: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        ds = open_torchvision(
            dataset, root, download, files, lambda r: cls(r, train=train, download=download)
        )
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(ds.targets, dtype=torch.int64), tuple(ds.classes)

    train_images, train_labels, names = part(True)
    test_images, test_labels, _ = part(False)
    return RawImages(train_images, train_labels, test_images, test_labels, names)


@register_dataset(
    "cifar10",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    flip=True,
    crop_padding=4,
    files=_CIFAR10,
    summary="CIFAR-10 (python pickle batches), 3×32×32, 10 classes",
)
def read_cifar10(root: Path | None, download: bool) -> RawImages:
    """CIFAR-10 from ``root/cifar-10-batches-py``."""
    return _read_cifar("cifar10", "CIFAR10", root, download, _CIFAR10)


@register_dataset(
    "cifar100",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    flip=True,
    crop_padding=4,
    files=_CIFAR100,
    summary="CIFAR-100 (python pickle), 3×32×32, 100 fine classes",
)
def read_cifar100(root: Path | None, download: bool) -> RawImages:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python``."""
    return _read_cifar("cifar100", "CIFAR100", root, download, _CIFAR100)


# ---------------------------------------------------------------------------- SVHN, STL-10

_SVHN = in_one_folder(
    "", ("train_32x32.mat", "test_32x32.mat"), "http://ufldl.stanford.edu/housenumbers/"
)


@register_dataset(
    "svhn",
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    flip=False,
    crop_padding=2,
    files=_SVHN,
    summary="SVHN cropped digits (train/test .mat; no extra), 3×32×32; files directly in root",
)
def read_svhn(root: Path | None, download: bool) -> RawImages:
    """SVHN from ``root/{train,test}_32x32.mat`` (label 10 is digit 0; torchvision maps it)."""
    from torchvision import datasets

    def part(split: str) -> tuple[Tensor, Tensor]:
        ds = open_torchvision(
            "svhn",
            root,
            download,
            _SVHN,
            lambda r: datasets.SVHN(r, split=split, download=download),
        )
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        return images, torch.from_numpy(ds.labels.astype(np.int64))

    train_images, train_labels = part("train")
    test_images, test_labels = part("test")
    names = tuple(str(d) for d in range(10))
    return RawImages(train_images, train_labels, test_images, test_labels, names)


_STL10 = in_one_folder(
    "stl10_binary",
    ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"),
    "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
)
_STL10_CLASSES = (
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
)


@register_dataset(
    "stl10",
    mean=(0.4467, 0.4398, 0.4066),
    std=(0.2603, 0.2566, 0.2713),
    flip=True,
    crop_padding=12,
    files=_STL10,
    summary="STL-10 labelled train/test (binary), 3×96×96 (image_size=32 to shrink)",
)
def read_stl10(root: Path | None, download: bool) -> RawImages:
    """STL-10's 5,000 labelled training and 8,000 test images from ``root/stl10_binary``."""
    from torchvision import datasets

    def part(split: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        ds = open_torchvision(
            "stl10",
            root,
            download,
            _STL10,
            lambda r: datasets.STL10(r, split=split, download=download),
        )
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        names = tuple(getattr(ds, "classes", None) or _STL10_CLASSES)
        return images, torch.from_numpy(ds.labels.astype(np.int64)), names

    train_images, train_labels, names = part("train")
    test_images, test_labels, _ = part("test")
    return RawImages(train_images, train_labels, test_images, test_labels, names)
