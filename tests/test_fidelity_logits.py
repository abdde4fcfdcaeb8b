"""Fidelity of the logit-based methods.

Each method's training objective on tiny hand-written logits (3 samples × 4 classes) is
compared with the paper's equation, written out again here in float64 NumPy without calling
the methods' code, to 1e-5 relative. The expected values live in
``tests/fixtures/fidelity_logits.json``; ``pytest --regen-fidelity`` rewrites them from the
independent computations. BSS has no closed-form loss: its attack is tested for the
properties the paper relies on instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.api import Batch, ModelInfo, Outputs, TaskInfo
from bench.plugins import build_method
from methods.bss import BSS, boundary_attack

FIXTURE = Path(__file__).parent / "fixtures" / "fidelity_logits.json"
REL = 1e-5

# Student and teacher logits; the third sample's label is not the teacher's top class.
STUDENT = np.array(
    [
        [2.0, -1.0, 0.5, 0.3],
        [0.1, 1.5, -0.7, 2.2],
        [-1.2, 0.4, 3.0, -0.5],
    ]
)
TEACHER = np.array(
    [
        [3.0, -2.0, 1.0, 0.0],
        [-0.5, 2.5, 0.0, 1.0],
        [0.0, -1.0, 4.0, 0.5],
    ]
)
LABELS = np.array([0, 1, 3])


# --------------------------------------------------------------------------------------------
# The papers' equations, in float64 NumPy
# --------------------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(softmax(z)[np.arange(len(y)), y])))


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) of each row."""
    return np.sum(p * np.log(p / q), axis=1)


