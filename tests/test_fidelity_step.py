"""Fidelity of the closed-form parts of the methods that change the training step.

Each case computes a quantity through the method's code (its module functions or the method
object on hand-made tensors) and again from the paper's (or reference code's) equations,
written out here in float64 NumPy without calling the methods' code; both must equal the value
stored in ``tests/fixtures/fidelity_step.json`` to 1e-5 relative. ``pytest --regen-fidelity``
rewrites the stored values from the independent computations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.api import Batch, ModelInfo, Outputs, TaskInfo
from bench.plugins import build_method
from methods.adversarial_kd import discriminator_loss
from methods.data_free import generator_losses
from methods.dml import dml_losses
from methods.grafting import conv_weight_keys, grafting_coefficient, weight_entropy
from methods.mean_teacher import consistency_cost, ema_update_
from methods.multi_teacher import (
    averaged_targets,
    class_groups,
    soft_target_kd,
    union_targets,
)

FIXTURE = Path(__file__).parent / "fixtures" / "fidelity_step.json"
REL = 1e-5

Z0 = np.array([[2.0, -1.0, 0.5, 0.3], [0.1, 1.5, -0.7, 2.2], [-1.2, 0.4, 3.0, -0.5]])
Z1 = np.array([[3.0, -2.0, 1.0, 0.0], [-0.5, 2.5, 0.0, 1.0], [0.0, -1.0, 4.0, 0.5]])
Z2 = np.array([[0.5, 0.5, -1.0, 1.5], [1.0, -0.3, 0.2, 0.0], [-2.0, 1.0, 1.0, 2.5]])
Y = np.array([0, 1, 3])


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def wave(shape: tuple[int, ...], freq: float, scale: float = 1.0) -> np.ndarray:
    """Deterministic, irregular values."""
    n = int(np.prod(shape))
    return (scale * np.sin(freq * np.arange(1, n + 1) + 0.3)).reshape(shape)


# --------------------------------------------------------------------------------------------
# The equations, in float64 NumPy
# --------------------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(softmax(z)[np.arange(len(y)), y])))


def kl_mean(p: np.ndarray, q: np.ndarray) -> float:
    """Batch mean of KL(p || q) per row."""
    return float(np.mean(np.sum(p * np.log(p / q), axis=1)))


def dml_loss(logits: list[np.ndarray], k: int, y: np.ndarray, reduction: str) -> float:
    """Zhang et al. 2018, Eq. (10): L_k = CE_k + 1/(K-1) sum_{l != k} KL(p_l || p_k)."""
    kls = [kl_mean(softmax(z), softmax(logits[k])) for l, z in enumerate(logits) if l != k]
    mimicry = sum(kls) / len(kls) if reduction == "mean" else sum(kls)
    return cross_entropy(logits[k], y) + mimicry


def sigmoid_rampup(epoch: float, length: float) -> float:
    x = min(epoch, length) / length
    return math.exp(-5.0 * (1.0 - x) ** 2)


def softmax_mse(s: np.ndarray, z: np.ndarray) -> float:
    """Tarvainen & Valpola: squared distance of the softmax outputs, mean over classes and
    samples."""
    return float(np.mean((softmax(s) - softmax(z)) ** 2))


def ema(previous: np.ndarray, current: np.ndarray, decay: float) -> np.ndarray:
    return decay * previous + (1.0 - decay) * current


def bce_logits(scores: np.ndarray, target: float) -> float:
    p = 1.0 / (1.0 + np.exp(-scores))
    return float(-np.mean(target * np.log(p) + (1.0 - target) * np.log(1.0 - p)))


def leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 0.2 * x)


def histogram_entropy(w: np.ndarray, bins: int = 10) -> float:
    counts, _ = np.histogram(w.ravel(), bins=bins, range=(w.min(), w.max()))
    p = counts[counts > 0] / w.size
    return float(-np.sum(p * np.log(p)))


def graft_coefficient(h_own: float, h_other: float, a: float, c: float, rounded: bool) -> float:
    """Meng et al. 2020 (reference code's form): (a/pi) arctan(c (H_own - H_other)) + 1/2."""
    alpha = a / math.pi * math.atan(c * (h_own - h_other)) + 0.5
    return round(alpha, 2) if rounded else alpha


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    method: Callable[[], float]
    reference: Callable[[], float]


CASES: list[Case] = []


def case(name: str, reference: Callable[[], float]) -> Callable[[Callable[[], float]], None]:
    def add(method: Callable[[], float]) -> None:
        CASES.append(Case(name, method, reference))

    return add


# -- DML ----------------------------------------------------------------------------------------


def _dml(logits: list[np.ndarray], k: int, reduction: str) -> float:
    tensors = [t(z) for z in logits]
    return float(dml_losses(tensors, torch.tensor(Y), reduction)[k])


for _k in (0, 1):
    case(f"dml_two_models_{_k}", lambda k=_k: dml_loss([Z0, Z1], k, Y, "mean"))(
        lambda k=_k: _dml([Z0, Z1], k, "mean")
    )
for _k in (0, 2):
    case(f"dml_three_models_{_k}", lambda k=_k: dml_loss([Z0, Z1, Z2], k, Y, "mean"))(
        lambda k=_k: _dml([Z0, Z1, Z2], k, "mean")
    )
case("dml_three_models_sum_1", lambda: dml_loss([Z0, Z1, Z2], 1, Y, "sum"))(
    lambda: _dml([Z0, Z1, Z2], 1, "sum")
)


# -- Mean Teacher -------------------------------------------------------------------------------

MT_EPOCHS = 10


def _mean_teacher(params: dict, progress: float, step: int = 0):
    method = build_method("mean_teacher", params)
    info = ModelInfo("m", "test", 4, (4,), (1,), 4, 10)
    method.setup(info, None, TaskInfo("d", 4, (3, 8, 8), 30, MT_EPOCHS, 3))
    batch = Batch(t(Z0), torch.tensor(Y), torch.arange(3), progress=progress, step=step)
    return method, batch


def _mt_consistency(params: dict, progress: float) -> float:
    method, batch = _mean_teacher(params, progress)
    kind = params.get("consistency_type", "mse")
    return method.consistency_weight(batch) * float(consistency_cost(t(Z0), t(Z1), kind))


case(
    "mean_teacher_consistency_mid_rampup",
    lambda: 100 * sigmoid_rampup(2.5, 5) * softmax_mse(Z0, Z1),
)(lambda: _mt_consistency({}, 0.25))
case("mean_teacher_consistency_after_rampup", lambda: 100 * softmax_mse(Z0, Z1))(
    lambda: _mt_consistency({}, 0.8)
)
case(
    "mean_teacher_consistency_kl",
    lambda: 30 * sigmoid_rampup(1.0, 4) * kl_mean(softmax(Z1), softmax(Z0)),
)(
    lambda: _mt_consistency(
        {"consistency": 30.0, "rampup_epochs": 4.0, "consistency_type": "kl"}, 0.1
    )
)

EMA_PREVIOUS, EMA_CURRENT = wave((6,), 0.9), wave((6,), 1.7, 2.0)
EMA_WEIGHTS = np.arange(1, 7)


def _mt_ema(params: dict, progress: float, step: int) -> float:
    method, batch = _mean_teacher(params, progress, step)
    shadow = [t(EMA_PREVIOUS)]
    ema_update_(shadow, [t(EMA_CURRENT)], method.ema_decay(batch))
    return float(shadow[0].double() @ torch.tensor(EMA_WEIGHTS, dtype=torch.float64))


case("mean_teacher_ema_rampup", lambda: ema(EMA_PREVIOUS, EMA_CURRENT, 0.99) @ EMA_WEIGHTS)(
    lambda: _mt_ema({}, 0.2, 40)
)
case("mean_teacher_ema_after_rampup", lambda: ema(EMA_PREVIOUS, EMA_CURRENT, 0.999) @ EMA_WEIGHTS)(
    lambda: _mt_ema({}, 0.6, 40)
)
case(
    "mean_teacher_ema_warm_average",
    lambda: ema(EMA_PREVIOUS, EMA_CURRENT, 1 - 1 / 5) @ EMA_WEIGHTS,  # 4th update: step 3
)(lambda: _mt_ema({"warm_average": True}, 0.2, 3))


# -- BYOT ---------------------------------------------------------------------------------------

# Student with four stages (stem, three sections) on 8x8 inputs; heads on stages 1 and 2.
BYOT_INFO = ModelInfo("s", "test", 3, (2, 3, 4, 5), (1, 1, 2, 4), 4, 100)
BYOT_TASK = TaskInfo("d", 3, (3, 8, 8), 30, 10, 3)
BYOT_FEATURES = [wave((3, 2, 8, 8), 0.37), wave((3, 3, 8, 8), 0.53), wave((3, 4, 4, 4), 0.71)]
BYOT_FEATURES.append(wave((3, 5, 2, 2), 0.29))
BYOT_LOGITS = Z0[:, :3]
BYOT_EMBEDDING = wave((3, 4), 1.3, 1.5)
BYOT_Y = np.array([0, 1, 2])
BYOT_PARAMS = {"alpha": 0.3, "beta": 0.01, "temperature": 2.0}


def _byot_method(hint: str):
    torch.manual_seed(0)
    method = build_method("byot", {**BYOT_PARAMS, "hint": hint})
    method.setup(BYOT_INFO, None, BYOT_TASK)
    layers = [m for m in method.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for n, p in enumerate(q for m in layers for q in m.parameters()):
        with torch.no_grad():
            p.copy_(t(wave(tuple(p.shape), 0.41 + 0.1 * n, 0.5)))
    return method.eval()  # BatchNorm at its initial state: x / sqrt(1 + eps)


def _byot_heads_numpy(method) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each head's (logits, pooled features): three conv → BN(eval) → ReLU, mean, linear."""
    out = []
    for head, stage in zip(method.heads, (1, 2), strict=True):
        x = torch.tensor(BYOT_FEATURES[stage])
        for conv in (m for m in head.bottleneck if isinstance(m, nn.Conv2d)):
            w = conv.weight.detach().double()
            x = torch.nn.functional.conv2d(x, w, conv.bias.detach().double(), stride=conv.stride)
            x = torch.relu(x / math.sqrt(1 + 1e-5))
        pooled = x.mean(dim=(2, 3)).numpy()
        fc_w, fc_b = (
            head.fc.weight.detach().double().numpy(),
            head.fc.bias.detach().double().numpy(),
        )
        out.append((pooled @ fc_w.T + fc_b, pooled))
    return out


def _byot_reference(hint: str) -> float:
    alpha, beta, temp = BYOT_PARAMS["alpha"], BYOT_PARAMS["beta"], BYOT_PARAMS["temperature"]
    heads = _byot_heads_numpy(_byot_method(hint))
    ce = cross_entropy(BYOT_LOGITS, BYOT_Y) + sum(cross_entropy(z, BYOT_Y) for z, _ in heads)
    target = softmax(BYOT_LOGITS / temp)
    kd = sum(temp**2 * kl_mean(target, softmax(z / temp)) for z, _ in heads)
    hints = 0.0
    for _, f in heads:
        diff2 = (f - BYOT_EMBEDDING) ** 2
        if hint == "code":
            hints += float(np.sum(diff2 * ((f > 0) | (BYOT_EMBEDDING > 0))))
        else:
            hints += float(np.mean(np.sum(diff2, axis=1)))
    return (1 - alpha) * ce + alpha * kd + beta * hints


def _byot_value(hint: str) -> float:
    method = _byot_method(hint)
    student = Outputs(
        logits=t(BYOT_LOGITS),
        features=[t(f) for f in BYOT_FEATURES],
        embedding=t(BYOT_EMBEDDING),
    )
    batch = Batch(t(Z0), torch.tensor(BYOT_Y), torch.arange(3))
    with torch.no_grad():
        return float(sum(method.loss(batch, student, None).values()))


case("byot_code_hint", lambda: _byot_reference("code"))(lambda: _byot_value("code"))
case("byot_paper_hint", lambda: _byot_reference("paper"))(lambda: _byot_value("paper"))


# -- Adversarial KD -----------------------------------------------------------------------------


def _adv_method(condition: str):
    method = build_method(
        "adversarial_kd", {"hidden": 5, "condition": condition, "l1_weight": 0.5, "adv_weight": 2.0}
    )
    method.setup(
        ModelInfo("s", "test", 4, (4,), (1,), 4, 10), None, TaskInfo("d", 4, (3, 8, 8), 30, 1, 1)
    )
    layers = [m for m in method.discriminator.modules() if isinstance(m, nn.Linear)]
    for n, layer in enumerate(layers):
        with torch.no_grad():
            layer.weight.copy_(t(wave(tuple(layer.weight.shape), 0.77 + 0.2 * n, 0.6)))
            layer.bias.copy_(t(wave(tuple(layer.bias.shape), 1.9 + n, 0.1)))
    return method, layers


def _adv_scores(logits: np.ndarray, layers, conditional: bool) -> np.ndarray:
    x = np.concatenate([logits, np.eye(4)[Y]], axis=1) if conditional else logits
    w = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in layers]
    h = leaky(x @ w[0][0].T + w[0][1])
    h = leaky(h @ w[1][0].T + w[1][1])
    return (h @ w[2][0].T + w[2][1])[:, 0]


def _adv_reference(condition: str, part: str) -> float:
    _, layers = _adv_method(condition)
    conditional = condition == "label"
    real, fake = _adv_scores(Z1, layers, conditional), _adv_scores(Z0, layers, conditional)
    if part == "discriminator":
        return bce_logits(real, 1.0) + bce_logits(fake, 0.0)
    return 2.0 * bce_logits(fake, 1.0) + 0.5 * float(np.mean(np.abs(Z0 - Z1)))


def _adv_value(condition: str, part: str) -> float:
    method, _ = _adv_method(condition)
    d, y = method.discriminator, torch.tensor(Y)
    with torch.no_grad():
        if part == "discriminator":
            return float(discriminator_loss(d(t(Z1), y), d(t(Z0), y)))
        return float(sum(method.student_terms(t(Z1), t(Z0), y).values()))


for _cond in ("label", "none"):
    for _part in ("discriminator", "student"):
        case(f"adversarial_kd_{_cond}_{_part}", lambda c=_cond, p=_part: _adv_reference(c, p))(
            lambda c=_cond, p=_part: _adv_value(c, p)
        )


# -- DAFL ---------------------------------------------------------------------------------------

DAFL_EMBEDDING = wave((3, 6), 0.83, 2.0)


def _dafl_reference(variant: str, part: str) -> float:
    if part == "one_hot":
        return cross_entropy(Z1, Z1.argmax(axis=1))
    if part == "activation":
        l1 = np.sum(np.abs(DAFL_EMBEDDING), axis=1)
        return float(-np.mean(l1 / DAFL_EMBEDDING.shape[1] if variant == "code" else l1))
    mean_p = softmax(Z1).mean(axis=0)
    log = np.log10 if variant == "code" else np.log
    return float(np.sum(mean_p * log(mean_p)))


def _dafl_value(variant: str, part: str) -> float:
    return float(generator_losses(t(Z1), t(DAFL_EMBEDDING), variant)[part])


case("dafl_one_hot", lambda: _dafl_reference("code", "one_hot"))(
    lambda: _dafl_value("code", "one_hot")
)
for _variant in ("code", "paper"):
    for _part in ("activation", "entropy"):
        case(f"dafl_{_variant}_{_part}", lambda v=_variant, p=_part: _dafl_reference(v, p))(
            lambda v=_variant, p=_part: _dafl_value(v, p)
        )


# -- Multi-teacher ------------------------------------------------------------------------------


def _multi_shared_reference(temp: float) -> float:
    target = np.mean([softmax(z / temp) for z in (Z0, Z1, Z2)], axis=0)
    return temp**2 * kl_mean(target, softmax(Z2 / temp))


def _multi_disjoint_reference(temp: float) -> float:
    """Teacher 1 scores classes {0, 1}, teacher 2 classes {2, 3}: each one's softmax over its
    classes, gated by its share of exp-scores, g_m ∝ sum_c exp(z_mc / T)."""
    z_a, z_b = Z0[:, :2] / temp, Z1[:, 2:] / temp
    mass_a, mass_b = np.exp(z_a).sum(axis=1), np.exp(z_b).sum(axis=1)
    gate_a = mass_a / (mass_a + mass_b)
    target = np.concatenate(
        [gate_a[:, None] * softmax(z_a), (1 - gate_a)[:, None] * softmax(z_b)], axis=1
    )
    return temp**2 * kl_mean(target, softmax(Z2 / temp))


def _multi_shared_value(temp: float) -> float:
    return float(soft_target_kd(t(Z2), averaged_targets([t(Z0), t(Z1), t(Z2)], temp), temp))


def _multi_disjoint_value(temp: float) -> float:
    targets = union_targets([t(Z0[:, :2]), t(Z1[:, 2:])], class_groups(4, 2), temp)
    return float(soft_target_kd(t(Z2), targets, temp))


case("multi_teacher_shared_t4", lambda: _multi_shared_reference(4.0))(
    lambda: _multi_shared_value(4.0)
)
case("multi_teacher_disjoint_t4", lambda: _multi_disjoint_reference(4.0))(
    lambda: _multi_disjoint_value(4.0)
)
case("multi_teacher_disjoint_t1", lambda: _multi_disjoint_reference(1.0))(
    lambda: _multi_disjoint_value(1.0)
)


# -- Grafting -----------------------------------------------------------------------------------


def _graft_nets() -> tuple[nn.Module, nn.Module]:
    """Two small conv nets with deterministic weights; B's first conv differs from A's in a few
    entries only (close entropies: an unsaturated coefficient)."""
    nets = []
    for shift in (0.0, 1.0):
        net = nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(2, 2)
        )
        state = net.state_dict()
        for n, (key, value) in enumerate(state.items()):
            if value.is_floating_point():
                state[key] = t(wave(tuple(value.shape), 0.61 + 0.23 * n + 0.05 * shift))
        if shift:
            first = net.state_dict()["0.weight"]
            first_a = t(wave(tuple(first.shape), 0.61))
            first_a.view(-1)[:3] = torch.tensor([0.95, -0.9, 0.97])
            state["0.weight"] = first_a
        net.load_state_dict(state)
        nets.append(net)
    return nets[0], nets[1]


