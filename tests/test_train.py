"""One trial end to end: determinism, results, MLflow records, bad input, divergence."""

from __future__ import annotations

import json
import math

import pytest

from bench.cli import main
from bench.config import Compute, Recipe, TeacherSpec, TrialConfig, run_key
from bench.tracking import RUN_KEY_TAG, Tracker
from bench.trial.compose import run_trial

TINY = Recipe(epochs=2, batch_size=64)
TEACHER = TeacherSpec(arch="test_resnet_wide", recipe=Recipe(epochs=2, batch_size=64), seed=0)


def kd_config(**changes) -> TrialConfig:
    base = TrialConfig(
        dataset="digits",
        student="test_resnet_narrow",
        method="kd",
        seed=3,
        recipe=TINY,
        teacher=TEACHER,
    )
    return base.with_changes(**changes)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return Tracker(f"sqlite:///{db}", experiment="test-train")


def test_same_trial_same_seed_gives_identical_accuracy_and_loss():
    one_epoch = Recipe(epochs=1, batch_size=64)
    first = run_trial(kd_config(recipe=one_epoch))
    second = run_trial(kd_config(recipe=one_epoch))
    assert first.status == second.status == "FINISHED", (first.error, second.error)
    assert first.run_key == second.run_key
    assert first.test_acc == second.test_acc
    assert first.final_loss == second.final_loss
    assert [h["train/loss"] for h in first.history] == [h["train/loss"] for h in second.history]
    other = run_trial(kd_config(recipe=one_epoch, seed=4))
    assert other.run_key != first.run_key
    assert other.final_loss != first.final_loss


def test_kd_trial_reports_teacher_and_student_metrics():
    result = run_trial(kd_config())
    assert result.status == "FINISHED"
    assert 0.0 <= result.test_acc <= 1.0 and result.test_acc <= result.test_top5
    assert 0.0 < result.teacher_test_acc <= 1.0
    assert 0.0 <= result.agreement <= 1.0
    assert {"train/ce", "train/kd", "train/loss", "val_acc", "lr"} <= set(result.history[0])
    assert math.isfinite(result.final_loss)
    assert 0.0 <= result.macro_f1 <= 1.0 and 0.0 <= result.ece <= 1.0
    assert result.student_flops > 2 * result.student_params  # convolutions reuse weights
    assert result.student_params == 22_924 - 33 * 90  # 32-d embedding: 10 instead of 100 classes


def test_run_key_covers_what_defines_a_trial_and_nothing_else():
    config = kd_config()
    assert run_key(config, 1) == run_key(kd_config(data_root="/somewhere/else"), 1)
    assert run_key(config, 1) != run_key(config, 2)  # method version
    assert run_key(config, 1) != run_key(kd_config(params=(("temperature", 2.0),)), 1)
    assert run_key(config, 1) != run_key(kd_config(recipe=Recipe(epochs=3)), 1)
    assert run_key(config, 1) != run_key(
        kd_config(teacher=TeacherSpec(arch="test_resnet_wide", recipe=TEACHER.recipe, seed=1)), 1
    )


def test_trial_is_recorded_in_mlflow_with_params_curves_tags_and_config(tracker):
    result = run_trial(kd_config(), tracker=tracker)
    run = tracker.client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RUN_KEY_TAG] == result.run_key
    assert run.data.tags["kdbench.method_version"] == "1"
    assert run.data.params["student"] == "test_resnet_narrow"
    assert run.data.params["teacher.arch"] == "test_resnet_wide"
    assert run.data.params["recipe.epochs"] == "2"
    assert run.data.metrics["test_acc"] == pytest.approx(result.test_acc)
    curve = tracker.client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in curve] == [0, 1]
    artifacts = [a.path for a in tracker.client.list_artifacts(run.info.run_id)]
    assert "config.json" in artifacts
    assert tracker.finished_runs()[result.run_key] == run.info.run_id


