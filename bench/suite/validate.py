"""Validation of a parsed suite file into a :class:`~bench.suite.schema.Suite`.

:func:`validate_suite` checks every section and collects every problem, so a suite with
several mistakes reports them all at once. Each section is a function of the values it needs
(the phase, the suite's recipes, the method entries), passed as arguments: no check depends on
another having run first.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from bench.config import SEED_RANGE, TRAIN_SIZE_RANGE, VAL_FRACTION_RANGE
from bench.ranges import Range
from bench.suite.checks import (
    Context,
    Found,
    KeyPath,
    duplicate_keys,
    entries,
    first_misfit,
    mapping,
    misfit,
    nonempty_list,
    resources,
    unique,
    unknown,
)
from bench.suite.schema import (
    CHECKPOINT_KEYS,
    DATASET_KEYS,
    NAME_PATTERN,
    REQUIRED_KEYS,
    TOP_KEYS,
    TUNE_KEYS,
    Checkpointing,
    DatasetEntry,
    Problem,
    Resources,
    Suite,
)
from bench.suite.validate_methods import compress, leaderboard, methods, study
from bench.suite.validate_pairs import pairs, suite_recipes

PHASES = ("tune", "final")


def validate_suite(
    ctx: Context, data: Any, default_name: str
) -> tuple[Suite | None, list[Problem]]:
    """The typed suite of ``data`` (the file's YAML), or None, and every problem found.

    Args:
        ctx: The file's node tree and base folder.
        data: The loaded YAML.
        default_name: The suite's name when the file gives none (its folder's).
    """
    found = Found(duplicate_keys(ctx.root))
    top = found.take(top_level(ctx, data))
    if top is None:
        return None, found
    name = found.take(suite_name(ctx, top.get("name", default_name)))
    phase = top.get("phase", "final")
    if phase not in PHASES:
        found.append(ctx.problem(("phase",), unknown("phase", str(phase), PHASES)))
    plugin_files = found.take(plugins(ctx, top.get("plugins", [])))
    if not ctx.import_plugins and plugin_files:
        ctx = dataclasses.replace(ctx, unloaded=True)
    sets = found.take(datasets(ctx, top["datasets"])) if "datasets" in top else None
    recipes = found.take(suite_recipes(ctx, top.get("recipe", {})))
    grid = found.take(pairs(ctx, top["pairs"], recipes)) if "pairs" in top else None
    entries = found.take(methods(ctx, top["methods"], phase)) if "methods" in top else None
    seed_list = found.take(seeds(ctx, top["seeds"])) if "seeds" in top else None
    studied = found.take(study(ctx, top["study"], entries, grid)) if "study" in top else None
    compressed = (
        found.take(compress(ctx, top["compress"], entries, phase)) if "compress" in top else None
    )
    budget = found.take(tune_budget(ctx, top.get("tune"), phase))
    anchors = (
        found.take(leaderboard(ctx, top["leaderboard"], entries, budget, top.get("study")))
        if "leaderboard" in top
        else None
    )
    saving = found.take(checkpointing(ctx, top.get("checkpoint")))
    values = found.take(scalars(ctx, top, name))
    request, teacher_request = found.take(suite_resources(ctx, top))
    if (
        found
        or sets is None
        or grid is None
        or entries is None
        or seed_list is None
        or recipes.student is None
        or recipes.teacher is None
    ):
        return None, found
    suite = Suite(
        name=name,
        experiment=values["experiment"],
        phase=phase,
        datasets=sets,
        pairs=grid,
        methods=entries,
        seeds=seed_list,
        recipe=recipes.student,
        teacher_recipe=recipes.teacher,
        teacher_seed=values["teacher_seed"],
        val_fraction=float(values["val_fraction"]),
        resources=request,
        teacher_resources=teacher_request,
        budget=budget,
        max_failures=values["max_failures"],
        checkpoint=saving or Checkpointing(),
        plugins=plugin_files,
        unloaded_methods=unloaded_methods(ctx, top["methods"]),
        description=values["description"],
        study=studied,
        compress=compressed,
        leaderboard=anchors,
    )
    return suite, found


def top_level(ctx: Context, data: Any) -> tuple[dict | None, list[Problem]]:
    """The file's top mapping: known keys, and the required ones present (a required key
    that is missing because it is misspelt is reported once, as the unknown key)."""
    if data is None:
        return None, [ctx.problem((), "the suite file is empty")]
    top, found = mapping(ctx, data, (), TOP_KEYS)
    if top is None:
        return None, found
    misspelt = [str(k) for k in top if k not in TOP_KEYS]
    for key in REQUIRED_KEYS:
        close = any(difflib.get_close_matches(u, [key], n=1, cutoff=0.6) for u in misspelt)
        if key not in top and not close:
            found.append(ctx.problem((), f"missing required key {key!r}"))
    return top, found


def suite_name(ctx: Context, value: Any) -> tuple[str, list[Problem]]:
    """The suite's name; ``suite`` (after reporting) when it is not a valid one."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        message = f"expected a name of letters, digits, '_', '.', '-'; got {value!r}"
        return "suite", [ctx.problem(("name",), message)]
    return value, []


