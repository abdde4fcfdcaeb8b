"""kdbench profile, explain and compress on real digits runs recorded in MLflow (SQLite)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from bench.analysis.compress import dense_state, prune_global, sparse_state, weight_sparsity
from bench.analysis.explain import CELL_PX, rise_masks, rise_saliency
from bench.analysis.runs import WEIGHTS_SOURCE_TAG, config_from_json
from bench.cli import EXIT_BAD_INPUT, main
from bench.config import Recipe, TeacherSpec, TrialConfig, run_key, to_jsonable
from bench.data import load_dataset
from bench.models import create_model
from bench.plugins import get_method
from bench.tracking import STUDENT_ARTIFACT, Tracker
from bench.trial.compose import TrialResult, run_trial
from bench.trial.evaluate import labels_of, predict, topk_accuracy

ONE_EPOCH = Recipe(epochs=1, batch_size=64)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tracking store holding a kd run, the ce run of the same student and a ce run of a
    student FX cannot trace (test_vgg). One epoch on 40% of digits' training split each; the
    teacher is a checkpoint file of an untrained model (the analyses only need some model)."""
    folder = tmp_path_factory.mktemp("analysis")
    torch.manual_seed(0)
    torch.save(create_model("test_resnet_wide", 10).state_dict(), folder / "teacher.pt")
    teacher = TeacherSpec(arch="test_resnet_wide", checkpoint=str(folder / "teacher.pt"))
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", experiment="analysis")
    base = TrialConfig(
        dataset="digits",
        student="test_resnet_narrow",
        method="ce",
        seed=1,
        recipe=ONE_EPOCH,
        val_fraction=0.6,
    )
    runs = {
        "kd": run_trial(base.with_changes(method="kd", teacher=teacher), tracker=tracker),
        "ce": run_trial(base, tracker=tracker),
        "vgg": run_trial(base.with_changes(student="test_vgg"), tracker=tracker),
    }
    for result in runs.values():
        assert result.status == "FINISHED", result.error
    # The kd run stands for one recorded before runs stored their student: the analyses must
    # train it again from the recorded config.
    artifacts = tracker.client.get_run(runs["kd"].mlflow_run_id).info.artifact_uri
    (Path(urllib.parse.urlparse(artifacts).path) / STUDENT_ARTIFACT).unlink()
    return tracker, runs


def cli(tracker: Tracker, *args: str) -> int:
    return main([*args, "--tracking-uri", tracker.uri, "--experiment", tracker.experiment_name])


def last_json(capsys) -> object:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def conv_linear_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of every convolution and linear layer, counted with hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_size))
    for handle in handles:
        handle.remove()
    return total


def test_recorded_config_rebuilds_the_same_trial():
    config = TrialConfig(
        dataset="digits",
        student="resnet8",
        method="kd",
        params=(("temperature", 2.0),),
        seed=4,
        recipe=Recipe(epochs=3, milestones=(0.5,)),
        teacher=TeacherSpec(arch="resnet20", stop_epoch=5, classes=(0, 1, 2)),
    )
    rebuilt = config_from_json(json.loads(json.dumps(to_jsonable(config))))
    assert rebuilt == config
    assert run_key(rebuilt, 1) == run_key(config, 1)


# --------------------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------------------


def test_profile_reports_parameters_flops_and_latency_of_named_models(capsys):
    code = main(["profile", "test_resnet_narrow", "test_resnet_wide", "--repeats", "3", "--json"])
    assert code == 0
    rows = last_json(capsys)
    assert [r["name"] for r in rows] == ["test_resnet_narrow", "test_resnet_wide"]
    for row in rows:
        model = create_model(row["name"], 10, image_size=32)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["flops"] == 2 * conv_linear_macs(model, (3, 32, 32))
        assert row["input_size"] == [3, 32, 32] and row["num_classes"] == 10
        assert set(row["latency_ms"]) == {"1", "64"}
        assert 0 < row["latency_ms"]["1"] < row["latency_ms"]["64"]
        assert row["threads"] == torch.get_num_threads()
    narrow, wide = rows
    assert narrow["params"] < wide["params"] and narrow["flops"] < wide["flops"]


def test_profile_of_a_run_key_covers_its_teacher_and_student(store, capsys):
    tracker, runs = store
    code = cli(tracker, "profile", runs["kd"].run_key, "--repeats", "2", "--batch-sizes", "1")
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["model", "role", "input", "params"]
    assert lines[1].split()[:2] == ["test_resnet_wide", "teacher"]
    assert lines[2].split()[:2] == ["test_resnet_narrow", "student"]
    assert int(lines[2].split()[3].replace(",", "")) == runs["kd"].student_params