def hinton_kd(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """T^2 * KL(p_t^T || p_s^T), batch mean."""
    return temperature**2 * float(
        np.mean(kl_rows(softmax(t / temperature), softmax(s / temperature)))
    )


def decoupled_kd(
    s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, temperature: float
) -> float:
    """Zhao et al. 2022: alpha * TCKD + beta * NCKD with b = [p_gt, 1 - p_gt] and
    p_hat = p / (1 - p_gt) over the non-target classes; times T^2, batch mean."""
    p_s, p_t = softmax(s / temperature), softmax(t / temperature)
    total = 0.0
    for i, gt in enumerate(y):
        b_s = np.array([p_s[i, gt], 1.0 - p_s[i, gt]])
        b_t = np.array([p_t[i, gt], 1.0 - p_t[i, gt]])
        others = [k for k in range(s.shape[1]) if k != gt]
        hat_s = p_s[i, others] / (1.0 - p_s[i, gt])
        hat_t = p_t[i, others] / (1.0 - p_t[i, gt])
        tckd = np.sum(b_t * np.log(b_t / b_s))
        nckd = np.sum(hat_t * np.log(hat_t / hat_s))
        total += alpha * tckd + beta * nckd
    return temperature**2 * total / len(y)


def z_score(z: np.ndarray, ddof: int) -> np.ndarray:
    return (z - z.mean(axis=1, keepdims=True)) / z.std(axis=1, ddof=ddof, keepdims=True)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def dist_relations(s: np.ndarray, t: np.ndarray, tau: float) -> tuple[float, float]:
    """Huang et al. 2022: 1 - mean Pearson over samples (inter) and over classes (intra),
    of the tau-softened probabilities, each times tau^2."""
    y_s, y_t = softmax(s / tau), softmax(t / tau)
    inter = 1.0 - np.mean([pearson(y_s[i], y_t[i]) for i in range(len(y_s))])
    intra = 1.0 - np.mean([pearson(y_s[:, k], y_t[:, k]) for k in range(y_s.shape[1])])
    return tau**2 * inter, tau**2 * intra


def virtual_teacher(y: np.ndarray, num_classes: int, a: float) -> np.ndarray:
    """Yuan et al. 2020: a on the label, (1 - a) / (K - 1) elsewhere."""
    p = np.full((len(y), num_classes), (1.0 - a) / (num_classes - 1))
    p[np.arange(len(y)), y] = a
    return p


# --------------------------------------------------------------------------------------------
# Cases: a method with parameters at a point of training, and its expected objective
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    params: dict[str, Any]
    reference: Callable[[], float]
    epoch: int = 0
    epochs: int = 240
    extra: dict[str, Any] = field(default_factory=dict)


S, T, Y = STUDENT, TEACHER, LABELS
CE = cross_entropy(S, Y)


def tf_kd_code(temperature: float, alpha: float, multiplier: float) -> float:
    """The reference code's Tf-KD_reg: softmax of p_d / T, unsoftened student, KL averaged
    over all N*K elements."""
    q = softmax(virtual_teacher(Y, 4, 0.99) / temperature)
    kl_elements = q * (np.log(q) - np.log(softmax(S)))
    return (1 - alpha) * CE + alpha * multiplier * float(np.mean(kl_elements))


def tf_kd_paper(temperature: float, alpha: float, multiplier: float) -> float:
    """KD with the virtual teacher softened at T (p_d^(1/T), renormalised), batch-mean KL."""
    p_d = virtual_teacher(Y, 4, 0.99) ** (1.0 / temperature)
    q = p_d / p_d.sum(axis=1, keepdims=True)
    kl = float(np.mean(kl_rows(q, softmax(S / temperature))))
    return (1 - alpha) * CE + alpha * multiplier * kl


CASES = [
    Case("kd_default", "kd", {}, lambda: 0.1 * CE + 0.9 * hinton_kd(S, T, 4.0)),
    Case(
        "kd_t1_alpha05",
        "kd",
        {"temperature": 1.0, "alpha": 0.5},
        lambda: 0.5 * CE + 0.5 * hinton_kd(S, T, 1.0),
    ),
    Case(
        "logit_mse_half_sum",
        "logit_mse",
        {"normalisation": "half_sum", "weight": 2.0, "ce_weight": 0.5},
        lambda: 0.5 * CE + 2.0 * 0.5 * float(np.mean(np.sum((S - T) ** 2, axis=1))),
    ),
    Case(
        "logit_mse_sum",
        "logit_mse",
        {"normalisation": "sum"},
        lambda: float(np.mean(np.sum((S - T) ** 2, axis=1))),
    ),
    Case(
        "logit_mse_mean",
        "logit_mse",
        {"normalisation": "mean", "ce_weight": 1.0},
        lambda: CE + float(np.mean((S - T) ** 2)),
    ),
    Case(
        "dkd_full_weight",
        "dkd",
        {},
        lambda: CE + decoupled_kd(S, T, Y, 1.0, 8.0, 4.0),
        epoch=29,
    ),
    Case(
        "dkd_mid_warmup",  # epoch 10 of the reference's 20-epoch warm-up: weight 1/2
        "dkd",
        {"alpha": 2.0, "beta": 3.0, "temperature": 2.0},
        lambda: CE + 0.5 * decoupled_kd(S, T, Y, 2.0, 3.0, 2.0),
        epoch=9,
    ),
    Case(
        "dkd_scaled_warmup",  # 24-epoch recipe: warm-up 2 epochs, first epoch weight 1/2
        "dkd",
        {},
        lambda: CE + 0.5 * decoupled_kd(S, T, Y, 1.0, 8.0, 4.0),
        epoch=0,
        epochs=24,
    ),
    Case(
        "ls_kd",
        "ls",
        {"base": "kd"},
        lambda: CE + 9.0 * hinton_kd(z_score(S, 1), z_score(T, 1), 2.0),
    ),
    Case(
        "ls_kd_population_std",
        "ls",
        {"base": "kd", "std": "population", "temperature": 3.0, "ce_weight": 0.1},
        lambda: 0.1 * CE + 9.0 * hinton_kd(z_score(S, 0), z_score(T, 0), 3.0),
    ),
    Case(
        "ls_dkd_full_weight",
        "ls",
        {"base": "dkd"},
        lambda: CE + decoupled_kd(z_score(S, 1), z_score(T, 1), Y, 9.0, 72.0, 2.0),
        epoch=29,
    ),
    Case(
        "ls_dkd_mid_warmup",
        "ls",
        {"base": "dkd", "kd_weight": 2.0},
        lambda: CE + 0.5 * decoupled_kd(z_score(S, 1), z_score(T, 1), Y, 2.0, 16.0, 2.0),
        epoch=9,
    ),
    Case("dist_default", "dist", {}, lambda: CE + sum(dist_relations(S, T, 4.0))),
    Case(
        "dist_tau1_weighted",
        "dist",
        {"tau": 1.0, "beta": 2.0, "gamma": 0.5},
        lambda: CE + np.dot([2.0, 0.5], dist_relations(S, T, 1.0)),
    ),
    Case("tf_kd_code", "tf_kd", {}, lambda: tf_kd_code(20.0, 0.1, 100.0)),
    Case(
        "tf_kd_paper",
        "tf_kd",
        {"variant": "paper", "temperature": 4.0, "alpha": 0.5, "multiplier": 1.0},
        lambda: tf_kd_paper(4.0, 0.5, 1.0),
    ),
]


# --------------------------------------------------------------------------------------------
# The methods' side
# --------------------------------------------------------------------------------------------


def model_info(name: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        family="tiny",
        num_classes=4,
        feature_channels=(8,),
        feature_reductions=(1,),
        embedding_dim=8,
        num_params=100,
    )


def method_objective(case: Case) -> float:
    """The full objective the harness minimises: the method's terms, plus CE unless owned."""
    method = build_method(case.method, case.params)
    task = TaskInfo("fidelity", 4, (1, 8, 8), num_train=3, epochs=case.epochs, steps_per_epoch=1)
    info = model_info("student")
    teacher_info = model_info("teacher") if method.uses_teacher else None
    method.setup(info, teacher_info, task)
    logits_s = torch.tensor(STUDENT, dtype=torch.float32)
    y = torch.tensor(LABELS)
    batch = Batch(
        x=torch.zeros(3, 1, 8, 8),
        y=y,
        index=torch.arange(3),
        epoch=case.epoch,
        step=case.epoch,
        progress=case.epoch / case.epochs,
    )
    teacher = Outputs(torch.tensor(TEACHER, dtype=torch.float32)) if method.uses_teacher else None
    terms = method.loss(batch, Outputs(logits_s), teacher)
    total = sum(terms.values())
    if not method.owns_ce:
        total = total + F.cross_entropy(logits_s, y)
    return float(total)


def load_fixture() -> dict[str, float]:
    return json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_objective_matches_the_papers_equation(case: Case, request: pytest.FixtureRequest) -> None:
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
    assert method_objective(case) == pytest.approx(expected, rel=REL)


def test_fixture_has_no_values_without_a_case() -> None:
    stale = set(load_fixture()) - {c.name for c in CASES}
    assert not stale, f"{FIXTURE} holds values no test checks: {sorted(stale)}"


def test_cases_are_distinguishable() -> None:
    # Warm-up and weighting must change the value, or the cases above could not fail.
    values = [float(c.reference()) for c in CASES]
    assert len({round(v, 6) for v in values}) == len(values)


# --------------------------------------------------------------------------------------------
# BSS: properties of the boundary attack and of the training step
# --------------------------------------------------------------------------------------------


def tiny_net(seed: int, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"teacher {key} changed"
    assert all(p.grad is None for p in model.parameters())


def margins(logits: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, source[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(
        1
    )


def test_bss_attack_shrinks_the_margin_to_the_target_class() -> None:
    teacher = frozen(tiny_net(0))
    # Make the BatchNorm statistics non-trivial, so that a train-mode forward would move them.
    teacher.get_submodule("1").running_mean.uniform_(-0.5, 0.5)
    before = snapshot(teacher)
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = teacher(x)
    source = clean.argmax(1)
    target = clean.topk(2, dim=1).indices[:, 1]  # the runner-up class: a boundary nearby

    one_step = boundary_attack(teacher, x, target, steps=1, step_size=0.3, lower=-3.0, upper=3.0)
    adversarial = boundary_attack(
        teacher, x, target, steps=10, step_size=0.3, lower=-3.0, upper=3.0
    )

    with torch.no_grad():
        after_one = margins(teacher(one_step), source, target)
        after_ten = margins(teacher(adversarial), source, target)
    before_margin = margins(clean, source, target)
    assert (after_one < before_margin).all()
    assert (after_ten < after_one).all()  # every step moves closer to the boundary
    assert adversarial.min() >= -3.0 and adversarial.max() <= 3.0
    assert not torch.equal(adversarial, x)
    assert_unchanged(teacher, before)


def test_bss_attack_stops_a_sample_once_it_crossed() -> None:
    teacher = frozen(tiny_net(2))
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clean = teacher(x)
    target = clean.topk(2, dim=1).indices[:, 1]
    # A step this large carries most samples across at once; those must stay where the
    # crossing left them while the others keep moving.
    one = boundary_attack(teacher, x, target, steps=1, step_size=10.0)
    many = boundary_attack(teacher, x, target, steps=6, step_size=10.0)
    with torch.no_grad():
        crossed = teacher(one).argmax(1) != clean.argmax(1)
    assert crossed.any() and not crossed.all()
    assert torch.equal(one[crossed], many[crossed])
    assert not torch.equal(one[~crossed], many[~crossed])


class StubContext:
    """The part of the training context BSS uses: forward passes, the teacher, a generator."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        self.student = student
        self.teacher = teacher
        self.generator = torch.Generator().manual_seed(0)

    def forward(
        self, model: nn.Module, x: torch.Tensor, needs: frozenset[str] = frozenset(), *, grad=True
    ) -> Outputs:
        with nullcontext() if grad else torch.no_grad():
            return Outputs(model(x))

    def forward_student(self, x: torch.Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        return self.forward(self.student, x, needs)

    def forward_teacher(self, x: torch.Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        return self.forward(self.teacher, x, needs, grad=False)


def bss_step(epoch: int, epochs: int) -> tuple[dict[str, torch.Tensor], nn.Module, nn.Module]:
    student, teacher = tiny_net(4), frozen(tiny_net(5))
    method = BSS()
    info = model_info("tiny")
    method.setup(info, info, TaskInfo("t", 5, (3, 6, 6), 16, epochs=epochs, steps_per_epoch=1))
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = teacher(x).argmax(1)  # the teacher is right on every sample: all are candidates
    batch = Batch(x=x, y=y, index=torch.arange(16), epoch=epoch, step=epoch)
    before = snapshot(teacher)
    terms = method.train_step(StubContext(student, teacher), batch)
    sum(terms.values()).backward()
    assert_unchanged(teacher, before)
    assert all(p.grad is not None for p in student.parameters())
    return terms, student, teacher


def test_bss_step_adds_a_boundary_term_early_and_none_late() -> None:
    early, _, _ = bss_step(epoch=0, epochs=8)
    assert set(early) == {"ce", "kd", "bss"}
    assert all(torch.isfinite(v) for v in early.values())
    assert early["bss"].item() > 0.0
    late, _, _ = bss_step(epoch=6, epochs=8)  # past 3/4 of training: the BSS weight is 0
    assert late["bss"].item() == 0.0


def test_bss_weight_schedules_follow_the_reference() -> None:
    method = BSS()
    info = model_info("tiny")
    method.setup(info, info, TaskInfo("t", 4, (3, 6, 6), 16, epochs=80, steps_per_epoch=1))
    for epoch in (0, 39, 59, 79):
        done = (epoch + 1) / 80  # the reference counts epochs from 1: epoch / max_epoch
        kd, bss = method.weights(epoch)
        assert kd == pytest.approx(max(3 * (1 - done), 0) + 1)
        assert bss == pytest.approx(max(2 * (1 - 4 / 3 * done), 0))
