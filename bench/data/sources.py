"""In-memory datasets: registration, reading with a small cache, building splits.

:func:`register_dataset` turns a reader of a dataset's files into a :class:`TensorSource`,
which finds the files (:mod:`bench.data.locate`), reads the images once (cached while the
files are unchanged), resizes them if asked, carves the splits and places them on the
training device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.data.base import DATASETS, DataBundle, DataError, DatasetInfo, LoadOptions, RawImages
from bench.data.locate import DataFiles, DownloadFailed, download_failed, find_or_explain
from bench.data.splits import (
    ClassSelection,
    TensorSplit,
    carve_test,
    carve_validation,
    with_train_size,
)

_CACHE_ENTRIES = 4
# (source, root, size, file stamps) → (images at that size, their height before resizing)
_raw_cache: dict[tuple, tuple[RawImages, int]] = {}


@dataclass(frozen=True)
class TensorSource:
    """A registered dataset that is read whole into uint8 tensors.

    Attributes:
        name: Registered name.
        read: ``read(root, download) -> RawImages``; raises :class:`DataError` on failure.
            ``root`` is the data root holding the files (one of ``files``' layouts is
            complete under it), or with ``download`` the folder to download them into
            (raising :class:`~bench.data.locate.DownloadFailed` when that fails); None for a
            dataset without files.
        mean: Per-channel mean of the pixel values in [0, 1] of the training split.
        std: Per-channel standard deviation.
        flip: Whether a horizontal flip keeps the label.
        crop_padding: Random-crop zero padding at the dataset's own image size.
        files: Where its files may lie and how to get them; None for a dataset without
            files (embedded, or made by the reader).
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
    files: DataFiles | None = None
    test_fraction: float = 0.0
    summary: str = ""

    def load(self, options: LoadOptions) -> DataBundle:
        """Read (or reuse) the images, carve the splits and place them on the device."""
        root, download = options.root, False
        if self.files is not None:
            root, download = find_or_explain(self.name, self.files, options.root, options.download)
        try:
            raw, native_height = self._raw(root, download, options.image_size)
        except DownloadFailed as failed:
            assert self.files is not None  # only readers of files download
            raise download_failed(self.name, self.files, options.root, failed) from failed
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
        bundle = DataBundle(
            info=info,
            train=train,
            val=split(raw.train_images, train_labels, val_pos),
            test=split(test_images, test_labels, test_pos),
        )
        return with_train_size(bundle, options.train_size, options.split_seed)

    def _raw(
        self, root: Path | None, download: bool, image_size: int | None
    ) -> tuple[RawImages, int]:
        """Images at ``image_size`` and their own height; cached while the files are unchanged."""
        key = (self.name, id(self.read), str(root), image_size, self._stamp(root))
        if key not in _raw_cache:
            raw = self.read(root, download)
            check_raw(self.name, root, raw)
            entry = (_resized(raw, image_size), raw.train_images.shape[2])
            if download:  # the stamp changes once files have been fetched
                key = (*key[:-1], self._stamp(root))
            _raw_cache[key] = entry
            while len(_raw_cache) > _CACHE_ENTRIES:
                del _raw_cache[next(iter(_raw_cache))]
        return _raw_cache[key]

    def _stamp(self, root: Path | None) -> tuple:
        """Size and modification time of every file the dataset may read under ``root``."""
        if root is None or self.files is None:
            return ()
        paths = [
            layout.where(root) / (name + suffix)
            for layout in self.files.layouts
            for name in layout.names
            for suffix in ("", ".gz")[: 1 + layout.gzip]
        ]
        return _files_stamp(paths)


def check_raw(name: str, root: Path | None, raw: RawImages) -> None:
    """What a reader returned is usable: uint8 N×C×H×W images, one label per image, each a
    class index (a reader of damaged files may return anything).

    Raises:
        DataError: naming the dataset, its files' folder and what is wrong.
    """
    where = f"dataset {name!r}" + (f" (files under {root})" if root is not None else "")
    fix = "the files are damaged or do not belong together; replace them with the original files"
    classes = len(raw.class_names)
    for split, images, labels in (
        ("training", raw.train_images, raw.train_labels),
        ("test", raw.test_images, raw.test_labels),
    ):
        if images is None or labels is None:
            continue
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise DataError(
                f"{where}: the {split} images are {images.dtype} of shape {tuple(images.shape)}, "
                "not uint8 N×C×H×W — the dataset's reader is wrong"
            )
        if len(images) != len(labels) or len(images) == 0:
            raise DataError(
                f"{where}: the {split} split has {len(images)} images and {len(labels)} labels "
                f"— {fix}"
            )
        outside = ((labels < 0) | (labels >= classes)).nonzero().flatten()
        if len(outside):
            first = int(outside[0])
            raise DataError(
                f"{where}: {len(outside)} {split} label(s) are outside 0..{classes - 1} (the "
                f"first, of sample {first}, is {int(labels[first])}) — {fix}"
            )


def _files_stamp(paths: Sequence[Path]) -> tuple:
    stamp: list[tuple[str, int | None, int | None]] = []
    for path in paths:
        try:
            st = path.stat()
            stamp.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((str(path), None, None))
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
    files: DataFiles | None = None,
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
        files: Where the reader's files may lie and how to get them (searched before the
            reader is called); None for a dataset without files.
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
            files=files,
            test_fraction=test_fraction,
            summary=summary,
        )
        DATASETS.register(name, source, origin=origin)
        return read

    return decorate