def test_diverging_trial_is_a_failed_run_with_its_reason(tracker):
    config = kd_config(recipe=Recipe(epochs=1, lr=1e12, batch_size=64), seed=11)
    result = run_trial(config, tracker=tracker)
    assert result.status == "FAILED"
    assert "non-finite loss" in result.error
    run = tracker.client.get_run(result.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert "non-finite loss" in run.data.tags["kdbench.error"]


def test_cli_train_json_last_line(capsys, tmp_path):
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "--student",
            "test_resnet_narrow",
            "--teacher",
            "test_resnet_wide",
            "--method",
            "kd",
            "--param",
            "temperature=2",
            "--epochs",
            "1",
            "--seed",
            "5",
            "--json",
            "--quiet",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/m.db",
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    payload = json.loads(last)
    for key in ("run_key", "status", "test_acc", "val_acc", "teacher_test_acc", "mlflow_run_id"):
        assert key in payload, key
    assert payload["status"] == "FINISHED"
    assert 0 <= payload["test_acc"] <= 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--student", "resnet21"], ["unknown model 'resnet21'", "Did you mean", "resnet20"]),
        (["--teacher", "wrn_40_3"], ["unknown model 'wrn_40_3'", "wrn_40_2"]),
        (["--dataset", "cifar-10"], ["unknown dataset 'cifar-10'", "cifar10"]),
        (["--method", "kdd"], ["unknown method 'kdd'", "'kd'"]),
        (["--param", "temprature=4"], ["unknown parameter 'temprature'", "temperature"]),
        (["--param", "temperature=hot"], ["temperature", "expected a number", "'hot'"]),
        (
            ["--dataset", "cifar100", "--data-root", "/nonexistent/data"],
            ["cifar-100-python", "--download"],
        ),
    ],
    ids=["student", "teacher", "dataset", "method", "param-name", "param-type", "data-root"],
)
def test_bad_input_exits_2_with_a_helpful_message_and_records_nothing(
    args, expected, capsys, tmp_path
):
    db = tmp_path / "m.db"
    code = main(["train", "--epochs", "1", "--tracking-uri", f"sqlite:///{db}", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in: {err}"
    runs = Tracker(f"sqlite:///{db}").search()
    assert runs == []


# --------------------------------------------------------------------------------------------
# Performance paths: teacher outputs cache, peak memory, the DataLoader path
# --------------------------------------------------------------------------------------------


def curves(result) -> list[tuple[float, float]]:
    return [(h["train/loss"], h["val_acc"]) for h in result.history]


@pytest.mark.parametrize("method", ["kd", "at"])  # logits only; logits and features
def test_teacher_outputs_cache_gives_the_uncached_results(method, monkeypatch):
    from bench.paths import kdbench_home

    no_augment = Recipe(epochs=2, batch_size=64, augment=False)
    config = kd_config(method=method, recipe=no_augment, seed=21)
    monkeypatch.setenv("KDBENCH_TEACHER_CACHE_MB", "0")
    uncached = run_trial(config)
    monkeypatch.setenv("KDBENCH_TEACHER_CACHE_MB", "512")
    stored = set((kdbench_home() / "teacher_outputs").glob("*.pt"))
    cached = run_trial(config)
    assert uncached.status == cached.status == "FINISHED", (uncached.error, cached.error)
    assert set((kdbench_home() / "teacher_outputs").glob("*.pt")) - stored  # it was used
    assert cached.test_acc == uncached.test_acc
    assert cached.final_loss == uncached.final_loss
    assert curves(cached) == curves(uncached)
    assert cached.agreement == uncached.agreement


def test_only_unaugmented_digits_count_as_deterministic_inputs():
    from bench.data import load_dataset
    from bench.teacher_cache import inputs_are_deterministic

    data_info = load_dataset("digits").info
    assert not inputs_are_deterministic(Recipe(augment=True), data_info)  # crop padding 2
    assert inputs_are_deterministic(Recipe(augment=False), data_info)


def test_peak_memory_is_recorded_with_the_run(tracker):
    result = run_trial(kd_config(recipe=Recipe(epochs=1, batch_size=64), seed=8), tracker=tracker)
    assert result.status == "FINISHED", result.error
    run = tracker.client.get_run(result.mlflow_run_id)
    peak = run.data.metrics["peak_rss_mb"]
    assert peak == pytest.approx(result.peak_rss_mb)
    assert 50 < peak < 64_000  # a Python process with torch loaded, well below the machine
    assert "peak_gpu_allocated_mb" not in run.data.metrics  # no CUDA here


def test_loader_data_path_trains_and_does_not_depend_on_the_worker_count(monkeypatch):
    config = kd_config(recipe=Recipe(epochs=2, batch_size=64, data_path="loader"), seed=5)
    assert run_key(config, 1) != run_key(kd_config(seed=5), 1)
    monkeypatch.setenv("KDBENCH_LOADER_WORKERS", "0")
    in_process = run_trial(config)
    monkeypatch.setenv("KDBENCH_LOADER_WORKERS", "2")
    with_workers = run_trial(config)
    assert in_process.status == with_workers.status == "FINISHED", in_process.error
    assert curves(in_process) == curves(with_workers)
    assert in_process.test_acc == with_workers.test_acc
    first, last = in_process.history[0]["train/loss"], in_process.history[-1]["train/loss"]
    assert last < first  # it learns
    device_path = run_trial(kd_config(recipe=Recipe(epochs=2, batch_size=64), seed=5))
    assert curves(device_path) != curves(in_process)  # another augmentation stream


def test_new_recipe_settings_keep_existing_run_keys():
    assert run_key(kd_config(recipe=Recipe(epochs=2, batch_size=64, data_path="device")), 1) == (
        run_key(kd_config(), 1)
    )
    assert run_key(kd_config(recipe=Recipe(epochs=2, batch_size=64, compile=True)), 1) != (
        run_key(kd_config(), 1)
    )
    trial_stream = Recipe(epochs=2, batch_size=64, augment_stream="trial")
    assert run_key(kd_config(recipe=trial_stream), 1) == run_key(kd_config(), 1)
    shared_stream = Recipe(epochs=2, batch_size=64, augment_stream="shared")
    assert run_key(kd_config(recipe=shared_stream), 1) != run_key(kd_config(), 1)


def test_pilot_measures_a_trials_memory_and_gpu_shares_are_checked_against_it():
    from bench.sweep.packing import PackingError, check_gpu_fraction, pilot_memory

    pilot = pilot_memory(kd_config(), steps=2)
    assert pilot.steps == 2 and pilot.device == "cpu"
    assert pilot.need_bytes == pilot.peak.rss > 50 * 2**20
    need = pilot.need_bytes
    check_gpu_fraction(0.75, need, 2 * need)  # 1.5 × need >= need + 25% headroom
    with pytest.raises(PackingError, match=r"gpu: 0\.25 .* ask for gpu: 0\.625 or more"):
        check_gpu_fraction(0.25, need, 2 * need, where="kd digits")


def test_compiled_trial_matches_the_eager_one(monkeypatch):
    monkeypatch.setenv("KDBENCH_COMPILE_BACKEND", "eager")  # traces; no C++ toolchain needed
    plain = run_trial(kd_config(recipe=Recipe(epochs=1, batch_size=64), seed=9))
    compiled = run_trial(kd_config(recipe=Recipe(epochs=1, batch_size=64, compile=True), seed=9))
    assert compiled.status == "FINISHED", compiled.error
    assert compiled.final_loss == pytest.approx(plain.final_loss, rel=1e-5)
    assert compiled.test_acc == pytest.approx(plain.test_acc, abs=0.01)


def test_channels_last_trains_and_leaves_the_teacher_frozen():
    compute = Compute("cpu", threads=1, memory_format="channels_last")
    result = run_trial(kd_config(recipe=Recipe(epochs=1, batch_size=64), seed=13, compute=compute))
    assert result.status == "FINISHED", result.error
    assert math.isfinite(result.final_loss) and result.test_acc > 0
    assert 0.0 <= result.agreement <= 1.0  # the teacher predicted the test split
