"""Valid ranges: every method parameter declares one, and every entry point (the command line,
suites and their tune search spaces, registration, ``check-method``) refuses a value outside
it, naming the parameter, the value and the range, before any work is done. Recipe fields and
seeds likewise."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest

from bench.api import METHODS, Method, ParamError, Range, register_method
from bench.api.params import declared_range
from bench.cli import EXIT_BAD_INPUT, EXIT_FAILED, main
from bench.config import ConfigError, Recipe, TeacherSpec, TrialConfig
from bench.plugins import build_method, load_methods, load_plugin_file
from bench.ranges import value_problem
from bench.suite.load import parse_suite
from bench.suite.schema import SuiteError

TEMPLATE = Path(__file__).resolve().parents[1] / "methods" / "_template.py"


def _registered() -> list[type[Method]]:
    load_methods()
    load_plugin_file(TEMPLATE)
    # kdbench's own methods and the template; other tests' plugins are theirs to check.
    return [
        cls
        for _, cls in METHODS.items()
        if cls.__module__.startswith("methods.") or cls.name == "_template"
    ]


def _numeric(tp: Any) -> bool:
    """Whether an annotation holds numbers (not booleans, strings or literals)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _numeric(args[0])
    if args and origin is not typing.Literal:
        return any(_numeric(a) for a in args if a is not type(None) and a is not Ellipsis)
    return tp in (int, float)


def _fields() -> list[tuple[str, str, Any]]:
    return [
        (cls.name, name, tp)
        for cls in _registered()
        for name, tp in cls.Params.fields().items()
        if _numeric(tp)
    ]


FIELDS = _fields()
IDS = [f"{method}.{name}" for method, name, _ in FIELDS]


def _outside(valid: Range, integer: bool) -> Any:
    """The nearest value below the range's lower bound (or above its upper one)."""
    if valid.gt is not None:
        return int(valid.gt) if integer else float(valid.gt)
    if valid.ge is not None:
        return int(valid.ge) - 1 if integer else math.nextafter(valid.ge, -math.inf)
    if valid.lt is not None:
        return int(valid.lt) if integer else float(valid.lt)
    assert valid.le is not None
    return int(valid.le) + 1 if integer else math.nextafter(valid.le, math.inf)


def _is_int(tp: Any) -> bool:
    inner = typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp
    return int in (inner, *typing.get_args(inner))


def test_every_method_is_checked():
    names = {method for method, _, _ in FIELDS}
    assert {"kd", "dkd", "crd", "fitnet", "mean_teacher", "_template"} <= names
    assert len(FIELDS) > 100


@pytest.mark.parametrize(("method", "name", "tp"), FIELDS, ids=IDS)
def test_each_numeric_param_declares_a_range_that_holds_its_default(method, name, tp):
    valid = declared_range(tp)
    assert valid is not None, f"{method}.{name} declares no Range"
    cls = METHODS.get(method)
    default = next(f.default for f in dataclasses.fields(cls.Params) if f.name == name)
    assert value_problem(default, valid) is None
    for candidate in cls.search_space.get(name, ()):
        assert value_problem(candidate, valid) is None


@pytest.mark.parametrize(("method", "name", "tp"), FIELDS, ids=IDS)
def test_a_value_just_outside_the_range_is_refused_naming_param_value_and_range(method, name, tp):
    valid = declared_range(tp)
    assert valid is not None
    bad = _outside(valid, _is_int(tp))
    # As the command line gives it (a string) and as a suite gives it (a YAML number).
    for raw in (repr(bad), bad):
        with pytest.raises(ParamError) as caught:
            build_method(method, {name: raw})
        message = str(caught.value)
        assert message == f"{method}.params.{name}: must be {valid.text()}, got {bad!r}"
    with pytest.raises(ParamError, match=f"{name}: must be"):
        METHODS.get(method).Params(**{name: bad})


@pytest.mark.parametrize(
    ("method", "name", "tp"),
    [f for f in FIELDS if not _is_int(f[2])],
    ids=[i for i, f in zip(IDS, FIELDS, strict=True) if not _is_int(f[2])],
)
def test_nan_and_infinity_are_refused_for_every_float_param(method, name, tp):
    text = declared_range(tp).text()
    for raw, said in (("nan", f"a number {text}, got nan"), ("inf", f"a finite number {text}")):
        with pytest.raises(ParamError, match=re.escape(f"{name}: must be {said}")):
            build_method(method, {name: raw})


