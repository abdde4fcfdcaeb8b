"""Datasets in their official on-disk formats, read by torchvision's own dataset classes.

Each reader opens ``root`` exactly as ``torchvision.datasets.<Class>(root, ...)`` does, so a
folder already filled by torchvision works as is, and ``download=True`` uses torchvision's
download (official URLs and checksums). Files expected under ``root``:

- mnist: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
- fashion_mnist: ``FashionMNIST/raw/`` with the same four names
- cifar10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
- cifar100: ``cifar-100-python/{train, test, meta}``
- svhn: ``train_32x32.mat`` and ``test_32x32.mat`` directly in root (torchvision's layout)
- stl10: ``stl10_binary/{train_X, train_y, test_X, test_y, unlabeled_X}.bin`` (torchvision
  checks the unlabeled file too, even for the labelled splits)

torchvision verifies the MD5 of every CIFAR, SVHN and STL-10 file against the official
release; MNIST files are only checked for presence. Failures become :class:`DataError`
naming the missing files and how to get them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.data.base import DataError, RawImages
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


def fetch_hint(dataset: str, root: Path | str, source_url: str) -> str:
    """How to get the files of ``dataset`` into ``root``."""
    return (
        f"To fix: let kdbench fetch them with --download (e.g. `kdbench train ... --data-root "
        f"{root} --download`), or place the files there yourself (official release: "
        f"{source_url})."
    )


def _files_error(
    dataset: str,
    root: Path,
    expected: Sequence[str],
    download: bool,
    source_url: str,
    error: Exception,
) -> DataError:
    missing = [f for f in expected if not (root / f).is_file()]
    cause = f"{type(error).__name__}: {error}"
    if missing:
        what = "could not be downloaded" if download else "was not found"
        failure = f"The download failed with {cause}\n" if download else ""
        return DataError(
            f"dataset {dataset!r} {what}: missing under {root}:\n{layout(root, missing)}\n"
            f"Expected files:\n{layout(root, expected)}\n{failure}"
            + fetch_hint(dataset, root, source_url)
        )
    return DataError(
        f"dataset {dataset!r}: the files under {root} are present but torchvision could not "
        f"load them ({cause}). torchvision verifies the checksums of the official release, so "
        f"partial or modified files fail. Delete them and run with --download, or replace "
        f"them with the official files ({source_url}). Expected files:\n{layout(root, expected)}"
    )


def open_torchvision(
    dataset: str,
    root: Path | None,
    download: bool,
    expected: Sequence[str],
    source_url: str,
    factory: Callable[[str], Any],
) -> Any:
    """Run ``factory(root)`` (a torchvision dataset constructor), rewriting its failures.

    Raises:
        DataError: no root, or the files are missing, damaged or could not be downloaded;
            the message lists the expected files and how to get them.
    """
    root = require_root(dataset, root, expected, fetch_hint(dataset, "DIR", source_url))
    try:
        return factory(str(root))
    # torchvision reports missing, damaged and undownloadable files with many exception types
    # (RuntimeError, OSError, AssertionError from the idx parser, pickle and tar errors); to
    # the user they all mean that these files cannot be used.
    except Exception as error:
        raise _files_error(dataset, root, expected, download, source_url, error) from error


def padded_stats(mean: float, std: float, size: int, padded: int) -> tuple[float, float]:
    """Mean and std of images zero-padded from size×size to padded×padded."""
    keep = size * size / (padded * padded)
    new_mean = mean * keep
    second_moment = (std * std + mean * mean) * keep
    return new_mean, math.sqrt(second_moment - new_mean * new_mean)


# ---------------------------------------------------------------------------- MNIST-like

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The published 28×28 statistics, carried over to the zero-padded 32×32 images.
_MNIST_MEAN, _MNIST_STD = padded_stats(0.1307, 0.3081, 28, 32)
_FASHION_MEAN, _FASHION_STD = padded_stats(0.2860, 0.3530, 28, 32)


def _read_idx(
    dataset: str, class_name: str, root: Path | None, download: bool, url: str
) -> RawImages:
    """MNIST-format images (28×28 grey) zero-padded to 32×32 and replicated to 3 channels.

    Padding rather than resizing keeps every published pixel and centres the 28×28 field in
    32×32, as LeNet-5 did.
    """
    from torchvision import datasets

    cls = getattr(datasets, class_name)
    expected = [f"{class_name}/raw/{f}" for f in _IDX_FILES]

    def part(train: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        ds = open_torchvision(
            dataset, root, download, expected, url, lambda r: cls(r, train=train, download=download)
        )
        labels = ds.targets.to(torch.int64)
        prefix = Path(ds.raw_folder) / ("train" if train else "t10k")
        check_idx_pair(dataset, prefix, len(ds.data), labels, len(ds.classes), url)
        images = F.pad(ds.data, (2, 2, 2, 2)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        return images, labels, tuple(ds.classes)

    train_images, train_labels, names = part(True)
    test_images, test_labels, _ = part(False)
    return RawImages(train_images, train_labels, test_images, test_labels, names)


def check_idx_pair(
    dataset: str, prefix: Path, images: int, labels: Tensor, classes: int, url: str
) -> None:
    """An images file and its labels file agree: one label per image, each a class index.

    Raises:
        DataError: naming the file at fault, what is wrong and how to get good files.
    """
    images_file = Path(f"{prefix}-images-idx3-ubyte")
    labels_file = Path(f"{prefix}-labels-idx1-ubyte")
    fix = (
        f"replace the files with the official ones ({url}), or delete them and run with --download"
    )
    if images != len(labels):
        raise DataError(
            f"dataset {dataset!r}: {images_file} holds {images} images but {labels_file} "
            f"{len(labels)} labels; the two files are damaged or come from different "
            f"releases — {fix}"
        )
    outside = ((labels < 0) | (labels >= classes)).nonzero().flatten()
    if len(outside):
        first = int(outside[0])
        raise DataError(
            f"dataset {dataset!r}: {labels_file}: {len(outside)} label(s) are outside "
            f"0..{classes - 1} (the first, at position {first}, is {int(labels[first])}); the "
            f"file is damaged or not a {dataset} labels file — {fix}"
        )


@register_dataset(
    "mnist",
    mean=(_MNIST_MEAN,) * 3,
    std=(_MNIST_STD,) * 3,
    flip=False,
    crop_padding=2,
    expected=tuple(f"MNIST/raw/{f}" for f in _IDX_FILES),
    summary="MNIST (idx files), 28×28 zero-padded to 3×32×32",
)
def read_mnist(root: Path | None, download: bool) -> RawImages:
    """MNIST from ``root/MNIST/raw``."""
    return _read_idx(
        "mnist", "MNIST", root, download, "https://ossci-datasets.s3.amazonaws.com/mnist/"
    )


@register_dataset(
    "fashion_mnist",
    mean=(_FASHION_MEAN,) * 3,
    std=(_FASHION_STD,) * 3,
    flip=True,  # every class (garments, shoes, bags) keeps its label when mirrored
    crop_padding=2,
    expected=tuple(f"FashionMNIST/raw/{f}" for f in _IDX_FILES),
    summary="Fashion-MNIST (idx files), 28×28 zero-padded to 3×32×32",
)
def read_fashion_mnist(root: Path | None, download: bool) -> RawImages:
    """Fashion-MNIST from ``root/FashionMNIST/raw``."""
    url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    return _read_idx("fashion_mnist", "FashionMNIST", root, download, url)


# ---------------------------------------------------------------------------- CIFAR

_CIFAR10_FILES = (
    *(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    "cifar-10-batches-py/test_batch",
    "cifar-10-batches-py/batches.meta",
)
_CIFAR100_FILES = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")


def _read_cifar(
    dataset: str, class_name: str, root: Path | None, download: bool, expected: Sequence[str]
) -> RawImages:
    from torchvision import datasets

    cls = getattr(datasets, class_name)

    def part(train: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        ds = open_torchvision(
            dataset,
            root,
            download,
            expected,
            cls.url,
            lambda r: cls(r, train=train, download=download),
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
    expected=_CIFAR10_FILES,
    summary="CIFAR-10 (python pickle batches), 3×32×32, 10 classes",
)
def read_cifar10(root: Path | None, download: bool) -> RawImages:
    """CIFAR-10 from ``root/cifar-10-batches-py``."""
    return _read_cifar("cifar10", "CIFAR10", root, download, _CIFAR10_FILES)


@register_dataset(
    "cifar100",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    flip=True,
    crop_padding=4,
    expected=_CIFAR100_FILES,
    summary="CIFAR-100 (python pickle), 3×32×32, 100 fine classes",
)
def read_cifar100(root: Path | None, download: bool) -> RawImages:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python``."""
    return _read_cifar("cifar100", "CIFAR100", root, download, _CIFAR100_FILES)


