"""Reading a suite: a ``suite.yaml`` (or its folder) or YAML text → a validated
:class:`~bench.suite.schema.Suite`, or a :class:`~bench.suite.schema.SuiteError` listing every
problem found."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from bench.config import ConfigError
from bench.suite.checks import Context
from bench.suite.expand import plan_trials
from bench.suite.schema import NAME_PATTERN, SUITE_FILE, Problem, Suite, SuiteError
from bench.suite.validate import validate_suite
from bench.textfile import utf8_problem


def suite_path(path: str | Path) -> Path:
    """A suite file from a path to the file or to its folder (``leaderboards/digits``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / SUITE_FILE
    if not path.is_file():
        raise SuiteError(
            str(path), [Problem("", "no such suite file (give a suite.yaml or its folder)")]
        )
    return path


def load_suite(
    path: str | Path, *, import_plugins: bool = True, unloaded_plugins: bool = False
) -> Suite:
    """Read and validate a suite file (or the ``suite.yaml`` in a folder); the options are
    :func:`parse_suite`'s.

    Raises:
        SuiteError: listing every problem with its key path and line.
    """
    file = suite_path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(str(file), [Problem("", utf8_problem(file, exc))]) from None
    return parse_suite(
        text,
        source=str(file),
        base=file.parent,
        import_plugins=import_plugins,
        unloaded_plugins=unloaded_plugins,
    )


def parse_suite(
    text: str,
    *,
    source: str = "<suite>",
    base: Path | None = None,
    import_plugins: bool = True,
    unloaded_plugins: bool = False,
) -> Suite:
    """Validate suite YAML text.

    Args:
        text: The YAML.
        source: Its file name, for messages.
        base: Folder that relative paths (checkpoints, data roots, plugins) are relative to.
        import_plugins: Import the suite's ``plugins:`` files; when false (a dry run, which
            executes nothing) they are only found, and the entries of methods that are not
            registered are set aside unchecked (:attr:`Suite.unloaded_methods`).
        unloaded_plugins: Further plugin files (the command line's) were not imported either:
            unregistered methods are set aside even when the suite lists no plugins.

    Raises:
        SuiteError: listing every problem with its key path and line.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(source, [Problem("", f"not valid YAML: {reason}", line)]) from None
    unloaded = not import_plugins and unloaded_plugins
    ctx = Context(root, base or Path.cwd(), import_plugins=import_plugins, unloaded=unloaded)
    suite, problems = validate_suite(ctx, data, _default_name(source))
    if problems or suite is None:
        raise SuiteError(source, problems)
    try:
        trials = plan_trials(suite)
    except ConfigError as exc:
        raise SuiteError(source, [Problem("", str(exc))]) from None
    if not trials and not suite.unloaded_methods:
        raise SuiteError(source, [Problem("", "the suite expands to no trials")])
    return dataclasses.replace(suite, path=source if base else None)


def _default_name(source: str) -> str:
    path = Path(source)
    name = path.parent.name if path.name == SUITE_FILE else path.stem
    return name if NAME_PATTERN.match(name or "") else "suite"
