"""The conformance checks of one method on one tiny pair.

A pair runs as one short trial through :mod:`bench.trial`'s own pieces (``make_context``,
``train_loop``, ``freeze``): ``supports`` → ``setup`` → ``before_training`` → the loss on a
fixed batch → two epochs of ``train_loop`` on 256 digits → the loss on the same batch again →
a checkpoint round trip → the teacher compared with its snapshot. The checks observe that run
without changing it: ``train_step`` is wrapped to validate each step's terms and to trace each
term on its own back to the parameters (``autograd.grad`` of that term alone, so a detached
distillation term cannot pass on the gradients of the harness's cross-entropy), and gradient
hooks record which parameters the summed loss's gradients reach.
"""

from __future__ import annotations

import copy
import io
import math
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.api import Batch, Method, ModelInfo, TrainContext, TrialFailed
from bench.conformance import fixtures
from bench.conformance.fixtures import Pair
from bench.conformance.report import CHECKS, CheckResult, Status
from bench.progress import Reporter, training
from bench.trial.loop import train_loop

#: The loss on the fixed batch must fall by at least this fraction of its starting value.
#: Eight steps of a working method lower it by several percent; a method whose updates do not
#: follow its own loss (a sign error, detached terms) leaves it flat or raises it.
MIN_RELATIVE_DROP = 0.01
#: Loss terms after a checkpoint round trip must agree to this relative tolerance.
ROUND_TRIP_RTOL = 1e-5
ROUND_TRIP_ATOL = 1e-6
_SHOWN = 6  # names listed in a message before "… and N more"


class CheckFailed(Exception):
    """A check found a violation; ``message`` says what and how to fix it."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.message = message


class _Stop(Exception):
    """Ends a pair's run early (a refusal, or a failure later checks depend on)."""


@dataclass
class PairOutcome:
    """The results of one method on one pair.

    Attributes:
        pair_id: ``<method>-<student><-<teacher>``.
        results: One result per check of :data:`~bench.conformance.report.CHECKS` but ``load``.
        refusal: The method's reason when it refused the pair, else None.
    """

    pair_id: str
    results: list[CheckResult] = field(default_factory=list)
    refusal: str | None = None

    @property
    def passed(self) -> bool:
        return not any(r.failed for r in self.results)

    def get(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"{self.pair_id} has no result for check {name!r}")


def check_pair(
    method_cls: type[Method],
    pair: Pair | str | tuple[str, str],
    params: Any = None,
    progress: Reporter | None = None,
) -> PairOutcome:
    """Run every conformance check of ``method_cls`` (with ``params``: a ``Params``
    instance, a mapping of raw values, or None for the method's ``conformance_params`` over
    the paper's defaults) on one pair; its trainings shown on ``progress``."""
    run = _PairRun(method_cls, Pair.parse(pair), _params(method_cls, params), progress)
    return run.run()


def _params(method_cls: type[Method], params: Any) -> Any:
    if params is None and method_cls.conformance_params:
        return method_cls.Params.from_mapping(
            method_cls.conformance_params, where=f"{method_cls.name}.conformance_params"
        )
    return params


def refusal(
    method_cls: type[Method], pair: Pair | str | tuple[str, str], params: Any = None
) -> str | None:
    """The method's reason for refusing ``pair`` (``"(no reason given)"`` for an empty one),
    or None when it supports the pair. Cheap: calls ``supports`` only."""
    pair = Pair.parse(pair)
    teacher = fixtures.describe(pair.teacher) if method_cls.uses_teacher else None
    ok, reason = method_cls(_params(method_cls, params)).supports(
        fixtures.describe(pair.student), teacher, fixtures.task()
    )
    return None if ok else (reason.strip() or "(no reason given)")


# --------------------------------------------------------------------------------------------
# Observing a run
# --------------------------------------------------------------------------------------------