# ---------------------------------------------------------------------------- SVHN, STL-10

_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


@register_dataset(
    "svhn",
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    flip=False,
    crop_padding=2,
    expected=_SVHN_FILES,
    summary="SVHN cropped digits (train/test .mat; no extra), 3×32×32; files directly in root",
)
def read_svhn(root: Path | None, download: bool) -> RawImages:
    """SVHN from ``root/{train,test}_32x32.mat`` (label 10 is digit 0; torchvision maps it)."""
    from torchvision import datasets

    url = "http://ufldl.stanford.edu/housenumbers/"

    def part(split: str) -> tuple[Tensor, Tensor]:
        ds = open_torchvision(
            "svhn",
            root,
            download,
            _SVHN_FILES,
            url,
            lambda r: datasets.SVHN(r, split=split, download=download),
        )
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        return images, torch.from_numpy(ds.labels.astype(np.int64))

    train_images, train_labels = part("train")
    test_images, test_labels = part("test")
    names = tuple(str(d) for d in range(10))
    return RawImages(train_images, train_labels, test_images, test_labels, names)


_STL10_FILES = tuple(
    f"stl10_binary/{f}"
    for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")
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
    expected=_STL10_FILES,
    summary="STL-10 labelled train/test (binary), 3×96×96 (image_size=32 to shrink)",
)
def read_stl10(root: Path | None, download: bool) -> RawImages:
    """STL-10's 5,000 labelled training and 8,000 test images from ``root/stl10_binary``."""
    from torchvision import datasets

    url = datasets.STL10.url

    def part(split: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        ds = open_torchvision(
            "stl10",
            root,
            download,
            _STL10_FILES,
            url,
            lambda r: datasets.STL10(r, split=split, download=download),
        )
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        names = tuple(getattr(ds, "classes", None) or _STL10_CLASSES)
        return images, torch.from_numpy(ds.labels.astype(np.int64)), names

    train_images, train_labels, names = part("train")
    test_images, test_labels, _ = part("test")
    return RawImages(train_images, train_labels, test_images, test_labels, names)
