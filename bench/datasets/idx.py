"""MNIST and Fashion-MNIST: idx files, plain or gzipped, read and verified by content.

Each dataset is four files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``), found under a
data root in torchvision's layout (``MNIST/raw/``, ``FashionMNIST/raw/``) or in the layout of
the system package (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/
fashion-mnist/*.gz``), each plain or gzipped (told by its first bytes, not its name).

Files that do not come from a download have no checksum to check, so every file is verified
by its content: the idx header (unsigned bytes, the number of dimensions), the dimensions
(60,000 training and 10,000 test images of 28×28, one label each), the file's length, and
every label in 0..9. A mismatch names the file, what it holds and what was expected.

Each dataset comes in two forms, separate datasets with their own run keys:

- ``mnist``, ``fashion_mnist``: zero-padded to 32×32 and replicated to 3 channels, the input
  of the CIFAR zoo (padding rather than resizing keeps every published pixel and centres the
  28×28 field, as LeNet-5 did);
- ``mnist_native``, ``fashion_mnist_native``: the published 1×28×28, for MLPs (784 inputs,
  as Hinton et al. 2015) and CNNs alike (models are built with one input channel).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.data.base import DataError, RawImages
from bench.data.locate import DataFiles, DownloadFailed, Layout
from bench.data.sources import register_dataset
from bench.datasets.torchvision_files import padded_stats

SIZE = 28
NUM_CLASSES = 10
TRAIN_COUNT = 60_000
TEST_COUNT = 10_000
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxFile:
    """One idx file of a dataset and what it must hold.

    Attributes:
        name: Its name (without ``.gz``).
        shape: The dimensions its header must give: (N, 28, 28) or (N,).
    """

    name: str
    shape: tuple[int, ...]

    @property
    def what(self) -> str:
        """What it holds, in words: ``60000 images of 28×28`` or ``60000 labels``."""
        return describe_shape(self.shape)


def describe_shape(shape: tuple[int, ...]) -> str:
    """``60000 images of 28×28``, ``60000 labels``, or the dimensions themselves."""
    if len(shape) == 3:
        return f"{shape[0]} images of {shape[1]}×{shape[2]}"
    if len(shape) == 1:
        return f"{shape[0]} labels"
    return "dimensions " + "×".join(map(str, shape))


FILES = (
    IdxFile("train-images-idx3-ubyte", (TRAIN_COUNT, SIZE, SIZE)),
    IdxFile("train-labels-idx1-ubyte", (TRAIN_COUNT,)),
    IdxFile("t10k-images-idx3-ubyte", (TEST_COUNT, SIZE, SIZE)),
    IdxFile("t10k-labels-idx1-ubyte", (TEST_COUNT,)),
)
_NAMES = tuple(f.name for f in FILES)


@dataclass(frozen=True)
class IdxDataset:
    """One MNIST-like dataset: its files, classes and where to get them.

    Attributes:
        name: The padded form's registered name (the native one adds ``_native``).
        torchvision_class: torchvision's class, which downloads it (``MNIST``, ...).
        files: Its layouts under a data root, its official release and package.
        classes: Class names, by label (torchvision's).
        mean: Published mean of the 28×28 training pixels in [0, 1].
        std: Published standard deviation.
        flip: Whether a horizontal flip keeps the label.
    """

    name: str
    torchvision_class: str
    files: DataFiles
    classes: tuple[str, ...]
    mean: float
    std: float
    flip: bool


def idx_files(
    torchvision_folder: str, system_folder: str, url: str, package: str | None
) -> DataFiles:
    """The layouts of an idx dataset: torchvision's first (``--download`` fills it), then the
    system package's."""
    return DataFiles(
        layouts=(
            Layout(f"{torchvision_folder}/raw", _NAMES, gzip=True),
            Layout(system_folder, _NAMES, gzip=True),
        ),
        url=url,
        package=package,
    )


MNIST = IdxDataset(
    name="mnist",
    torchvision_class="MNIST",
    files=idx_files("MNIST", "mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/", None),
    classes=tuple(
        f"{d} - {w}"
        for d, w in enumerate(
            ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
        )
    ),
    mean=0.1307,
    std=0.3081,
    flip=False,
)
FASHION_MNIST = IdxDataset(
    name="fashion_mnist",
    torchvision_class="FashionMNIST",
    files=idx_files(
        "FashionMNIST",
        "fashion-mnist",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "dataset-fashion-mnist",
    ),
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    mean=0.2860,
    std=0.3530,
    flip=True,  # every class (garments, shoes, bags) keeps its label when mirrored
)


# ---------------------------------------------------------------------------- reading


def read_idx(path: Path, expected: tuple[int, ...], fix: str) -> np.ndarray:
    """The array of an idx file of unsigned bytes, plain or gzipped, verified to have the
    ``expected`` dimensions.

    Raises:
        DataError: the file cannot be read or decompressed, is not an idx file of unsigned
            bytes, or has other dimensions or another length; the message names the file,
            what it holds, what was expected, and ends with ``fix``.
    """
    data = _bytes(path, fix)
    ndim = len(expected)
    header = bytes([0, 0, _UBYTE, ndim])
    if data[:4] != header:
        found = " ".join(f"{b:02x}" for b in data[:4]) or "nothing (the file is empty)"
        raise DataError(
            f"{path}: not an idx file of {describe_shape(expected)}: it begins with {found}, "
            f"expected {' '.join(f'{b:02x}' for b in header)} — {fix}"
        )
    end = 4 + 4 * ndim
    if len(data) < end:
        raise DataError(f"{path}: the idx header is cut short ({len(data)} bytes) — {fix}")
    dims = struct.unpack(f">{ndim}I", data[4:end])
    if dims != expected:
        raise DataError(
            f"{path}: holds {describe_shape(dims)}, expected {describe_shape(expected)} — {fix}"
        )
    size = int(np.prod(dims))
    if len(data) - end != size:
        state = "truncated" if len(data) - end < size else "longer than its header says"
        raise DataError(
            f"{path}: {len(data) - end} bytes follow the header, expected {size} for "
            f"{describe_shape(dims)} (the file is {state}) — {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=end).reshape(dims)


def _bytes(path: Path, fix: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}) — {fix}") from exc
    return data


def check_labels(path: Path, labels: np.ndarray, fix: str) -> None:
    """Every label is a class index 0..9.

    Raises:
        DataError: naming the file, how many labels are outside and the first of them.
    """
    outside = np.flatnonzero(labels >= NUM_CLASSES)
    if len(outside):
        first = int(outside[0])
        raise DataError(
            f"{path}: {len(outside)} label(s) are outside 0..{NUM_CLASSES - 1} (the first, "
            f"at position {first}, is {int(labels[first])}); expected only class indices "
            f"0..{NUM_CLASSES - 1} — {fix}"
        )


def fix_for(dataset: IdxDataset, folder: Path) -> str:
    """How to replace a bad file in ``folder``: reinstall the package whose folder it is,
    else get the official file."""
    if dataset.files.package and folder == dataset.files.package_folder():
        return f"reinstall the package: `apt-get install --reinstall {dataset.files.package}`"
    return f"replace it with the official file ({dataset.files.url})"


def read_files(dataset: IdxDataset, root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 28×28 training and test images (uint8 N×28×28) and labels (int64) of ``dataset``
    under ``root``, each file verified.

    Raises:
        DataError: a file is missing, damaged or not what it should be, named.
    """
    for layout in dataset.files.layouts:
        files = layout.files(root)
        if files is not None:
            break
    else:
        raise DataError(
            f"dataset {dataset.name!r}: none of its layouts is complete under {root} "
            f"({', '.join(str(layout.where(root)) for layout in dataset.files.layouts)})"
        )
    fix = fix_for(dataset, layout.where(root))
    arrays = []
    for path, spec in zip(files, FILES, strict=True):
        try:
            array = read_idx(path, spec.shape, fix)
            if len(spec.shape) == 1:
                check_labels(path, array, fix)
        except DataError as exc:
            raise DataError(f"dataset {dataset.name!r}: {exc}") from None
        arrays.append(torch.from_numpy(array.copy()))
    train_x, train_y, test_x, test_y = arrays
    return train_x, train_y.to(torch.int64), test_x, test_y.to(torch.int64)


def download(dataset: IdxDataset, root: Path) -> None:
    """Fetch the four files into ``root`` in torchvision's layout (its download checks the
    official archives' MD5).

    Raises:
        DownloadFailed: with the cause.
    """
    from torchvision import datasets

    cls = getattr(datasets, dataset.torchvision_class)
    try:
        cls(str(root), train=True, download=True)
    # The network, the server and the checksums fail with many types (URLError, OSError,
    # RuntimeError); to the user they all mean that the download did not bring the files.
    except Exception as exc:
        raise DownloadFailed(f"{type(exc).__name__}: {exc}") from exc


def read_padded(dataset: IdxDataset, root: Path, fetch: bool) -> RawImages:
    """The dataset zero-padded to 32×32 and replicated to 3 channels."""
    if fetch:
        download(dataset, root)
    train_x, train_y, test_x, test_y = read_files(dataset, root)

    def padded(images: Tensor) -> Tensor:
        return F.pad(images, (2, 2, 2, 2)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()

    return RawImages(padded(train_x), train_y, padded(test_x), test_y, dataset.classes)


def read_native(dataset: IdxDataset, root: Path, fetch: bool) -> RawImages:
    """The dataset as published: one channel of 28×28."""
    if fetch:
        download(dataset, root)
    train_x, train_y, test_x, test_y = read_files(dataset, root)
    return RawImages(train_x.unsqueeze(1), train_y, test_x.unsqueeze(1), test_y, dataset.classes)


def _register(dataset: IdxDataset, title: str) -> None:
    """Register the padded and the native form of ``dataset``."""
    mean, std = padded_stats(dataset.mean, dataset.std, SIZE, 32)
    package = dataset.files.package
    where = "(idx files, plain or .gz" + (f"; `apt-get install {package}`)" if package else ")")

    def padded(root: Path | None, fetch: bool) -> RawImages:
        assert root is not None  # files datasets are given the root their files are under
        return read_padded(dataset, root, fetch)

    def native(root: Path | None, fetch: bool) -> RawImages:
        assert root is not None
        return read_native(dataset, root, fetch)

    register_dataset(
        dataset.name,
        mean=(mean,) * 3,
        std=(std,) * 3,
        flip=dataset.flip,
        crop_padding=2,
        files=dataset.files,
        summary=f"{title} {where}, 28×28 zero-padded to 3×32×32",
    )(padded)
    register_dataset(
        f"{dataset.name}_native",
        mean=(dataset.mean,),
        std=(dataset.std,),
        flip=dataset.flip,
        crop_padding=2,
        files=dataset.files,
        summary=f"{title} {where}, as published: 1×28×28",
    )(native)


_register(MNIST, "MNIST")
_register(FASHION_MNIST, "Fashion-MNIST")
