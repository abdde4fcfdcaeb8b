"""Shared test configuration: offline hubs, a private kdbench home, fixture regeneration."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_addoption(parser):
    parser.addoption(
        "--regen-fidelity",
        action="store_true",
        default=False,
        help="rewrite the fidelity fixture files from the reference computations in the tests",
    )
