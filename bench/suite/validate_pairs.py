"""Validation of a suite's recipes and pairs.

A pair's own recipe merges over the suite's, so :func:`pairs` takes the suite's recipes as an
argument (:class:`SuiteRecipes`, from :func:`suite_recipes`) rather than finding them
anywhere else: the two checks give the same problems whatever order the keys have in the file.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from bench.config import RECIPE_RANGES, ConfigError, Recipe
from bench.suite.checks import (
    Context,
    Found,
    KeyPath,
    entries,
    first_misfit,
    frozen,
    mapping,
    misfit,
)
from bench.suite.schema import PAIR_KEYS, RECIPE_KEYS, STUDENT_ONLY_RECIPE_KEYS, Pair, Problem

ROLES = ("teacher", "student")


@dataclass(frozen=True)
class SuiteRecipes:
    """The suite's own recipes (``recipe:``), which every pair's recipe merges over.

    Attributes:
        student: The student recipe; None when it is broken (and reported).
        teacher: The teacher recipe; None when it, or the student recipe it inherits from,
            is broken.
        student_values: The student fields as the file gives them; None unless both
            recipes are sound (pairs then cannot merge over them, and are skipped).
        teacher_values: The teacher fields after inheriting the student's; None likewise.
    """

    student: Recipe | None = None
    teacher: Recipe | None = None
    student_values: Mapping[str, Any] | None = None
    teacher_values: Mapping[str, Any] | None = None

    @property
    def last_teacher_epoch(self) -> int:
        """The teacher's training epochs that early-stopped checkpoints must fall within
        (the default recipe's when the suite's is broken)."""
        return (self.teacher or Recipe()).epochs


def suite_recipes(ctx: Context, value: Any) -> tuple[SuiteRecipes, list[Problem]]:
    """The suite's (student, teacher) recipes; the teacher inherits the student's fields."""
    found = Found()
    path = ("recipe",)
    entry = found.take(mapping(ctx, value, path, RECIPE_KEYS))
    if entry is None:
        return SuiteRecipes(), found
    student_path, teacher_path = (*path, "student"), (*path, "teacher")
    student_values = found.take(recipe_values(ctx, entry.get("student", {}), student_path))
    teacher_values = found.take(recipe_values(ctx, entry.get("teacher", {}), teacher_path))
    if teacher_values is not None:
        refused = teacher_only(ctx, teacher_values, teacher_path)
        found.extend(refused)
        teacher_values = None if refused else teacher_values
    if student_values is None:
        return SuiteRecipes(), found
    student = found.take(build_recipe(ctx, student_values, student_path))
    if student is None or teacher_values is None:
        return SuiteRecipes(student), found
    # The teacher inherits the student's fields, but never its frozen layers, nor the stream
    # its augmentation is shared across student trials by.
    inherited = {k: v for k, v in student_values.items() if k not in STUDENT_ONLY_RECIPE_KEYS}
    merged = {**inherited, **teacher_values}
    teacher = found.take(build_recipe(ctx, merged, teacher_path))
    if teacher is None:
        return SuiteRecipes(student), found
    return SuiteRecipes(student, teacher, student_values, merged), found


def recipe_values(
    ctx: Context, value: Any, path: KeyPath
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The fields of one recipe mapping, each of its :class:`~bench.config.Recipe` type and in
    its range (:data:`~bench.config.RECIPE_RANGES`), each problem at the field's key.

    The values are kept as the file gives them (an integer learning rate stays an integer):
    the run key hashes the recipe, and widening would re-key suites that already ran.
    """
    hints = typing.get_type_hints(Recipe)
    found = Found()
    entry = found.take(mapping(ctx, value, path, tuple(hints), "recipe field"))
    if entry is None:
        return None, found
    for key, item in entry.items():
        if key not in hints:
            return None, found  # reported by mapping(); the fields after it are not checked
        tp = hints[key]
        if key in RECIPE_RANGES:
            tp = Annotated[tp, RECIPE_RANGES[key]]
        if not found.passed(misfit(ctx, item, tp, (*path, key))):
            return None, found
    return {k: frozen(v) for k, v in entry.items()}, found


