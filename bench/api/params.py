"""Typed method hyperparameters: one type system for the command line, suites and plugins.

A method's ``Params`` is a frozen dataclass whose annotated fields carry the paper's defaults
and, for numbers, their valid range (``Annotated[float, Range(gt=0)]``, see
:mod:`bench.ranges`). :func:`coerce_value` converts a raw value (a YAML scalar or a
command-line string) to a field's type and checks it against the field's range; every entry
point (``--param``, suite ``params:``/``search:``, ``search_space``) goes through it, so a
value is accepted or refused the same way everywhere and a wrong one gets the same message.
Suites use its strict mode: YAML has already typed their values, so a string is never read as
a number there. A float without a declared range must still be finite.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from bench.ranges import Range, range_in, value_problem


class ParamError(ValueError):
    """A method hyperparameter that does not exist, has the wrong type or lies outside its
    range.

    Attributes:
        where: What the value is (``kd.params.temperature``), or None.
        reason: What is wrong with it, without ``where`` (a suite reports it under the
            value's key path and line instead).
    """

    def __init__(self, reason: str, *, where: str | None = None) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}" if where else reason)


class Params:
    """Base of a method's hyperparameters. Subclasses are made frozen dataclasses.

    Declare fields with a type, the valid range of a number and the paper's default::

        class Params(Method.Params):
            temperature: Annotated[float, Range(gt=0)] = 4.0
            alpha: Annotated[float, Range(ge=0, le=1)] = 0.9

    An instance holds values in range only: building one with a value outside its field's
    range raises :class:`ParamError`.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True)(cls)

    def __post_init__(self) -> None:
        for name, tp in self.fields().items():
            problem = value_problem(getattr(self, name), declared_range(tp))
            if problem is not None:
                raise ParamError(problem, where=f"{type(self).__qualname__}.{name}")

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """Field name → resolved type, with its ``Annotated`` range where it has one."""
        if cls not in _FIELDS:
            hints = typing.get_type_hints(cls, include_extras=True)
            fields = dataclasses.fields(cls)  # type: ignore[arg-type]
            _FIELDS[cls] = {f.name: hints[f.name] for f in fields}
        return dict(_FIELDS[cls])

    @classmethod
    def ranges(cls) -> dict[str, Range | None]:
        """Field name → its declared :class:`~bench.ranges.Range` (None where it has none)."""
        return {name: declared_range(tp) for name, tp in cls.fields().items()}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "params") -> Params:
        """Build from a mapping of raw values (strings from the command line are parsed).

        Raises:
            ParamError: an unknown name (with suggestions) or a value of the wrong type.
        """
        known = cls.fields()
        coerced = {}
        for key, raw in values.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ParamError(
                    f"unknown parameter {key!r} for {cls.__qualname__.split('.')[0]}."
                    f"{hint} Parameters: {', '.join(known) or '(none)'}.",
                    where=where,
                )
            coerced[key] = coerce_value(raw, known[key], where=f"{where}.{key}")
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


# Resolved once per class: every instance checks its values against them.
_FIELDS: dict[type, dict[str, Any]] = {}

# A method without hyperparameters uses the base class itself, so it is a dataclass too.
dataclasses.dataclass(frozen=True)(Params)


def coerce_value(raw: Any, tp: Any, *, where: str, strict: bool = False) -> Any:
    """Convert ``raw`` to the annotated type ``tp`` (bool, int, float, str, Literal, tuples,
    optionals) and check it against the range ``tp`` declares (floats without one must be
    finite).

    Args:
        raw: The value as given.
        tp: The field's annotation.
        where: What the value is, for the message (``kd.params.temperature``).
        strict: Take ``raw`` as YAML types it: a string is never parsed into a number, a
            boolean or null, and a float is no integer. A suite file's scalars are already
            typed, so a quoted ``'4'`` there is a mistake; a command line gives only strings,
            which the default mode parses.

    Returns:
        The value as the field holds it: floats for ``float`` fields (an integer is widened),
        tuples for sequences.

    Raises:
        ParamError: naming ``where``, the expected type (or range) and what was given; its
            ``reason`` is the same whatever the entry point.
    """
    try:
        value = _convert(raw, tp, strict)
    except _Mismatch:
        reason = f"expected {type_text(tp)}, got {raw!r} ({kind_text(raw)})"
        raise ParamError(reason, where=where) from None
    problem = value_problem(value, declared_range(tp))
    if problem is not None:
        raise ParamError(problem, where=where)
    return value


