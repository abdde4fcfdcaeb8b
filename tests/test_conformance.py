"""The method conformance suite: run over every registered method on every tiny pair, and shown
to catch deliberately broken methods, each by the check that should fail."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import METHODS, Batch, Method, ModelInfo, Outputs, TaskInfo, register_method
from bench.conformance import (
    DEFAULT_PAIRS,
    FALLBACK_PAIRS,
    ConformanceReport,
    Pair,
    check_pair,
    refusal,
    run_conformance,
)
from bench.plugins import load_methods

load_methods()
NAMES = sorted(set(METHODS.names()) | {b.name for b in METHODS.broken()})
ONE_PAIR = DEFAULT_PAIRS[0]


def _failures(results: list) -> str:
    return "\n".join(f"{r.pair_id} {r.name}: {r.message}" for r in results if r.failed)


# --------------------------------------------------------------------------------------------
# Every registered method
# --------------------------------------------------------------------------------------------


# Open findings of the suite, kept visible: each must keep failing until fixed (strict).
KNOWN_FAILURES: dict[str, str] = {}


def _case(name: str, pair: Pair):
    pid = pair.id_for(name)
    marks = (
        [pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[pid])]
        if pid in KNOWN_FAILURES
        else []
    )
    return pytest.param(name, pair, id=pid, marks=marks)


@pytest.mark.parametrize(("name", "pair"), [_case(n, p) for n in NAMES for p in DEFAULT_PAIRS])
def test_method_conforms_on_pair(name: str, pair: Pair) -> None:
    outcome = check_pair(METHODS.get(name), pair)
    if not outcome.passed:
        pytest.fail(_failures(outcome.results), pytrace=False)
    if outcome.refusal is not None:
        pytest.skip(f"{name} refuses {pair.student}<-{pair.teacher}: {outcome.refusal}")


@pytest.mark.parametrize("name", NAMES)
def test_method_supports_a_tiny_pair(name: str) -> None:
    cls = METHODS.get(name)
    reasons = {p: refusal(cls, p) for p in DEFAULT_PAIRS}
    if all(reason is not None for reason in reasons.values()):
        # Methods that need equal widths get the same-architecture pair instead.
        outcomes = [check_pair(cls, p) for p in FALLBACK_PAIRS]
        supported = [o for o in outcomes if o.refusal is None]
        assert supported, f"{name} refuses every tiny pair: " + "; ".join(
            f"{p.student}<-{p.teacher}: {r}" for p, r in reasons.items()
        )
        for outcome in supported:
            if not outcome.passed:
                pytest.fail(_failures(outcome.results), pytrace=False)


# --------------------------------------------------------------------------------------------
# Broken methods, each caught by its check
# --------------------------------------------------------------------------------------------


@pytest.fixture
def register() -> Iterator[Callable[[str, type[Method]], str]]:
    """Register test methods under unique names; unregister them afterwards."""
    names: list[str] = []

    def add(name: str, cls: type[Method]) -> str:
        register_method(name)(cls)
        names.append(name)
        return name

    yield add
    for name in names:
        METHODS.unregister(name)


def _check(name: str, pairs: tuple[Pair, ...] | None = (ONE_PAIR,)) -> ConformanceReport:
    report = run_conformance(name, pairs=pairs)
    assert report.methods == (name,)
    return report


class TestMethod(Method):
    """Base of the broken methods below: no hyperparameters."""

    __test__ = False

    class Params(Method.Params):
        """None."""


class NanLoss(TestMethod):
    """A loss that is NaN."""

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        return {"bad": (student.logits * float("nan")).mean()}


class NonScalarTerm(TestMethod):
    """A per-sample term the author forgot to reduce."""

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        return {"kd": F.mse_loss(student.logits, teacher.logits, reduction="none").mean(dim=1)}


class TeacherInTrainMode(TestMethod):
    """Puts the teacher in train mode, as a popular KD library does by default."""

    def train_step(self, ctx, batch: Batch) -> dict[str, Tensor]:
        ctx.teacher.train()
        return super().train_step(ctx, batch)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        return {"mse": 0.1 * F.mse_loss(student.logits, teacher.logits)}


class DetachedConnector(TestMethod):
    """Projects the student embedding through a connector whose output is detached."""

    needs = frozenset({"embedding"})

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.connector = nn.Linear(student.embedding_dim, teacher.embedding_dim)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        projected = self.connector(student.embedding).detach()
        return {"hint": F.mse_loss(projected, teacher.embedding)}


class DetachedKD(TestMethod):
    """Hinton KD computed from detached student logits: the harness's cross-entropy still
    trains the student, so only a per-term trace shows that the KD term teaches nothing."""

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        log_p = F.log_softmax(student.logits.detach() / 4.0, dim=1)
        q = F.softmax(teacher.logits / 4.0, dim=1)
        return {"kd": 16.0 * F.kl_div(log_p, q, reduction="batchmean")}


class DeclaredDetachedKD(DetachedKD):
    """The same term, declared as reported only."""

    detached_terms = frozenset({"kd"})


class _Reversed(torch.autograd.Function):
    """Identity forward, negated gradient backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return -grad


