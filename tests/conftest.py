"""Shared test configuration: offline hubs, a private kdbench home, fixture regeneration."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Tests never touch the user's ~/.kdbench or tracking server: one private home per session
# (teachers trained by one test are reused by the next, as they would be for a user).
os.environ["KDBENCH_HOME"] = tempfile.mkdtemp(prefix="kdbench-test-home-")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def pytest_addoption(parser):
    parser.addoption(
        "--regen-fidelity",
        action="store_true",
        default=False,
        help="rewrite the fidelity fixture files from the reference computations in the tests",
    )