def test_a_range_reads_as_written_and_checks_its_bounds():
    assert [str(r) for r in (Range(gt=0), Range(ge=1), Range(ge=0, lt=1), Range(le=5))] == [
        "> 0",
        "≥ 1",
        "in [0, 1)",
        "≤ 5",
    ]
    half = Range(gt=0, le=1)
    assert half.contains(1.0) and not half.contains(0.0) and not half.contains(1.0000001)
    assert Range(ge=0, inf=True).contains(math.inf)
    assert Range(ge=0, inf=True).problem(-math.inf) == "must be ≥ 0, got -inf"
    assert Range().problem(math.nan) == "must be a number, got nan"
    for wrong in ({"gt": 0, "ge": 0}, {"ge": 1, "le": 0}, {"gt": 1, "lt": 1}, {"ge": math.nan}):
        with pytest.raises(ValueError, match="Range"):
            Range(**wrong)


def test_a_float_without_a_declared_range_must_still_be_finite():
    class Loose(Method.Params):
        scale: float = 1.0
        count: int = 3

    assert Loose.from_mapping({"scale": "-7", "count": "-2"}) == Loose(-7.0, -2)
    with pytest.raises(ParamError, match="scale: must be a finite number, got inf"):
        Loose.from_mapping({"scale": "inf"})


# ------------------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "temperature=0"], "kd params.temperature: must be > 0, got 0.0"),
        (["--param", "temperature=nan"], "kd params.temperature: must be a number > 0, got nan"),
        (["--param", "temperature=inf"], "temperature: must be a finite number > 0, got inf"),
        (["--param", "temperature=-1"], "kd params.temperature: must be > 0, got -1.0"),
        (["--param", "alpha=-5"], "kd params.alpha: must be in [0, 1], got -5.0"),
        (["--seed", "-1"], "argument --seed: '-1' is not valid: give a whole number ≥ 0"),
        (["--seed", str(2**32)], "seed must be in [0, 4294967296), got 4294967296"),
        (["--teacher-seed", "-1"], "argument --teacher-seed: '-1' is not valid"),
        (["--lr", "nan"], "recipe.lr must be a number > 0, got nan"),
        (["--epochs", "0"], "argument --epochs: '0' is not valid: give a whole number ≥ 1"),
    ],
)
def test_train_refuses_a_value_out_of_range_before_opening_the_run_store(
    tmp_path, capsys, args, message
):
    store = tmp_path / "runs.db"
    try:
        code = main(["train", "--tracking-uri", f"sqlite:///{store}", "--quiet", *args])
    except SystemExit as exc:  # the option parser refuses counts and seeds below their range
        code = exc.code
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert message in err and "error: " in err
    assert "Traceback" not in err
    assert not store.exists()  # nothing recorded, not even an empty store


BAD_DEFAULT = """\
from typing import Annotated

from bench.api import Method, Range, register_method


@register_method("ranges_test_bad_default")
class BadDefault(Method):
    class Params(Method.Params):
        temperature: Annotated[float, Range(gt=0)] = -1.0
"""