def _graft_states_numpy() -> tuple[dict, dict]:
    a, b = _graft_nets()
    sa = {k: v.double().numpy() for k, v in a.state_dict().items() if v.is_floating_point()}
    sb = {k: v.double().numpy() for k, v in b.state_dict().items() if v.is_floating_point()}
    return sa, sb


def _checksum(values: list[np.ndarray]) -> float:
    """A weighted sum that changes with any entry of any tensor."""
    return sum((n + 1) * float(np.sum(v * wave(v.shape, 0.11))) for n, v in enumerate(values))


def _graft_reference(a: float, rounded: bool) -> float:
    """The student keeps alpha of each entry, alpha from the nearest preceding conv weight."""
    own, other = _graft_states_numpy()
    mixed, alpha = [], None
    for key in own:
        if key in ("0.weight", "2.weight"):
            h_own, h_other = histogram_entropy(own[key]), histogram_entropy(other[key])
            alpha = graft_coefficient(h_own, h_other, a, 500.0, rounded)
        mixed.append(alpha * own[key] + (1 - alpha) * other[key])
    return _checksum(mixed)


def _grafted(a: float, rounded: bool) -> tuple[nn.Module, nn.Module]:
    student, peer = _graft_nets()
    method = build_method("grafting", {"a": a, "c": 500.0, "round_coefficient": rounded})
    method.setup(
        ModelInfo("s", "test", 2, (2,), (1,), 2, 10), None, TaskInfo("d", 2, (2, 3, 3), 8, 1, 1)
    )
    method.peer_models.append(peer)
    method.graft(student)
    return student, peer