def _short(names: list[str]) -> str:
    more = f" … and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _format_terms(terms: Mapping[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, Tensor) and v.numel() == 1:
            return f"{v.detach().float().item():.4g}"
        if isinstance(v, Tensor):
            return f"<tensor {tuple(v.shape)}>"
        if isinstance(v, float):
            return f"{v:.4g}"
        return f"<{type(v).__name__}>"

    return ", ".join(f"{k}={value(v)}" for k, v in terms.items())


def validate_terms(terms: Any, where: str) -> None:
    """Raise :class:`CheckFailed` (``loss_terms``) unless ``terms`` maps non-empty string names
    to finite, floating 0-dim tensors, at least one of which can be backpropagated."""

    def fail(problem: str) -> CheckFailed:
        return CheckFailed("loss_terms", f"{where}: {problem}")

    if not isinstance(terms, Mapping):
        raise fail(
            f"train_step returned {type(terms).__name__}; it must return a dict of named "
            "loss terms, e.g. {'kd': loss}"
        )
    if not terms:
        raise fail("train_step returned no terms; return at least one named loss term")
    for key, value in terms.items():
        if not isinstance(key, str) or not key.strip():
            raise fail(f"term name {key!r} is not a non-empty string; name every term")
        if not isinstance(value, Tensor):
            raise fail(
                f"term {key!r} is a {type(value).__name__}, not a tensor; return tensors "
                "computed from the model outputs"
            )
        if value.dim() != 0:
            raise fail(
                f"term {key!r} has shape {tuple(value.shape)}; every term must be a 0-dim "
                "tensor (reduce it with .mean() or .sum())"
            )
        if not value.is_floating_point():
            raise fail(f"term {key!r} has dtype {value.dtype}; loss terms must be floating point")
        if not torch.isfinite(value.detach()):
            raise fail(
                f"term {key!r} is {value.item()} ({_format_terms(terms)}); use stable forms "
                "(log_softmax, eps in norms and divisions) and check the inputs"
            )
    if not any(v.requires_grad for v in terms.values()):
        raise fail(
            f"no term requires grad ({', '.join(terms)}): the loss cannot be backpropagated; "
            "compute the terms from the student's outputs, not under torch.no_grad()"
        )