def test_check_method_fails_a_plugin_whose_default_is_out_of_range(tmp_path, capsys):
    plugin = tmp_path / "bad_default.py"
    plugin.write_text(BAD_DEFAULT)
    code = main(["check-method", str(plugin), "--quiet"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "failed" in out
    assert "method 'ranges_test_bad_default'" in out
    assert "the default of temperature must be > 0, got -1.0" in out
    assert "ranges_test_bad_default" not in METHODS.names()


def test_check_method_refuses_a_param_out_of_range(capsys):
    code = main(["check-method", "kd", "--quiet", "--param", "alpha=1.5"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "kd params.alpha: must be in [0, 1], got 1.5" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ registration


def _declare(**attrs: Any) -> type[Method]:
    class Params(Method.Params):
        temperature: Annotated[float, Range(gt=0)] = 4.0

    return type("Declared", (Method,), {"Params": Params, **attrs})


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        (
            {"search_space": {"temperature": [1.0, 0.0]}},
            "search_space.temperature: must be > 0, got 0.0",
        ),
        (
            {"conformance_params": {"temperature": -2.0}},
            "conformance_params.temperature: must be > 0, got -2.0",
        ),
    ],
)
def test_registration_refuses_search_and_conformance_values_out_of_range(attrs, message):
    with pytest.raises(ValueError, match="ranges_test_declared") as caught:
        register_method("ranges_test_declared")(_declare(**attrs))
    assert message in str(caught.value)
    assert "ranges_test_declared" not in METHODS.names()


def test_registration_refuses_a_default_out_of_range():
    class Params(Method.Params):
        alpha: Annotated[float, Range(ge=0, le=1)] = 0.5
        steps: Annotated[int | None, Range(ge=1)] = 0

    declared = type("Declared", (Method,), {"Params": Params})
    with pytest.raises(ValueError, match="the default of steps must be ≥ 1, got 0"):
        register_method("ranges_test_declared")(declared)


# ------------------------------------------------------------------------------------ suites

SUITE = """\
name: ranges
phase: {phase}
datasets: [digits]
pairs:
  - {{teacher: test_resnet_wide, student: test_resnet_narrow}}
methods:
  - ce
  - {method}
seeds: 2
recipe:
  student: {{epochs: 1, batch_size: 32, lr: {lr}}}
{extra}"""


def _suite(*, method: str = "kd", lr: str = "0.05", phase: str = "final", extra: str = "") -> str:
    return SUITE.format(method=method, lr=lr, phase=phase, extra=extra)


def _problems(text: str) -> list[tuple[str, str, int | None]]:
    with pytest.raises(SuiteError) as caught:
        parse_suite(text, source="s.yaml")
    return [(p.path, p.message, p.line) for p in caught.value.problems]


def test_a_suite_with_a_nan_learning_rate_is_refused_at_its_key():
    assert parse_suite(_suite()).recipe.lr == 0.05
    assert _problems(_suite(lr=".nan")) == [
        ("recipe.student.lr", "must be a number > 0, got nan", 11)
    ]
    assert _problems(_suite(lr="0")) == [("recipe.student.lr", "must be > 0, got 0.0", 11)]


def test_a_suite_refuses_recipe_fields_seeds_and_fractions_out_of_range():
    extra = "  teacher: {momentum: 1.0, gamma: 0.0}\nteacher_seed: -3\nval_fraction: .inf\n"
    assert _problems(_suite(extra=extra)) == [
        ("recipe.teacher.momentum", "must be in [0, 1), got 1.0", 12),
        ("teacher_seed", "must be in [0, 4294967296), got -3", 13),
        ("val_fraction", "must be a finite number in (0, 1), got inf", 14),
    ]


def test_a_suite_refuses_a_method_param_out_of_range_at_its_key():
    entry = "{name: kd, params: {temperature: 0.0, alpha: 1.5}}"
    assert _problems(_suite(method=entry)) == [
        ("methods[1].params.temperature", "must be > 0, got 0.0", 8),
        ("methods[1].params.alpha", "must be in [0, 1], got 1.5", 8),
    ]


def test_a_tune_search_space_outside_a_range_is_refused():
    tune = "tune: {budget: 2}\n"
    good = _suite(method="{name: kd, search: {temperature: [2.0, 4.0]}}", phase="tune", extra=tune)
    assert parse_suite(good).methods[1].search == (("temperature", (2.0, 4.0)),)
    bad = good.replace("[2.0, 4.0]", "[2.0, -4.0]")
    assert _problems(bad) == [("methods[1].search.temperature", "must be > 0, got -4.0", 8)]


# ----------------------------------------------------------------------------------- recipes


def test_recipes_teachers_and_trials_refuse_values_out_of_range_on_every_path():
    assert Recipe(momentum=0.0, weight_decay=0.0, gamma=1.0, warmup_epochs=0).gamma == 1.0
    cases = [
        (lambda: Recipe(momentum=1.0), "recipe.momentum must be in [0, 1), got 1.0"),
        (lambda: Recipe(weight_decay=-1e-4), "recipe.weight_decay must be ≥ 0, got -0.0001"),
        (lambda: Recipe(gamma=0.0), "recipe.gamma must be in (0, 1], got 0.0"),
        (lambda: Recipe(warmup_epochs=-1), "recipe.warmup_epochs must be ≥ 0, got -1"),
        (lambda: Recipe(lr=math.inf), "recipe.lr must be a finite number > 0, got inf"),
        (lambda: Recipe(milestones=(0.5, 1.0)), "recipe.milestones must be in (0, 1), got 1.0"),
        (lambda: TeacherSpec("resnet20", seed=-1), "teacher.seed must be in [0, 4294967296)"),
        (lambda: TrialConfig("digits", "resnet8", "ce", seed=2**32), "seed must be in"),
        (
            lambda: TrialConfig("digits", "resnet8", "ce", val_fraction=math.nan),
            "val_fraction must be a number in (0, 1), got nan",
        ),
    ]
    for build, message in cases:
        with pytest.raises(ConfigError) as caught:
            build()
        assert message in str(caught.value)
