"""The execution policy: what the harness chooses per device and processor, that it is applied
as recorded, and that loss terms stay in fp32 under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from bench.api import Batch, Outputs
from bench.config import Compute, Recipe, TeacherSpec, TrialConfig
from bench.models import create_model
from bench.plugins import build_method
from bench.trial.compose import identify_trial, run_trial
from bench.trial.device import Execution, cpu_has_native_bf16, fast_compute, machine_compute

TEACHER = TeacherSpec(arch="test_resnet_wide", recipe=Recipe(epochs=1, batch_size=64))


def config(**changes) -> TrialConfig:
    base = TrialConfig(
        dataset="digits",
        student="test_resnet_narrow",
        method="kd",
        seed=1,
        recipe=Recipe(epochs=1, batch_size=64, augment=False),
        teacher=TEACHER,
    )
    return base.with_changes(**changes)


@pytest.mark.parametrize(
    ("flag", "expected"), [("1", "bf16"), ("0", "fp32")], ids=["native-bf16", "no-bf16"]
)
def test_the_cpu_policy_follows_native_bf16(monkeypatch, flag, expected):
    monkeypatch.setenv("KDBENCH_CPU_BF16", flag)
    compute = fast_compute("cpu", 2)
    assert (compute.precision, compute.memory_format) == (expected, "channels_last"), compute
    assert fast_compute("cuda", 1).precision == "bf16"


def test_native_bf16_is_read_from_the_processor_flags(monkeypatch):
    from bench.trial import device

    monkeypatch.delenv("KDBENCH_CPU_BF16", raising=False)
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert cpu_has_native_bf16()
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert not cpu_has_native_bf16()
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert cpu_has_native_bf16()


def test_a_caller_can_ask_for_the_reference_path_and_gets_another_key():
    default, _ = identify_trial(config(compute=machine_compute("cpu", 1)))
    reference = machine_compute("cpu", 1, precision="fp32", channels_last=False)
    assert reference.describe() == "cpu fp32 contiguous 1 thread"
    assert identify_trial(config(compute=reference))[1] != identify_trial(default)[1]


def test_channels_last_applies_to_convolutional_models_only():
    execution = Execution(precision="fp32", channels_last=True)
    cnn = execution.apply(create_model("test_resnet_narrow", 10))
    conv = next(p for p in cnn.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = execution.images(torch.zeros(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    flat = torch.zeros(2, 5)
    assert execution.images(flat) is flat


def test_under_bf16_autocast_the_forward_is_bf16_and_the_kd_loss_fp32():
    execution = Execution(precision="bf16", channels_last=True)
    model = execution.apply(create_model("test_resnet_narrow", 10))
    with execution.autocast(torch.device("cpu")):
        logits = model(execution.images(torch.randn(4, 3, 16, 16)))
    assert logits.dtype == torch.bfloat16
    method = build_method("kd")
    batch = Batch(x=torch.zeros(4), y=torch.tensor([0, 1, 2, 3]), index=torch.arange(4))
    terms = method.loss(batch, Outputs(logits=logits), Outputs(logits=logits.detach() * 2))
    assert {name: t.dtype for name, t in terms.items()} == dict.fromkeys(terms, torch.float32)


def test_a_bf16_trial_trains_records_its_compute_and_stays_near_fp32():
    bf16 = Compute("cpu", precision="bf16", threads=1, memory_format="channels_last")
    fp32 = Compute("cpu", precision="fp32", threads=1, memory_format="contiguous")
    fast, reference = run_trial(config(compute=bf16)), run_trial(config(compute=fp32))
    assert fast.status == reference.status == "FINISHED", (fast.error, reference.error)
    assert fast.run_key != reference.run_key
    # One epoch of a tiny student: bf16 rounding moves the loss a little, not the training.
    assert fast.final_loss == pytest.approx(reference.final_loss, rel=0.05)
