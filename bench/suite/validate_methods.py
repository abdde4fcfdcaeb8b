"""Validation of a suite's methods (their params, search spaces and resources), its study, its
compression post-stage and the entries its leaderboard compares with.

Params and search candidates go through :func:`bench.api.coerce_value` (strict, as YAML types
them) once, here: a :class:`~bench.suite.schema.MethodEntry` holds values of each field's type,
and the trials it expands to carry them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from bench.entry_spec import SPEC_KEYS, EntrySpec, EntrySpecError, parse_entry_spec, same_settings
from bench.suite.checks import (
    Context,
    Found,
    KeyPath,
    entries,
    first_misfit,
    frozen,
    mapping,
    misfit,
    nonempty_list,
    resources,
    typed,
    unique,
    unknown,
)
from bench.suite.schema import (
    COMPRESS_KEYS,
    LEADERBOARD_KEYS,
    METHOD_KEYS,
    STUDY_KEYS,
    TEACHER_EPOCH,
    Compression,
    LeaderboardAnchors,
    MethodEntry,
    Pair,
    Problem,
    Study,
)

if TYPE_CHECKING:
    from bench.api import Method

Search = tuple[tuple[str, tuple[Any, ...]], ...]


def methods(
    ctx: Context, value: Any, phase: Any
) -> tuple[tuple[MethodEntry, ...] | None, list[Problem]]:
    """The suite's method entries (``ce`` or ``{name, params, search, resources}``)."""
    return entries(ctx, value, "methods", "method entry", partial(method_entry, ctx, phase=phase))


def method_entry(
    ctx: Context, item: Any, path: KeyPath, phase: Any
) -> tuple[MethodEntry | None, list[Problem]]:
    """One entry of ``methods:``."""
    found = Found()
    if isinstance(item, str):
        item = {"name": item}  # a bare name: the method's default params
    entry = found.take(mapping(ctx, item, path, METHOD_KEYS))
    if entry is None:
        return None, found
    name = entry.get("name")
    if not found.fits(name, str, ctx, (*path, "name")):
        return None, found
    cls = found.take(method_class(ctx, name, (*path, "name")))
    if cls is None:
        return None, found
    params = found.take(params_of(ctx, cls, entry.get("params", {}), (*path, "params")))
    search = found.take(search_of(ctx, cls, entry.get("search"), (*path, "search"), phase))
    own = None
    if "resources" in entry:
        own = found.take(resources(ctx, entry["resources"], (*path, "resources")))
    if params is None or search is None:
        return None, found
    overlap = sorted(set(params) & {k for k, _ in search})
    if overlap:
        both = f"{', '.join(overlap)} both fixed in params and searched; pick one"
        return None, [*found, ctx.problem(path, both)]
    return MethodEntry(name, tuple(sorted(params.items())), search, own), found


def method_class(
    ctx: Context, name: str, path: KeyPath
) -> tuple[type[Method] | None, list[Problem]]:
    """The registered method class of ``name``, or the problem: an unknown name with close
    ones, or a method whose file failed to import."""
    from bench.plugins import get_method
    from bench.registry import RegistryError

    try:
        return get_method(name), []
    except RegistryError as exc:
        suggestions = getattr(exc, "suggestions", None)
        if suggestions is None:
            return None, [ctx.problem(path, str(exc))]
        if ctx.unloaded:  # perhaps a method of the plugin files that were not imported
            return None, []
        hint = f" Did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
        message = f"unknown method {name!r}.{hint} See `kdbench ls methods`."
        return None, [ctx.problem(path, message)]


