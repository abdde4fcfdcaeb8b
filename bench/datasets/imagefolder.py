"""``imagefolder``: an image tree ``root/train/<class>/*`` + ``root/test/<class>/*``.

For data too large to hold in memory (Tiny-ImageNet, MHIST, ImageNet): the files are indexed
up front, decoded per batch by a ``DataLoader`` (:class:`bench.data.FolderSplit`) and then
augmented and normalised like the in-memory datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.base import DATASETS, DataBundle, DataError, DatasetInfo, LoadOptions
from bench.data.splits import ClassSelection, FolderSplit, carve_validation, with_train_size
from bench.datasets.torchvision_files import layout, require_root

# ImageNet statistics: the usual choice for natural photographs of unknown statistics.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_FOLDER_EXTENSIONS = "*.png|*.jpg|*.jpeg|… (any format torchvision's ImageFolder reads)"


@dataclass(frozen=True)
class FolderSource:
    """Images in ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val/<class>``).

    The held-out folder is ``test/`` or, when there is none, ``val/`` (ImageNet's usual
    layout); either way it is the test split, and validation is carved from ``train/``.
    Images are decoded as RGB, resized so the short side is ``image_size`` (default 32) and
    centre-cropped square. Flip is on; crop padding is ``image_size // 8``.
    """

    name: str = "imagefolder"
    default_size: int = 32
    mean: tuple[float, ...] = _IMAGENET_MEAN
    std: tuple[float, ...] = _IMAGENET_STD
    summary: str = (
        "an ImageFolder tree root/{train,test}/<class>/*.png|jpg (Tiny-ImageNet, MHIST, ImageNet…)"
    )

    def load(self, options: LoadOptions) -> DataBundle:
        """Index the files (no decoding yet), carve the splits, build DataLoader-backed splits."""
        from torchvision import datasets, transforms

        expected = ("train/<class>/<image>", "test/<class>/<image>  (or val/<class>/<image>)")
        how = (
            "Pass --data-root pointing at the folder that holds train/ and test/, one "
            f"subfolder per class ({_FOLDER_EXTENSIONS}); imagefolder data is never downloaded."
        )
        root = require_root(self.name, options.root, expected, how)
        use_val = not (root / "test").is_dir() and (root / "val").is_dir()
        held_dir = root / ("val" if use_val else "test")
        size = options.image_size or self.default_size
        transform = transforms.Compose(
            [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
        )
        train_set = self._folder(datasets, root / "train", transform, expected, how)
        test_set = self._folder(datasets, held_dir, transform, expected, how)
        if test_set.classes != train_set.classes:
            raise DataError(
                f"dataset {self.name!r}: {held_dir} has classes {test_set.classes[:10]}… but "
                f"{root / 'train'} has {train_set.classes[:10]}…; both need the same class folders"
            )

        train_labels = np.asarray(train_set.targets, dtype=np.int64)
        test_labels = np.asarray(test_set.targets, dtype=np.int64)
        kept, held = carve_validation(train_labels, options.val_fraction, options.split_seed)
        selection = ClassSelection.of(options.classes, tuple(train_set.classes), self.name)
        crop_padding = size // 8

        def split(dataset: Any, labels: np.ndarray, positions: np.ndarray) -> FolderSplit:
            positions, new_labels = selection.apply(positions, labels)
            return FolderSplit(
                dataset,
                positions,
                torch.from_numpy(new_labels),
                mean=self.mean,
                std=self.std,
                crop_padding=crop_padding,
                flip=True,
                num_workers=options.num_workers,
            )

        train = split(train_set, train_labels, kept)
        info = DatasetInfo(
            name=self.name,
            num_classes=len(selection.class_names),
            input_size=(3, size, size),
            mean=self.mean,
            std=self.std,
            flip=True,
            crop_padding=crop_padding,
            class_names=selection.class_names,
            num_train=len(train),
        )
        test = split(test_set, test_labels, np.arange(len(test_labels)))
        bundle = DataBundle(
            info=info, train=train, val=split(train_set, train_labels, held), test=test
        )
        return with_train_size(bundle, options.train_size, options.split_seed)

    def _folder(
        self, datasets: Any, path: Path, transform: Any, expected: Sequence[str], how: str
    ) -> Any:
        if not path.is_dir():
            raise DataError(
                f"dataset {self.name!r}: folder {path} not found. It expects, under "
                f"{path.parent}:\n{layout(path.parent, expected)}\n{how}"
            )
        try:
            return datasets.ImageFolder(str(path), transform=transform)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(
                f"dataset {self.name!r}: no usable images in {path} ({error}). It expects "
                f"{path}/<class>/<image> with one subfolder per class. {how}"
            ) from error


DATASETS.register("imagefolder", FolderSource(), origin=f"{__file__}:FolderSource")