class WrongDirection(TestMethod):
    """Reports the cross-entropy but sends its gradient the wrong way (a sign error)."""

    owns_ce = True

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        return {"ce": _Reversed.apply(F.cross_entropy(student.logits, batch.y))}


class ConstantLoss(TestMethod):
    """Returns a constant that requires grad but depends on nothing."""

    owns_ce = True

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        return {"const": torch.ones((), requires_grad=True)}


class StateOutsideStateDict(TestMethod):
    """Keeps a running mean of the teacher's logits as a plain attribute, not a buffer."""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.center = torch.zeros(teacher.num_classes)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        self.last = teacher.logits.detach().mean(0)
        target = teacher.logits - self.center
        return {"centred": 0.1 * F.mse_loss(student.logits, target)}

    def after_step(self, ctx, batch: Batch) -> None:
        self.center = 0.5 * self.center + 0.5 * self.last


class RefusedEverywhere(TestMethod):
    def supports(self, student, teacher, task) -> tuple[bool, str]:
        return False, "needs a vision transformer"


class RefusedSilently(TestMethod):
    def supports(self, student, teacher, task) -> tuple[bool, str]:
        return False, ""


def test_nan_loss_fails_loss_terms_naming_the_term(register) -> None:
    name = register("conformance_test_nan", NanLoss)
    report = _check(name)
    pid = ONE_PAIR.id_for(name)
    result = report.get("loss_terms", pid)
    assert result.failed
    assert "'bad'" in result.message and "nan" in result.message
    assert report.get("gradients", pid).status == "skipped"
    assert report.get("frozen_teacher", pid).passed  # still checked after the failure
    assert not report.passed
    assert "FAILED" in report.format()


def test_non_scalar_term_fails_loss_terms_with_its_shape(register) -> None:
    name = register("conformance_test_non_scalar", NonScalarTerm)
    result = _check(name).get("loss_terms", ONE_PAIR.id_for(name))
    assert result.failed
    assert "'kd'" in result.message and "(64,)" in result.message and "0-dim" in result.message


def test_teacher_in_train_mode_fails_frozen_teacher(register) -> None:
    name = register("conformance_test_teacher_train", TeacherInTrainMode)
    report = _check(name)
    pid = ONE_PAIR.id_for(name)
    result = report.get("frozen_teacher", pid)
    assert result.failed
    assert "running_mean" in result.message and "train mode" in result.message
    assert report.get("loss_terms", pid).passed
    assert report.get("gradients", pid).passed


def test_detached_connector_fails_gradients_naming_its_weights(register) -> None:
    name = register("conformance_test_detached", DetachedConnector)
    report = _check(name)
    pid = ONE_PAIR.id_for(name)
    result = report.get("gradients", pid)
    assert result.failed
    assert "connector.weight" in result.message and "connector.bias" in result.message
    assert report.get("loss_terms", pid).passed


def test_detached_kd_term_fails_gradients_naming_the_term(register) -> None:
    name = register("conformance_test_detached_kd", DetachedKD)
    report = _check(name)
    result = report.get("gradients", ONE_PAIR.id_for(name))
    assert result.failed
    assert result.message.startswith("term 'kd' is detached")
    assert "'ce'" not in result.message  # the harness's cross-entropy reaches the student
    assert [r.name for r in report.failures()] == ["gradients"]  # every other check passes


def test_a_declared_detached_term_passes(register) -> None:
    name = register("conformance_test_declared_detached", DeclaredDetachedKD)
    report = _check(name)
    assert report.passed, report.format(verbose=True)


def test_wrong_gradient_sign_fails_loss_decreases_only(register) -> None:
    name = register("conformance_test_wrong_direction", WrongDirection)
    report = _check(name)
    pid = ONE_PAIR.id_for(name)
    result = report.get("loss_decreases", pid)
    assert result.failed
    start, end = map(float, re.search(r"batch (\S+) → (\S+) ", result.message).groups())
    assert end > start  # ascending the cross-entropy raises it
    assert [r.name for r in report.failures()] == ["loss_decreases"]


