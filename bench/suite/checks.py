"""Generic checks of parsed suite YAML, shared by every section's validator.

Every check is a function of what it is given: the value, its key path, and a
:class:`Context` (the file's node tree, for line numbers, and the folder relative paths start
from). It returns the checked value (None when it is unusable) together with the problems it
found; nothing is remembered between calls, so sections can be checked in any order.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import yaml

from bench.api.params import ParamError, coerce_value, kind_text
from bench.suite.schema import RESOURCE_KEYS, Problem, Resources

T = TypeVar("T")
#: A key path inside the suite: mapping keys and list indices, e.g. ``("methods", 2, "name")``.
KeyPath = tuple[Any, ...]


class Found(list[Problem]):
    """The problems one check found; :meth:`take` and :meth:`passed` add those of the checks
    it calls. Each check makes its own and returns it: nothing is shared between calls."""

    def take(self, checked: tuple[T, Sequence[Problem]]) -> T:
        """The value of ``checked``, after keeping its problems."""
        value, problems = checked
        self.extend(problems)
        return value

    def passed(self, problems: Sequence[Problem]) -> bool:
        """Whether ``problems`` is empty, after keeping them."""
        self.extend(problems)
        return not problems

    def fits(self, value: object, tp: type[T], ctx: Context, path: KeyPath) -> TypeGuard[T]:
        """Whether ``value`` fits the plain type ``tp`` (see :func:`typed`), after keeping the
        problem if it does not. ``value`` is left as given, not converted.

        The check is strict (YAML's scalars are never parsed), so a value that fits is a
        ``tp`` as type checkers see one (an integer counts as a float); ``value`` comes first
        so that they narrow it.
        """
        return self.passed(misfit(ctx, value, tp, path))


@dataclass(frozen=True)
class Context:
    """What checks need to know about the suite file beyond the value they check.

    Attributes:
        root: The file's YAML node tree (None for an empty file), for line numbers.
        base: The folder that relative paths (checkpoints, data roots, plugins) start from.
        import_plugins: Whether the suite's ``plugins:`` files are imported (a sweep), or only
            found (a dry run, which executes nothing).
        unloaded: Whether methods may come from plugin files that were not imported: a method
            name that is not registered is then set aside, unchecked, instead of reported.
    """

    root: yaml.Node | None
    base: Path
    import_plugins: bool = True
    unloaded: bool = False

    def problem(self, path: KeyPath, message: str) -> Problem:
        """A problem at ``path``, with the line of the key or value it names."""
        return Problem(render_path(path), message, line_of(self.root, path))

    def local_path(self, value: str) -> str:
        """``value`` as an absolute path, relative ones taken from :attr:`base`."""
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (self.base / path).resolve())


def render_path(path: KeyPath) -> str:
    """``("methods", 2, "name")`` → ``methods[2].name``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(root: yaml.Node | None, path: KeyPath) -> int | None:
    """The 1-based line of ``path`` in the file: of the key when the path ends at a mapping
    key, else of the value; of the deepest existing part when the rest is missing."""
    node = root
    for depth, part in enumerate(path):
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            key, value = match[-1]
            # An error about a key points at the key; one about a value at the value.
            node = key if depth == len(path) - 1 else value
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1 if node is not None else None


def duplicate_keys(node: yaml.Node | None, path: KeyPath = ()) -> list[Problem]:
    """Keys given twice anywhere under ``node`` (YAML itself keeps the last silently)."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                problems.append(
                    Problem(
                        render_path((*path, key.value)),
                        "key given twice; YAML would silently keep the last one",
                        key.start_mark.line + 1,
                    )
                )
            seen.add(key.value)
            problems += duplicate_keys(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, (*path, i))
    return problems


def unknown(kind: str, name: str, known: Sequence[str]) -> str:
    """The message for an unknown name: close names as suggestions, then the known ones."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    listed = ", ".join(list(known)[:30])
    return f"unknown {kind} {name!r}.{hint} Known: {listed}."


def mapping(
    ctx: Context, value: Any, path: KeyPath, keys: Sequence[str], what: str = "key"
) -> tuple[dict | None, list[Problem]]:
    """``value`` as a mapping whose keys are all in ``keys``; each unknown key is a problem
    (with suggestions) but does not make the mapping unusable."""
    if not isinstance(value, dict):
        expected = f"expected a mapping with keys {', '.join(keys)}; got {kind_text(value)}"
        return None, [ctx.problem(path, expected)]
    found = [ctx.problem((*path, k), unknown(what, str(k), keys)) for k in value if k not in keys]
    return value, found


def typed(ctx: Context, value: Any, tp: Any, path: KeyPath) -> tuple[Any, list[Problem]]:
    """``value`` converted to the annotation ``tp`` as YAML types it (strings are never read
    as numbers); None and the problem when it does not fit (check ``problems``, not the value,
    since null may be a fitting value)."""
    try:
        return coerce_value(value, tp, where=render_path(path), strict=True), []
    except ParamError as exc:
        return None, [ctx.problem(path, exc.reason)]


def misfit(ctx: Context, value: Any, tp: Any, path: KeyPath) -> list[Problem]:
    """The problem of ``value`` not fitting ``tp``, if it does not (see :func:`typed`)."""
    return typed(ctx, value, tp, path)[1]


def first_misfit(ctx: Context, items: Iterable[tuple[Any, KeyPath]], tp: Any) -> list[Problem]:
    """The problem of the first of ``items`` (value, path) that does not fit ``tp``: the rest
    of a list usually repeats the same mistake."""
    for value, path in items:
        problems = misfit(ctx, value, tp, path)
        if problems:
            return problems
    return []


def nonempty_list(
    ctx: Context, value: Any, path: KeyPath, what: str
) -> tuple[list | None, list[Problem]]:
    """``value`` as a list of at least one ``what``."""
    if isinstance(value, str | dict) or not isinstance(value, list):
        return None, [ctx.problem(path, f"expected a list of {what}; got {kind_text(value)}")]
    if not value:
        return None, [ctx.problem(path, f"empty: the grid needs at least one {what.rstrip('s')}")]
    return value, []


def unique(
    ctx: Context, items: Sequence[T], path: KeyPath, what: str
) -> tuple[tuple[T, ...] | None, list[Problem]]:
    """``items`` as a tuple; the first one listed twice is a problem."""
    seen = set()
    for i, item in enumerate(items):
        if item in seen:
            return None, [ctx.problem((*path, i), f"duplicate {what}: {item!r} is listed twice")]
        seen.add(item)
    return tuple(items), []


def entries(
    ctx: Context,
    value: Any,
    key: str,
    what: str,
    parse: Callable[[Any, KeyPath], tuple[T | None, list[Problem]]],
) -> tuple[tuple[T, ...] | None, list[Problem]]:
    """The list under the suite's top-level ``key``: at least one item, each read by
    ``parse(item, path)``, none listed twice (``what`` names one item in messages)."""
    found = Found()
    items = found.take(nonempty_list(ctx, value, (key,), key))
    if items is None:
        return None, found
    out = []
    for i, item in enumerate(items):
        entry = found.take(parse(item, (key, i)))
        if entry is not None:
            out.append(entry)
    return found.take(unique(ctx, out, (key,), what)), found


def frozen(value: Any) -> Any:
    """A hashable copy of a YAML value: lists become tuples, mappings sorted pairs."""
    if isinstance(value, list | tuple):
        return tuple(frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, frozen(v)) for k, v in value.items()))
    return value


def resources(ctx: Context, value: Any, path: KeyPath) -> tuple[Resources | None, list[Problem]]:
    """A resource request (``{cpu: 1, gpu: 0.25}``) of the suite, its teachers or a method."""
    found = Found()
    entry = found.take(mapping(ctx, value, path, RESOURCE_KEYS))
    if entry is None:
        return None, found
    cpu, gpu = entry.get("cpu", 1.0), entry.get("gpu", 0.0)
    # Both are checked, so that two wrong numbers are reported together.
    bad = [*misfit(ctx, cpu, float, (*path, "cpu")), *misfit(ctx, gpu, float, (*path, "gpu"))]
    if not found.passed(bad):
        return None, found
    if cpu <= 0:
        return None, [*found, ctx.problem((*path, "cpu"), f"must be > 0, got {cpu}")]
    if gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
        message = (
            f"must be a fraction in [0, 1] or a whole number of GPUs, got {gpu} "
            "(Ray cannot split a trial across part of a second card)"
        )
        return None, [*found, ctx.problem((*path, "gpu"), message)]
    return Resources(float(cpu), float(gpu)), found
