"""The data layer: the embedded digits, every on-disk format, and batches.

Each on-disk format is tested with images written in that format's real file layout in
``tmp_path`` and loaded through ``load_dataset``: through torchvision's own readers, or for
the idx files of MNIST and Fashion-MNIST (verified by their counts, so written full-size by
``tests/conftest.py``) through kdbench's (``tests/test_data_files.py`` has more of those).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data import (
    DATASETS,
    DataError,
    LoaderSplit,
    RawImages,
    Split,
    TensorSplit,
    list_datasets,
    load_dataset,
    register_dataset,
    with_loader,
)
from bench.registry import DuplicateNameError, UnknownNameError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _one_epoch(split, batch_size=64, *, seed=0, augment=False, shuffle=True, drop_last=False):
    generator = torch.Generator().manual_seed(seed)
    return list(
        split.batches(
            batch_size,
            shuffle=shuffle,
            generator=generator,
            augment=augment,
            device=CPU,
            drop_last=drop_last,
        )
    )


def _denormalise(x, info):
    """Back from normalised floats to the uint8 levels they were made from."""
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------ digits


def test_digits_shapes_and_split_sizes(digits):
    from sklearn.datasets import load_digits

    info = digits.info
    assert info.input_size == (3, 32, 32)
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    assert (info.flip, info.crop_padding) == (False, 2)
    assert digits.train.images.shape[1:] == (3, 32, 32)
    assert digits.train.images.dtype == torch.uint8
    assert info.num_train == len(digits.train)
    assert all(isinstance(s, Split) for s in (digits.train, digits.val, digits.test))
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797

    # The documented rule: per class, test = round(20 %), then val = round(10 %) of the rest.
    per_class = np.bincount(load_digits().target)
    test = np.floor(0.2 * per_class + 0.5).astype(int)
    val = np.floor(0.1 * (per_class - test) + 0.5).astype(int)
    assert len(digits.test) == test.sum()
    assert len(digits.val) == val.sum()
    assert np.array_equal(np.bincount(digits.val.labels.numpy(), minlength=10), val)
    assert np.array_equal(np.bincount(digits.test.labels.numpy(), minlength=10), test)


def test_digits_pixels_are_sklearn_digits_upsampled(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    source = digits.train.source_index
    levels = torch.from_numpy(bunch.images[source.numpy()]).float() * (255 / 16)
    expected = F.interpolate(levels.unsqueeze(1), size=(32, 32), mode="bilinear")
    expected = expected.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    assert torch.equal(digits.train.images, expected)
    assert torch.equal(digits.train.labels, torch.from_numpy(bunch.target[source.numpy()]))


def test_digits_splits_are_disjoint_and_cover_the_data(digits):
    parts = [set(s.source_index.tolist()) for s in (digits.train, digits.val, digits.test)]
    assert sum(len(p) for p in parts) == 1797
    assert set.union(*parts) == set(range(1797))


def test_split_seed_fixes_the_validation_split_and_never_moves_the_test_split(digits):
    same = load_dataset("digits", split_seed=0)
    other = load_dataset("digits", split_seed=1)
    assert torch.equal(same.val.source_index, digits.val.source_index)
    assert torch.equal(same.train.images, digits.train.images)
    assert not torch.equal(other.val.source_index, digits.val.source_index)
    assert len(other.val) == len(digits.val)
    assert torch.equal(other.test.source_index, digits.test.source_index)


def test_validation_split_is_stratified(digits):
    train_counts = np.bincount(digits.train.labels.numpy(), minlength=10)
    val_counts = np.bincount(digits.val.labels.numpy(), minlength=10)
    fractions = val_counts / (train_counts + val_counts)
    assert np.all(np.abs(fractions - 0.1) < 0.01), fractions
    big = load_dataset("digits", val_fraction=0.5, split_seed=3)
    sizes = np.bincount(big.val.labels.numpy(), minlength=10)
    rest = np.bincount(big.train.labels.numpy(), minlength=10)
    assert np.all(np.abs(sizes - rest) <= 1)


def test_digits_normalisation_constants_match_the_train_split(digits):
    pixels = digits.train.images.double() / 255
    assert digits.info.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=5e-5)
    assert digits.info.std == pytest.approx(pixels.std(dim=(0, 2, 3)).tolist(), abs=5e-5)
    x = torch.cat([b[0] for b in _one_epoch(digits.train, 256)])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_classes_selects_and_relabels_and_keeps_the_full_split(digits):
    subset = load_dataset("digits", classes=[7, 3])
    assert subset.info.num_classes == 2 and subset.info.class_names == ("7", "3")
    for part, full in ((subset.train, digits.train), (subset.val, digits.val)):
        full_labels = full.labels
        chosen = (full_labels == 7) | (full_labels == 3)
        assert torch.equal(part.source_index, full.source_index[chosen])
        assert torch.equal(part.labels, (full_labels[chosen] == 3).long())
    assert (
        subset.info.num_train
        == len(subset.train)
        == int(((digits.train.labels == 7) | (digits.train.labels == 3)).sum())
    )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"classes": [3, 10]}, "0..9"),
        ({"classes": [1, 1]}, "twice"),
        ({"classes": []}, "non-empty"),
        ({"split_seed": -1}, "split_seed"),
    ],
)
def test_bad_arguments_raise_data_error(kwargs, words):
    with pytest.raises(DataError, match=words):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("cifar-10")
    assert "cifar10" in err.value.suggestions
    with pytest.raises(UnknownNameError) as err:
        load_dataset("digit")
    assert err.value.suggestions[0] == "digits"
    assert "Did you mean 'digits'" in str(err.value)
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]
    assert set(list_datasets()) >= {
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "stl10",
        "imagefolder",
    }


def test_a_registered_reader_becomes_a_dataset():
    calls = []

    @register_dataset(
        "tiny_grey", mean=(0.5,), std=(0.25,), flip=False, crop_padding=1, test_fraction=0.5
    )
    def read_tiny(root, download):
        calls.append(root)
        images = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 1, 4, 4)
        labels = torch.arange(12) % 3
        return RawImages(images.contiguous(), labels, None, None, ("a", "b", "c"))

    try:
        bundle = load_dataset("tiny_grey", val_fraction=0.5)
        again = load_dataset("tiny_grey", val_fraction=0.5)
        assert len(calls) == 1  # read once per process
        assert bundle.info.input_size == (1, 4, 4) and bundle.info.class_names == ("a", "b", "c")
        assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (3, 3, 6)
        assert torch.equal(again.test.source_index, bundle.test.source_index)
        with pytest.raises(DuplicateNameError, match="registered twice"):
            register_dataset("tiny_grey", mean=(0.5,), std=(0.25,), flip=False, crop_padding=1)(
                read_tiny
            )
    finally:
        DATASETS.unregister("tiny_grey")
    with pytest.raises(UnknownNameError):
        load_dataset("tiny_grey")


# ------------------------------------------------------------------------------------ batches


def test_one_epoch_yields_every_index_once_with_matching_samples(digits):
    split = digits.train
    batches = _one_epoch(split, 100)
    index = torch.cat([b[2] for b in batches])
    assert sorted(index.tolist()) == list(range(len(split)))
    assert not torch.equal(index, torch.arange(len(split)))  # shuffled
    for x, y, i in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and i.dtype == torch.int64
        assert torch.equal(y, split.labels[i])
        assert torch.equal(_denormalise(x, digits.info), split.images[i])
    kept = _one_epoch(split, 100, drop_last=True)
    assert [len(b[0]) for b in kept] == [100] * (len(split) // 100)


def test_normalisation_matches_a_hand_computation(digits):
    x, _, index = _one_epoch(digits.val, 32, shuffle=False)[0]
    assert torch.equal(index, torch.arange(32))
    images = digits.val.images[:32].double() / 255
    mean = torch.tensor(digits.info.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(digits.info.std, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(x.double(), (images - mean) / std, atol=1e-5)


def test_augmented_stream_is_reproducible_from_the_generator(digits):
    first = _one_epoch(digits.train, 128, seed=5, augment=True)
    again = _one_epoch(digits.train, 128, seed=5, augment=True)
    other = _one_epoch(digits.train, 128, seed=6, augment=True)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
        for a, b in zip(first, again, strict=True)
    )
    assert not torch.equal(first[0][2], other[0][2])
    # Same order, different augmentation draws: the images still differ.
    generator = torch.Generator().manual_seed(5)
    unshuffled = [
        b[0]
        for b in digits.train.batches(
            128, shuffle=False, generator=generator, augment=True, device=CPU
        )
    ]
    generator.manual_seed(6)
    other_draws = [
        b[0]
        for b in digits.train.batches(
            128, shuffle=False, generator=generator, augment=True, device=CPU
        )
    ]
    assert not torch.equal(unshuffled[0], other_draws[0])


def _is_translation(augmented, original, pad, *, mirrored=False):
    """For each sample: is ``augmented`` a zero-filled shift (of the mirror) of ``original``?"""
    source = original.flip(-1) if mirrored else original
    padded = F.pad(source, (pad, pad, pad, pad))
    h, w = original.shape[-2:]
    found = torch.zeros(len(original), dtype=torch.bool)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, :, dy : dy + h, dx : dx + w]
            found |= (window == augmented).flatten(1).all(1)
    return found


def test_augmentation_is_crop_only_when_flips_are_not_allowed(digits):
    split = digits.train
    assert not digits.info.flip
    shifted = 0
    for x, _, index in _one_epoch(split, 256, augment=True):
        levels = _denormalise(x, digits.info)
        original = split.images[index]
        assert x.shape == original.shape
        assert _is_translation(levels, original, digits.info.crop_padding).all()
        shifted += int((levels != original).flatten(1).any(1).sum())
    assert shifted > len(split) // 2


def test_flip_happens_when_allowed(digits):
    images = digits.train.images[:400]
    split = TensorSplit(
        images,
        digits.train.labels[:400],
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        crop_padding=2,
        flip=True,
    )
    x, _, _ = _one_epoch(split, 400, augment=True, shuffle=False)[0]
    levels = (x * 255).round().to(torch.uint8)
    plain = _is_translation(levels, images, 2)
    mirrored = _is_translation(levels, images, 2, mirrored=True)
    assert (plain | mirrored).all()
    assert 120 < int((mirrored & ~plain).sum()) < 280


def test_crop_padding_brings_in_zeros():
    images = torch.full((64, 3, 8, 8), 255, dtype=torch.uint8)
    split = TensorSplit(
        images,
        torch.zeros(64, dtype=torch.long),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        crop_padding=3,
        flip=False,
    )
    plain = _one_epoch(split, 64)[0][0]
    augmented = _one_epoch(split, 64, augment=True)[0][0]
    assert augmented.shape == plain.shape == (64, 3, 8, 8)
    assert torch.all(plain == 1.0)
    zero_level = (0 - 0.5) / 0.5
    padded_pixels = augmented == zero_level
    assert torch.all((augmented == 1.0) | padded_pixels)
    assert 0.1 < padded_pixels.float().mean() < 0.6


def _loader_split(images, labels, workers=0, pad=2, flip=True):
    return LoaderSplit(
        images, labels, mean=(0.0,) * 3, std=(1.0,) * 3, crop_padding=pad, flip=flip,
        num_workers=workers,
    )  # fmt: skip


def test_loader_split_covers_the_split_and_augments_one_sample_at_a_time(digits):
    images, labels = digits.train.images[:300], digits.train.labels[:300]
    split = _loader_split(images, labels)
    batches = _one_epoch(split, 64, augment=True, seed=4)
    index = torch.cat([i for _, _, i in batches])
    assert sorted(index.tolist()) == list(range(300))
    assert torch.equal(torch.cat([y for _, y, _ in batches]), labels[index])
    levels = (torch.cat([x for x, _, _ in batches]) * 255).round().to(torch.uint8)
    source = images[index]
    plain = _is_translation(levels, source, 2)
    mirrored = _is_translation(levels, source, 2, mirrored=True)
    assert (plain | mirrored).all()
    assert 90 < int((mirrored & ~plain).sum()) < 210  # about half flipped
    assert int((levels != source).flatten(1).any(1).sum()) > 250  # most moved
    unaugmented = torch.cat([x for x, _, _ in _one_epoch(split, 64, seed=4)])
    assert torch.equal((unaugmented * 255).round().to(torch.uint8), source)


def test_loader_split_epochs_follow_the_generator_not_the_worker_count(digits):
    images, labels = digits.train.images[:96], digits.train.labels[:96]
    in_process = _one_epoch(_loader_split(images, labels, 0), 32, augment=True, seed=7)
    two_workers = _one_epoch(_loader_split(images, labels, 2), 32, augment=True, seed=7)
    other_seed = _one_epoch(_loader_split(images, labels, 0), 32, augment=True, seed=8)
    for (x0, y0, i0), (x1, y1, i1) in zip(in_process, two_workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)
    assert not torch.equal(in_process[0][0], other_seed[0][0])


def test_with_loader_streams_the_train_split_and_keeps_the_others(digits):
    bundle = with_loader(digits, num_workers=0)
    assert isinstance(bundle.train, LoaderSplit) and bundle.val is digits.val
    assert len(bundle.train) == len(digits.train) and bundle.info == digits.info
    device_epoch = _one_epoch(digits.train, 128, shuffle=False)
    loader_epoch = _one_epoch(bundle.train, 128, shuffle=False)
    for (x0, y0, _), (x1, y1, _) in zip(device_epoch, loader_epoch, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)  # same normalised samples


def test_batches_rejects_bad_arguments(digits):
    with pytest.raises(DataError, match="batch_size"):
        next(digits.val.batches(0, shuffle=False, generator=None, augment=False, device=CPU))


# ------------------------------------------------------------------------- on-disk formats
#
# torchvision checks CIFAR, SVHN and STL-10 files against the MD5 checksums of the official
# releases, which no tiny file can match, and offers no switch to skip the check. The tests
# below replace that table of expected checksums (a class attribute) with the checksums of
# the tiny files they wrote, using monkeypatch, so the integrity check still runs (and would
# catch a truncated file) and all of torchvision's reading code runs unchanged. The library
# itself never touches the table; test_official_checksums_are_enforced shows that real
# checks apply outside the tests.


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_idx_digits_load_padded_to_three_channels_of_32(tmp_path, make_idx, name, folder):
    make_idx(tmp_path / folder / "raw")  # full-size files: image i is (7·i + pixel) mod 256
    bundle = load_dataset(name, root=tmp_path, val_fraction=0.25)
    assert bundle.info.input_size == (3, 32, 32) and bundle.info.num_classes == 10
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (45_000, 15_000, 10_000)
    test = bundle.test.images
    pixels = torch.arange(784).view(28, 28)
    for i in (0, 37, 9_999):
        assert torch.equal(test[i, 0, 2:30, 2:30].long(), (7 * i + pixels) % 256)
    assert torch.equal(test[:, 1], test[:, 0]) and torch.equal(test[:, 2], test[:, 0])
    assert test[:, :, :2].sum() == 0 and test[:, :, :, 30:].sum() == 0
    assert bundle.test.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    row = int(bundle.train.source_index[100])
    assert torch.equal(bundle.train.images[100, 0, 2:30, 2:30].long(), (7 * row + pixels) % 256)
    assert bundle.train.labels[100].item() == row % 10


def _write_cifar(
    root: Path,
    folder: str,
    files: dict[str, tuple[np.ndarray, list[int]]],
    label_key: str,
    meta: tuple[str, dict],
) -> list[Path]:
    base = root / folder
    base.mkdir(parents=True)
    written = []
    for file, (images, labels) in files.items():
        entry = {"data": images.reshape(len(images), -1), label_key: labels, "batch_label": file}
        if label_key == "fine_labels":
            entry["coarse_labels"] = [label // 5 for label in labels]
        (base / file).write_bytes(pickle.dumps(entry))
        written.append(base / file)
    (base / meta[0]).write_bytes(pickle.dumps(meta[1]))
    return written


def _checksums(paths: list[Path]) -> list[list[str]]:
    return [[p.name, _md5(p)] for p in paths]


def test_cifar10_loads_through_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    rng = np.random.default_rng(1)
    batches = {
        f"data_batch_{i}": (
            rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8),
            [(6 * i + k) % 10 for k in range(6)],
        )
        for i in range(1, 6)
    }
    test_x = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    files = {**batches, "test_batch": (test_x, list(range(7)))}
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    paths = _write_cifar(
        tmp_path, "cifar-10-batches-py", files, "labels", ("batches.meta", {"label_names": names})
    )
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    monkeypatch.setattr(CIFAR10, "train_list", _checksums(paths[:5]))
    monkeypatch.setattr(CIFAR10, "test_list", _checksums(paths[5:]))
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(meta)})

    bundle = load_dataset("cifar10", root=tmp_path, val_fraction=0.2)
    assert bundle.info.class_names == tuple(names)
    assert (bundle.info.flip, bundle.info.crop_padding) == (True, 4)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (20, 10, 7)
    assert torch.equal(bundle.test.images, torch.from_numpy(test_x))
    assert bundle.test.labels.tolist() == list(range(7))
    all_train = np.concatenate([b[0] for b in batches.values()])
    all_labels = [label for b in batches.values() for label in b[1]]
    rows = bundle.val.source_index.numpy()
    assert torch.equal(bundle.val.images, torch.from_numpy(all_train[rows]))
    assert bundle.val.labels.tolist() == [all_labels[r] for r in rows]


def test_cifar100_loads_fine_labels_through_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    rng = np.random.default_rng(2)
    train_x = rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    train_y = [10 + k % 4 for k in range(24)]
    test_x = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    names = [f"class{k:02d}" for k in range(100)]
    meta = {"fine_label_names": names, "coarse_label_names": [f"super{k}" for k in range(20)]}
    paths = _write_cifar(
        tmp_path,
        "cifar-100-python",
        {"train": (train_x, train_y), "test": (test_x, [99, 0, 1, 2, 3])},
        "fine_labels",
        ("meta", meta),
    )
    monkeypatch.setattr(CIFAR100, "train_list", _checksums(paths[:1]))
    monkeypatch.setattr(CIFAR100, "test_list", _checksums(paths[1:]))
    monkeypatch.setattr(
        CIFAR100, "meta", {**CIFAR100.meta, "md5": _md5(tmp_path / "cifar-100-python" / "meta")}
    )

    bundle = load_dataset("cifar100", root=tmp_path, classes=[13, 10, 11, 12])
    assert bundle.info.num_classes == 4 and bundle.info.class_names == (
        "class13",
        "class10",
        "class11",
        "class12",
    )
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (20, 4, 0)
    assert sorted(bundle.val.labels.tolist()) == [0, 1, 2, 3]
    rows = bundle.train.source_index.numpy()
    assert torch.equal(bundle.train.images, torch.from_numpy(train_x[rows]))
    assert bundle.train.labels.tolist() == [(train_y[r] - 9) % 4 for r in rows]
    everything = load_dataset("cifar100", root=tmp_path)
    assert everything.info.num_classes == 100 and everything.test.labels.tolist() == [
        99,
        0,
        1,
        2,
        3,
    ]


def test_official_checksums_are_enforced(tmp_path):
    rng = np.random.default_rng(3)
    files = {
        f"data_batch_{i}": (rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), [0, 1])
        for i in range(1, 6)
    }
    files["test_batch"] = (rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), [0, 1])
    _write_cifar(
        tmp_path,
        "cifar-10-batches-py",
        files,
        "labels",
        ("batches.meta", {"label_names": ["a", "b"]}),
    )
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path)
    message = str(err.value)
    assert "present but torchvision could not load them" in message and "checksums" in message
    assert "--download" in message


def test_svhn_loads_mat_files_through_torchvision(tmp_path, monkeypatch):
    import scipy.io
    from torchvision.datasets import SVHN

    rng = np.random.default_rng(4)
    parts = {}
    for split, n in (("train", 20), ("test", 6)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        digits = np.arange(n) % 10
        labels = np.where(digits == 0, 10, digits).reshape(n, 1).astype(np.uint8)
        scipy.io.savemat(
            tmp_path / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": labels}
        )
        parts[split] = (images, digits)
    table = {
        k: [v[0], v[1], _md5(tmp_path / v[1])] for k, v in SVHN.split_list.items() if k != "extra"
    }
    monkeypatch.setattr(SVHN, "split_list", {**SVHN.split_list, **table})

    bundle = load_dataset("svhn", root=tmp_path, val_fraction=0.5)
    assert (bundle.info.flip, bundle.info.input_size) == (False, (3, 32, 32))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 10, 6)
    assert torch.equal(bundle.test.images, torch.from_numpy(parts["test"][0]))
    assert bundle.test.labels.tolist() == parts["test"][1].tolist()
    rows = bundle.train.source_index.numpy()
    assert torch.equal(bundle.train.images, torch.from_numpy(parts["train"][0][rows]))
    assert bundle.train.labels.tolist() == parts["train"][1][rows].tolist()


def test_stl10_loads_binary_files_through_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import STL10

    rng = np.random.default_rng(5)
    base = tmp_path / "stl10_binary"
    base.mkdir()
    written = {}
    for split, n in (("train", 20), ("test", 10), ("unlabeled", 1)):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        # The release stores each channel column-major: (N, C, W, H) in C order.
        (base / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        labels = np.arange(n) % 10
        if split != "unlabeled":
            (base / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        written[split] = (images, labels)
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (base / "class_names.txt").write_text("\n".join(names) + "\n")
    monkeypatch.setattr(
        STL10,
        "train_list",
        [[f, _md5(base / f)] for f in ("train_X.bin", "train_y.bin", "unlabeled_X.bin")],
    )
    monkeypatch.setattr(
        STL10, "test_list", [[f, _md5(base / f)] for f in ("test_X.bin", "test_y.bin")]
    )

    bundle = load_dataset("stl10", root=tmp_path, val_fraction=0.5)
    assert bundle.info.input_size == (3, 96, 96) and bundle.info.crop_padding == 12
    assert bundle.info.class_names == tuple(names)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 10, 10)
    assert torch.equal(bundle.test.images, torch.from_numpy(written["test"][0]))
    assert bundle.test.labels.tolist() == written["test"][1].tolist()

    small = load_dataset("stl10", root=tmp_path, image_size=32)
    assert small.info.input_size == (3, 32, 32) and small.info.crop_padding == 4
    expected = F.interpolate(
        torch.from_numpy(written["test"][0]).float(), size=32, mode="bilinear", antialias=True
    )
    assert (small.test.images.float() - expected).abs().max() <= 0.5 + 1e-4


_COLOURS = {"cat": (200, 30, 30), "dog": (20, 180, 40), "owl": (10, 20, 240)}


def _write_image_tree(root: Path, per_class: dict[str, int]) -> None:
    from PIL import Image

    for split, count in per_class.items():
        for name, colour in _COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                size = (40 + 4 * k, 30)  # not square: resize + centre crop must still fill
                suffix = "png" if k % 2 == 0 else "jpg"
                Image.new("RGB", size, colour).save(folder / f"{k}.{suffix}")


def test_imagefolder_loads_through_a_dataloader(tmp_path):
    _write_image_tree(tmp_path, {"train": 10, "test": 2})
    bundle = load_dataset("imagefolder", root=tmp_path, image_size=16)
    info = bundle.info
    assert info.class_names == ("cat", "dog", "owl") and info.input_size == (3, 16, 16)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (27, 3, 6)
    assert info.num_train == 27 and info.crop_padding == 2

    batches = _one_epoch(bundle.train, 8)
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(27))
    colours = torch.tensor(list(_COLOURS.values()), dtype=torch.float32)
    for x, y, index in batches:
        assert x.shape[1:] == (3, 16, 16)
        assert torch.equal(y, bundle.train.labels[index])
        levels = _denormalise(x, info).float()
        assert (levels - colours[y].view(-1, 3, 1, 1)).abs().max() <= 2  # jpg is lossy

    first = _one_epoch(bundle.train, 8, seed=3, augment=True)
    again = _one_epoch(bundle.train, 8, seed=3, augment=True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    augmented = torch.cat([b[0] for b in first])
    assert (augmented == _denormalise_zero(info)).any()  # padding zeros entered

    test_labels = torch.cat([b[1] for b in _one_epoch(bundle.test, 4, shuffle=False)])
    assert test_labels.tolist() == [0, 0, 1, 1, 2, 2]


def _denormalise_zero(info):
    """The normalised value of a zero pixel, per channel, as a broadcastable tensor."""
    return (-torch.tensor(info.mean) / torch.tensor(info.std)).view(1, -1, 1, 1)


def test_imagefolder_reads_val_when_there_is_no_test_folder(tmp_path):
    _write_image_tree(tmp_path, {"train": 4, "val": 1})
    bundle = load_dataset("imagefolder", root=tmp_path, classes=[2, 0])
    assert bundle.info.class_names == ("owl", "cat") and bundle.info.input_size == (3, 32, 32)
    assert len(bundle.test) == 2
    assert sorted(bundle.test.labels.tolist()) == [0, 1]


# ------------------------------------------------------------------------- missing files


@pytest.mark.parametrize(
    ("name", "folder", "file"),
    [
        ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
        ("cifar100", "cifar-100-python", "train"),
        ("svhn", "", "train_32x32.mat"),
        ("stl10", "stl10_binary", "unlabeled_X.bin"),
    ],
)
def test_missing_files_name_what_is_expected_where(tmp_path, name, folder, file):
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        load_dataset(name, root=root)
    message = str(err.value)
    assert repr(name) in message and file in message
    assert f"{root / folder if folder else root} (--data-root): no such folder" in message
    assert f"--data-root {root} --download" in message and "Traceback" not in message
    with pytest.raises(DataError, match="KDBENCH_DATA is not set") as err:
        load_dataset(name)
    assert "--data-root DIR --download" in str(err.value)


def test_missing_image_folder_names_the_layout(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "train") in message and "test/<class>/<image>" in message
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no usable images"):
        load_dataset("imagefolder", root=tmp_path)
