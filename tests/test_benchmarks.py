"""The benchmarks run: gpu_epoch.py at tiny sizes on the CPU, as it will on a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_epoch_runs_on_cpu_at_tiny_sizes_and_reports_its_figures(tmp_path):
    out = tmp_path / "gpu_epoch.json"
    command = [
        sys.executable,
        str(BENCHMARKS / "gpu_epoch.py"),
        "--device", "cpu",
        "--pairs", "test_resnet_wide:test_resnet_narrow",
        "--data-n", "64",
        "--batch-size", "16",
        "--steps", "2",
        "--warmup", "1",
        "--epoch-size", "1000",
        "--epochs", "10",
        "--packs", "1,2",
        "--timeout", "240",
        "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test_resnet_wide -> test_resnet_narrow" in done.stdout
    assert "2 packed" in done.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    (pair,) = report["pairs"]
    ips = pair["images_per_second"]
    assert ips > 0
    assert pair["epoch_seconds"] == 1000 / ips
    assert pair["projected_run_minutes"] == pytest.approx(pair["epoch_seconds"] * 10 / 60)
    assert set(report["packing"]) == {"1", "2"}
    assert report["packing"]["1"]["speedup"] == 1.0
    assert report["packing"]["2"]["images_per_second"] > 0


def test_teacher_cost_runs_at_tiny_sizes_and_reads_the_shared_stream_cache():
    command = [
        sys.executable,
        str(BENCHMARKS / "teacher_cost.py"),
        "--teacher", "test_resnet_wide",
        "--student", "test_resnet_narrow",
        "--n", "200",
        "--steps", "2",
        "--repeats", "1",
        "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ratios = {
        line.split(":")[0].removeprefix("ratio "): float(line.split(":")[1].split()[0])
        for line in done.stdout.splitlines()
        if line.startswith("ratio ")
    }
    assert set(ratios) == {
        "kd uncached / ce",
        "kd cached / ce",
        "kd aug uncached / ce aug",
        "kd aug shared / ce aug",
    }
    # Read from the cache, KD skips the teacher's forward pass that the uncached steps pay.
    assert ratios["kd aug shared / ce aug"] < ratios["kd aug uncached / ce aug"]