def build_recipe(
    ctx: Context, values: Mapping[str, Any], path: KeyPath
) -> tuple[Recipe | None, list[Problem]]:
    """A :class:`~bench.config.Recipe` of ``values``, or the problem its own checks find."""
    try:
        return Recipe(**values), []
    except ConfigError as exc:
        return None, [ctx.problem(path, str(exc))]


def teacher_only(ctx: Context, values: Mapping[str, Any], path: KeyPath) -> list[Problem]:
    """Problems of fields a teacher recipe cannot have."""
    if values.get("trainable"):
        return [
            ctx.problem(
                (*path, "trainable"),
                "teachers train every layer; freezing applies to students only (give a "
                "fine-tuned teacher as teacher_checkpoint, or move trainable to the student)",
            )
        ]
    return []


def pairs(
    ctx: Context, value: Any, recipes: SuiteRecipes
) -> tuple[tuple[Pair, ...] | None, list[Problem]]:
    """The suite's teacher → student pairs, their recipes merged over ``recipes``."""
    return entries(ctx, value, "pairs", "pair", partial(one_pair, ctx, recipes=recipes))


def one_pair(
    ctx: Context, item: Any, path: KeyPath, recipes: SuiteRecipes
) -> tuple[Pair | None, list[Problem]]:
    """One entry of ``pairs:``."""
    found = Found()
    entry = found.take(mapping(ctx, item, path, PAIR_KEYS))
    if entry is None or not found.passed(pair_models(ctx, entry, path)):
        return None, found
    checkpoint, bad_teacher = checkpoint_file(ctx, entry.get("teacher_checkpoint"), path, "teacher")
    student_checkpoint, bad_student = checkpoint_file(
        ctx, entry.get("student_checkpoint"), path, "student"
    )
    epochs, bad_epochs = teacher_epochs(ctx, entry.get("teacher_epochs"), (*path, "teacher_epochs"))
    sound = found.passed([*bad_teacher, *bad_student, *bad_epochs])
    own = found.take(pair_recipes(ctx, entry.get("recipe"), (*path, "recipe"), recipes))
    if not sound or own is None:
        return None, found
    student_recipe, teacher_recipe = own
    last = teacher_recipe.epochs if teacher_recipe else recipes.last_teacher_epoch
    if not found.passed(early_stops(ctx, epochs, checkpoint, last, (*path, "teacher_epochs"))):
        return None, found
    pair = Pair(
        entry["teacher"],
        entry["student"],
        checkpoint,
        recipe=student_recipe,
        teacher_recipe=teacher_recipe,
        teacher_epochs=epochs,
        student_checkpoint=student_checkpoint,
    )
    return pair, found


def pair_models(ctx: Context, entry: Mapping[str, Any], path: KeyPath) -> list[Problem]:
    """Problems of a pair's teacher and student names: missing, not strings, or unknown."""
    missing = [role for role in ROLES if role not in entry]
    if missing:
        message = "missing {!r} (a pair is {{teacher: …, student: …}})"
        return [ctx.problem(path, message.format(role)) for role in missing]
    bad = first_misfit(ctx, ((entry[role], (*path, role)) for role in ROLES), str)
    if bad:
        return bad
    for role in ROLES:
        bad = model(ctx, entry[role], (*path, role))
        if bad:
            return bad
    return []


def model(ctx: Context, name: str, path: KeyPath) -> list[Problem]:
    """The problem of a model name nothing resolves, with close names."""
    from bench.models import resolve
    from bench.registry import UnknownNameError

    try:
        resolve(name)
    except UnknownNameError as exc:
        close = exc.suggestions
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        return [ctx.problem(path, f"unknown model {name!r}.{hint} See `kdbench ls models`.")]
    return []


