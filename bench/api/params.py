"""Typed method hyperparameters: one type system for the command line, suites and plugins.

A method's ``Params`` is a frozen dataclass whose annotated fields carry the paper's defaults.
:func:`coerce_value` converts a raw value (a YAML scalar or a command-line string) to a field's
type; every entry point (``--param``, suite ``params:``/``search:``, ``search_space``) goes
through it, so a value is accepted or refused the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any


class ParamError(ValueError):
    """A method hyperparameter that does not exist or has the wrong type."""


class Params:
    """Base of a method's hyperparameters. Subclasses are made frozen dataclasses.

    Declare fields with a type and the paper's default::

        class Params(Method.Params):
            temperature: float = 4.0
            alpha: float = 0.9
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True)(cls)

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """Field name → resolved type."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

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
                    f"{where}: unknown parameter {key!r} for {cls.__qualname__.split('.')[0]}."
                    f"{hint} Parameters: {', '.join(known) or '(none)'}."
                )
            coerced[key] = coerce_value(raw, known[key], where=f"{where}.{key}")
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


# A method without hyperparameters uses the base class itself, so it is a dataclass too.
dataclasses.dataclass(frozen=True)(Params)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_value(raw: Any, tp: Any, *, where: str) -> Any:
    """Convert ``raw`` to the annotated type ``tp`` (bool, int, float, str, Literal, tuples,
    optionals), parsing strings as the command line gives them.

    Raises:
        ParamError: naming ``where`` and the expected type.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    expected = _type_name(tp)

    def fail() -> ParamError:
        return ParamError(f"{where}: expected {expected}, got {raw!r} ({type(raw).__name__})")

    if origin in (typing.Union, types.UnionType):
        is_none = raw is None or (isinstance(raw, str) and raw.lower() in {"none", "null"})
        if is_none and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(raw, arg, where=where)
            except ParamError:
                continue
        raise fail()
    if origin is typing.Literal:
        for option in args:
            if raw == option or (isinstance(raw, str) and str(option) == raw):
                return option
        raise ParamError(f"{where}: expected one of {list(args)}, got {raw!r}")
    if origin in (tuple, list, Sequence):
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise fail()
        inner = args[0] if args else str
        return tuple(coerce_value(v, inner, where=where) for v in items)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return raw.lower() in {"true", "1", "yes"}
        raise fail()
    if tp is int:
        if isinstance(raw, bool):
            raise fail()
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is float:
        if isinstance(raw, bool):
            raise fail()
        if isinstance(raw, int | float):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise fail()
    return raw