def plugins(ctx: Context, value: Any) -> tuple[tuple[str, ...], list[Problem]]:
    """The suite's method files, as absolute paths, each imported (so that its methods are
    registered before the method entries are checked), or only found when
    ``ctx.import_plugins`` is false."""
    from bench.plugins import load_plugin_file

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return (), [ctx.problem(("plugins",), f"expected a list of .py files; got {value!r}")]
    found: list[Problem] = []
    out = []
    for i, item in enumerate(value):
        path = ctx.local_path(item)
        try:
            if ctx.import_plugins:
                load_plugin_file(path)
            elif not Path(path).is_file() or Path(path).suffix != ".py":
                raise FileNotFoundError(f"{path}: not a .py file")
        except (FileNotFoundError, ImportError) as exc:
            found.append(ctx.problem(("plugins", i), str(exc)))
            continue
        out.append(path)
    return tuple(out), found


def unloaded_methods(ctx: Context, value: Any) -> tuple[str, ...]:
    """The method names of ``methods:`` that are not registered, when they may come from
    plugin files that were not imported (``ctx.unloaded``); their entries are unchecked."""
    from bench.api import METHODS

    if not ctx.unloaded or not isinstance(value, list):
        return ()
    names = [item.get("name") if isinstance(item, dict) else item for item in value]
    return tuple(dict.fromkeys(n for n in names if isinstance(n, str) and n not in METHODS))


def datasets(ctx: Context, value: Any) -> tuple[tuple[DatasetEntry, ...] | None, list[Problem]]:
    """The suite's datasets (names, or ``{name, data_root, download, train_size}``), each
    name once: a leaderboard's cells are datasets, so two entries of one dataset (two train
    sizes, say) would mix their runs in one cell."""
    listed, found = entries(ctx, value, "datasets", "dataset", partial(dataset, ctx))
    if listed is None:
        return None, found
    seen: dict[str, int] = {}
    for i, item in enumerate(value if isinstance(value, list) else []):
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str):
            continue
        if name in seen:
            message = (
                f"dataset {name!r} is listed twice (also datasets[{seen[name]}]); list it "
                "once, and run another setting of it as a suite of its own"
            )
            found.append(ctx.problem(("datasets", i), message))
        seen.setdefault(name, i)
    return listed, found


def dataset(ctx: Context, item: Any, path: KeyPath) -> tuple[DatasetEntry | None, list[Problem]]:
    """One entry of ``datasets:``."""
    from bench.data import DATASETS

    found = Found()
    if isinstance(item, str):
        item = {"name": item}
    entry = found.take(mapping(ctx, item, path, DATASET_KEYS))
    if entry is None:
        return None, found
    name = entry.get("name")
    if not found.fits(name, str, ctx, (*path, "name")):
        return None, found
    if name not in DATASETS:
        return None, [*found, ctx.problem(path, unknown("dataset", name, DATASETS.names()))]
    root, download = entry.get("data_root"), entry.get("download", False)
    size = entry.get("train_size")
    # All are checked, so that several wrong values are reported together.
    bad = [
        *misfit(ctx, root, str | None, (*path, "data_root")),
        *misfit(ctx, download, bool, (*path, "download")),
        *misfit(ctx, size, Annotated[int, TRAIN_SIZE_RANGE] | None, (*path, "train_size")),
    ]
    if not found.passed(bad):
        return None, found
    return DatasetEntry(name, ctx.local_path(root) if root else None, download, size), found


