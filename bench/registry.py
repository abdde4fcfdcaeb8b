"""One generic registry for everything kdbench looks up by name: methods, models, datasets.

A :class:`Registry` maps names to objects. Registering a name twice raises and names both
origins (file and line); looking up an unknown name raises :class:`UnknownNameError` with
close-match suggestions and the list of what exists. Entries can also be *broken*: a plugin
that failed to import is recorded with its error, listed, and only fails when selected.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(Exception):
    """Base class of registry errors; the CLI turns these into exit status 2."""


class UnknownNameError(RegistryError, KeyError):
    """A name that is not registered. Carries the suggestions it printed."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = available
        self.suggestions = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        super().__init__(name)

    def __str__(self) -> str:
        msg = f"unknown {self.kind} {self.name!r}."
        if self.suggestions:
            msg += " Did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        shown = ", ".join(self.available[:40])
        more = f", … ({len(self.available)} in all)" if len(self.available) > 40 else ""
        msg += f" Available {self.kind}s: {shown}{more}."
        return msg


class DuplicateNameError(RegistryError):
    """A name registered twice."""


class BrokenEntryError(RegistryError):
    """A registered plugin that failed to import, selected by name."""


@dataclass(frozen=True)
class Broken:
    """A plugin that could not be imported: where it came from and why it failed."""

    name: str
    origin: str
    error: str


def _origin_of(obj: object) -> str:
    """Where an object was defined, as ``file:line``, for duplicate-registration messages."""
    try:
        target = inspect.unwrap(obj) if callable(obj) else obj
        file = inspect.getsourcefile(target) or inspect.getfile(target)  # type: ignore[arg-type]
        _, line = inspect.getsourcelines(target)  # type: ignore[arg-type]
        return f"{file}:{line}"
    except (TypeError, OSError):
        module = getattr(obj, "__module__", None)
        return module or repr(obj)


class Registry(Generic[T]):
    """A name → object mapping with helpful errors.

    Args:
        kind: What the entries are, singular ("method", "model", "dataset"); used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._broken: dict[str, Broken] = {}

    def register(
        self, name: str, obj: T | None = None, *, origin: str | None = None
    ) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Raises:
            DuplicateNameError: ``name`` is taken; the message names both origins.
            ValueError: ``name`` is empty or has whitespace.
        """
        if not name or name != name.strip() or any(c.isspace() for c in name):
            raise ValueError(f"{self.kind} name {name!r} must be non-empty with no whitespace")

        def add(target: T) -> T:
            where = origin or _origin_of(target)
            if name in self._entries or name in self._broken:
                first = self._origins.get(name) or self._broken[name].origin
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is registered twice: first at {first}, again at "
                    f"{where}. Rename one of them."
                )
            self._entries[name] = target
            self._origins[name] = where
            return target

        if obj is None:
            return add
        return add(obj)

    def mark_broken(self, name: str, origin: str, error: str) -> None:
        """Record a plugin that failed to import; selecting it raises with ``error``."""
        if name not in self._entries:
            self._broken[name] = Broken(name=name, origin=origin, error=error)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by plugin reloading)."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)
        self._broken.pop(name, None)

    def get(self, name: str) -> T:
        """The object registered under ``name``.

        Raises:
            UnknownNameError: no such name; suggests close names.
            BrokenEntryError: the plugin behind ``name`` failed to import.
        """
        if name in self._entries:
            return self._entries[name]
        if name in self._broken:
            b = self._broken[name]
            raise BrokenEntryError(
                f"{self.kind} {name!r} from {b.origin} failed to import: {b.error}"
            )
        raise UnknownNameError(self.kind, name, self.names())

    def origin(self, name: str) -> str:
        """Where ``name`` was registered (``file:line``)."""
        self.get(name)
        return self._origins[name]

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a glob such as ``resnet*``."""
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def broken(self) -> list[Broken]:
        """Plugins that failed to import, sorted by name."""
        return [self._broken[k] for k in sorted(self._broken)]

    def items(self, pattern: str | None = None) -> Iterator[tuple[str, T]]:
        """(name, object) pairs in name order, optionally filtered by a glob."""
        for n in self.names(pattern):
            yield n, self._entries[n]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries, {len(self._broken)} broken)"