class TermRecorder:
    """Validates and records every step's terms while ``train_loop`` runs, by wrapping the
    method instance's ``train_step`` (the class is untouched), and traces each term on its own
    to ``params`` until a step where it reaches one of them."""

    def __init__(self, method: Method, params: Sequence[nn.Parameter] = ()) -> None:
        self.method = method
        self.params = [p for p in params if p.requires_grad]
        self.steps: list[dict[str, float]] = []
        self.connected: set[str] = set()

    def trace(self, terms: Mapping[str, Tensor]) -> None:
        """Mark the terms with a gradient path of their own to ``params``."""
        for name, value in terms.items():
            if name in self.connected or not value.requires_grad or not self.params:
                continue
            grads = torch.autograd.grad(value, self.params, retain_graph=True, allow_unused=True)
            if any(g is not None for g in grads):
                self.connected.add(name)

    def detached(self, declared: frozenset[str] = frozenset()) -> list[str]:
        """Terms that reached none of ``params`` in any step, but the ``declared`` ones."""
        names = dict.fromkeys(k for step in self.steps for k in step)
        return [n for n in names if n not in self.connected and n not in declared]

    @contextmanager
    def recording(self) -> Iterator[TermRecorder]:
        inner = self.method.train_step

        def recorded(ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
            terms = inner(ctx, batch)
            validate_terms(terms, f"training step {batch.step}")
            self.steps.append({k: float(v.detach()) for k, v in terms.items()})
            self.trace(terms)
            return terms

        self.method.train_step = recorded  # type: ignore[method-assign]
        try:
            yield self
        finally:
            del self.method.train_step


class GradientWatch:
    """Records which parameters of the student and the method gradients reach, through
    post-accumulate-grad hooks, and which method parameters change."""

    def __init__(
        self,
        student: nn.Module,
        method: Method,
        trainable: list[nn.Parameter],
        init_trained: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        self.init_trained = init_trained
        self.student = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        student_ids = {id(p) for _, p in self.student}
        names = {id(p): n for n, p in method.named_parameters()}
        self.trainable = [
            (names.get(id(p), f"<unregistered parameter #{i}>"), p)
            for i, p in enumerate(trainable)
            if id(p) not in student_ids
        ]
        trainable_ids = {id(p) for _, p in self.trainable}
        # Method parameters outside trainable_parameters() that want gradients: parts the
        # method steps itself (discriminators, generators, peers).
        self.own = [
            (n, p)
            for n, p in method.named_parameters()
            if p.requires_grad and id(p) not in trainable_ids and id(p) not in student_ids
        ]
        self.got: set[int] = set()
        self.nonzero: set[int] = set()
        self.initial = {id(p): p.detach().clone() for _, p in self.own}

    def _hook(self, p: Tensor) -> None:
        self.got.add(id(p))
        if p.grad is not None and bool(p.grad.detach().ne(0).any()):
            self.nonzero.add(id(p))

    @contextmanager
    def watching(self) -> Iterator[GradientWatch]:
        handles = []
        seen: set[int] = set()
        for _, p in [*self.student, *self.trainable, *self.own]:
            if id(p) not in seen:
                seen.add(id(p))
                handles.append(p.register_post_accumulate_grad_hook(self._hook))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def parameters(self) -> list[nn.Parameter]:
        """The student's and the method's parameters that want gradients, each once."""
        return [p for _, p in (*self.student, *self.trainable, *self.own)]

    def never_updated(self) -> list[str]:
        """Self-stepped parameters that got gradients but never changed."""
        return [
            n
            for n, p in self.own
            if id(p) in self.got and torch.equal(p.detach(), self.initial[id(p)])
        ]


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _where(exc: BaseException) -> str:
    """The deepest frame of ``exc`` outside torch and the standard library, as file:line."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    torch_dir = str(Path(torch.__file__).parent)
    stdlib = str(Path(traceback.__file__).parent)
    own = [f for f in frames if not f.filename.startswith((torch_dir, stdlib))]
    candidates = own or frames
    if not candidates:
        return ""
    frame = candidates[-1]
    return f" ({frame.filename}:{frame.lineno})"


def describe(exc: BaseException) -> str:
    """``Type: message (file:line)`` of an exception, for a one-line report."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{_where(exc)}"


def _overrides(cls: type[Method], hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Method, hook)


# --------------------------------------------------------------------------------------------
# One method on one pair
# --------------------------------------------------------------------------------------------


class _PairRun:
    def __init__(
        self, method_cls: type[Method], pair: Pair, params: Any, progress: Reporter | None = None
    ) -> None:
        self.cls = method_cls
        self.params = params
        self.progress = progress
        self.pair = pair
        self.name = method_cls.name or method_cls.__name__
        self.outcome = PairOutcome(pair.id_for(self.name))
        self.teacher: nn.Module | None = None
        self.teacher_before: dict[str, Tensor] | None = None

    # -- bookkeeping -------------------------------------------------------------------------

    def record(self, check: str, status: Status, message: str, seconds: float = 0.0) -> None:
        self.outcome.results.append(
            CheckResult(check, self.outcome.pair_id, status, message, round(seconds, 3))
        )

    def done(self, check: str) -> bool:
        return any(r.name == check for r in self.outcome.results)

    @contextmanager
    def phase(
        self, check: str, failure: str, *, fatal: bool = True
    ) -> Iterator[Callable[[], float]]:
        """Time a block; a :class:`CheckFailed` or any other error in it fails ``check`` (or
        the check the error names), and stops the pair if the later checks need the block."""
        start = time.perf_counter()

        def elapsed() -> float:
            return time.perf_counter() - start

        try:
            yield elapsed
        except _Stop:
            raise
        except Exception as exc:
            if isinstance(exc, CheckFailed):
                self.record(exc.check, "failed", exc.message, elapsed())
            elif isinstance(exc, TrialFailed):
                self.record(check, "failed", f"{failure}: {exc.reason}", elapsed())
            else:
                self.record(check, "failed", f"{failure}: {describe(exc)}", elapsed())
            if fatal:
                raise _Stop from exc

    def run(self) -> PairOutcome:
        with fixtures.isolated_rng(), fixtures.one_thread():
            try:
                self._run()
            except _Stop:
                pass
            except Exception as exc:  # outside every phase: still a result, not a crash
                check = next((c for c in CHECKS[1:] if not self.done(c)), "loss_terms")
                self.record(check, "failed", f"the conformance run raised: {describe(exc)}")
            finally:
                if self.teacher_before is not None and not self.done("frozen_teacher"):
                    self.check_frozen_teacher()
        why = (
            f"refused: {self.outcome.refusal}"
            if self.outcome.refusal is not None
            else "not run: an earlier check of this pair failed"
        )
        for check in CHECKS[1:]:
            if not self.done(check):
                self.record(check, "skipped", why)
        order = {c: i for i, c in enumerate(CHECKS)}
        self.outcome.results.sort(key=lambda r: order.get(r.name, len(order)))
        return self.outcome

    # -- the run -----------------------------------------------------------------------------

    def _run(self) -> None:
        task = fixtures.task()
        with self.phase("supports", f"building {self.name}") as elapsed:
            student, s_info = fixtures.student(self.pair.student)
            teacher, t_info = (
                fixtures.teacher(self.pair.teacher, self.progress)
                if self.cls.uses_teacher
                else (None, None)
            )
            method = self.cls(self.params)
            answer = method.supports(s_info, t_info, task)
            self.check_supports(answer, elapsed())
        self.teacher = teacher
        if teacher is None:
            self.record("frozen_teacher", "skipped", "the method uses no teacher")
        elif self.cls.mode == "online":
            self.record("frozen_teacher", "skipped", "online methods may train their teacher")
        else:
            self.teacher_before = _state(teacher)

        with self.phase("setup", "setup() or before_training() raised") as elapsed:
            method.setup(s_info, t_info, task)
            method.to(fixtures.DEVICE)
            after_setup = {id(p): p.detach().clone() for p in method.parameters()}
            ctx = fixtures.context(student, teacher, s_info, t_info)
            method.before_training(ctx)
            init_trained = {
                id(p)
                for p in method.parameters()
                if id(p) in after_setup and not torch.equal(p.detach(), after_setup[id(p)])
            }
            stages = (
                "setup() + before_training()"
                if _overrides(self.cls, "before_training")
                else "setup()"
            )
            self.record(
                "setup",
                "passed",
                f"{stages} done; {method.extra_parameters()} trainable parameters of its own",
                elapsed(),
            )

        models = (s_info, t_info, teacher)
        # Memory banks, queues and step counters evolve with training; the loss after
        # training is measured against their state before it, so it compares like with like.
        initial_buffers = {n: b.detach().clone() for n, b in method.named_buffers()}
        with self.phase("loss_terms", "train_step raised on the fixed batch before training"):
            before = self.terms_on(student, method, models, "before training")

        with self.phase("loss_terms", "training raised") as elapsed:
            trainable = [p for p in method.trainable_parameters() if p.requires_grad]
            watch = GradientWatch(student, method, trainable, init_trained)
            recorder = TermRecorder(method, watch.parameters())
            shown = training(self.progress, self.outcome.pair_id)
            with watch.watching(), recorder.recording(), shown as bar:
                train_loop(ctx, method, evaluate_val=False, progress=bar)
            names = list(dict.fromkeys(k for step in recorder.steps for k in step))
            self.record(
                "loss_terms",
                "passed",
                f"{len(recorder.steps)} steps; terms {', '.join(names)}: finite 0-dim tensors",
                elapsed(),
            )

        with self.phase("gradients", "checking gradients raised", fatal=False) as elapsed:
            detached = recorder.detached(self.cls.detached_terms)
            self.check_gradients(watch, teacher, len(recorder.steps), elapsed, detached)

        after = None
        with self.phase(
            "loss_decreases", "train_step raised on the fixed batch after training", fatal=False
        ) as elapsed:
            after = self.terms_on(
                student, method, models, "after training", buffers=initial_buffers
            )
            self.check_loss_decreases(before, after, len(recorder.steps), elapsed())

        with self.phase("checkpoint", "the checkpoint round trip raised", fatal=False) as elapsed:
            # Without buffers to restore, the loss after training is the reference already.
            reference = None if initial_buffers else after
            self.check_checkpoint(student, method, trainable, models, reference, elapsed)

    # -- helpers -----------------------------------------------------------------------------

    def terms_on(
        self,
        student: nn.Module,
        method: Method,
        models: tuple[ModelInfo, ModelInfo | None, nn.Module | None],
        when: str,
        buffers: Mapping[str, Tensor] | None = None,
    ) -> dict[str, float]:
        """The terms ``train_step`` returns on the fixed batch, computed on copies of the
        student and the method (internal optimizers, memory banks and BatchNorm statistics of the
        originals stay as they were), with every RNG seeded alike; ``buffers`` replace the
        method's buffers of the same name and shape first."""
        s_info, t_info, teacher = models
        try:
            student, method = copy.deepcopy((student, method))
            restore = None
        except Exception:  # something in the method cannot be copied: restore states instead
            restore = (_state(student), _state(method))
        if buffers:
            with torch.no_grad():
                for name, buffer in method.named_buffers():
                    old = buffers.get(name)
                    if old is not None and old.shape == buffer.shape:
                        buffer.copy_(old)
        student.train()
        method.train()
        try:
            with fixtures.isolated_rng(fixtures.SEED + 2):
                ctx = fixtures.context(student, teacher, s_info, t_info)
                terms = method.train_step(ctx, fixtures.fixed_batch())
                validate_terms(terms, f"on the fixed batch {when}")
                return {k: float(v.detach()) for k, v in terms.items()}
        finally:
            if restore is not None:
                student.load_state_dict(restore[0])
                method.load_state_dict(restore[1])

    # -- the checks --------------------------------------------------------------------------

    def check_supports(self, answer: Any, seconds: float) -> None:
        valid = (
            isinstance(answer, tuple)
            and len(answer) == 2
            and isinstance(answer[0], bool)
            and isinstance(answer[1], str)
        )
        if not valid:
            raise CheckFailed(
                "supports",
                f"supports() returned {answer!r}; it must return (True, '') or "
                "(False, 'the reason, shown on leaderboards')",
            )
        ok, reason = answer
        if ok:
            self.record("supports", "passed", "supported", seconds)
            return
        self.outcome.refusal = reason.strip() or "(no reason given)"
        if not reason.strip():
            raise CheckFailed(
                "supports",
                f"refused {self.pair.student}<-{self.pair.teacher} without a reason; return "
                "(False, 'why'): the reason is shown on leaderboards",
            )
        self.record("supports", "passed", f"refused with a reason: {reason}", seconds)
        raise _Stop

    def check_gradients(
        self,
        watch: GradientWatch,
        teacher: nn.Module | None,
        steps: int,
        elapsed: Callable[[], float],
        detached: Sequence[str] = (),
    ) -> None:
        problems = []
        if detached:
            many = len(detached) > 1
            problems.append(
                f"term{'s' if many else ''} {', '.join(repr(n) for n in detached)} "
                f"{'are' if many else 'is'} detached: in none of {steps} steps did autograd "
                "find a path from the term alone to a parameter of the student or the method "
                "(other terms' gradients do not count); compute it from the outputs without "
                ".detach() or torch.no_grad(), or name it in the method's detached_terms if it "
                "is only reported"
            )
        reached = [n for n, p in watch.student if id(p) in watch.nonzero]
        if not reached:
            problems.append(
                f"no non-zero gradient reached any student parameter in {steps} steps; "
                "compute the loss from the student's outputs without detaching them"
            )
        # A part trained only by the init stage (an AB connector, a FitNets regressor) took
        # part; one that neither changed there nor got a gradient since is dead weight.
        init_only = [
            n for n, p in watch.trainable if id(p) not in watch.got and id(p) in watch.init_trained
        ]
        missing = [
            n
            for n, p in watch.trainable
            if id(p) not in watch.got and id(p) not in watch.init_trained
        ]
        if missing:
            problems.append(
                f"trainable_parameters() holds parameters that got no gradient in any of "
                f"{steps} steps and were not trained by before_training(): {_short(missing)}; "
                "use them in the loss, build only the parts you use, or leave parts you step "
                "yourself out of trainable_parameters()"
            )
        stale = watch.never_updated()
        if stale:
            problems.append(
                f"parameters outside trainable_parameters() get gradients but nothing updates "
                f"them: {_short(stale)}; return them from trainable_parameters() or step them "
                "with the method's own optimizer"
            )
        if teacher is not None and self.cls.mode != "online":
            touched = [
                n for n, p in teacher.named_parameters() if p.requires_grad or p.grad is not None
            ]
            if touched:
                problems.append(
                    f"the frozen teacher's parameters require or hold gradients: "
                    f"{_short(touched)}; use ctx.forward_teacher and never call "
                    "requires_grad_(True) on the teacher"
                )
        if problems:
            raise CheckFailed("gradients", "; ".join(problems))
        init_note = (
            f", {len(init_only)} of them trained by before_training() only" if init_only else ""
        )
        own = f"; method: {len(watch.trainable)} trainable tensors took part{init_note}"
        self_stepped = (
            f"; {len(watch.own)} tensors stepped by the method itself" if watch.own else ""
        )
        teacher_note = "; teacher: none" if teacher is not None else ""
        self.record(
            "gradients",
            "passed",
            f"student: {len(reached)}/{len(watch.student)} tensors got non-zero gradients"
            f"{own if watch.trainable else ''}{self_stepped}{teacher_note}",
            elapsed(),
        )

    def check_loss_decreases(
        self, before: dict[str, float], after: dict[str, float], steps: int, seconds: float
    ) -> None:
        start, end = sum(before.values()), sum(after.values())
        if start:
            change = (end - start) / abs(start)
        else:
            change = 0.0 if end == start else math.copysign(math.inf, end - start)
        summary = (
            f"loss on a fixed batch {start:.4g} → {end:.4g} ({change:+.1%}) after {steps} steps "
            f"[{_format_terms(before)} → {_format_terms(after)}]"
        )
        if not change <= -MIN_RELATIVE_DROP:
            raise CheckFailed(
                "loss_decreases",
                f"{summary}; it must fall by at least {MIN_RELATIVE_DROP:.0%}: check the sign "
                "of each term and that the terms' gradients reach the student",
            )
        self.record("loss_decreases", "passed", summary, seconds)

    def check_checkpoint(
        self,
        student: nn.Module,
        method: Method,
        trainable: list[nn.Parameter],
        models: tuple[ModelInfo, ModelInfo | None, nn.Module | None],
        reference: dict[str, float] | None,
        elapsed: Callable[[], float],
    ) -> None:
        registered = {id(p) for p in method.parameters()}
        unregistered = sum(id(p) not in registered for p in trainable)
        if unregistered:
            raise CheckFailed(
                "checkpoint",
                f"{unregistered} tensors from trainable_parameters() are not registered "
                "parameters of the method, so checkpoints miss them; assign modules as "
                "attributes (nn.ModuleList/nn.ParameterList for collections)",
            )
        if reference is None:
            reference = self.terms_on(student, method, models, "before saving")
        buffer = io.BytesIO()
        torch.save(method.state_dict(), buffer)
        buffer.seek(0)
        try:
            state = torch.load(buffer, weights_only=True)
        except Exception as exc:
            raise CheckFailed(
                "checkpoint",
                f"torch.load(weights_only=True) refuses the method's state_dict: {describe(exc)}; "
                "keep only tensors and plain containers of numbers and strings in it "
                "(and in get_extra_state())",
            ) from exc
        restored, how = self.rebuild(state, student, models)
        again = self.terms_on(student, restored, models, "after reloading")
        if list(again) != list(reference):
            raise CheckFailed(
                "checkpoint",
                f"after reloading ({how}) train_step returns terms {list(again)}, before "
                f"saving {list(reference)}",
            )
        differ = [
            f"{k} {reference[k]:.6g} vs {again[k]:.6g}"
            for k in reference
            if not math.isclose(
                reference[k], again[k], rel_tol=ROUND_TRIP_RTOL, abs_tol=ROUND_TRIP_ATOL
            )
        ]
        if differ:
            raise CheckFailed(
                "checkpoint",
                f"after reloading ({how}) train_step gives other terms on the same batch: "
                f"{', '.join(differ)}; state that affects the loss is missing from "
                "state_dict(): register tensors as persistent buffers, and keep internal "
                "optimizers and Python-side state in get_extra_state()/set_extra_state()",
            )
        self.record(
            "checkpoint",
            "passed",
            f"{len(state)} state entries; {how} loads them strictly and gives the same terms",
            elapsed(),
        )

    def rebuild(
        self,
        state: dict[str, Any],
        student: nn.Module,
        models: tuple[ModelInfo, ModelInfo | None, nn.Module | None],
    ) -> tuple[Method, str]:
        """A fresh method that loads ``state`` strictly: after ``setup()`` alone if it can,
        else after ``setup()`` and ``before_training()`` (whose modules a resumed trial
        rebuilds by running the init stage again, on a scratch copy of the student)."""
        s_info, t_info, teacher = models
        task = fixtures.task()
        fresh = self.cls(self.params)
        fresh.setup(s_info, t_info, task)
        fresh.to(fixtures.DEVICE)
        try:
            fresh.load_state_dict(state, strict=True)
            return fresh, "fresh method + setup()"
        except RuntimeError as exc:
            first = " ".join(str(exc).split())
            if not _overrides(self.cls, "before_training"):
                raise CheckFailed(
                    "checkpoint",
                    f"a fresh method after setup() cannot load the saved state strictly: "
                    f"{first}; build every submodule and buffer in setup()",
                ) from exc
        fresh = self.cls(self.params)
        fresh.setup(s_info, t_info, task)
        fresh.to(fixtures.DEVICE)
        scratch = copy.deepcopy(student)
        with fixtures.isolated_rng():
            fresh.before_training(fixtures.context(scratch, teacher, s_info, t_info))
        try:
            fresh.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            second = " ".join(str(exc).split())
            raise CheckFailed(
                "checkpoint",
                f"a fresh method cannot load the saved state strictly, neither after setup() "
                f"({first}) nor after setup() + before_training() ({second}); build every "
                "submodule and buffer in setup() or before_training()",
            ) from exc
        return fresh, "fresh method + setup() + before_training()"

    def check_frozen_teacher(self) -> None:
        teacher, before = self.teacher, self.teacher_before
        assert teacher is not None and before is not None
        start = time.perf_counter()
        after = teacher.state_dict()
        changed = [k for k in before if k not in after or not torch.equal(before[k], after[k])]
        added = [k for k in after if k not in before]
        training = [n or "(root)" for n, m in teacher.named_modules() if m.training]
        problems = []
        if changed or added:
            stats = [k for k in changed if "running_" in k or "num_batches_tracked" in k]
            hint = (
                "BatchNorm statistics change when the teacher runs in train mode: use "
                "ctx.forward_teacher, which runs it frozen, and never call teacher.train()"
                if stats
                else "a frozen teacher's weights must never change"
            )
            problems.append(
                f"{len(changed) + len(added)} of {len(before)} teacher state tensors changed "
                f"during training: {_short(changed + added)}; {hint}"
            )
        if training:
            problems.append(
                f"the teacher was left in train mode ({_short(training)}); a frozen teacher "
                "stays in eval mode"
            )
        status: Status = "failed" if problems else "passed"
        message = (
            "; ".join(problems)
            if problems
            else f"all {len(before)} teacher state tensors bit-identical; eval mode"
        )
        self.record("frozen_teacher", status, message, time.perf_counter() - start)
