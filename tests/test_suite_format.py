"""Suite files: the typed expansion, the shipped digits suite, and every class of bad input,
each reported with its key path, line and a suggestion before anything runs; validation that
depends on nothing but its arguments, and params typed by the one function the command line
uses too."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from bench.api import params as api_params
from bench.api.params import ParamError, coerce_value
from bench.cli import main
from bench.config import Recipe, key_fields, run_key
from bench.models import MODELS
from bench.plugins import get_method, method_code
from bench.suite import checks
from bench.suite.checks import Context
from bench.suite.expand import plan_trials, teacher_jobs
from bench.suite.load import load_suite, parse_suite
from bench.suite.schema import Checkpointing, Resources, SuiteError
from bench.suite.validate_pairs import SuiteRecipes, pairs, suite_recipes

DIGITS_SUITE = Path(__file__).resolve().parents[1] / "leaderboards" / "digits"

GOOD = """\
name: tiny
datasets: [digits]
pairs:
  - {teacher: test_resnet_wide, student: test_resnet_narrow}
  - {teacher: test_vgg, student: test_resnet_narrow}
methods:
  - ce
  - {name: kd, params: {temperature: 2.0}}
seeds: 3
recipe:
  student: {epochs: 1, batch_size: 32}
  teacher: {epochs: 2}
resources: {cpu: 1, gpu: 0.5}
"""

TUNE = """\
name: tiny-tune
phase: tune
datasets: [digits]
pairs:
  - {teacher: test_resnet_wide, student: test_resnet_narrow}
methods:
  - ce
  - {name: kd, search: default}
  - {name: dkd, params: {alpha: 0.5}, search: {beta: [1.0, 2.0, 4.0], temperature: [2.0, 4.0]}}