def declared_range(tp: Any) -> Range | None:
    """The :class:`~bench.ranges.Range` an annotation declares for its numbers: its own
    (``Annotated[float, Range(gt=0)]``), an optional's (``Annotated[int, Range(ge=1)] | None``)
    or a sequence's items'; None when it declares none."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return range_in(args[1:]) or declared_range(args[0])
    if origin in (typing.Union, types.UnionType, tuple, list, Sequence):
        return next((r for a in args if (r := declared_range(a)) is not None), None)
    return None


def type_text(tp: Any) -> str:
    """An annotation in words, as messages name it: ``a number``, ``an integer or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list, Sequence):
        return f"a list of {type_text(args[0]) if args else 'values'}"
    if tp is type(None):
        return "null"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def kind_text(value: Any) -> str:
    """What kind of value was given, in words: ``a string``, ``a mapping``, ``null``."""
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


class _Mismatch(Exception):
    """``raw`` does not fit the annotation (reported once, for the whole value)."""


_TRUE_TEXT = {"true", "1", "yes"}
_FALSE_TEXT = {"false", "0", "no"}
_NULL_TEXT = {"none", "null"}


def _convert(raw: Any, tp: Any, strict: bool) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return raw
    if origin is typing.Annotated:
        return _convert(raw, args[0], strict)
    if tp is None or tp is type(None):
        return _convert_none(raw, strict)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(raw, args, strict)
    if origin is typing.Literal:
        return _convert_literal(raw, args, strict)
    if origin in (tuple, list, Sequence):
        return _convert_sequence(raw, args[0] if args else Any, strict)
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        return scalar(raw, strict)
    if strict and isinstance(tp, type) and not isinstance(raw, tp):
        raise _Mismatch
    return raw


def _convert_none(raw: Any, strict: bool) -> None:
    if raw is None or (not strict and isinstance(raw, str) and raw.lower() in _NULL_TEXT):
        return None
    raise _Mismatch


def _convert_union(raw: Any, args: tuple[Any, ...], strict: bool) -> Any:
    # null first, so that an optional string reads "none" on a command line as no value.
    ordered = sorted(args, key=lambda a: a is not type(None))
    for arg in ordered:
        try:
            return _convert(raw, arg, strict)
        except _Mismatch:
            continue
    raise _Mismatch


def _convert_literal(raw: Any, options: tuple[Any, ...], strict: bool) -> Any:
    for option in options:
        if strict:
            # 1 == True in Python; YAML tells them apart, so the suite does too.
            if raw == option and type(raw) is type(option):
                return option
        elif raw == option or (isinstance(raw, str) and str(option) == raw):
            return option
    raise _Mismatch


def _convert_sequence(raw: Any, inner: Any, strict: bool) -> tuple[Any, ...]:
    items = raw.split(",") if isinstance(raw, str) and not strict else raw
    if not isinstance(items, list | tuple):
        raise _Mismatch
    return tuple(_convert(v, inner, strict) for v in items)


def _convert_bool(raw: Any, strict: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if not strict and isinstance(raw, str) and raw.lower() in _TRUE_TEXT | _FALSE_TEXT:
        return raw.lower() in _TRUE_TEXT
    raise _Mismatch


def _convert_int(raw: Any, strict: bool) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if strict:
        raise _Mismatch
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return _parse(int, raw)


def _convert_float(raw: Any, strict: bool) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if strict:
        raise _Mismatch
    return _parse(float, raw)


def _convert_str(raw: Any, strict: bool) -> str:
    if isinstance(raw, str):
        return raw
    raise _Mismatch


def _parse(number: type, raw: Any) -> Any:
    if not isinstance(raw, str):
        raise _Mismatch
    try:
        return number(raw)
    except ValueError:
        raise _Mismatch from None


_SCALARS = {bool: _convert_bool, int: _convert_int, float: _convert_float, str: _convert_str}
