"""Datasets where they are: the folders searched, idx files read gzipped or not and verified by
content, one message saying what was found, what was expected and what to do; datasets at
their native size and channels; training on a stratified subset.

The MNIST-like files here are full-size (60,000 and 10,000 images, a pattern each: datasets
verify the counts), written once per session by ``tests/conftest.py``; tests never see this
machine's own datasets unless they ask (``system_datasets``).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.config import ConfigError, Recipe, TeacherSpec, TrialConfig, key_fields
from bench.data import DataError, load_dataset, locate, stratified_subset
from bench.models import create_model, model_info
from bench.suite.expand import plan_trials
from bench.suite.load import parse_suite
from bench.suite.schema import SuiteError
from bench.teachers import cache_dir

IDX = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")


def pattern(index: int) -> torch.Tensor:
    """Image ``index`` of the files conftest writes: pixel p is (7·index + p) mod 256."""
    return torch.from_numpy(((7 * index + np.arange(784)) % 256).astype(np.uint8).reshape(28, 28))


def system_root(monkeypatch, folder: Path) -> None:
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (folder,))


def error_of(name: str, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(name, **kwargs)
    message = str(err.value)
    assert "Traceback" not in message
    return message


# --------------------------------------------------------------------------- where the files are


def test_fashion_mnist_is_found_where_the_system_package_puts_it(tmp_path, monkeypatch, make_idx):
    make_idx(tmp_path / "share" / "fashion-mnist", gz=True)  # Debian's layout: four .gz files
    system_root(monkeypatch, tmp_path / "share")

    native = load_dataset("fashion_mnist_native")  # no root given
    assert native.info.input_size == (1, 28, 28) and native.info.num_classes == 10
    assert (native.info.mean, native.info.std) == ((0.2860,), (0.3530,))
    assert native.info.class_names[9] == "Ankle boot"
    assert (len(native.train), len(native.val), len(native.test)) == (54_000, 6_000, 10_000)
    assert torch.equal(native.test.images[123, 0], pattern(123))
    assert native.test.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]

    padded = load_dataset("fashion_mnist")  # the same files, padded to the CIFAR zoo's input
    image = padded.test.images[123]
    assert padded.info.input_size == (3, 32, 32)
    assert torch.equal(image[0, 2:30, 2:30], pattern(123)) and image[:, :2].sum() == 0
    assert torch.equal(image[1], image[0]) and torch.equal(image[2], image[0])


def test_the_data_root_then_kdbench_data_then_the_system_folders_are_searched(
    tmp_path, monkeypatch, make_idx
):
    # Each folder's test labels start at another class, telling which one was read.
    places = {"given": 1, "env": 2, "system": 3}
    for place, shift in places.items():
        labels = {"t10k-labels-idx1-ubyte": ((np.arange(10_000) + shift) % 10).astype(np.uint8)}
        make_idx(tmp_path / place / "FashionMNIST" / "raw", labels=labels)
    system_root(monkeypatch, tmp_path / "system")
    monkeypatch.setenv("KDBENCH_DATA", f"{tmp_path / 'nothing'}:{tmp_path / 'env'}")

    def first_label(**kwargs) -> int:
        return int(load_dataset("fashion_mnist_native", **kwargs).test.labels[0])

    assert first_label(root=tmp_path / "given") == 1
    assert first_label() == 2
    monkeypatch.delenv("KDBENCH_DATA")
    assert first_label() == 3


def test_gzipped_files_in_torchvisions_layout_are_read(tmp_path, make_idx):
    make_idx(tmp_path / "FashionMNIST" / "raw", gz=True)
    bundle = load_dataset("fashion_mnist_native", root=tmp_path)
    assert torch.equal(bundle.test.images[9_999, 0], pattern(9_999))


def test_a_missing_dataset_says_what_was_found_where_and_how_to_get_it(tmp_path, monkeypatch):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX[:3]:  # three of the four, gzipped
        (raw / (name + ".gz")).write_bytes(b"")
    system_root(monkeypatch, tmp_path / "share")

    message = error_of("fashion_mnist", root=tmp_path / "data")
    assert message.startswith("dataset 'fashion_mnist' was not found.")
    assert f"{raw} (--data-root): 3 of 4 files there; missing t10k-labels-idx1-ubyte" in message
    assert f"{tmp_path / 'share' / 'fashion-mnist'} (system): no such folder" in message
    for folder in (raw, tmp_path / "data" / "fashion-mnist", tmp_path / "share" / "fashion-mnist"):
        assert message.count(f"{folder} (") == 1  # each folder once
    assert message.count("train-images-idx3-ubyte") == 1  # each file named once
    assert "(each plain or gzipped, .gz)" in message
    assert message.endswith(
        "To fix: install them with `apt-get install dataset-fashion-mnist` (it puts them in "
        f"{tmp_path / 'share' / 'fashion-mnist'}), or fetch them with "
        f"`--data-root {tmp_path / 'data'} --download`."
    )


@pytest.mark.parametrize(
    ("name", "torchvision_class", "folder", "fix"),
    [
        (
            "fashion_mnist",
            "FashionMNIST",
            "FashionMNIST/raw",
            "install them with `apt-get install dataset-fashion-mnist`",
        ),
        ("cifar10", "CIFAR10", "cifar-10-batches-py", "place the official files (https://www."),
    ],
)
def test_after_a_failed_download_the_message_does_not_advise_download_again(
    tmp_path, monkeypatch, name, torchvision_class, folder, fix
):
    import torchvision.datasets

    def offline(self):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(getattr(torchvision.datasets, torchvision_class), "download", offline)
    message = error_of(name, root=tmp_path, download=True)
    target = tmp_path / folder
    assert f"downloading it into {target} failed: URLError: <urlopen error no network here>" in (
        message
    )
    assert fix in message and "--download" not in message
    if name == "cifar10":
        assert message.endswith(f"in {target}.")


def test_download_without_a_folder_says_to_give_one():
    message = error_of("mnist", download=True)
    assert "give --data-root DIR (or set KDBENCH_DATA) to say where --download puts" in message


def test_train_without_the_files_exits_2_saying_how_to_get_them(tmp_path, monkeypatch, capsys):
    system_root(monkeypatch, tmp_path / "share")
    code = main(["train", "--dataset", "fashion_mnist", "--method", "ce", "--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "`apt-get install dataset-fashion-mnist`" in err and "--download`" in err


def test_train_finds_the_package_and_builds_an_mlp_on_784_inputs(tmp_path, monkeypatch, make_idx):
    make_idx(tmp_path / "share" / "fashion-mnist", gz=True)
    system_root(monkeypatch, tmp_path / "share")
    out = _train_json(
        monkeypatch, "--dataset", "fashion_mnist_native", "--student", "mlp_small", "--method", "ce"
    )
    assert out["status"] == "FINISHED"
    # 784 inputs (1×28×28), not the padded 3072: 784·800+800 + 800·800+800 + 800·10+10.
    assert out["student_params"] == 1_276_810


def _train_json(monkeypatch, *args: str) -> dict:
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    common = ["--epochs", "1", "--train-size", "100", "--no-augment", "--quiet", "--json"]
    with redirect_stdout(out):
        code = main(["train", *args, *common, "--no-track", "--threads", "1"])
    assert code == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.mark.skipif(
    not all((DEBIAN_FOLDER / (n + ".gz")).is_file() for n in IDX),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_the_installed_package_is_read_and_trains_with_no_data_root(system_datasets, monkeypatch):
    native = load_dataset("fashion_mnist_native")
    assert native.test.labels.bincount().tolist() == [1_000] * 10
    assert native.test.labels[:5].tolist() == [9, 2, 1, 1, 6]  # ankle boot, pullover, …
    pixels = native.train.images.float().div_(255)
    # The published statistics of the 60,000 training images hold for the 54,000 kept.
    assert abs(pixels.mean().item() - 0.2860) < 0.002
    assert abs(pixels.std().item() - 0.3530) < 0.002
    out = _train_json(
        monkeypatch,
        "--dataset",
        "fashion_mnist",
        "--student",
        "test_resnet_narrow",
        "--method",
        "ce",
    )
    assert out["status"] == "FINISHED" and out["student_params"] > 0


# ------------------------------------------------------------------------ content verification


def _bad(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.unlink()
    path.write_bytes(data)
    return path


def _idx(shape: tuple[int, ...], body: bytes | None = None) -> bytes:
    header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    return header + (bytes(int(np.prod(shape))) if body is None else body)


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        (
            "train-images-idx3-ubyte",
            _idx((40, 28, 28)),
            "holds 40 images of 28×28, expected 60000 images of 28×28",
        ),
        ("train-labels-idx1-ubyte", _idx((59_999,)), "holds 59999 labels, expected 60000 labels"),
        (
            "t10k-labels-idx1-ubyte",
            _idx((10_000,), bytes(5) + bytes([12]) + bytes(9_994)),
            "1 label(s) are outside 0..9 (the first, at position 5, is 12)",
        ),
        (
            "t10k-labels-idx1-ubyte",
            _idx((10_000,), bytes(9_000)),
            "9000 bytes follow the header, expected 10000 for 10000 labels (the file is truncated)",
        ),
        (
            "t10k-labels-idx1-ubyte",
            b"hello, world",
            "not an idx file of 10000 labels: it begins with 68 65 6c 6c, expected 00 00 08 01",
        ),
        (
            "t10k-images-idx3-ubyte",
            b"\x1f\x8b\x08\x00garbage",
            "cannot be read (EOFError: Compressed file ended",
        ),
    ],
    ids=["image-count", "label-count", "label-range", "truncated", "not-idx", "bad-gzip"],
)
def test_idx_files_are_verified_by_content(tmp_path, make_idx, name, data, problem):
    folder = make_idx(tmp_path / "MNIST" / "raw")
    path = _bad(folder, name, data)
    message = error_of("mnist", root=tmp_path)
    assert message.startswith(f"dataset 'mnist': {path}: ")
    assert problem in message
    assert message.endswith(
        "replace it with the official file (https://ossci-datasets.s3.amazonaws.com/mnist/)"
    )


def test_a_damaged_file_of_the_system_package_says_to_reinstall_it(tmp_path, monkeypatch, make_idx):
    folder = make_idx(tmp_path / "share" / "fashion-mnist", gz=True)
    _bad(folder, "train-labels-idx1-ubyte.gz", _idx((60_000,))[:-1])
    system_root(monkeypatch, tmp_path / "share")
    message = error_of("fashion_mnist")
    assert "train-labels-idx1-ubyte.gz: 59999 bytes follow the header" in message
    assert message.endswith(
        "reinstall the package: `apt-get install --reinstall dataset-fashion-mnist`"
    )


def test_torchvisions_idx_files_from_a_download_are_read_as_they_are(tmp_path, make_idx):
    # torchvision's download keeps each .gz beside its extracted file: the plain one is read.
    raw = make_idx(tmp_path / "FashionMNIST" / "raw")
    shutil.copy(raw / "t10k-labels-idx1-ubyte", raw / "t10k-labels-idx1-ubyte.gz")
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"not read")
    assert len(load_dataset("fashion_mnist", root=tmp_path).test) == 10_000


# ------------------------------------------------------------------------------ native size


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobile_half", "ShuffleV2"])
def test_zoo_models_build_for_one_channel_of_28x28(name):
    model = create_model(name, 10, image_size=28, in_chans=1)
    info = model_info(model, name, (1, 28, 28))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert info.feature_sizes[-1][0] < 28


# ---------------------------------------------------------------------------- training subsets


def test_a_stratified_subset_has_its_size_each_class_its_share_and_grows_by_adding():
    labels = np.repeat(np.arange(4), [500, 300, 150, 50])  # imbalanced: 50/30/15/5 %
    small, large = stratified_subset(labels, 40, 0), stratified_subset(labels, 200, 0)
    assert len(small) == 40 and len(large) == 200 and len(np.unique(small)) == 40
    assert np.bincount(labels[small]).tolist() == [20, 12, 6, 2]
    assert np.bincount(labels[large]).tolist() == [100, 60, 30, 10]
    assert set(small) <= set(large)  # a smaller subset is part of every larger one
    assert np.array_equal(stratified_subset(labels, 40, 0), small)  # fixed by the seed
    assert not np.array_equal(stratified_subset(labels, 40, 1), small)
    assert np.bincount(labels[stratified_subset(labels, 4, 0)]).tolist() == [1, 1, 1, 1]
    with pytest.raises(DataError, match="train_size 1001 is larger than the training split"):
        stratified_subset(labels, 1001, 0)
    with pytest.raises(DataError, match="train_size must be a whole number ≥ 1, got 0"):
        stratified_subset(labels, 0, 0)


def test_train_size_cuts_the_training_split_only():
    full, cut = load_dataset("digits"), load_dataset("digits", train_size=100)
    assert len(cut.train) == cut.info.num_train == 100
    assert cut.train.labels.bincount().tolist() == [10] * 10
    assert set(cut.train.source_index.tolist()) <= set(full.train.source_index.tolist())
    assert torch.equal(cut.val.source_index, full.val.source_index)
    assert torch.equal(cut.test.source_index, full.test.source_index)
    batches = list(
        cut.train.batches(64, shuffle=False, generator=None, augment=False, device="cpu")
    )
    assert torch.cat([index for _, _, index in batches]).tolist() == list(range(100))


def test_train_size_is_in_the_run_key_only_when_set():
    base = TrialConfig(dataset="digits", student="resnet8", method="ce")
    assert "train_size" not in key_fields(base, 1)  # keys made before it existed still hold
    assert key_fields(base.with_changes(train_size=100), 1)["train_size"] == 100
    with pytest.raises(ConfigError, match="train_size"):
        base.with_changes(train_size=0)


def test_the_student_trains_on_the_subset_and_the_teacher_on_the_whole_split(monkeypatch):
    out = _train_json(
        monkeypatch,
        *("--dataset", "digits", "--student", "test_vgg", "--teacher", "test_vgg"),
        *("--method", "kd", "--image-size", "8", "--teacher-epochs", "1"),
    )
    assert out["status"] == "FINISHED"
    metas = [json.loads(p.read_text()) for p in cache_dir().glob("*/meta.json")]
    (meta,) = [
        m
        for m in metas
        if m["spec"]["arch"] == "test_vgg" and m["spec"]["recipe"]["image_size"] == 8
    ]
    assert meta["num_train"] == len(load_dataset("digits").train) > 100


def test_a_suite_gives_a_datasets_train_size_to_its_trials_not_its_teachers():
    suite = parse_suite(
        """
datasets: [{name: digits, train_size: 200}]
pairs: [{teacher: test_vgg, student: test_vgg}]
methods: [kd]
seeds: 1
"""
    )
    (trial,) = plan_trials(suite)
    assert trial.config.train_size == 200
    assert trial.config.teacher == TeacherSpec(arch="test_vgg", recipe=Recipe())
    for datasets, problem in (
        ("[{name: digits, train_size: 0}]", "datasets[0].train_size"),
        (
            "[digits, {name: digits, train_size: 5}]",
            "datasets[1]: dataset 'digits' is listed twice (also datasets[0])",
        ),
    ):
        with pytest.raises(SuiteError) as err:
            parse_suite(
                f"datasets: {datasets}\npairs: [{{teacher: test_vgg, student: test_vgg}}]\n"
                "methods: [kd]\nseeds: 1\n"
            )
        assert problem in str(err.value)
