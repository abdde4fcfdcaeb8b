"""Valid ranges of numbers: a method parameter's, a recipe field's, a seed's.

A :class:`Range` is declared beside a type, as the metadata of :data:`typing.Annotated`::

    temperature: Annotated[float, Range(gt=0)] = 4.0
    alpha: Annotated[float, Range(ge=0, le=1)] = 0.9
    init_epochs: Annotated[int | None, Range(ge=1)] = None

It bounds every number of the value (both ends optional, each open or closed) and refuses NaN
and, unless ``inf=True``, ±infinity: a loss weight of ``nan`` trains to a "diverged" verdict
that says nothing about the method. The range says nothing of the value's type, which the
annotation itself gives; ``None`` is left to the type as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """The numbers a value may take.

    Attributes:
        gt: Exclusive lower bound, or None.
        ge: Inclusive lower bound, or None.
        lt: Exclusive upper bound, or None.
        le: Inclusive upper bound, or None.
        inf: Whether ±infinity is allowed (within the bounds). NaN never is.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    inf: bool = False

    def __post_init__(self) -> None:
        if self.gt is not None and self.ge is not None:
            raise ValueError(f"Range: give gt or ge, not both (gt={self.gt}, ge={self.ge})")
        if self.lt is not None and self.le is not None:
            raise ValueError(f"Range: give lt or le, not both (lt={self.lt}, le={self.le})")
        bounds = [b for b in (self.gt, self.ge, self.lt, self.le) if b is not None]
        if any(isinstance(b, bool) or not isinstance(b, int | float) or b != b for b in bounds):
            raise ValueError(f"Range: bounds must be numbers, got {self}")
        low, high = self._low, self._high
        if low is not None and high is not None:
            closed = self.ge is not None and self.le is not None
            if low > high or (low == high and not closed):
                raise ValueError(f"Range: no number is {self.text()}")

    @property
    def _low(self) -> float | None:
        return self.gt if self.gt is not None else self.ge

    @property
    def _high(self) -> float | None:
        return self.lt if self.lt is not None else self.le

    def text(self) -> str:
        """The range in words: ``> 0``, ``≥ 1``, ``in [0, 1]``, ``in (0, 1]``; ``any number``
        when unbounded."""
        low, high = self._low, self._high
        if low is not None and high is not None:
            left = "(" if self.gt is not None else "["
            right = ")" if self.lt is not None else "]"
            return f"in {left}{_number(low)}, {_number(high)}{right}"
        if low is not None:
            return f"{'>' if self.gt is not None else '≥'} {_number(low)}"
        if high is not None:
            return f"{'<' if self.lt is not None else '≤'} {_number(high)}"
        return "any number"

    def __str__(self) -> str:
        return self.text()

    def contains(self, value: float) -> bool:
        """Whether the number ``value`` lies in the range."""
        return self.problem(value) is None

    def problem(self, value: float) -> str | None:
        """What is wrong with the number ``value``, naming it and the range (``must be > 0,
        got 0.0``); None when it lies in the range."""
        if math.isnan(value):
            return f"must be a number{self._suffix()}, got nan"
        if math.isinf(value) and not self.inf:
            return f"must be a finite number{self._suffix()}, got {value}"
        if not self._within(value):
            return f"must be {self.text()}, got {value!r}"
        return None

    def _suffix(self) -> str:
        return "" if self._low is None and self._high is None else f" {self.text()}"

    def _within(self, value: float) -> bool:
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )


#: What a number without a declared range must be: any finite number.
FINITE = Range()


def range_in(metadata: Iterable[Any]) -> Range | None:
    """The :class:`Range` among an annotation's metadata, or None."""
    return next((m for m in metadata if isinstance(m, Range)), None)


def value_problem(value: Any, declared: Range | None) -> str | None:
    """What is wrong with ``value`` under ``declared``: each of its numbers (a sequence's
    items too) must lie in the range; a float without one must be finite. Booleans, strings
    and None are not numbers here. None when nothing is wrong."""
    if isinstance(value, list | tuple):
        return next((p for v in value if (p := value_problem(v, declared)) is not None), None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if declared is None and isinstance(value, int):
        return None  # an integer is always finite
    return (declared or FINITE).problem(value)


def _number(bound: float) -> str:
    """A bound as people write it: ``0``, ``0.5``, ``1e-05``."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e15 else repr(bound)