def seeds(ctx: Context, value: Any) -> tuple[tuple[int, ...] | None, list[Problem]]:
    """The student seeds: a count (``5`` is 0..4) or an explicit list."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            message = f"expected a count ≥ 1 or a list of seeds; got {value}"
            return None, [ctx.problem(("seeds",), message)]
        return tuple(range(value)), []
    items, problems = nonempty_list(ctx, value, ("seeds",), "seeds")
    if items is None:
        return None, problems
    seed = Annotated[int, SEED_RANGE]
    bad = first_misfit(ctx, ((s, ("seeds", i)) for i, s in enumerate(items)), seed)
    if bad:
        return None, bad
    return unique(ctx, items, ("seeds",), "seed")


def tune_budget(ctx: Context, value: Any, phase: Any) -> tuple[int | None, list[Problem]]:
    """Configurations per method in phase tune (``tune: {budget: N}``); None in phase final,
    which takes no tune section."""
    if phase != "tune":
        if value is not None:
            return None, [ctx.problem(("tune",), "only phase: tune takes a tune section")]
        return None, []
    if value is None:
        message = (
            "phase: tune needs tune: {budget: N}, the number of configurations every "
            "method gets (an equal budget keeps the comparison fair)"
        )
        return None, [ctx.problem((), message)]
    found = Found()
    entry = found.take(mapping(ctx, value, ("tune",), TUNE_KEYS))
    if entry is None:
        return None, found
    budget = entry.get("budget")
    if not found.fits(budget, int, ctx, ("tune", "budget")):
        return None, found
    if budget < 1:
        return None, [*found, ctx.problem(("tune", "budget"), f"must be ≥ 1, got {budget}")]
    return budget, found


def checkpointing(ctx: Context, value: Any) -> tuple[Checkpointing | None, list[Problem]]:
    """How often trials save their state (``checkpoint: {epochs: N, minutes: M}``); None
    (the defaults) when the suite does not say."""
    if value is None:
        return None, []
    found = Found()
    entry = found.take(mapping(ctx, value, ("checkpoint",), CHECKPOINT_KEYS))
    if entry is None:
        return None, found
    default = Checkpointing()
    epochs, minutes = entry.get("epochs", default.epochs), entry.get("minutes", default.minutes)
    bad = [
        *misfit(ctx, epochs, int, ("checkpoint", "epochs")),
        *misfit(ctx, minutes, float, ("checkpoint", "minutes")),
    ]
    if not found.passed(bad):
        return None, found
    for key, number in (("epochs", epochs), ("minutes", minutes)):
        if number < 0 or number != number:
            found.append(ctx.problem(("checkpoint", key), f"must be ≥ 0, got {number}"))
    return (None if found else Checkpointing(epochs, float(minutes))), found


def scalars(ctx: Context, top: dict, name: str) -> tuple[dict[str, Any], list[Problem]]:
    """The suite's single-valued settings; a wrong one is reported and its default kept, so
    that the checks after it still run."""
    defaults: dict[str, tuple[Any, Any]] = {
        "description": (str, ""),
        "experiment": (str, name),
        "teacher_seed": (Annotated[int, SEED_RANGE], 0),
        "val_fraction": (Annotated[float, VAL_FRACTION_RANGE], 0.1),
        "max_failures": (Annotated[int, Range(ge=0)], 3),
    }
    found = Found()
    values: dict[str, Any] = {}
    for key, (tp, default) in defaults.items():
        value = top.get(key, default)
        # Kept as given (an integer val_fraction stays one until the suite is built).
        values[key] = value if found.passed(misfit(ctx, value, tp, (key,))) else default
    if values["experiment"] is not None and not str(values["experiment"]).strip():
        message = "must be a non-empty MLflow experiment name"
        found.append(ctx.problem(("experiment",), message))
    return values, found


def suite_resources(ctx: Context, top: dict) -> tuple[tuple[Resources, Resources], list[Problem]]:
    """Per-trial and per-teacher resources; the teachers' default to the trials'."""
    found = Found()
    request = found.take(resources(ctx, top.get("resources", {}), ("resources",))) or Resources()
    teacher = request
    if "teacher_resources" in top:
        path = ("teacher_resources",)
        teacher = found.take(resources(ctx, top["teacher_resources"], path)) or request
    return (request, teacher), found
