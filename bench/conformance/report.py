"""The outcome of a conformance run: one :class:`CheckResult` per check and pair, gathered in a
:class:`ConformanceReport` that prints as a table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["passed", "failed", "skipped"]

#: The checks, in the order a pair runs them.
CHECKS = (
    "load",  # the method's module imports and the name resolves
    "supports",  # refusals carry a reason; at least one tiny pair is supported
    "setup",  # setup() and before_training() complete
    "loss_terms",  # every term of every step is a named, finite 0-dim tensor
    "gradients",  # gradients reach the student and the method's parts, never the teacher
    "frozen_teacher",  # the teacher's weights and BatchNorm statistics are bit-identical
    "checkpoint",  # state_dict → torch.save → torch.load(weights_only) → same loss terms
    "loss_decreases",  # a few steps on real data lower the loss on a fixed batch
)


@dataclass(frozen=True)
class CheckResult:
    """One check of one method on one pair.

    Attributes:
        name: The check, one of :data:`CHECKS`.
        pair_id: ``<method>-<student><-<teacher>``; ``<method>-*`` for method-wide checks.
        status: ``passed``, ``failed``, or ``skipped`` (not applicable, or an earlier check
            of the pair failed).
        message: What was found; for a failure, what is wrong and how to fix it.
        seconds: Wall time of the work this check needed (the training run counts under
            ``loss_terms``, whose terms it produces).
    """

    name: str
    pair_id: str
    status: Status
    message: str
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def method(self) -> str:
        return self.pair_id.split("-", 1)[0]


@dataclass
class ConformanceReport:
    """All check results of a conformance run over one or more methods.

    Attributes:
        methods: The methods checked, in order.
        results: Every check result, grouped by method and pair in run order.
        seconds: Wall time of the whole run.
    """

    methods: tuple[str, ...] = ()
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True when no check failed and at least one check ran."""
        return bool(self.results) and not any(r.failed for r in self.results)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.failed]

    def for_pair(self, pair_id: str) -> list[CheckResult]:
        return [r for r in self.results if r.pair_id == pair_id]

    def get(self, name: str, pair_id: str) -> CheckResult:
        """The result of check ``name`` on ``pair_id``.

        Raises:
            KeyError: no such result (the pair id or the check name is wrong).
        """
        for r in self.results:
            if r.name == name and r.pair_id == pair_id:
                return r
        pairs = sorted({r.pair_id for r in self.results})
        raise KeyError(f"no result for check {name!r} on {pair_id!r}; pairs: {', '.join(pairs)}")

    def format(self, verbose: bool = False) -> str:
        """A table for the terminal: every check when ``verbose``, else the failures and a
        one-line summary per pair; ends with the verdict."""
        lines: list[str] = []
        pair_ids = list(dict.fromkeys(r.pair_id for r in self.results))
        width = max((len(p) for p in pair_ids), default=0)
        for pair_id in pair_ids:
            results = self.for_pair(pair_id)
            shown = results if verbose else [r for r in results if r.failed]
            if not verbose and not shown:
                passed = sum(r.passed for r in results)
                skipped = [r for r in results if r.status == "skipped"]
                reasons = "; ".join(dict.fromkeys(r.message for r in skipped))
                note = f", {len(skipped)} skipped ({reasons})" if skipped else ""
                seconds = sum(r.seconds for r in results)
                lines.append(f"ok    {pair_id:<{width}}  {passed} passed{note} ({seconds:.1f}s)")
                continue
            for r in shown:
                tag = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}[r.status]
                lines.append(
                    f"{tag:<5} {pair_id:<{width}}  {r.name:<14} {r.seconds:5.2f}s  {r.message}"
                )
        failed = self.failures()
        verdict = "PASSED" if self.passed else "FAILED"
        methods = ", ".join(self.methods) or "(none)"
        lines.append(
            f"{verdict}: {methods}: {len(self.results) - len(failed)} of {len(self.results)} "
            f"checks passed or skipped, {len(failed)} failed ({self.seconds:.1f}s)"
        )
        return "\n".join(lines)