seeds: [7, 8]
tune: {budget: 3}
"""


def problems_of(text: str) -> SuiteError:
    with pytest.raises(SuiteError) as caught:
        parse_suite(text, source="s.yaml")
    return caught.value


def test_suite_expands_to_one_trial_per_run_key_with_teacherless_methods_once_per_student():
    suite = parse_suite(GOOD, source="tiny.yaml")
    trials = plan_trials(suite)
    assert Counter(t.method for t in trials) == {"ce": 3, "kd": 6}
    assert len({t.key for t in trials}) == len(trials) == 9
    ce = [t for t in trials if t.method == "ce"]
    assert all(t.config.teacher is None for t in ce)
    assert ce[0].pairs == ("test_resnet_wide->test_resnet_narrow", "test_vgg->test_resnet_narrow")
    kd = next(t for t in trials if t.method == "kd")
    assert kd.config.params == (("alpha", 0.9), ("temperature", 2.0))  # resolved, defaults in
    assert kd.given == (("temperature", 2.0),) and kd.params_label == "temperature=2.0"
    assert kd.config.recipe == Recipe(epochs=1, batch_size=32)
    assert kd.config.teacher.recipe == Recipe(epochs=2, batch_size=32)  # inherits batch_size
    assert kd.resources == Resources(cpu=1.0, gpu=0.5)
    assert [t.key for t in trials] == [t.key for t in plan_trials(parse_suite(GOOD))]
    assert [j.spec.arch for j in teacher_jobs(suite, plan_trials(suite))] == [
        "test_resnet_wide",
        "test_vgg",
    ]
    assert suite.experiment == "tiny" and suite.phase == "final" and suite.metric == "test_acc"
    with pytest.raises(dataclasses.FrozenInstanceError):
        suite.name = "other"


def test_shipped_digits_suite_compares_eight_methods_over_mixed_family_pairs_and_five_seeds():
    suite = load_suite(DIGITS_SUITE)
    assert suite.phase == "final" and suite.datasets[0].name == "digits"
    assert len({m.name for m in suite.methods}) >= 8
    assert len(suite.pairs) >= 3 and len(suite.seeds) == 5
    families = [(MODELS.get(p.teacher).family, MODELS.get(p.student).family) for p in suite.pairs]
    assert any(t != s for t, s in families), families
    assert len({f for pair in families for f in pair}) >= 2
    trials = plan_trials(suite)
    distilled = [t for t in trials if t.config.teacher is not None]
    assert len(distilled) == (len(suite.methods) - 1) * len(suite.pairs) * 5
    assert len(teacher_jobs(suite, plan_trials(suite))) == len({p.teacher for p in suite.pairs})


def test_tune_phase_gives_every_method_the_same_budget_from_a_fixed_sample():
    suite = parse_suite(TUNE)
    trials = plan_trials(suite)
    configs = Counter(t.method for t in trials)
    assert configs == {"ce": 2, "kd": 3 * 2, "dkd": 3 * 2}  # ce's grid has one point
    dkd = {t.config.params for t in trials if t.method == "dkd"}
    assert len(dkd) == 3
    assert all(dict(p)["alpha"] == 0.5 for p in dkd)
    assert all(dict(p)["beta"] in (1.0, 2.0, 4.0) for p in dkd)
    kd_temperatures = {dict(t.config.params)["temperature"] for t in trials if t.method == "kd"}
    assert len(kd_temperatures) == 3 and kd_temperatures < {1.0, 2.0, 4.0, 8.0}
    assert {t.key for t in plan_trials(parse_suite(TUNE))} == {t.key for t in trials}
    assert all(t.config.phase == "tune" for t in trials) and suite.metric == "val_acc"


def test_smoke_keeps_every_method_and_pair_with_one_seed_and_one_epoch_elsewhere():
    suite = parse_suite(TUNE)
    smoke = suite.smoke()
    trials = plan_trials(smoke)
    assert Counter(t.method for t in trials) == {"ce": 1, "kd": 1, "dkd": 1}
    assert {t.seed for t in trials} == {7}
    assert all(t.config.recipe.epochs == 1 for t in trials)
    assert all(t.config.teacher is None or t.config.teacher.recipe.epochs == 1 for t in trials)
    assert smoke.experiment == "tiny-tune-smoke"


@pytest.mark.parametrize(
    ("change", "expected", "line"),
    [
        (("seeds: 3", "seed: 3"), "seed: unknown key 'seed'. Did you mean 'seeds'?", 9),
        (("- ce", "- kdd"), "methods[0].name: unknown method 'kdd'. Did you mean 'kd'", 7),
        (("teacher: test_vgg", "teacher: test_vgq"), "pairs[1].teacher: unknown model", 5),
        (
            ("[digits]", "[digitz]"),
            "datasets[0]: unknown dataset 'digitz'. Did you mean 'digits'?",
            2,
        ),
        (
            ("temperature: 2.0", "temprature: 2.0"),
            "methods[1].params.temprature: unknown parameter of kd 'temprature'. Did you mean "
            "'temperature'?",
            8,
        ),
        (("epochs: 1,", 'epochs: "1",'), "recipe.student.epochs: expected an integer, got '1'", 11),
        (("temperature: 2.0", "temperature: true"), "expected a number, got True", 8),
        (("gpu: 0.5", "gpu: 1.5"), "resources.gpu: must be a fraction in [0, 1]", 13),
        (("gpu: 0.5", "gpu: 0.5, memory: 4"), "resources.memory: unknown key 'memory'", 13),
        (("seeds: 3", "seeds: []"), "seeds: empty: the grid needs at least one seed", 9),
        (("seeds: 3", "seeds: 3\nseeds: 4"), "seeds: key given twice", 10),
        (
            ("{name: kd, params: {temperature: 2.0}}", "{name: kd, search: {temperature: [2.0]}}"),
            "methods[1].search: search spaces belong to phase: tune",
            8,
        ),
        (("epochs: 2}", "epochs: 0}"), "recipe.teacher.epochs: must be ≥ 1, got 0", 12),
        (("name: tiny", "name: tiny suite"), "name: expected a name of letters", 1),
        (("  - ce\n", "  - ce\n  - ce\n"), "duplicate method entry", 8),
        (("seeds: 3", "seeds: [1, -2]"), "seeds[1]: must be in [0, 4294967296), got -2", 9),
    ],
)
def test_each_class_of_bad_input_names_its_key_line_and_fix(change, expected, line):
    error = problems_of(GOOD.replace(*change))
    assert len(error.problems) == 1, str(error)
    problem = error.problems[0]
    assert expected in f"{problem.path}: {problem.message}"
    assert problem.line == line
    assert f"s.yaml:{line}: " in str(error) and "nothing was run" in str(error)


def test_empty_grids_and_missing_sections_are_reported():
    assert "empty: the grid needs at least one method" in str(
        problems_of(
            GOOD.replace(
                "methods:\n  - ce\n  - {name: kd, params: {temperature: 2.0}}", "methods: []"
            )
        )
    )
    error = problems_of("name: x\ndatasets: [digits]\n")
    text = str(error)
    assert all(f"missing required key '{k}'" in text for k in ("pairs", "methods", "seeds"))
    assert "expected a non-empty list" in str(
        problems_of(TUNE.replace("temperature: [2.0, 4.0]", "temperature: []"))
    )
    assert "phase: tune needs tune: {budget: N}" in str(
        problems_of(TUNE.replace("tune: {budget: 3}", ""))
    )
    assert "declares no search_space" in str(
        problems_of(TUNE.replace("- ce", "- {name: ce, search: default}"))
    )


def test_every_problem_is_reported_at_once_in_file_order():
    text = (
        GOOD.replace("[digits]", "[digitz]")
        .replace("- ce", "- kdd")
        .replace("epochs: 1,", "epochs: one,")
        .replace("name: tiny", "nmae: tiny")
    )
    error = problems_of(text)
    assert len(error.problems) == 4
    lines = [line.split(": ")[0] for line in str(error).splitlines()[1:]]
    assert lines == ["  s.yaml:1", "  s.yaml:2", "  s.yaml:7", "  s.yaml:11"]


def test_resources_that_no_node_can_hold_fail_before_anything_runs():
    suite = parse_suite(GOOD.replace("{cpu: 1, gpu: 0.5}", "{cpu: 4, gpu: 1}"))
    with pytest.raises(SuiteError) as caught:
        suite.check_resources([{"CPU": 2.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 0.0}], "this machine")
    message = str(caught.value)
    assert "resources: asks for cpu 4, gpu 1 per trial, but no node of this machine" in message
    assert "teacher_resources" in message  # it defaults to the trial's resources
    suite.check_resources([{"CPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}], "the cluster")


def test_suite_files_are_data_and_never_execute(tmp_path):
    marker = tmp_path / "executed"
    text = GOOD + f"description: !!python/object/apply:os.system ['touch {marker}']\n"
    error = problems_of(text)
    assert "not valid YAML" in str(error) and error.problems[0].line == 14
    assert not marker.exists()


def test_a_folder_or_file_path_loads_and_a_missing_one_says_so(tmp_path):
    (tmp_path / "suite.yaml").write_text(GOOD.replace("name: tiny\n", ""))
    suite = load_suite(tmp_path)
    assert suite.name == tmp_path.name and suite.path == str(tmp_path / "suite.yaml")
    with pytest.raises(SuiteError, match="no such suite file"):
        load_suite(tmp_path / "nothing")


# ------------------------------------------------------------------ per-pair keys and studies

PAIRS = """\
name: pairs
datasets: [digits]
pairs:
  - {teacher: test_resnet_wide, student: test_resnet_narrow}
  - teacher: test_resnet_wide
    student: test_mobile
    recipe: {student: {lr: 0.01}}
  - {teacher: test_vgg, student: test_resnet_narrow, teacher_epochs: [4, 1, 2]}
