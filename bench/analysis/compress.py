"""Compression after distillation: global magnitude pruning and int8 post-training quantization
of a trained student, each variant measured against the float model and recorded as an MLflow
child run of the trial.

- Pruning: ``torch.nn.utils.prune.global_unstructured`` with L1 magnitude over the weights of
  every convolution and linear layer together (biases and BatchNorm are kept), made permanent
  with ``prune.remove``; no fine-tuning afterwards.
- int8: static post-training quantization in FX graph mode on PyTorch's ``x86`` backend
  (fbgemm kernels): per-channel int8 weights and per-tensor uint8 activations for convolutions
  and linear layers, activation ranges calibrated on training images (no augmentation). A
  model FX cannot trace (Python control flow on tensor values in ``forward``) is refused with
  :class:`~bench.analysis.QuantizationError`.
- Size on disk: bytes of ``torch.save`` of the state dict. Float tensors are stored in the
  cheaper of dense or sparse form (a packed bit mask of the nonzeros and their values), so a
  pruned model's size reflects its sparsity; the int8 model's state dict holds int8 tensors.
- Latency: :func:`bench.analysis.profile.measure_latency` at batch 1 and 64. Unstructured
  sparsity does not speed up dense CPU kernels, so pruned models time like the float model.
"""

from __future__ import annotations

import copy
import io
import math
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.analysis import (
    COMPRESS_KIND,
    COMPRESSED_KEY_TAG,
    FP32_VARIANT,
    INT8_VARIANT,
    VARIANT_TAG,
    AnalysisError,
    QuantizationError,
    pruned_variant,
)
from bench.analysis.profile import BATCH_SIZES, measure_latency
from bench.analysis.runs import find_run, load_student, load_test_data
from bench.trial.evaluate import labels_of, predict, topk_accuracy

#: Training images used to calibrate the int8 activation ranges.
CALIBRATION_IMAGES = 512


@dataclass(frozen=True)
class Variant:
    """One version of the student, measured.

    Attributes:
        name: ``fp32`` (the trained student), ``pruned-<sparsity>`` or ``int8``.
        sparsity: Share of zero weights over all convolution and linear weights.
        test_acc: Top-1 accuracy on the test split.
        size_bytes: Bytes of the saved state dict (see the module docstring).
        latency_ms: Batch size → median CPU latency of one forward pass, in milliseconds.
        mlflow_run_id: The child run it was recorded in, if recorded.
    """

    name: str
    sparsity: float
    test_acc: float
    size_bytes: int
    latency_ms: dict[int, float]
    mlflow_run_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        return out


@dataclass
class CompressionReport:
    """The float student and its compressed variants."""

    run_key: str
    model: str
    threads: int
    variants: list[Variant] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "model": self.model,
            "threads": self.threads,
            "variants": [v.as_json() for v in self.variants],
        }

    def format(self) -> str:
        base = self.variants[0]
        batches = sorted(base.latency_ms)
        header = ["variant", "sparsity", "test_acc", "size", "x smaller"] + [
            f"ms@batch{b}" for b in batches
        ]
        rows = [
            [
                v.name,
                f"{v.sparsity:.3f}",
                f"{v.test_acc:.4f}",
                f"{v.size_bytes:,} B",
                f"{base.size_bytes / v.size_bytes:.2f}",
                *(f"{v.latency_ms[b]:.2f}" for b in batches),
            ]
            for v in self.variants
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [f"{self.model} of run {self.run_key}"]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]
        ]
        lines.append(f"CPU latency: median forward pass, {self.threads} torch thread(s).")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every convolution and linear layer."""
    return [
        (m, "weight") for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)
    ]


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero values over all convolution and linear weights."""
    weights = [getattr(m, name) for m, name in prunable(model)]
    total = sum(w.numel() for w in weights)
    if total == 0:
        return 0.0
    return sum(int((w == 0).sum()) for w in weights) / total