def checkpoint_file(
    ctx: Context, value: Any, path: KeyPath, role: str
) -> tuple[str | None, list[Problem]]:
    """A pair's ``<role>_checkpoint`` as an absolute path to an existing file; None when it
    is not given."""
    key = (*path, f"{role}_checkpoint")
    problems = misfit(ctx, value, str | None, key)
    if problems or value is None:
        return None, problems
    checkpoint = ctx.local_path(value)
    if not Path(checkpoint).is_file():
        return None, [ctx.problem(key, f"no such file: {checkpoint}")]
    return checkpoint, []


def teacher_epochs(
    ctx: Context, value: Any, path: KeyPath
) -> tuple[tuple[int, ...] | None, list[Problem]]:
    """A pair's early-stopped teacher epochs, ascending; None when not given."""
    if value is None:
        return None, []
    if not isinstance(value, list) or not value:
        expected = f"expected a non-empty list of epochs, e.g. [1, 2, 4]; got {value!r}"
        return None, [ctx.problem(path, expected)]
    bad = first_misfit(ctx, ((e, (*path, i)) for i, e in enumerate(value)), int)
    if bad:
        return None, bad
    if any(e < 1 for e in value) or len(set(value)) != len(value):
        return None, [ctx.problem(path, f"epochs must be distinct and ≥ 1, got {value}")]
    return tuple(sorted(value)), []


def early_stops(
    ctx: Context,
    epochs: tuple[int, ...] | None,
    checkpoint: str | None,
    last: int,
    path: KeyPath,
) -> list[Problem]:
    """Problems of early-stopped teachers: a loaded teacher has no training to stop, and no
    checkpoint can come after the teacher's ``last`` epoch."""
    if not epochs:
        return []
    if checkpoint:
        return [
            ctx.problem(
                path,
                "early-stopped teachers are checkpoints of a teacher kdbench trains; a "
                "pair with teacher_checkpoint loads a finished one. Drop one of the two.",
            )
        ]
    late = [e for e in epochs if e > last]
    if late:
        return [
            ctx.problem(
                path,
                f"epochs {late} are past the teacher's {last} training epochs; raise "
                "recipe.teacher.epochs or drop them",
            )
        ]
    return []


def pair_recipes(
    ctx: Context, value: Any, path: KeyPath, recipes: SuiteRecipes
) -> tuple[tuple[Recipe | None, Recipe | None] | None, list[Problem]]:
    """A pair's (student, teacher) recipes merged over the suite's; (None, None) when the
    pair has no recipe of its own; None when it cannot be built (after reporting why, or
    silently when the suite's own recipe is broken, which is reported there)."""
    if value is None:
        return (None, None), []
    found = Found()
    entry = found.take(mapping(ctx, value, path, RECIPE_KEYS))
    if entry is None or recipes.student_values is None or recipes.teacher_values is None:
        return None, found
    student = teacher = None
    if "student" in entry:
        student = found.take(
            merged_recipe(ctx, entry["student"], recipes.student_values, (*path, "student"))
        )
        if student is None:
            return None, found
    if "teacher" in entry:
        teacher = found.take(
            merged_recipe(
                ctx, entry["teacher"], recipes.teacher_values, (*path, "teacher"), teacher=True
            )
        )
        if teacher is None:
            return None, found
    return (student, teacher), found


def merged_recipe(
    ctx: Context, value: Any, base: Mapping[str, Any], path: KeyPath, *, teacher: bool = False
) -> tuple[Recipe | None, list[Problem]]:
    """One role's recipe of a pair: its own fields over ``base`` (the suite's for the role)."""
    found = Found()
    own = found.take(recipe_values(ctx, value, path))
    if own is None:
        return None, found
    if teacher and not found.passed(teacher_only(ctx, own, path)):
        return None, found
    return found.take(build_recipe(ctx, {**base, **own}, path)), found
