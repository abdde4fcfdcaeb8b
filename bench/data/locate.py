"""Where a dataset's files are: the data roots searched, the layouts a dataset's files may
have under a root, and the one message that says what was found when they are not there.

The roots, in order: the folder given (``--data-root``, a suite's ``data_root``), each folder
of ``KDBENCH_DATA`` (separated by ``:``), and the folders where system packages install
datasets (:data:`SYSTEM_DATA_ROOTS`: Debian's ``/usr/share/datasets``). Under each root every
layout of the dataset is tried (torchvision's ``FashionMNIST/raw/`` and Debian's
``fashion-mnist/``, say); the first root and layout holding every file is used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.data.base import DataError

#: The environment variable naming further data roots (``os.pathsep``-separated).
DATA_ENV = "KDBENCH_DATA"
#: Where system packages put datasets (Debian's ``dataset-fashion-mnist`` installs
#: ``/usr/share/datasets/fashion-mnist/``); searched after the folders given.
SYSTEM_DATA_ROOTS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
_GZIP = ".gz"


@dataclass(frozen=True)
class DataRoot:
    """A folder searched for datasets, and why it is searched.

    Attributes:
        path: The folder.
        origin: ``--data-root``, ``KDBENCH_DATA`` or ``system``.
    """

    path: Path
    origin: str


@dataclass(frozen=True)
class Layout:
    """One way a dataset's files lie under a data root.

    Attributes:
        folder: The folder of the files, relative to the root (``""``: the root itself).
        names: The files' names.
        gzip: Each file may instead be gzipped, named with ``.gz`` added (the plain file is
            preferred when both are there).
    """

    folder: str
    names: tuple[str, ...]
    gzip: bool = False

    def where(self, root: Path) -> Path:
        """The folder of the files under ``root``."""
        return root / self.folder if self.folder else root

    def file(self, root: Path, name: str) -> Path | None:
        """The file holding ``name`` under ``root``, plain or gzipped, or None."""
        plain = self.where(root) / name
        if plain.is_file():
            return plain
        packed = plain.with_name(name + _GZIP)
        return packed if self.gzip and packed.is_file() else None

    def files(self, root: Path) -> tuple[Path, ...] | None:
        """Every file under ``root``, in :attr:`names` order, or None if one is missing."""
        found = [self.file(root, name) for name in self.names]
        return None if any(f is None for f in found) else tuple(f for f in found if f)

    def describe(self, root: Path) -> str:
        """What of this layout is under ``root``, for messages."""
        folder = self.where(root)
        if not folder.is_dir():
            return "no such folder"
        missing = [n for n in self.names if self.file(root, n) is None]
        there = len(self.names) - len(missing)
        return f"{there} of {len(self.names)} files there; missing {', '.join(missing)}"


@dataclass(frozen=True)
class DataFiles:
    """Where a dataset's files may lie and how to get them.

    Attributes:
        layouts: The layouts tried under every data root, in order.
        url: The official release, for messages.
        package: A system package that installs them (Debian's name), or None.

    ``--download`` fetches them into the first layout (torchvision's download: official URLs
    and checksums).
    """

    layouts: tuple[Layout, ...]
    url: str
    package: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.layouts[0].names

    def locate(self, roots: Sequence[DataRoot]) -> DataRoot | None:
        """The first of ``roots`` under which a layout holds every file, or None."""
        for root in roots:
            if any(layout.files(root.path) is not None for layout in self.layouts):
                return root
        return None

    def package_folder(self) -> Path | None:
        """Where the system package puts the files (the last layout, under the first system
        root), or None when there is no package."""
        if self.package is None or not SYSTEM_DATA_ROOTS:
            return None
        return self.layouts[-1].where(SYSTEM_DATA_ROOTS[0])


def data_roots(root: Path | None) -> list[DataRoot]:
    """The folders searched, in order: ``root``, ``KDBENCH_DATA``'s folders, the system's."""
    roots = [] if root is None else [DataRoot(Path(root).expanduser(), "--data-root")]
    roots += [DataRoot(p, DATA_ENV) for p in env_roots()]
    roots += [DataRoot(p, "system") for p in SYSTEM_DATA_ROOTS]
    unique: dict[Path, DataRoot] = {}
    for r in roots:
        unique.setdefault(r.path, r)
    return list(unique.values())


def env_roots() -> list[Path]:
    """The folders of ``KDBENCH_DATA``, in order (empty entries skipped)."""
    raw = os.environ.get(DATA_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def download_root(root: Path | None) -> Path | None:
    """Where ``--download`` puts files: ``root``, else the first folder of ``KDBENCH_DATA``."""
    if root is not None:
        return Path(root).expanduser()
    env = env_roots()
    return env[0] if env else None


def find_or_explain(
    dataset: str, files: DataFiles, root: Path | None, download: bool
) -> tuple[Path, bool]:
    """The data root to read ``dataset`` from, and whether the reader must download there.

    Args:
        dataset: The dataset's name, for messages.
        files: Its files.
        root: The folder given (``--data-root``), searched first.
        download: Whether files found nowhere may be downloaded.

    Raises:
        DataError: The files are nowhere, and cannot be downloaded (not asked, or no folder
            to download into); the message lists what was found where and how to get them.
    """
    roots = data_roots(root)
    found = files.locate(roots)
    if found is not None:
        return found.path, False
    target = download_root(root)
    if download and target is not None:
        return target, True
    if download:
        fix = "give --data-root DIR (or set KDBENCH_DATA) to say where --download puts the files"
        if files.package:
            fix += f", or {_install(files)}"
        raise DataError(f"{not_found(dataset, files, roots)}\nTo fix: {fix}.")
    raise DataError(f"{not_found(dataset, files, roots)}\nTo fix: {how_to_get(files, root)}.")


def not_found(dataset: str, files: DataFiles, roots: Sequence[DataRoot], head: str = "") -> str:
    """What was searched and found, as the start of a message (no advice)."""
    names = _names(files)
    lines = [
        head or f"dataset {dataset!r} was not found.",
        f"It needs {names} in one folder; searched:",
    ]
    for r in roots:
        for layout in files.layouts:
            lines.append(f"  {layout.where(r.path)} ({r.origin}): {layout.describe(r.path)}")
    if not env_roots():
        lines.append(f"({DATA_ENV} is not set; it may name further folders, separated by ':'.)")
    return "\n".join(lines)


def how_to_get(files: DataFiles, root: Path | None, *, download_failed: bool = False) -> str:
    """The ways to get the files, for the end of a message: the system package where there
    is one, then ``--download`` (unless it was just tried and failed) or placing the official
    files by hand."""
    folder = download_root(root)
    place = (
        f"place the official files ({files.url}) in {files.layouts[0].where(folder or Path('DIR'))}"
    )
    fetch = f"fetch them with `--data-root {folder or 'DIR'} --download`"
    if files.package:
        return f"{_install(files)}, or {place if download_failed else fetch}"
    return place if download_failed else f"{fetch}, or {place}"


def _install(files: DataFiles) -> str:
    where = files.package_folder()
    return f"install them with `apt-get install {files.package}`" + (
        f" (it puts them in {where})" if where else ""
    )


def _names(files: DataFiles) -> str:
    names = list(files.names)
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    if any(layout.gzip for layout in files.layouts):
        text += " (each plain or gzipped, .gz)"
    return text


class DownloadFailed(DataError):
    """A reader's download did not bring the files (the network, the server, a checksum).

    The reader raises it with the cause; :func:`download_failed` makes the user's message.
    """


def download_failed(
    dataset: str, files: DataFiles, root: Path | None, error: DownloadFailed
) -> DataError:
    """The message for a download that failed: what was searched and found, the cause, and
    the way to get the files that does not involve ``--download`` again."""
    target = files.layouts[0].where(download_root(root) or Path("DIR"))
    cause = " ".join(str(error).split())  # torchvision's causes span several lines
    head = f"dataset {dataset!r} was not found, and downloading it into {target} failed: {cause}"
    fix = how_to_get(files, root, download_failed=True)
    return DataError(f"{not_found(dataset, files, data_roots(root), head)}\nTo fix: {fix}.")
