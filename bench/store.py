"""The run store checked before any work: the MLflow tracking URI a command records to (or
reads from) must be usable, or the command stops with one message naming the store and what
to do, before it trains, creates a run or starts Ray.

For an SQLite database (kdbench's default, ``<home>/mlflow.db``):

- its folder exists and can be written (SQLite writes its journal beside the database);
- an existing database can be written (a read-only file, folder or mount fails here rather
  than in MLflow's first ``INSERT``) and is not held locked by another process for more than
  :data:`LOCK_TIMEOUT_S` seconds;
- a database that is gone is not silently created anew when the records of its runs remain:
  the run folders under ``mlartifacts`` beside it (where kdbench keeps an SQLite store's
  artifacts) mean the database existed, and a new one would run every trial again and orphan
  those artifacts. A folder that holds another database as well is not taken as that sign:
  the artifacts may be that database's.

For an MLflow server (``http(s)://``), its health endpoint answers within
:data:`HEALTH_TIMEOUT_S` seconds. A file store (``file:`` or a bare path) that exists is a folder
that can be written. Other stores (databases MLflow reaches through SQLAlchemy, Databricks)
are left to MLflow.

This module imports nothing heavy: the sweep's workers and the command line call it before
MLflow is imported.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bench.config import ConfigError

#: Seconds a command waits for another process's lock on the database before it gives up.
LOCK_TIMEOUT_S = 5.0
#: Seconds an MLflow server has to answer its health check.
HEALTH_TIMEOUT_S = 5.0
#: The folder beside an SQLite database where kdbench keeps its runs' artifacts.
ARTIFACTS_FOLDER = "mlartifacts"
_ELSEWHERE = "or point --tracking-uri (or $MLFLOW_TRACKING_URI) at another store"


class StoreError(ConfigError):
    """The run store cannot be used; the message names it and what to do."""


def check_store(uri: str, *, write: bool = True, must_exist: bool = False) -> None:
    """Check the MLflow store at ``uri`` before any work (see the module docstring).

    Args:
        uri: The tracking URI.
        write: Whether the command records runs (else it only reads them).
        must_exist: Whether a store that does not exist yet is an error (a command that only
            reads), rather than one MLflow creates.

    Raises:
        StoreError: naming the store, what is wrong with it and what to do.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        unreachable = check_reachable(uri)
        if unreachable:
            raise StoreError(
                f"the MLflow server {uri} is not reachable: {unreachable}. Start it (`mlflow "
                f"server …`), {_ELSEWHERE}."
            )
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            _check_sqlite(path, write=write, must_exist=must_exist)
    elif scheme in ("", "file"):
        _check_file_store(Path(urllib.parse.urlparse(uri).path if scheme else uri), write=write)


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///…`` URI (``sqlite:////abs/path``, or a path
    relative to the working folder); None for an in-memory database."""
    if not uri.startswith("sqlite:///"):
        return None
    text = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(text) if text and text != ":memory:" else None


def health_url(uri: str) -> str | None:
    """The ``/health`` endpoint of an MLflow server URI; None for other stores."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    return uri.rstrip("/") + "/health"


