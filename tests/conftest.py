"""Shared test configuration: offline hubs, a private kdbench home, fixture regeneration."""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Tests never touch the user's ~/.kdbench or tracking server: one private home per session
# (teachers trained by one test are reused by the next, as they would be for a user).
os.environ["KDBENCH_HOME"] = tempfile.mkdtemp(prefix="kdbench-test-home-")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

from bench.data.locate import SYSTEM_DATA_ROOTS


def pytest_addoption(parser):
    parser.addoption(
        "--regen-fidelity",
        action="store_true",
        default=False,
        help="rewrite the fidelity fixture files from the reference computations in the tests",
    )


@pytest.fixture(autouse=True)
def no_machine_datasets(monkeypatch):
    """Tests see no dataset of this machine: the system's data folders and KDBENCH_DATA are
    left out of the search, so a test finds only the files it made (tests of the installed
    package ask for :func:`system_datasets`)."""
    from bench.data import locate

    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", ())
    monkeypatch.delenv(locate.DATA_ENV, raising=False)


@pytest.fixture
def system_datasets(monkeypatch):
    """The system's data folders as kdbench searches them outside the tests."""
    from bench.data import locate

    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", SYSTEM_DATA_ROOTS)
    return SYSTEM_DATA_ROOTS


@pytest.fixture(scope="session")
def idx_images(tmp_path_factory) -> dict[str, Path]:
    """Full-size MNIST-like image files (60,000 and 10,000 images of 28×28, a pattern each),
    plain and gzipped, written once: datasets verify the counts, so smaller files fail."""
    folder = tmp_path_factory.mktemp("idx-images")
    out = {}
    for name, count in (("train-images-idx3-ubyte", 60_000), ("t10k-images-idx3-ubyte", 10_000)):
        out[name] = write_idx(folder / name, idx_pattern(count))
        out[name + ".gz"] = write_idx(folder / (name + ".gz"), idx_pattern(count), gz=True)
    return out


def idx_pattern(count: int) -> np.ndarray:
    """``count`` distinct 28×28 uint8 images: image i is (7·i + pixel index) mod 256."""
    steps = np.arange(count, dtype=np.uint8)[:, None, None] * np.uint8(7)
    return steps + np.arange(784, dtype=np.uint8).reshape(1, 28, 28)


def idx_labels(count: int) -> np.ndarray:
    """Balanced labels 0..9, label i mod 10 for sample i."""
    return (np.arange(count) % 10).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """``array`` as an idx file of unsigned bytes (gzipped with ``gz``)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return path


@pytest.fixture
def make_idx(idx_images):
    """``make_idx(folder, gz=False, labels=None)`` fills ``folder`` with a complete
    MNIST-like dataset: the shared image files (linked) and balanced label files; ``labels``
    maps a labels file's name to the array to write instead."""

    def make(folder: Path, *, gz: bool = False, labels: dict | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".gz" if gz else ""
        for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
            (folder / (name + suffix)).symlink_to(idx_images[name + suffix])
        for name, count in (
            ("train-labels-idx1-ubyte", 60_000),
            ("t10k-labels-idx1-ubyte", 10_000),
        ):
            array = (labels or {}).get(name, idx_labels(count))
            write_idx(folder / (name + suffix), array, gz=gz)
        return folder

    return make
