"""The documentation stays true to the code: every key the suite parser accepts is described in
docs/suites.md, each of its YAML examples is a valid suite, and CONTRIBUTING.md lists every
field of the plugin API's data types and every member of the training context."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

import bench.suite.schema as schema
from bench.api import Batch, ModelInfo, Outputs, TaskInfo, TrainContext
from bench.config import Recipe
from bench.entry_spec import SPEC_KEYS
from bench.suite.expand import plan_trials, teacher_jobs
from bench.suite.load import load_suite, parse_suite
from bench.suite.schema import Suite

ROOT = Path(__file__).resolve().parents[1]
SUITES_DOC = ROOT / "docs" / "suites.md"
FENCE = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def accepted_keys() -> set[str]:
    """Every key of the suite format, read from the parser's own tables: the key tuples of
    bench.suite.schema, the mapping form of a leaderboard entry and the recipe's fields."""
    tables = [v for k, v in vars(schema).items() if k.endswith("_KEYS") and isinstance(v, tuple)]
    keys = {key for table in tables for key in table}
    keys |= set(SPEC_KEYS)
    keys |= {f.name for f in dataclasses.fields(Recipe)}
    return keys


def documented_keys(text: str) -> set[str]:
    """The keys described in a reference table row of the page: ``| `key` | …``."""
    return set(re.findall(r"^\| `([A-Za-z0-9_]+)` \|", text, re.MULTILINE))


def examples() -> list[str]:
    return FENCE.findall(SUITES_DOC.read_text(encoding="utf-8"))


def validated(text: str, folder: Path) -> Suite:
    """``text`` checked by the suite parser, without running or importing anything: the files
    it names (checkpoints, plugin files) are created empty in ``folder``, as a user's are."""
    data = yaml.safe_load(text)
    named = list(data.get("plugins", []))
    for pair in data["pairs"]:
        named += [pair[k] for k in ("teacher_checkpoint", "student_checkpoint") if k in pair]
    for name in named:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    return parse_suite(text, source=str(folder / "suite.yaml"), base=folder, import_plugins=False)


def by_name(tmp_path: Path) -> dict[str, Suite]:
    suites = {}
    for i, text in enumerate(examples()):
        folder = tmp_path / str(i)
        folder.mkdir()
        suite = validated(text, folder)
        suites[suite.name] = suite
    return suites


def test_the_parser_s_keys_are_read_from_code_and_include_every_section():
    keys = accepted_keys()
    # a sample of each source, so that a renamed table cannot empty the check silently
    assert {"tune", "compress", "leaderboard", "budget", "sparsities", "search"} <= keys
    assert {"teacher_checkpoint", "version", "image_size", "augment_stream"} <= keys


def test_every_key_the_suite_parser_accepts_is_described_in_docs_suites():
    missing = accepted_keys() - documented_keys(SUITES_DOC.read_text(encoding="utf-8"))
    assert not missing, f"describe these suite keys in docs/suites.md's reference: {missing}"


def test_the_readme_points_to_the_suite_reference():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/suites.md)" in readme


@pytest.mark.parametrize("index", range(len(examples())))
def test_each_yaml_example_of_docs_suites_is_a_valid_suite(index, tmp_path):
    suite = validated(examples()[index], tmp_path)
    assert plan_trials(suite) or suite.unloaded_methods


def test_the_examples_expand_as_the_page_says(tmp_path):
    suites = by_name(tmp_path)
    small = suites["digits-small"]
    assert len(plan_trials(small)) == 15 and len(teacher_jobs(small, plan_trials(small))) == 1
    tune = suites["digits-tune"]
    assert tune.phase == "tune" and tune.budget == 4
    counts = {m.name: len(m.configurations(tune.budget)) for m in tune.methods}
    assert counts == {"ce": 1, "kd": 4, "dkd": 4, "dist": 4}
    assert len(plan_trials(tune)) == 39
    compressed = suites["digits-compression-small"].compress
    assert compressed is not None and compressed.variants == (
        "fp32",
        "pruned-0.5",
        "pruned-0.8",
        "int8",
    )
    assert suites["transfer"].unloaded_methods == ("my_method",)


def test_the_tune_example_is_the_committed_tune_suite(tmp_path):
    documented = by_name(tmp_path)["digits-tune"]
    committed = load_suite(ROOT / "leaderboards" / "digits-tune")
    assert dataclasses.replace(documented, path=None) == dataclasses.replace(committed, path=None)


# --------------------------------------------------------------------------------------------
# CONTRIBUTING.md: the plugin API's types
# --------------------------------------------------------------------------------------------


def members(cls: type) -> set[str]:
    """A type's public fields and properties, or a protocol's attributes and methods."""
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
    else:
        names = set(inspect.get_annotations(cls))
    names |= {
        name
        for name, value in vars(cls).items()
        if isinstance(value, property) or inspect.isfunction(value)
    }
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("cls", [Batch, Outputs, ModelInfo, TaskInfo, TrainContext])
def test_contributing_lists_every_member_of_the_plugin_api_types(cls):
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    row = re.search(rf"^\| `{cls.__name__}` \|(.*)$", text, re.MULTILINE)
    assert row, f"CONTRIBUTING.md's plugin API table has no row for {cls.__name__}"
    listed = set(re.findall(r"`([A-Za-z0-9_]+)`", row.group(1)))
    missing = members(cls) - listed
    assert not missing, f"CONTRIBUTING.md's {cls.__name__} row lacks {missing}"