methods:
  - ce
  - {name: kd, params: {temperature: 1.0}}
  - {name: kd, params: {temperature: 4.0}}
seeds: 2
recipe:
  student: {epochs: 3, batch_size: 32, lr: 0.05}
  teacher: {epochs: 4}
study: {parameter: temperature, method: kd}
"""


def test_a_pair_recipe_overrides_the_suite_recipe_for_that_pair_only():
    suite = parse_suite(PAIRS)
    trials = plan_trials(suite)
    lr = {(t.config.student, t.method): t.config.recipe.lr for t in trials}
    assert lr[("test_mobile", "kd")] == lr[("test_mobile", "ce")] == 0.01
    assert lr[("test_resnet_narrow", "kd")] == lr[("test_resnet_narrow", "ce")] == 0.05
    mobile = next(t for t in trials if t.config.student == "test_mobile" and t.method == "kd")
    assert mobile.config.recipe == Recipe(epochs=3, batch_size=32, lr=0.01)
    # The student override leaves the teacher alone: both pairs share one wide teacher.
    wide = {t.config.teacher for t in trials if t.pair.startswith("test_resnet_wide")}
    assert len(wide) == 1 and next(iter(wide)).recipe == Recipe(epochs=4, batch_size=32)
    own_teacher = plan_trials(
        parse_suite(PAIRS.replace("{student: {lr: 0.01}}", "{teacher: {epochs: 2}}"))
    )
    teachers = {t.config.teacher.recipe.epochs for t in own_teacher if t.config.teacher}
    assert teachers == {2, 4}


def test_bad_pair_recipes_are_reported_with_their_key_path():
    typo = problems_of(PAIRS.replace("{lr: 0.01}", "{lrr: 0.01}"))
    assert "pairs[1].recipe.student.lrr: unknown recipe field 'lrr'. Did you mean 'lr'?" in str(
        typo
    )
    assert typo.problems[0].line == 7
    negative = problems_of(PAIRS.replace("lr: 0.01", "lr: -1.0"))
    assert "pairs[1].recipe.student.lr: must be > 0, got -1.0" in str(negative)
    frozen_teacher = problems_of(
        PAIRS.replace("{lr: 0.01}", "{lr: 0.01}, teacher: {trainable: [head]}")
    )
    assert "pairs[1].recipe.teacher.trainable: teachers train every layer" in str(frozen_teacher)


def test_teacher_epochs_give_one_pair_per_early_stopped_checkpoint_of_one_training():
    suite = parse_suite(PAIRS)
    trials = [t for t in plan_trials(suite) if t.pair.startswith("test_vgg")]
    stops = Counter(t.config.teacher.stop_epoch for t in trials)
    assert stops == {1: 4, 2: 4, 4: 4}  # two kd settings x two seeds each
    assert {t.pair for t in trials} == {
        "test_vgg@ep1->test_resnet_narrow",
        "test_vgg@ep2->test_resnet_narrow",
        "test_vgg@ep4->test_resnet_narrow",
    }
    vgg_jobs = [j for j in teacher_jobs(suite, plan_trials(suite)) if j.spec.arch == "test_vgg"]
    assert [j.spec.stop_epoch for j in vgg_jobs] == [1, 2, 4]
    assert "checkpoint after epoch 2" in vgg_jobs[1].describe()
    # ce uses no teacher: still one trial per student and seed.
    assert Counter(t.method for t in plan_trials(suite))["ce"] == 2 * 2
    late = problems_of(PAIRS.replace("[4, 1, 2]", "[1, 8]"))
    assert "epochs [8] are past the teacher's 4 training epochs" in str(late)
    assert "distinct and ≥ 1" in str(problems_of(PAIRS.replace("[4, 1, 2]", "[2, 2]")))


def test_smoke_cuts_pair_recipes_and_teacher_epochs_to_one_epoch():
    smoke = parse_suite(PAIRS).smoke()
    trials = plan_trials(smoke)
    assert all(t.config.recipe.epochs == 1 for t in trials)
    assert {t.config.recipe.lr for t in trials} == {0.05, 0.01}
    teachers = {t.config.teacher for t in trials if t.config.teacher}
    assert {(s.recipe.epochs, s.stop_epoch) for s in teachers} == {(1, None), (1, 1)}


def test_the_same_method_runs_once_per_setting_and_a_study_names_what_varies():
    suite = parse_suite(PAIRS)
    temperatures = Counter(
        dict(t.config.params)["temperature"] for t in plan_trials(suite) if t.method == "kd"
    )
    assert temperatures == {1.0: 10, 4.0: 10}  # 5 pairs (3 early-stopped) x 2 seeds
    assert (suite.study.parameter, suite.study.method) == ("temperature", "kd")
    one_value = PAIRS.replace("  - {name: kd, params: {temperature: 1.0}}\n", "")
    assert "kd is listed with one value of temperature" in str(problems_of(one_value))
    typo = problems_of(PAIRS.replace("parameter: temperature", "parameter: temprature"))
    assert "Did you mean 'temperature'?" in str(typo)
    bad_reference = problems_of(PAIRS.replace("method: kd}", "method: kd, reference: 2.0}"))
    assert (
        "study.reference: 2.0 is not one of the temperature values the suite runs (1.0, 4.0)"
        in str(bad_reference)
    )
    epochs = parse_suite(PAIRS.replace("parameter: temperature", "parameter: teacher_epoch"))
    assert epochs.study.parameter == "teacher_epoch"
    no_epochs = PAIRS.replace(", teacher_epochs: [4, 1, 2]", "").replace(
        "parameter: temperature", "parameter: teacher_epoch"
    )
    assert "needs a pair with teacher_epochs" in str(problems_of(no_epochs))


def test_transfer_options_change_the_run_key_only_when_they_are_used(tmp_path):
    checkpoint = tmp_path / "pretrained.pt"
    checkpoint.write_bytes(b"state")
    plain = parse_suite(GOOD)
    base = {t.key for t in plan_trials(plain)}
    transfer = GOOD.replace(
        "{teacher: test_vgg, student: test_resnet_narrow}",
        f"{{teacher: test_vgg, student: test_resnet_narrow, student_checkpoint: {checkpoint}}}",
    ).replace("{epochs: 1, batch_size: 32}", "{epochs: 1, batch_size: 32, trainable: [head]}")
    suite = parse_suite(transfer)
    trials = plan_trials(suite)
    assert all(t.config.recipe.trainable == ("head",) for t in trials)
    assert {t.config.student_checkpoint for t in trials if t.pair.startswith("test_vgg")} == {
        str(checkpoint)
    }
    assert not base & {t.key for t in trials}
    # The teacher inherits the student's fields but never its frozen parts.
    assert all(t.config.teacher.recipe.trainable == () for t in trials if t.config.teacher)
    # At their defaults the new options are not part of the key: keys made before they
    # existed still name the same trials.
    fields = key_fields(plan_trials(plain)[0].config, 1)
    assert "student_checkpoint" not in fields and "trainable" not in fields["recipe"]
    missing = problems_of(
        GOOD.replace(
            "student: test_resnet_narrow}",
            "student: test_resnet_narrow, student_checkpoint: nope.pt}",
            1,
        )
    )
    assert "pairs[0].student_checkpoint: no such file" in str(missing)


COMPRESS = GOOD + "compress:\n  methods: [kd]\n  sparsities: [0.8, 0.5]\n  int8: true\n"


def test_a_compress_section_selects_students_and_names_the_variants_it_records():
    suite = parse_suite(COMPRESS)
    compress = suite.compress
    assert (compress.methods, compress.sparsities, compress.int8) == (("kd",), (0.5, 0.8), True)
    assert compress.variants == ("fp32", "pruned-0.5", "pruned-0.8", "int8")
    assert Counter(t.method for t in plan_trials(suite) if compress.selects(t.method)) == {"kd": 6}
    assert [t.key for t in plan_trials(suite)] == [t.key for t in plan_trials(parse_suite(GOOD))]
    every = parse_suite(GOOD + "compress: {int8: true}\n").compress
    assert every.methods == ("ce", "kd") and every.variants == ("fp32", "int8")
    assert parse_suite(GOOD).compress is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        compress.int8 = False


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{int8: true, level: 2}", "compress.level: unknown key 'level'. Known: methods"),
        (
            "{methods: [kdd], int8: true}",
            "compress.methods[0]: unknown method of this suite "
            "'kdd'. Did you mean 'kd'? Known: ce, kd.",
        ),
        ("{methods: [], int8: true}", "compress.methods: empty: leave methods out"),
        ("{methods: [kd, kd], int8: true}", "compress.methods[1]: duplicate method: 'kd'"),
        ("{sparsities: [0.5, 1.0]}", "compress.sparsities[1]: 1.0 is not in (0, 1)"),
        ("{sparsities: [0]}", "compress.sparsities[0]: 0 is not in (0, 1)"),
        ("{sparsities: [0.5, 0.5]}", "compress.sparsities[1]: duplicate sparsity: 0.5"),
        ("{sparsities: 0.5}", "compress.sparsities: expected a list of sparsities in (0, 1)"),
        ("{sparsities: ['half']}", "compress.sparsities[0]: expected a number, got 'half'"),
        ("{sparsities: [0.5], int8: 1}", "compress.int8: expected true/false, got 1"),
        ("{sparsities: []}", "compress: nothing to do: give sparsities"),
        ("{methods: [kd]}", "compress: nothing to do"),
        ("[0.5, 0.8]", "compress: expected a mapping with keys methods, sparsities, int8"),
    ],
)
def test_bad_compress_sections_are_reported_with_their_key_path(section, expected):
    error = problems_of(GOOD + f"compress: {section}\n")
    assert len(error.problems) == 1, str(error)
    problem = error.problems[0]
    assert expected in f"{problem.path}: {problem.message}"
    assert problem.line == 14


def test_a_tune_suite_cannot_compress():
    error = problems_of(TUNE + "compress: {int8: true}\n")
    assert "compress: compression measures test accuracy" in str(error)


# ------------------------------------------------------------ validation without hidden state

ORDER = """\
name: order
datasets: [digits]
RECIPE
pairs:
  - {teacher: test_vgg, student: test_resnet_narrow, teacher_epochs: [1, 8]}
  - teacher: test_resnet_wide
    student: test_mobile
    recipe: {student: {lrr: 0.01}}
  - teacher: test_resnet_wide
    student: test_resnet_narrow
    recipe: {teacher: {epochs: 2}}
    teacher_epochs: [3]
