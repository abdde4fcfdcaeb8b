"""Where kdbench keeps its state: the kdbench home folder (``KDBENCH_HOME``, default
``~/.kdbench``) holds the default MLflow database, artifacts and the teacher cache."""

from __future__ import annotations

import os
from pathlib import Path


def kdbench_home() -> Path:
    home = Path(os.environ.get("KDBENCH_HOME", Path.home() / ".kdbench")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
