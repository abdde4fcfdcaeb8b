"""Files written whole or not at all.

A cache entry or a saved state is written to a temporary file beside its destination, flushed
to the disk and renamed over it: a reader (another process, or the next run after a crash or
a full disk) sees the previous file or the new one, never a part of one. The temporary name
carries the process id, so concurrent writers of one path do not write into each other's file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with replacing(path) as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any, *, indent: int | None = 1) -> None:
    """Write ``value`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=indent))


def torch_save(obj: object, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch  # here, so that the text writers above need no torch

    with replacing(path) as handle:
        torch.save(obj, handle)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file whose content replaces ``path`` when the block ends without an error
    (the parent folder is created; on an error ``path`` is left as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    # The rename is durable once the folder's entry is on disk; some file systems cannot
    # open a folder for that, and then the rename is as durable as they make it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