def check_reachable(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> str | None:
    """None when the MLflow server at ``uri`` answers its health check (or ``uri`` names no
    server), else why not."""
    url = health_url(uri)
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"{url} answered HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url} did not answer ({reason})"


def orphaned_runs(path: Path) -> list[Path]:
    """The run folders under ``mlartifacts`` beside the database ``path``, when ``path`` does
    not exist and no other database in its folder could own them: the records of a store that
    is gone. Empty otherwise."""
    folder = path.parent
    if path.exists() or not (folder / ARTIFACTS_FOLDER).is_dir():
        return []
    if any(p != path and _is_sqlite(p) for p in folder.iterdir() if p.is_file()):
        return []
    runs = []
    for experiment in (folder / ARTIFACTS_FOLDER).iterdir():
        if experiment.is_dir():
            runs += [r for r in experiment.iterdir() if (r / "artifacts").is_dir()]
    return runs


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _check_sqlite(path: Path, *, write: bool, must_exist: bool) -> None:
    where = f"the MLflow database {path}"
    orphans = orphaned_runs(path)
    if orphans:
        artifacts = path.parent / ARTIFACTS_FOLDER
        raise StoreError(
            f"{where} is gone, but {artifacts} still holds the artifacts of {len(orphans)} "
            f"run{'s' if len(orphans) != 1 else ''} recorded in it; a new database would run "
            f"every trial again and orphan them. Restore {path.name} (from a backup), or, to "
            f"start a new store, move {artifacts} away, {_ELSEWHERE}."
        )
    if not path.exists():
        if must_exist:
            raise StoreError(
                f"{where} does not exist: nothing was recorded there. Run a sweep or `kdbench "
                f"train` first, {_ELSEWHERE}."
            )
        if write:
            _check_folder(path.parent, f"the folder of {where}")
        return
    if not path.is_file():
        raise StoreError(f"{where} is not a file. Remove what is there, {_ELSEWHERE}.")
    if write:
        _check_folder(path.parent, f"the folder of {where}")
    _probe(path, where, write=write)


def _check_folder(folder: Path, what: str) -> None:
    """``folder`` exists and a file can be created in it (tried, not inferred from its mode,
    which says nothing of read-only mounts or of a process with every privilege)."""
    if not folder.is_dir():
        raise StoreError(f"{what} ({folder}) does not exist. Create it, {_ELSEWHERE}.")
    try:
        handle, name = tempfile.mkstemp(prefix=".kdbench-write-probe-", dir=folder)
    except OSError as exc:
        raise StoreError(
            f"{what} ({folder}) cannot be written ({exc.strerror or exc}). Make it writable "
            f"for this user, {_ELSEWHERE}."
        ) from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(name)


def _probe(path: Path, where: str, *, write: bool) -> None:
    """Open the database as MLflow will: a write that is rolled back (or a read), waiting
    :data:`LOCK_TIMEOUT_S` seconds for another process's lock."""
    try:
        connection = sqlite3.connect(str(path), timeout=LOCK_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{where} cannot be opened ({exc}). {_fix(path, write)}") from None
    try:
        if write:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE main._kdbench_write_probe (x INTEGER)")
            connection.execute("ROLLBACK")
        else:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.OperationalError as exc:
        raise StoreError(_failure(path, where, str(exc), write)) from None
    except sqlite3.DatabaseError as exc:  # not a database at all
        raise StoreError(
            f"{where} is not an SQLite database ({exc}). Restore it from a backup, {_ELSEWHERE}."
        ) from None
    finally:
        connection.close()


def _failure(path: Path, where: str, error: str, write: bool) -> str:
    if "locked" in error or "busy" in error:
        return (
            f"{where} is locked by another process (still after {LOCK_TIMEOUT_S:g} s). Wait "
            f"for it to finish or stop it (`fuser {path}` names it), {_ELSEWHERE}."
        )
    if "readonly" in error or "read-only" in error or "unable to open" in error:
        return f"{where} cannot be {'written' if write else 'read'} ({error}). {_fix(path, write)}"
    return f"{where} cannot be used ({error}). {_fix(path, write)}"


def _fix(path: Path, write: bool = True) -> str:
    if not write:
        return f"Make {path} readable for this user, {_ELSEWHERE}."
    return (
        f"Make {path} and its folder writable for this user (its mode, a read-only mount, "
        f"`chattr +i`), {_ELSEWHERE}."
    )


def _check_file_store(folder: Path, *, write: bool) -> None:
    where = f"the MLflow file store {folder}"
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"{where} is not a folder. Remove what is there, {_ELSEWHERE}.")
    if write and folder.is_dir():
        _check_folder(folder, where)
