"""``digits``: scikit-learn's 1,797 handwritten digits (8×8, levels 0..16) as 3×32×32 images.

The representation: levels × 255/16, bilinear upsampling 8→32 (``align_corners=False``; no
antialiasing, which only matters when shrinking), rounded to uint8, the single channel
replicated to three. There is no test split in the data, so a fixed stratified 20 % is carved
off as one before validation is carved from the rest.

The pixels come from the file scikit-learn ships for ``sklearn.datasets.load_digits``
(``sklearn/datasets/data/digits.csv.gz``), read directly: importing scikit-learn costs about
1.5 s, reading the file 20 ms. If the file is not where it is expected, ``load_digits`` is
used instead; a test checks that both give the same data.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.base import RawImages
from bench.data.sources import register_dataset

SIZE = 32
# Of the train split (split_seed=0, val_fraction=0.1) of the representation above, all three
# channels alike; tests/test_data.py recomputes them.
MEAN = 0.30420
STD = 0.32310


def digit_levels() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images as float 8×8 levels 0..16 and their int64 labels 0..9."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    csv = Path(locations[0]) / "datasets" / "data" / "digits.csv.gz" if locations else None
    if csv is not None and csv.is_file():
        with gzip.open(csv, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


@register_dataset(
    "digits",
    mean=(MEAN,) * 3,
    std=(STD,) * 3,
    flip=False,
    crop_padding=2,
    test_fraction=0.2,
    summary="scikit-learn's 1,797 handwritten digits as 3×32×32; embedded, offline",
)
def read_digits(root: Path | None, download: bool) -> RawImages:
    """Build the digit images; ``root`` and ``download`` are unused (the data is embedded)."""
    levels, labels = digit_levels()
    scaled = torch.from_numpy(levels).float().mul_(255.0 / 16.0).unsqueeze(1)
    up = F.interpolate(
        scaled, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=False
    )
    images = up.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return RawImages(images, torch.from_numpy(labels), None, None, tuple(str(d) for d in range(10)))