methods: [ce, kd]
seeds: 1
"""
RECIPE = "recipe:\n  student: {epochs: 2, lr: 0.05}\n  teacher: {epochs: 4}\n"
RECIPE_OF_PAIRS = (
    "recipe:\n  student: {epochs: 3, batch_size: 32, lr: 0.05}\n  teacher: {epochs: 4}\n"
)


def test_pair_and_suite_recipe_checks_give_the_same_problems_in_either_key_order():
    recipe_first = problems_of(ORDER.replace("RECIPE\n", RECIPE))
    recipe_last = problems_of(ORDER.replace("RECIPE\n", "") + RECIPE)
    found = [f"{p.path}: {p.message}" for p in recipe_first.problems]
    assert found == [f"{p.path}: {p.message}" for p in recipe_last.problems]
    assert found == [
        "pairs[0].teacher_epochs: epochs [8] are past the teacher's 4 training epochs; raise "
        "recipe.teacher.epochs or drop them",
        "pairs[1].recipe.student.lrr: unknown recipe field 'lrr'. Did you mean 'lr'? Known: "
        + ", ".join(f.name for f in dataclasses.fields(Recipe))
        + ".",
        "pairs[2].teacher_epochs: epochs [3] are past the teacher's 2 training epochs; raise "
        "recipe.teacher.epochs or drop them",
    ]
    # Sound suites: the same trials, whichever comes first.
    moved = PAIRS.replace(RECIPE_OF_PAIRS, "").replace("datasets:", RECIPE_OF_PAIRS + "datasets:")
    assert [t.key for t in plan_trials(parse_suite(moved))] == [
        t.key for t in plan_trials(parse_suite(PAIRS))
    ]


def test_pairs_take_the_suite_recipes_as_an_argument_and_keep_nothing_between_calls():
    ctx = Context(root=None, base=Path.cwd())
    value = [
        {
            "teacher": "test_vgg",
            "student": "test_resnet_narrow",
            "teacher_epochs": [6, 2],
            "recipe": {"student": {"lr": 0.01}},
        }
    ]
    short, no_problems = suite_recipes(ctx, {"teacher": {"epochs": 4}})
    long, _ = suite_recipes(ctx, {"teacher": {"epochs": 8}})
    assert no_problems == []
    late = pairs(ctx, value, short)
    fine = pairs(ctx, value, long)
    assert pairs(ctx, value, short) == late  # the same answer after another suite's check
    assert late[0] == ()  # the pair is dropped, with the reason
    assert [p.message for p in late[1]] == [
        "epochs [6] are past the teacher's 4 training epochs; raise recipe.teacher.epochs or "
        "drop them"
    ]
    (pair,), problems = fine
    assert problems == [] and pair.teacher_epochs == (2, 6)
    assert pair.recipe == Recipe(lr=0.01) and pair.teacher_recipe is None
    # A broken suite recipe (reported where it is) leaves nothing for a pair recipe to merge
    # over: such a pair is skipped without a second report.
    assert pairs(ctx, value, SuiteRecipes()) == ((), [])


# ------------------------------------------------------------------- one type system for params


def test_a_bad_param_gets_the_same_type_message_from_the_command_line_and_a_suite(
    monkeypatch, capsys
):
    calls = []

    def recording(raw, tp, *, where, strict=False):
        calls.append((raw, strict))
        return coerce_value(raw, tp, where=where, strict=strict)

    monkeypatch.setattr(api_params, "coerce_value", recording)  # Params.from_mapping (--param)
    monkeypatch.setattr(checks, "coerce_value", recording)  # suite params and search
    error = problems_of(GOOD.replace("temperature: 2.0", "temperature: hot"))
    code = main(["train", "--no-track", "--method", "kd", "--param", "temperature=hot"])
    err = capsys.readouterr().err
    assert code == 2
    message = "expected a number, got 'hot' (a string)"
    assert [(p.path, p.message) for p in error.problems] == [
        ("methods[1].params.temperature", message)
    ]
    assert f"kd params.temperature: {message}" in err
    assert [c for c in calls if c[0] == "hot"] == [("hot", True), ("hot", False)]


@pytest.mark.parametrize(
    ("raw", "tp", "parsed"),
    [("4", float, 4.0), ("3", int, 3), ("true", bool, True), ("none", int | None, None)],
)
def test_a_suite_refuses_the_strings_a_command_line_parses(raw, tp, parsed):
    assert coerce_value(raw, tp, where="--param x") == parsed
    with pytest.raises(ParamError) as caught:
        coerce_value(raw, tp, where="methods[0].params.x", strict=True)
    assert caught.value.where == "methods[0].params.x"
    assert caught.value.reason.startswith("expected ") and f"got {raw!r} (a string)" in str(
        caught.value
    )


def test_params_are_typed_once_in_the_suite_and_its_keys_are_the_keys_trials_record():
    suite = parse_suite(GOOD.replace("temperature: 2.0", "temperature: 2"))
    kd = next(t for t in plan_trials(suite) if t.method == "kd")
    assert kd.config.params == (("alpha", 0.9), ("temperature", 2.0))
    assert isinstance(dict(kd.config.params)["temperature"], float)
    written_as_float = next(t for t in plan_trials(parse_suite(GOOD)) if t.method == "kd")
    assert kd.key == written_as_float.key  # 2 and 2.0 are the same trial
    cls = get_method("kd")
    assert kd.key == run_key(kd.config, cls.version, method_code(cls))
    assert parse_suite(TUNE).methods[1].search == (("temperature", (1.0, 2.0, 4.0, 8.0)),)


def test_checkpoint_settings_default_and_are_checked():
    base = plan_free_suite()
    assert parse_suite(base).checkpoint == Checkpointing(epochs=10, minutes=15.0)
    assert parse_suite(base + "checkpoint: {epochs: 1}\n").checkpoint.epochs == 1
    with pytest.raises(SuiteError) as caught:
        parse_suite(base + "checkpoint: {epochs: -1, minuts: 2}\n")
    message = str(caught.value)
    assert "checkpoint.epochs: must be ≥ 0, got -1" in message
    assert "checkpoint.minuts: unknown key 'minuts'. Did you mean 'minutes'?" in message


def plan_free_suite() -> str:
    return (
        "datasets: [digits]\n"
        "pairs: [{teacher: test_resnet_wide, student: test_resnet_narrow}]\n"
        "methods: [ce]\n"
        "seeds: 1\n"
    )