def params_of(
    ctx: Context, cls: type[Method], value: Any, path: KeyPath
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """A method entry's fixed params, each converted to its field's type; every unknown name
    and wrong value is reported."""
    fields = cls.Params.fields()
    found = Found()
    entry = found.take(mapping(ctx, value, path, tuple(fields), f"parameter of {cls.name}"))
    if entry is None:
        return None, found
    out = {}
    for key, raw in entry.items():
        if key not in fields:
            continue  # reported by mapping()
        converted, problems = typed(ctx, raw, fields[key], (*path, key))
        if found.passed(problems):
            out[key] = frozen(converted)
    return (out if len(out) == len(entry) else None), found


def search_of(
    ctx: Context, cls: type[Method], value: Any, path: KeyPath, phase: Any
) -> tuple[Search | None, list[Problem]]:
    """A method entry's search space (phase tune only), sorted by name; ``default`` is the
    method's own ``search_space``. Empty when not given."""
    if value is None:
        return (), []
    if phase != "tune":
        return None, [
            ctx.problem(
                path,
                "search spaces belong to phase: tune; a final suite runs fixed params "
                "(put the chosen values in params)",
            )
        ]
    if value == "default":
        if not cls.search_space:
            message = f"method {cls.name!r} declares no search_space; give one here"
            return None, [ctx.problem(path, message)]
        value = {k: list(v) for k, v in cls.search_space.items()}
    fields = cls.Params.fields()
    found = Found()
    entry = found.take(mapping(ctx, value, path, tuple(fields), f"parameter of {cls.name}"))
    if entry is None:
        return None, found
    out = []
    for key, candidates in entry.items():
        if key in fields:
            values = found.take(search_values(ctx, candidates, fields[key], (*path, key)))
            if values is not None:
                out.append((key, values))
    if len(out) != len(entry):
        return None, found
    if not out:
        message = "empty search space: give at least one parameter with candidates"
        return None, [*found, ctx.problem(path, message)]
    return tuple(sorted(out)), found


def search_values(
    ctx: Context, candidates: Any, tp: Any, path: KeyPath
) -> tuple[tuple[Any, ...] | None, list[Problem]]:
    """One parameter's candidates, each converted to the field's type ``tp``."""
    if not isinstance(candidates, list) or not candidates:
        expected = f"expected a non-empty list of candidate values; got {candidates!r}"
        return None, [ctx.problem(path, expected)]
    converted = []
    for candidate in candidates:
        value, problems = typed(ctx, candidate, tp, path)
        if problems:
            return None, problems  # the first wrong candidate; the others likely repeat it
        converted.append(frozen(value))
    return tuple(converted), []


def study(
    ctx: Context,
    value: Any,
    entries: Sequence[MethodEntry] | None,
    pairs: Sequence[Pair] | None,
) -> tuple[Study | None, list[Problem]]:
    """What the suite studies: a parameter of one of its methods, or the teacher's epochs."""
    found = Found()
    entry = found.take(mapping(ctx, value, ("study",), STUDY_KEYS))
    if entry is None or entries is None or pairs is None:
        return None, found
    parameter, method = entry.get("parameter"), entry.get("method", "kd")
    # As with first_misfit(), only the first value that does not fit is reported.
    if not (
        found.fits(parameter, str, ctx, ("study", "parameter"))
        and found.fits(method, str, ctx, ("study", "method"))
    ):
        return None, found
    listed = [m for m in entries if m.name == method]
    if not listed and ctx.unloaded:
        return None, found  # a study of a method whose plugin was not imported: unchecked
    if not listed:
        names = sorted({m.name for m in entries})
        message = unknown("method of this suite", method, names)
        return None, [*found, ctx.problem(("study", "method"), message)]
    if parameter == TEACHER_EPOCH:
        problems = teacher_epoch_study(ctx, pairs)
    else:
        problems = parameter_study(ctx, parameter, method, listed, entry.get("reference"))
    if not found.passed(problems):
        return None, found
    return Study(parameter, method), found


def teacher_epoch_study(ctx: Context, pairs: Sequence[Pair]) -> list[Problem]:
    """Problems of a study of the teacher's training epochs."""
    if any(p.teacher_epochs for p in pairs):
        return []
    message = "a teacher_epoch study needs a pair with teacher_epochs: [...]"
    return [ctx.problem(("study", "parameter"), message)]


def parameter_study(
    ctx: Context,
    parameter: str,
    method: str,
    listed: Sequence[MethodEntry],
    reference: Any,
) -> list[Problem]:
    """Problems of a study of ``parameter`` over the ``listed`` entries of ``method``: the
    parameter must exist, take at least two values, and the reference must be one of them."""
    from bench.plugins import get_method

    fields = get_method(method).Params.fields()
    if parameter not in fields:
        message = unknown(f"parameter of {method}", parameter, [*fields, TEACHER_EPOCH])
        return [ctx.problem(("study", "parameter"), message)]
    varied = {dict(m.params).get(parameter) for m in listed}
    varied |= {v for m in listed for k, vs in m.search if k == parameter for v in vs}
    if reference is not None and reference not in varied:
        runs = ", ".join(map(str, sorted(v for v in varied if v is not None)))
        message = f"{reference!r} is not one of the {parameter} values the suite runs ({runs})"
        return [ctx.problem(("study", "reference"), message)]
    if len(varied) < 2:
        message = (
            f"{method} is listed with one value of {parameter}; list it once per value "
            f"(- {{name: {method}, params: {{{parameter}: …}}}}) to study it"
        )
        return [ctx.problem(("study", "parameter"), message)]
    return []


def compress(
    ctx: Context, value: Any, entries: Sequence[MethodEntry] | None, phase: Any
) -> tuple[Compression | None, list[Problem]]:
    """The compression post-stage (``compress:``)."""
    path = ("compress",)
    found = Found()
    entry = found.take(mapping(ctx, value, path, COMPRESS_KEYS))
    if entry is None or entries is None:
        return None, found
    if phase == "tune":
        message = (
            "compression measures test accuracy, which a tune suite never looks at; "
            "compress the students of the final suite"
        )
        return None, [*found, ctx.problem(path, message)]
    known = list(dict.fromkeys(m.name for m in entries))
    chosen = found.take(compress_methods(ctx, entry.get("methods", known), known))
    sparsities = found.take(compress_sparsities(ctx, entry.get("sparsities", [])))
    int8 = entry.get("int8", False)
    if not found.passed(misfit(ctx, int8, bool, (*path, "int8"))):
        return None, found
    if chosen is None or sparsities is None:
        return None, found
    if not sparsities and not int8:
        message = (
            "nothing to do: give sparsities: [0.5, …] (global magnitude pruning) and/or int8: true"
        )
        return None, [*found, ctx.problem(path, message)]
    return Compression(chosen, sparsities, int8), found


def compress_methods(
    ctx: Context, value: Any, known: list[str]
) -> tuple[tuple[str, ...] | None, list[Problem]]:
    """The methods whose students are compressed: names of the suite's methods."""
    path = ("compress", "methods")
    if value == []:
        message = "empty: leave methods out to compress the students of every method"
        return None, [ctx.problem(path, message)]
    items, problems = nonempty_list(ctx, value, path, "methods")
    if items is None:
        return None, problems
    bad = first_misfit(ctx, ((m, (*path, i)) for i, m in enumerate(items)), str)
    if bad:
        return None, bad
    absent = [
        ctx.problem((*path, i), unknown("method of this suite", m, known))
        for i, m in enumerate(items)
        if m not in known
    ]
    if absent and ctx.unloaded:  # methods of the plugin files that were not imported
        items, absent = [m for m in items if m in known], []
    if absent:
        return None, absent
    return unique(ctx, items, path, "method")


def compress_sparsities(ctx: Context, value: Any) -> tuple[tuple[float, ...] | None, list[Problem]]:
    """The pruning sparsities, each in (0, 1), ascending."""
    path = ("compress", "sparsities")
    if not isinstance(value, list):
        expected = f"expected a list of sparsities in (0, 1), e.g. [0.5, 0.8]; got {value!r}"
        return None, [ctx.problem(path, expected)]
    bad = first_misfit(ctx, ((s, (*path, i)) for i, s in enumerate(value)), float)
    if bad:
        return None, bad
    outside = [
        ctx.problem(
            (*path, i),
            f"{s} is not in (0, 1): a sparsity is the share of weights set to zero "
            "(0.5 prunes half of them)",
        )
        for i, s in enumerate(value)
        if not 0 < s < 1
    ]
    if outside:
        return None, outside
    distinct, problems = unique(ctx, [float(s) for s in value], path, "sparsity")
    return (None if distinct is None else tuple(sorted(distinct))), problems


def leaderboard(
    ctx: Context,
    value: Any,
    entries: Sequence[MethodEntry] | None,
    budget: int | None,
    study_value: Any,
) -> tuple[LeaderboardAnchors | None, list[Problem]]:
    """The entries the leaderboard compares with (``leaderboard: {baseline, reference}``):
    each a setting of one of the suite's methods that the suite runs."""
    path = ("leaderboard",)
    found = Found()
    entry = found.take(mapping(ctx, value, path, LEADERBOARD_KEYS))
    if entry is None or entries is None:
        return None, found
    # A study of kd's parameter with a reference value names the leaderboard's reference too.
    named_twice = (
        isinstance(study_value, dict)
        and study_value.get("reference") is not None
        and study_value.get("method", "kd") == "kd"
    )
    if "reference" in entry and named_twice:
        message = "the reference is named twice, here and in leaderboard.reference; keep one"
        found.append(ctx.problem(("study", "reference"), message))
    anchors = {
        role: found.take(anchor(ctx, entry[role], (*path, role), entries, budget))
        for role in LEADERBOARD_KEYS
        if role in entry
    }
    if found:
        return None, found
    return LeaderboardAnchors(**anchors), found


def anchor(
    ctx: Context, value: Any, path: KeyPath, entries: Sequence[MethodEntry], budget: int | None
) -> tuple[EntrySpec | None, list[Problem]]:
    """One of ``leaderboard:``'s entries: ``kd``, ``kd@1[temperature=4.0]`` or
    ``{method, version, params}``; a method of this suite at its current version, with params
    it has, at a setting the suite runs."""
    from bench.plugins import get_method

    if isinstance(value, dict):
        found = Found()
        if found.take(mapping(ctx, value, path, SPEC_KEYS)) is None or found:
            return None, found
    try:
        spec = parse_entry_spec(value)
    except EntrySpecError as exc:
        return None, [ctx.problem(path, str(exc))]
    listed = list(dict.fromkeys(m.name for m in entries))
    at = (*path, "method") if isinstance(value, dict) else path
    if spec.method not in listed and ctx.unloaded:
        return None, []  # a method of the plugin files that were not imported: unchecked
    if spec.method not in listed:
        return None, [ctx.problem(at, unknown("method of this suite", spec.method, listed))]
    cls = get_method(spec.method)
    if spec.version is not None and spec.version != cls.version:
        message = (
            f"{spec.method} is at version {cls.version} here, and a suite runs only that "
            f"version, so {spec.method}@{spec.version} would have no runs; write "
            f"{spec.method}@{cls.version} or leave the version out"
        )
        at = (*path, "version") if isinstance(value, dict) else path
        return None, [ctx.problem(at, message)]
    found = Found()
    fields = cls.Params.fields()
    params = {}
    for name, raw in spec.params:
        at = (*path, "params", name) if isinstance(value, dict) else path
        if name not in fields:
            found.append(
                ctx.problem(at, unknown(f"parameter of {spec.method}", name, list(fields)))
            )
            continue
        converted, problems = typed(ctx, raw, fields[name], at)
        if found.passed(problems):
            params[name] = frozen(converted)
    if found:
        return None, found
    spec = EntrySpec(spec.method, spec.version, tuple(sorted(params.items())))
    return spec, setting_run(ctx, spec, path, entries, budget)


def setting_run(
    ctx: Context,
    spec: EntrySpec,
    path: KeyPath,
    entries: Sequence[MethodEntry],
    budget: int | None,
) -> list[Problem]:
    """The problem of the suite running ``spec.method`` at no setting equal to ``spec``'s
    (named params over the method's defaults), if it does not."""
    from bench.plugins import get_method

    defaults = get_method(spec.method).Params().to_dict()
    wanted = {**defaults, **dict(spec.params)}
    runs = [
        {**defaults, **config}
        for m in entries
        if m.name == spec.method
        for config in m.configurations(budget)
    ]
    if any(same_settings(wanted, config) for config in runs):
        return []
    shown = sorted({k for config in runs for k in config if config[k] != defaults.get(k)})
    shown = shown or [k for k, _ in spec.params]
    settings = "; ".join(
        dict.fromkeys(
            ", ".join(f"{k}={config.get(k)}" for k in shown) or "the defaults" for config in runs
        )
    )
    named = ", ".join(f"{k}={v}" for k, v in spec.params) or "its default params"
    return [
        ctx.problem(
            path,
            f"the suite runs {spec.method} at no such setting ({named}); it runs {spec.method} "
            f"with {settings}. Name one of those, or add this setting to methods",
        )
    ]
