"""The method conformance suite: does a distillation method keep the plugin contract?

On tiny teacher/student pairs (same family with another width, across families with another
number of stages; registered test models, CPU, a second or two each) it checks that:

- ``supports`` refusals carry a reason, and at least one tiny pair is supported;
- every loss term of every step is a named, finite 0-dim tensor;
- gradients reach the student and every trainable part of the method (each at least once
  over the run), parts the method steps itself change, and the frozen teacher gets none;
- the frozen teacher's weights and BatchNorm statistics are bit-identical after training;
- the method's state round-trips through ``torch.save``/``torch.load(weights_only=True)``
  into a freshly built method (strict load) that gives the same loss terms on the same batch;
- a few optimisation steps on real data (256 digits) lower the loss on a fixed batch.

Usage::

    from bench.conformance import run_conformance
    report = run_conformance("at")              # or a path: run_conformance("my_method.py")
    print(report.format())
    assert report.passed

``kdbench check-method NAME|PATH.py`` prints the same report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.api import METHODS
from bench.conformance.checks import (
    CheckFailed,
    PairOutcome,
    check_pair,
    refusal,
    validate_terms,
)
from bench.conformance.fixtures import DEFAULT_PAIRS, FALLBACK_PAIRS, Pair
from bench.conformance.report import CHECKS, CheckResult, ConformanceReport
from bench.progress import Reporter
from bench.registry import BrokenEntryError

__all__ = [
    "CHECKS",
    "DEFAULT_PAIRS",
    "FALLBACK_PAIRS",
    "CheckFailed",
    "CheckResult",
    "ConformanceReport",
    "Pair",
    "PairOutcome",
    "check_method",
    "check_pair",
    "methods_in_file",
    "refusal",
    "run_conformance",
    "validate_terms",
]

PairSpec = Pair | str | tuple[str, str]


def run_conformance(
    name_or_path: str,
    *,
    pairs: Iterable[PairSpec] | None = None,
    params: Mapping[str, Any] | None = None,
    verbose: bool = False,
    reporter: Reporter | None = None,
) -> ConformanceReport:
    """Run the conformance suite on a registered method, or on every method a file registers.

    Args:
        name_or_path: A registered method name (kdbench's methods and installed plugins are
            loaded first), or the path of a ``.py`` method file.
        pairs: Tiny pairs to run, as ``Pair``, ``"student<-teacher"`` or ``(student,
            teacher)``; default :data:`DEFAULT_PAIRS`, then :data:`FALLBACK_PAIRS` if the
            method refuses all of them.
        params: Method hyperparameters as raw values (the method's defaults otherwise).
        verbose: Print each result to stderr as it is found.
        reporter: Where the trainings of the run (the tiny teachers, each pair's student)
            show their progress; nothing is shown when None.

    Returns:
        The report; ``report.passed`` is the verdict, ``report.format()`` the table.

    Raises:
        bench.registry.UnknownNameError: no method of that name (suggests close names).
        FileNotFoundError: the path is not a ``.py`` file.
        bench.api.ParamError: ``params`` names an unknown parameter or a wrong type.
    """
    started = time.perf_counter()
    progress = _printer() if verbose else None
    try:
        names = methods_in_file(name_or_path) if _is_path(name_or_path) else [name_or_path]
    except ImportError as exc:
        failed = CheckResult("load", f"{Path(name_or_path).stem}-*", "failed", str(exc))
        if progress:
            progress(failed)
        return ConformanceReport(
            (Path(name_or_path).stem,), [failed], time.perf_counter() - started
        )
    report = ConformanceReport(methods=tuple(names))
    for name in names:
        report.results += check_method(
            name, pairs=pairs, params=params, progress=progress, reporter=reporter
        )
    report.seconds = time.perf_counter() - started
    return report


def check_method(
    name: str,
    *,
    pairs: Iterable[PairSpec] | None = None,
    params: Mapping[str, Any] | None = None,
    progress: Callable[[CheckResult], None] | None = None,
    reporter: Reporter | None = None,
) -> list[CheckResult]:
    """Every check of one registered method over ``pairs`` (see :func:`run_conformance`).

    A method that failed to import gets one failed ``load`` result; a method refused on
    every pair fails the method-wide ``supports`` check (pair id ``<name>-*``).
    """
    from bench.plugins import load_methods

    load_methods()
    wide = f"{name}-*"
    try:
        cls = METHODS.get(name)
    except BrokenEntryError as exc:
        results = [CheckResult("load", wide, "failed", str(exc))]
        _report(results, progress)
        return results
    # No parameters given: the method's own conformance_params over its defaults.
    typed = (
        cls.Params.from_mapping(dict(params), where=f"{name} params")
        if params is not None
        else None
    )
    results = [CheckResult("load", wide, "passed", f"registered at {METHODS.origin(name)}")]
    _report(results, progress)
    outcomes: list[PairOutcome] = []

    def run(chosen: Iterable[PairSpec]) -> None:
        for pair in chosen:
            outcome = check_pair(cls, Pair.parse(pair), typed, reporter)
            outcomes.append(outcome)
            results.extend(outcome.results)
            _report(outcome.results, progress)

    run(DEFAULT_PAIRS if pairs is None else pairs)
    if pairs is None and all(o.refusal is not None for o in outcomes):
        run(FALLBACK_PAIRS)
    if outcomes and all(o.refusal is not None for o in outcomes):
        reasons = "; ".join(f"{o.pair_id}: {o.refusal}" for o in outcomes)
        refused = CheckResult(
            "supports",
            wide,
            "failed",
            f"refused every tiny pair ({reasons}); the suite cannot check a method it cannot "
            "run: support at least one of these pairs (or pass pairs= that it supports)",
        )
        results.append(refused)
        _report([refused], progress)
    return results


def methods_in_file(path: str | Path) -> list[str]:
    """Import a method file (unless it is already imported, e.g. a file of ``methods/``) and
    return the names of the methods it registers.

    Raises:
        FileNotFoundError: ``path`` is not a ``.py`` file.
        ImportError: the file failed to import (the message names the file and the error).
        ValueError: the file registers no method.
    """
    from bench.plugins import load_methods, load_plugin_file

    load_methods()
    path = Path(path).resolve()
    if not path.is_file() or path.suffix != ".py":
        raise FileNotFoundError(f"{path}: not a .py method file")
    module = _module_of_file(path) or load_plugin_file(path)
    names = [n for n, cls in METHODS.items() if cls.__module__ == module]
    if not names:
        raise ValueError(
            f"{path} registers no method: decorate a Method subclass with @register_method('name')"
        )
    return names


def _is_path(text: str) -> bool:
    return text.endswith(".py") or "/" in text or "\\" in text


def _module_of_file(path: Path) -> str | None:
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and file.endswith(path.name) and Path(file).resolve() == path:
            return name
    return None


def _printer() -> Callable[[CheckResult], None]:
    def show(result: CheckResult) -> None:
        tag = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}[result.status]
        print(
            f"{tag:<5} {result.pair_id}  {result.name}  {result.seconds:.2f}s  {result.message}",
            file=sys.stderr,
            flush=True,
        )

    return show


def _report(results: list[CheckResult], progress: Callable[[CheckResult], None] | None) -> None:
    if progress is not None:
        for result in results:
            progress(result)
