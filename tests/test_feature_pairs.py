"""Stage pairs of feature methods: pairs whose maps cannot carry spatial knowledge (1×1 stages,
a vision transformer whose image is one patch) are dropped or refused with a reason naming the
stages, and a run records the pairs it used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.api import ModelInfo, TaskInfo, describe_pairs, spatial_pairs
from bench.config import Recipe, TeacherSpec, TrialConfig
from bench.models import create_model, model_info
from bench.plugins import build_method
from bench.tracking import Tracker
from bench.trial.compose import run_trial

DIGITS = TaskInfo("digits", 10, (3, 16, 16), 1000, 2, 10)
#: Methods that compare student and teacher maps position by position.
SPATIAL_METHODS = ("at", "nst", "fitnet", "ab", "vid", "ft")


def info(name: str, size: int = 16) -> ModelInfo:
    return model_info(create_model(name, 10, image_size=size), name, (3, size, size))


def synthetic(sizes: tuple[int, ...], channels: int = 4) -> ModelInfo:
    """A model whose stages have these square sizes at 16 px."""
    return ModelInfo(
        "synthetic", "synthetic", 10, (channels,) * len(sizes), tuple(16 // s for s in sizes), 8, 0
    )


def test_vit_at_one_patch_is_refused_by_attention_transfer_naming_the_stages():
    student, teacher = info("vit_tiny_patch16_224"), info("resnet18")
    # timm reshapes the patch tokens to their grid: one 16-px patch is a 1×1 map per block
    assert set(student.feature_sizes) == {(1, 1)}
    ok, reason = build_method("at").supports(student, teacher, DIGITS)
    assert not ok
    assert "s7 (1×1) → t0 (8×8)" in reason and "s11 (1×1) → t4 (1×1)" in reason
    assert "no spatial knowledge" in reason


@pytest.mark.parametrize("name", SPATIAL_METHODS)
def test_every_spatial_method_refuses_a_pair_without_a_spatial_map(name):
    student, teacher = synthetic((2, 1, 1)), synthetic((4, 1, 1))
    assert spatial_pairs(student, teacher, DIGITS, [(0, 0), (1, 1), (2, 2)]) == [(0, 0)]
    ok, reason = build_method(name).supports(synthetic((1, 1, 1)), teacher, DIGITS)
    assert not ok
    used = {  # the single pair of one-pair methods, else every aligned pair
        "fitnet": "the stage pair s1 (1×1) → t1 (1×1) ",
        "ft": "the stage pair s2 (1×1) → t2 (1×1) ",
    }.get(name, "each of the 3 stage pairs s0 (1×1) → t0 (4×4), s1 (1×1) → t1 (1×1), s2 ")
    assert reason.startswith(used), reason


def test_multi_pair_methods_drop_only_the_1x1_pairs_and_record_the_others():
    # test_mobile ends in a 1×1 stage at 16 px; test_resnet_narrow's smallest map is 4×4
    student, teacher = info("test_mobile"), info("test_resnet_narrow")
    kept = "s1 (8×8) → t0 (16×16), s2 (4×4) → t1 (16×16), s3 (2×2) → t2 (8×8)"
    for name in ("at", "nst", "ab", "vid"):
        method = build_method(name)
        assert method.supports(student, teacher, DIGITS) == (True, "")
        method.setup(student, teacher, DIGITS)
        assert method.pairs == [(1, 0), (2, 1), (3, 2)], name
        assert method.setup_facts() == {"stage_pairs": kept}
    # FitNets' hint is the middle aligned pair, which is spatial here; FT's deepest is not
    fitnet = build_method("fitnet")
    assert fitnet.supports(student, teacher, DIGITS) == (True, "")
    fitnet.setup(student, teacher, DIGITS)
    assert fitnet.setup_facts() == {"stage_pairs": "s3 (2×2) → t2 (8×8)"}
    ok, reason = build_method("ft").supports(student, teacher, DIGITS)
    assert not ok and reason.startswith("the stage pair s4 (1×1) → t3 (4×4) has a map")


def test_measured_sizes_and_sizes_from_reductions_agree():
    measured = info("test_vgg")
    derived = ModelInfo(
        *[getattr(measured, f) for f in ("name", "family", "num_classes")],
        measured.feature_channels,
        measured.feature_reductions,
        measured.embedding_dim,
        measured.num_params,
    )
    teacher = info("test_resnet_wide")
    pairs = [(1, 0), (2, 1), (3, 2), (4, 3)]
    assert describe_pairs(measured, teacher, DIGITS, pairs) == describe_pairs(
        derived, teacher, DIGITS, pairs
    )


def test_a_run_records_its_stage_pairs_as_a_tag_and_in_its_config(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="test-pairs")
    recipe = Recipe(epochs=1, batch_size=128, image_size=16)
    config = TrialConfig(
        dataset="digits",
        student="test_mobile",
        method="at",
        seed=0,
        recipe=recipe,
        teacher=TeacherSpec(arch="test_resnet_narrow", recipe=recipe, seed=0),
    )
    result = run_trial(config, tracker=tracker)
    assert result.status == "FINISHED", result.error
    pairs = "s1 (8×8) → t0 (16×16), s2 (4×4) → t1 (16×16), s3 (2×2) → t2 (8×8)"
    assert result.setup == {"stage_pairs": pairs}
    run = tracker.client.get_run(result.mlflow_run_id)
    assert run.data.tags["kdbench.setup.stage_pairs"] == pairs
    path = tracker.client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    recorded = json.loads(Path(path).read_text())
    assert recorded["setup"] == {"stage_pairs": pairs}
    assert recorded["run_key"] == result.run_key  # what trial_run logged is kept