def _graft_value(a: float, rounded: bool) -> float:
    student, _ = _grafted(a, rounded)
    floats = [v.double().numpy() for v in student.state_dict().values() if v.is_floating_point()]
    return _checksum(floats)


def _coefficient_reference(rounded: bool) -> float:
    sa, sb = _graft_states_numpy()
    h_a, h_b = histogram_entropy(sa["0.weight"]), histogram_entropy(sb["0.weight"])
    return graft_coefficient(h_a, h_b, 0.4, 500.0, rounded)


def _coefficient_value(rounded: bool) -> float:
    a, b = _graft_nets()
    h_a, h_b = weight_entropy(a[0].weight), weight_entropy(b[0].weight)
    return grafting_coefficient(h_a, h_b, 0.4, 500.0, rounded)


case("grafting_coefficient_rounded", lambda: _coefficient_reference(True))(
    lambda: _coefficient_value(True)
)
case("grafting_coefficient_exact", lambda: _coefficient_reference(False))(
    lambda: _coefficient_value(False)
)
case("grafting_student_state", lambda: _graft_reference(0.4, True))(lambda: _graft_value(0.4, True))
case("grafting_student_state_a1_exact", lambda: _graft_reference(1.0, False))(
    lambda: _graft_value(1.0, False)
)


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def load_fixture() -> dict[str, float]:
    return json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_the_papers_equation(case: Case, request: pytest.FixtureRequest) -> None:
    independent = float(case.reference())
    if request.config.getoption("--regen-fidelity"):
        values = load_fixture()
        values[case.name] = independent
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(dict(sorted(values.items())), indent=2) + "\n")
    values = load_fixture()
    assert case.name in values, (
        f"{FIXTURE} has no value for {case.name!r}; regenerate with pytest --regen-fidelity"
    )
    expected = values[case.name]
    assert independent == pytest.approx(expected, rel=REL)
    assert case.method() == pytest.approx(expected, rel=REL)


