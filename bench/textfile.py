"""Text files that kdbench reads (suites, CSV tables), decoded as UTF-8 with one clear message
when a file is not."""

from __future__ import annotations

from pathlib import Path

from bench.config import ConfigError


class TextFileError(ConfigError):
    """A text file that cannot be read or decoded; the message names it and the fix."""


def not_utf8(path: str | Path, exc: UnicodeDecodeError) -> str:
    """The message for a file that is not UTF-8: the file, where its first undecodable byte
    is and how to convert it."""
    return f"{path}: {utf8_problem(path, exc)}"


def utf8_problem(path: str | Path, exc: UnicodeDecodeError) -> str:
    """:func:`not_utf8` without the file's name in front."""
    bad = bytes(exc.object[exc.start : exc.start + 1]).hex()
    fixed = Path(path).with_name(f"{Path(path).stem}-utf8{Path(path).suffix}")
    return (
        f"not UTF-8 text (byte 0x{bad} at offset {exc.start} cannot be decoded) — save it as "
        f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > {fixed}`, and use that"
    )


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``.

    Raises:
        TextFileError: The file cannot be read or is not UTF-8.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TextFileError(f"{path}: cannot be read ({exc.strerror}) — check the path") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextFileError(not_utf8(path, exc)) from None