def test_a_run_key_looked_up_in_the_wrong_experiment_names_the_experiment_that_holds_it(
    store, capsys
):
    tracker, runs = store
    key = runs["kd"].run_key
    # no --experiment: the default, 'kdbench', does not exist in this store
    assert main(["profile", key, "--tracking-uri", tracker.uri]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"'{key}' is not a model name, nor a run key here: no MLflow experiment 'kdbench'" in err
    assert (
        f"Run key '{key}' is recorded in experiment 'analysis': pass --experiment analysis." in err
    )
    # the experiment exists but holds other runs; a prefix of the key is found all the same
    tracker.client.create_experiment("elsewhere")
    code = main(
        ["compress", key[:8], "--int8", "--tracking-uri", tracker.uri, "--experiment", "elsewhere"]
    )
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"no FINISHED run with run key '{key[:8]}' in experiment 'elsewhere'" in err
    assert "is recorded in experiment 'analysis': pass --experiment analysis." in err


# --------------------------------------------------------------------------------------------
# compress
# --------------------------------------------------------------------------------------------


def test_pruning_zeroes_the_requested_share_of_weights_and_sparse_saving_round_trips():
    model = create_model("test_resnet_narrow", 10, image_size=32)
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    pruned = prune_global(model, 0.7)
    assert abs(weight_sparsity(pruned) - 0.7) <= 1 / total
    assert weight_sparsity(model) == 0.0  # the original is untouched
    state = pruned.state_dict()
    restored = dense_state(sparse_state(state))
    assert all(torch.equal(state[k], restored[k]) for k in state)


def test_compress_prunes_and_quantises_the_student_and_records_child_runs(store, capsys):
    tracker, runs = store
    kd = runs["kd"]
    code = cli(
        tracker, "compress", kd.run_key, "--sparsity", "0.5", "0.8", "--int8",
        "--repeats", "3", "--json",
    )  # fmt: skip
    assert code == 0
    report = last_json(capsys)
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == ["fp32", "pruned-0.5", "pruned-0.8", "int8"]
    fp32, half, most, int8 = variants.values()
    # The student was trained again from the recorded config: the same weights on a CPU.
    assert fp32["test_acc"] == pytest.approx(kd.test_acc, abs=1e-9)
    total = sum(
        m.weight.numel()
        for m in create_model("test_resnet_narrow", 10).modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    )
    assert abs(half["sparsity"] - 0.5) <= 1 / total and abs(most["sparsity"] - 0.8) <= 1 / total
    assert fp32["size_bytes"] > half["size_bytes"] > most["size_bytes"]
    assert most["size_bytes"] < 0.45 * fp32["size_bytes"]  # 1 bit + 20% of 32 bits per weight
    assert int8["size_bytes"] < 0.5 * fp32["size_bytes"]
    assert abs(int8["test_acc"] - fp32["test_acc"]) <= 0.05
    assert all(ms > 0 for v in variants.values() for ms in v["latency_ms"].values())

    children = tracker.search(f"tags.`mlflow.parentRunId` = '{kd.mlflow_run_id}'")
    assert len(children) == 4
    by_variant = {c.data.tags["kdbench.compression"]: c for c in children}
    for name, variant in variants.items():
        child = by_variant[name]
        assert child.info.status == "FINISHED"
        assert child.info.run_id == variant["mlflow_run_id"]
        assert "kdbench.run_key" not in child.data.tags  # leaderboards and sweeps ignore it
        assert child.data.metrics["test_acc"] == pytest.approx(variant["test_acc"])
        assert child.data.metrics["size_bytes"] == variant["size_bytes"]
    assert by_variant["int8"].data.metrics["test_acc_change"] == pytest.approx(
        int8["test_acc"] - fp32["test_acc"]
    )

    # The retrained weights were stored with the run, and are what the next analysis loads.
    run = tracker.client.get_run(kd.mlflow_run_id)
    assert run.data.tags[WEIGHTS_SOURCE_TAG] == "retrained"
    assert STUDENT_ARTIFACT in {a.path for a in tracker.client.list_artifacts(kd.mlflow_run_id)}
    assert cli(tracker, "compress", kd.run_key[:8], "--sparsity", "0.5", "--repeats", "1",
               "--batch-sizes", "1", "--no-record", "--json") == 0  # fmt: skip
    again = last_json(capsys)["variants"]
    assert again[0]["test_acc"] == fp32["test_acc"]
    assert again[1]["size_bytes"] == half["size_bytes"]
    assert len(tracker.search(f"tags.`mlflow.parentRunId` = '{kd.mlflow_run_id}'")) == 4


def test_a_result_carrying_its_student_is_logged_and_analysed_without_retraining(store, capsys):
    tracker, _ = store
    config = TrialConfig(dataset="digits", student="test_resnet_narrow", method="ce", seed=9)
    key = run_key(config, get_method("ce").version)
    torch.manual_seed(9)
    student = create_model("test_resnet_narrow", 10, image_size=32).eval()
    test = load_dataset("digits").test
    accuracy = topk_accuracy(predict(student, test, CPU), labels_of(test, CPU))
    with tracker.trial_run(config, key, get_method("ce")) as run:
        result = TrialResult(run_key=key, status="FINISHED", outcome="ok", test_acc=accuracy)
        result.student = student
        run.finish(result)
    assert STUDENT_ARTIFACT in {a.path for a in tracker.client.list_artifacts(run.run_id)}
    code = cli(tracker, "compress", key, "--sparsity", "0.3", "--repeats", "1",
               "--batch-sizes", "1", "--no-record", "--json")  # fmt: skip
    assert code == 0
    fp32, pruned = last_json(capsys)["variants"]
    assert fp32["test_acc"] == accuracy
    assert abs(pruned["sparsity"] - 0.3) < 1e-3
    assert WEIGHTS_SOURCE_TAG not in tracker.client.get_run(run.run_id).data.tags


def test_compress_refuses_a_model_that_cannot_be_quantised(store, capsys):
    tracker, runs = store
    vgg = runs["vgg"]
    code = cli(tracker, "compress", vgg.run_key, "--int8", "--repeats", "1")
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "cannot quantise test_vgg to int8" in err
    assert "could not trace" in err
    assert tracker.search(f"tags.`mlflow.parentRunId` = '{vgg.mlflow_run_id}'") == []


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------


def test_rise_masks_are_seeded_bounded_and_keep_the_requested_share():
    masks = rise_masks(400, (32, 32), grid=7, keep=0.5, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (400, 1, 32, 32)
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.5) < 0.03
    same = rise_masks(400, (32, 32), grid=7, keep=0.5, generator=torch.Generator().manual_seed(0))
    other = rise_masks(400, (32, 32), grid=7, keep=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(masks, same) and not torch.equal(masks, other)


class TopLeftDetector(nn.Module):
    """Class 0's logit is the brightness of the image's top-left quadrant."""

    def forward(self, x):
        score = 8 * x[:, :, :16, :16].mean(dim=(1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_rise_saliency_is_highest_where_the_class_score_looks():
    masks = rise_masks(300, (32, 32), grid=4, keep=0.5, generator=torch.Generator().manual_seed(0))
    saliency = rise_saliency(
        TopLeftDetector(), torch.ones(3, 32, 32), 0, masks, mean=(0, 0, 0), std=(1, 1, 1), keep=0.5
    )
    assert saliency.shape == (32, 32)
    top_left, rest = saliency[:12, :12].mean(), saliency[20:, 20:].mean()
    assert top_left > rest + 0.05


def test_explain_writes_a_grid_and_rank_correlations_with_the_teacher(store, capsys, tmp_path):
    tracker, runs = store
    png = tmp_path / "maps.png"
    code = cli(
        tracker, "explain", runs["kd"].run_key, "--images", "3", "--masks", "48",
        "--out", str(png), "--json",
    )  # fmt: skip
    assert code == 0
    report = last_json(capsys)
    assert report["baseline_run_key"] == runs["ce"].run_key
    assert len(report["image_indices"]) == len(set(report["image_indices"])) == 3
    for role in ("KD student", "student alone"):
        values = report["spearman"][role]
        assert len(values) == 3 and all(-1 <= v <= 1 for v in values)
        assert report["mean_spearman"][role] == pytest.approx(sum(values) / 3)
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (4 * CELL_PX, 3 * CELL_PX)  # image + 3 maps, one row per image


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_unknown_run_key_exits_2_naming_it_with_close_keys_and_recent_runs(store, capsys):
    tracker, runs = store
    key = runs["kd"].run_key
    typo = key[:-1] + ("0" if key[-1] != "0" else "1")
    for command in (["explain", typo], ["compress", typo, "--int8"]):
        assert cli(tracker, *command) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert f"no FINISHED run with run key {typo!r}" in err
        assert f"Did you mean {key!r}" in err
        assert "Recent runs" in err and runs["ce"].run_key in err


def test_explain_needs_a_distillation_run(store, capsys):
    tracker, runs = store
    assert cli(tracker, "explain", runs["ce"].run_key, "--images", "1") == EXIT_BAD_INPUT
    assert "has no teacher" in capsys.readouterr().err