def prune_global(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy of ``model`` with the smallest-magnitude ``sparsity`` share of all convolution
    and linear weights (ranked together, across layers) set to zero, permanently.

    Raises:
        AnalysisError: ``sparsity`` is not in [0, 1), or the model has no such layers.
    """
    from torch.nn.utils import prune

    if not 0.0 <= sparsity < 1.0:
        raise AnalysisError(f"sparsity must be in [0, 1), got {sparsity}; e.g. --sparsity 0.5")
    pruned = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    targets = prunable(pruned)
    if not targets:
        raise AnalysisError(f"{type(model).__name__} has no convolution or linear weights to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    for module, name in targets:
        prune.remove(module, name)
    return pruned


# --------------------------------------------------------------------------------------------
# Size on disk
# --------------------------------------------------------------------------------------------


def sparse_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with each float tensor in the cheaper of dense or sparse form.

    A sparse tensor becomes ``{"shape": [...], "mask": uint8 packed bits of the nonzeros,
    "values": the nonzero values}``; :func:`dense_state` restores it exactly.
    """
    out: dict[str, Any] = {}
    for name, value in state.items():
        if not isinstance(value, Tensor) or not value.is_floating_point():
            out[name] = value
            continue
        flat = value.detach().cpu().reshape(-1)
        nonzero = flat != 0
        sparse_bytes = math.ceil(flat.numel() / 8) + int(nonzero.sum()) * flat.element_size()
        if sparse_bytes >= flat.numel() * flat.element_size():
            out[name] = value.detach().cpu()
            continue
        out[name] = {
            "shape": list(value.shape),
            "mask": torch.from_numpy(np.packbits(nonzero.numpy())),
            "values": flat[nonzero].clone(),
        }
    return out


def dense_state(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`sparse_state`."""
    out: dict[str, Any] = {}
    for name, value in state.items():
        if isinstance(value, dict) and {"shape", "mask", "values"} <= set(value):
            numel = math.prod(value["shape"])
            mask = np.unpackbits(value["mask"].numpy(), count=numel).astype(bool)
            dense = torch.zeros(numel, dtype=value["values"].dtype)
            dense[torch.from_numpy(mask)] = value["values"]
            out[name] = dense.reshape(value["shape"])
        else:
            out[name] = value
    return out


def saved_size(state: dict[str, Any]) -> int:
    """Bytes ``torch.save`` writes for ``state``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's saved state dict, float tensors in sparse form where cheaper."""
    return saved_size(sparse_state(model.state_dict()))


# --------------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------------


def quantize_int8(model: nn.Module, calibration: Sequence[Tensor], name: str = "") -> nn.Module:
    """Static int8 post-training quantization (FX graph mode, ``x86`` backend) of a copy of
    ``model``, with activation ranges observed on the ``calibration`` batches.

    Raises:
        QuantizationError: FX cannot trace the model, or the converted model does not run;
            the message names the model and the reason.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    label = name or type(model).__name__
    if not calibration:
        raise AnalysisError("int8 calibration needs at least one batch of training images")
    torch.backends.quantized.engine = "x86"
    float_model = copy.deepcopy(model).cpu().eval()
    example = (calibration[0][:1],)
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; it is still PyTorch's own API.
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_fx(float_model, get_default_qconfig_mapping("x86"), example)
        except Exception as exc:
            raise QuantizationError(
                f"cannot quantise {label} to int8: FX graph-mode quantization could not trace "
                f"its forward ({type(exc).__name__}: {_first_line(exc)}). Models whose forward "
                "branches on tensor values or shapes cannot be traced; int8 works for models "
                "with a static graph (the CIFAR ResNets, WRNs, MobileNetV2)."
            ) from exc
        try:
            with torch.no_grad():
                for batch in calibration:
                    prepared(batch)
                quantized = convert_fx(prepared)
                quantized(calibration[0][:2])
        except Exception as exc:
            raise QuantizationError(
                f"cannot quantise {label} to int8 on the x86 backend: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from exc
    return quantized


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


# --------------------------------------------------------------------------------------------
# Measuring and recording
# --------------------------------------------------------------------------------------------


def measure_variant(
    name: str,
    model: nn.Module,
    data: Any,
    *,
    sparsity: float | None = None,
    repeats: int = 20,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> Variant:
    """Test accuracy, size on disk and CPU latency of one variant."""
    cpu = torch.device("cpu")
    accuracy = topk_accuracy(predict(model, data.test, cpu), labels_of(data.test, cpu))
    size = data.info.input_size
    return Variant(
        name=name,
        sparsity=weight_sparsity(model) if sparsity is None else sparsity,
        test_acc=accuracy,
        size_bytes=size_on_disk(model),
        latency_ms={b: measure_latency(model, size, b, repeats=repeats) for b in batch_sizes},
    )


def calibration_batches(data: Any, images: int = CALIBRATION_IMAGES) -> list[Tensor]:
    """The first ``images`` training images, in order, without augmentation."""
    batches, seen = [], 0
    for x, _, _ in data.train.batches(
        128, shuffle=False, generator=None, augment=False, device=torch.device("cpu")
    ):
        batches.append(x[: images - seen])
        seen += len(batches[-1])
        if seen >= images:
            break
    return batches


def compress_model(
    model: nn.Module,
    data: Any,
    *,
    name: str,
    sparsities: Sequence[float] = (),
    int8: bool = False,
    repeats: int = 20,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> list[Variant]:
    """Measure ``model`` (``fp32``), its pruned copies and its int8 copy.

    Raises:
        QuantizationError: With ``int8``, when the model cannot be quantised; raised before
            anything is measured.
        AnalysisError: A sparsity outside [0, 1).
    """
    for sparsity in sparsities:
        if not 0.0 <= sparsity < 1.0:
            raise AnalysisError(
                f"--sparsity {sparsity}: each sparsity must be in [0, 1), e.g. 0.5 0.8"
            )
    # A student trained channels-last is measured (and pruned, quantised) in torch's default
    # layout: torch's pruning flattens weights with view(), which needs contiguous tensors.
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    quantized = quantize_int8(model, calibration_batches(data), name) if int8 else None
    measure: dict[str, Any] = dict(repeats=repeats, batch_sizes=batch_sizes)
    variants = [measure_variant(FP32_VARIANT, model, data, **measure)]
    for sparsity in sparsities:
        pruned = prune_global(model, sparsity)
        variants.append(measure_variant(pruned_variant(sparsity), pruned, data, **measure))
    if quantized is not None:
        variants.append(
            measure_variant(
                INT8_VARIANT, quantized, data, sparsity=weight_sparsity(model), **measure
            )
        )
    return variants


def record_variants(
    run: Any, variants: Sequence[Variant], threads: int, skip: Collection[str] = ()
) -> list[Variant]:
    """One FINISHED MLflow child run of ``run`` (a :class:`~bench.analysis.runs.RecordedRun`)
    per variant, with its metrics and the change from ``fp32``; returns the variants with
    their run ids. Variants named in ``skip`` (already recorded) are returned without a new
    run. Child runs carry no run key, so sweeps and leaderboards do not take them for trials."""
    from mlflow.entities import Metric, Param

    base = variants[0]
    recorded = []
    for variant in variants:
        if variant.name in skip:
            recorded.append(variant)
            continue
        child = run.client.create_run(
            run.experiment_id,
            tags={
                "mlflow.parentRunId": run.run_id,
                "mlflow.runName": f"{COMPRESS_KIND} {variant.name} {run.run_key}",
                "kdbench.kind": COMPRESS_KIND,
                COMPRESSED_KEY_TAG: run.run_key,
                VARIANT_TAG: variant.name,
                "kdbench.student": run.config.student,
                "kdbench.dataset": run.config.dataset,
            },
        )
        now = int(time.time() * 1000)
        values = {
            "test_acc": variant.test_acc,
            "sparsity": variant.sparsity,
            "size_bytes": variant.size_bytes,
            "size_ratio": variant.size_bytes / base.size_bytes,
            "test_acc_change": variant.test_acc - base.test_acc,
            **{f"latency_ms_batch{b}": ms for b, ms in variant.latency_ms.items()},
        }
        params = {
            "variant": variant.name,
            "torch_threads": str(threads),
            "quantization": "int8 static fx x86" if variant.name == INT8_VARIANT else "none",
            "calibration_images": str(CALIBRATION_IMAGES) if variant.name == INT8_VARIANT else "0",
        }
        run.client.log_batch(
            child.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
            params=[Param(k, v) for k, v in params.items()],
        )
        run.client.set_terminated(child.info.run_id, "FINISHED")
        recorded.append(Variant(**{**asdict(variant), "mlflow_run_id": child.info.run_id}))
    return recorded


def compress_run(
    key: str,
    *,
    sparsities: Sequence[float] = (),
    int8: bool = False,
    repeats: int = 20,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    tracking_uri: str | None = None,
    experiment: str = "kdbench",
    record: bool = True,
) -> CompressionReport:
    """Prune and/or quantise the student of a recorded trial and record each variant as a
    child run; the entry point of ``kdbench compress``.

    Raises:
        RunNotFoundError: No FINISHED run has run key ``key``.
        QuantizationError: With ``int8``, the student cannot be quantised.
    """
    run = find_run(key, tracking_uri=tracking_uri, experiment=experiment)
    return compress_recorded(
        run,
        sparsities=sparsities,
        int8=int8,
        repeats=repeats,
        batch_sizes=batch_sizes,
        record=record,
    )


def compress_recorded(
    run: Any,
    *,
    sparsities: Sequence[float] = (),
    int8: bool = False,
    repeats: int = 20,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    record: bool = True,
    skip: Collection[str] = (),
) -> CompressionReport:
    """:func:`compress_run` on a run already found (a
    :class:`~bench.analysis.runs.RecordedRun`); a suite's compression post-stage calls it
    for each of its students.

    Args:
        skip: Variant names already recorded for this run: measured (``fp32`` is the base of
            the others) but not recorded again.

    Raises:
        QuantizationError: With ``int8``, the student cannot be quantised; raised before the
            trained student is loaded.
    """
    from bench.models import create_model  # timm: loaded only when a run is compressed

    data = load_test_data(run.config)
    if int8:
        # Whether FX can trace a model depends on its architecture only: refuse an
        # untraceable student before loading (or training again) the trained one.
        untrained = create_model(
            run.config.student,
            data.info.num_classes,
            image_size=data.info.input_size[1],
            in_chans=data.info.input_size[0],
        )
        quantize_int8(untrained, calibration_batches(data, images=8), run.config.student)
    student = load_student(run)
    variants = compress_model(
        student,
        data,
        name=run.config.student,
        sparsities=sparsities,
        int8=int8,
        repeats=repeats,
        batch_sizes=batch_sizes,
    )
    threads = torch.get_num_threads()
    if record:
        variants = record_variants(run, variants, threads, skip=skip)
    return CompressionReport(run.run_key, run.config.student, threads, variants)