def test_fixture_has_no_values_without_a_case() -> None:
    stale = set(load_fixture()) - {c.name for c in CASES}
    assert not stale, f"{FIXTURE} holds values no test checks: {sorted(stale)}"


def test_cases_are_distinguishable() -> None:
    # Variants and schedules must change the value, or the cases above could not fail.
    values = [round(float(c.reference()), 6) for c in CASES]
    assert len(set(values)) == len(values)


def test_grafting_coefficient_is_not_saturated() -> None:
    # The grafted-state cases test the entropy and the arctan only away from alpha in {0.3, 0.7}.
    assert 0.31 < _coefficient_value(False) < 0.69


def test_class_groups_are_contiguous_and_cover_the_classes() -> None:
    assert class_groups(10, 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert class_groups(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_two_grafted_networks_become_one() -> None:
    # The coefficients of a pair add up to one (arctan is odd), so after an exchange both
    # networks hold the same weights; they part again through their learning rates.
    student, peer = _grafted(0.4, True)
    for (key, mine), theirs in zip(
        student.state_dict().items(), peer.state_dict().values(), strict=True
    ):
        assert torch.allclose(mine.double(), theirs.double(), atol=1e-6), key


def test_grafting_conv_keys_are_the_convolution_weights() -> None:
    student, _ = _graft_nets()
    assert conv_weight_keys(student) == {"0.weight", "2.weight"}