def test_constant_loss_fails_gradients_and_loss_decreases(register) -> None:
    name = register("conformance_test_constant", ConstantLoss)
    report = _check(name)
    pid = ONE_PAIR.id_for(name)
    assert "no non-zero gradient reached any student parameter" in (
        report.get("gradients", pid).message
    )
    assert report.get("loss_decreases", pid).failed
    assert "1 → 1 (+0.0%)" in report.get("loss_decreases", pid).message


def test_state_outside_state_dict_fails_checkpoint(register) -> None:
    name = register("conformance_test_lost_state", StateOutsideStateDict)
    report = _check(name)
    result = report.get("checkpoint", ONE_PAIR.id_for(name))
    assert result.failed
    assert "centred" in result.message and "state_dict()" in result.message


def test_method_refused_everywhere_fails_the_suite(register) -> None:
    name = register("conformance_test_refused", RefusedEverywhere)
    report = _check(name, pairs=None)
    pair_ids = [p.id_for(name) for p in (*DEFAULT_PAIRS, *FALLBACK_PAIRS)]
    for pid in pair_ids:
        assert report.get("supports", pid).passed  # each refusal carries its reason
        assert report.get("loss_terms", pid).status == "skipped"
    wide = report.get("supports", f"{name}-*")
    assert wide.failed
    assert wide.message.count("needs a vision transformer") == len(pair_ids)


def test_refusal_without_a_reason_fails_supports(register) -> None:
    name = register("conformance_test_silent", RefusedSilently)
    result = _check(name).get("supports", ONE_PAIR.id_for(name))
    assert result.failed
    assert "without a reason" in result.message


PLUGIN = '''
import torch.nn.functional as F
from bench.api import Method, register_method


@register_method("conformance_test_file_kd")
class FileKD(Method):
    """Hinton KD at T=4, from a plugin file."""

    class Params(Method.Params):
        """None."""

    def loss(self, batch, student, teacher):
        log_p = F.log_softmax(student.logits / 4.0, dim=1)
        q = F.softmax(teacher.logits / 4.0, dim=1)
        return {"kd": 16.0 * F.kl_div(log_p, q, reduction="batchmean")}
'''


def test_a_correct_plugin_file_passes_every_check(tmp_path) -> None:
    path = tmp_path / "file_kd.py"
    path.write_text(textwrap.dedent(PLUGIN))
    try:
        report = run_conformance(str(path), pairs=[ONE_PAIR])
    finally:
        METHODS.unregister("conformance_test_file_kd")
    assert report.methods == ("conformance_test_file_kd",)
    assert report.passed, report.format(verbose=True)
    pid = ONE_PAIR.id_for("conformance_test_file_kd")
    assert {r.name for r in report.for_pair(pid) if r.passed} == {
        "supports",
        "setup",
        "loss_terms",
        "gradients",
        "frozen_teacher",
        "checkpoint",
        "loss_decreases",
    }
    assert report.format().splitlines()[-1].startswith("PASSED: conformance_test_file_kd")


def test_a_file_that_fails_to_import_fails_load(tmp_path) -> None:
    path = tmp_path / "needs_missing.py"
    path.write_text("import kdbench_no_such_dependency\n")
    report = run_conformance(str(path))
    assert [(r.name, r.status) for r in report.results] == [("load", "failed")]
    message = report.results[0].message
    assert str(path) in message and "kdbench_no_such_dependency" in message


def test_conformance_params_apply_unless_parameters_are_given() -> None:
    # ls declares a small KD weight for the tiny models; the reference's weight 9 makes the
    # loss on the fixed batch rise, and giving it explicitly must reach the check.
    vgg = "test_vgg<-test_resnet_wide"
    assert run_conformance("ls", pairs=[vgg]).passed
    explicit = run_conformance("ls", pairs=[vgg], params={"kd_weight": 9.0})
    assert [r.name for r in explicit.results if r.failed] == ["loss_decreases"]


def test_pair_specs_parse_and_bad_ones_say_the_form() -> None:
    assert Pair.parse("test_vgg<-test_resnet_wide") == Pair("test_vgg", "test_resnet_wide")
    assert Pair.parse(("a", "b")).id_for("kd") == "kd-a<-b"
    with pytest.raises(ValueError, match="student<-teacher"):
        Pair.parse("test_vgg->test_resnet_wide")
