"""SHA-256 of files' bytes, cached by (absolute path, size, mtime).

Run keys hold the content of the checkpoint files a trial loads (a teacher or a pretrained
student), not their paths, so that overwriting a file gives new keys. Hashing a large
checkpoint for every key (a sweep's dry run computes hundreds) would take long, so a digest
is kept in ``<kdbench home>/file-hashes.json`` and reused while the file's absolute path, size
and modification time (ns) are those it was computed for.

A file modified within :data:`SETTLE_SECONDS` of being hashed is not cached: file systems
with coarse timestamps can give a second write within that window the same mtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

from bench.atomic import write_json
from bench.paths import kdbench_home

#: A file whose mtime is this recent is hashed again on every call instead of being cached.
SETTLE_SECONDS = 2.0
#: At most this many files are remembered (the most recently hashed).
MAX_ENTRIES = 2000
CACHE_NAME = "file-hashes.json"
_CHUNK = 1 << 20

_memory: dict[tuple[str, int, int], str] = {}


def cache_file() -> Path:
    """Where the digests are kept."""
    return kdbench_home() / CACHE_NAME


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (64 hex digits) of ``path``'s bytes, from the cache when the file's path,
    size and mtime are unchanged.

    Raises:
        FileNotFoundError: ``path`` is not a file (the message names it).
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    stat = resolved.stat()
    ident = (str(resolved), stat.st_size, stat.st_mtime_ns)
    known = _memory.get(ident)
    if known is not None:
        return known
    entries = _read()
    entry = entries.get(ident[0])
    if entry is not None and (entry.get("size"), entry.get("mtime_ns")) == ident[1:]:
        _memory[ident] = str(entry["sha256"])
        return _memory[ident]
    digest = _hash(resolved)
    if time.time_ns() - stat.st_mtime_ns > SETTLE_SECONDS * 1e9:
        entries.pop(ident[0], None)
        entries[ident[0]] = {"size": ident[1], "mtime_ns": ident[2], "sha256": digest}
        _write(dict(list(entries.items())[-MAX_ENTRIES:]))
        _memory[ident] = digest
    return digest


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read() -> dict[str, dict]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: hashing again is always correct
    return data if isinstance(data, dict) else {}


def _write(entries: dict[str, dict]) -> None:
    """Replace the cache file atomically: concurrent writers lose entries, never corrupt it."""
    with contextlib.suppress(OSError):  # a read-only home only costs hashing again
        write_json(cache_file(), entries, indent=None)
