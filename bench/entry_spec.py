"""Naming one leaderboard entry: a method, optionally its version and some of its params.

A leaderboard compares every method with two entries, the baseline (the student alone) and the
reference (vanilla KD). A suite names them under ``leaderboard:`` (and ``kdbench leaderboard``
with ``--baseline``/``--reference``), as text or as a mapping::

    leaderboard:
      baseline: ce                              # ce at its current version, default params
      reference: kd@1[temperature=4.0]          # version 1, temperature 4.0, other params
                                                # at their defaults
    leaderboard:
      reference: {method: kd, version: 1, params: {temperature: 4.0}}

In the text form a value is read as YAML reads a scalar (``4.0`` a float, ``true`` a bool,
``code`` a string). Params left out are at the method's defaults: ``kd`` alone names the entry
of kd at its current version with every param at its default, never "whichever kd ran".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

#: Keys of the mapping form.
SPEC_KEYS = ("method", "version", "params")

_TEXT = re.compile(
    r"^(?P<method>[A-Za-z0-9_.-]+)(?:@(?P<version>[^\[\]]*))?(?:\[(?P<params>.*)\])?$"
)


class EntrySpecError(ValueError):
    """A malformed entry name; the message says what is wrong and shows the form."""


@dataclass(frozen=True)
class EntrySpec:
    """One entry of a leaderboard, as a suite or the command line names it.

    Attributes:
        method: Registered method name.
        version: The method version, or None for the version the suite runs now.
        params: The params named, sorted by name; the others are at the method's defaults.
    """

    method: str
    version: int | None = None
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """The text form, e.g. ``kd@1[temperature=4.0]`` (parses back to the same spec)."""
        out = self.method if self.version is None else f"{self.method}@{self.version}"
        if self.params:
            out += "[" + ", ".join(f"{k}={value_text(v)}" for k, v in self.params) + "]"
        return out


def value_text(value: Any) -> str:
    """A param value as the text form writes it (and YAML reads it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def parse_entry_spec(value: Any) -> EntrySpec:
    """An entry from its text form (``kd@1[temperature=4.0]``) or its mapping form
    (``{method: kd, version: 1, params: {temperature: 4.0}}``).

    Raises:
        EntrySpecError: A malformed name, version or param list.
    """
    if isinstance(value, str):
        return _from_text(value)
    if isinstance(value, Mapping):
        return _from_mapping(value)
    raise EntrySpecError(
        f"expected a method name such as 'kd', 'kd@1[temperature=4.0]' or a mapping "
        f"{{method: kd, params: {{temperature: 4.0}}}}; got {value!r}"
    )


def _from_text(text: str) -> EntrySpec:
    match = _TEXT.match(text.strip())
    if match is None:
        raise EntrySpecError(
            f"{text!r} is not an entry name; write METHOD, METHOD@VERSION or "
            "METHOD@VERSION[NAME=VALUE, ...], e.g. kd@1[temperature=4.0]"
        )
    version = _version(match.group("version")) if match.group("version") is not None else None
    params = _param_list(match.group("params")) if match.group("params") is not None else {}
    return EntrySpec(match.group("method"), version, _frozen(params))


def _from_mapping(value: Mapping[str, Any]) -> EntrySpec:
    unknown = [str(k) for k in value if k not in SPEC_KEYS]
    if unknown:
        raise EntrySpecError(
            f"unknown key {unknown[0]!r} of an entry; the keys are {', '.join(SPEC_KEYS)}"
        )
    method = value.get("method")
    if not isinstance(method, str) or not method:
        raise EntrySpecError(f"method: expected a method name; got {method!r}")
    version = value.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise EntrySpecError(f"version: expected a whole number ≥ 1; got {version!r}")
    if version is not None and version < 1:
        raise EntrySpecError(f"version: expected a whole number ≥ 1; got {version}")
    params = value.get("params", {})
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise EntrySpecError(f"params: expected a mapping of param names; got {params!r}")
    return EntrySpec(method, version, _frozen(params))


def _frozen(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Params sorted by name, lists as tuples (so that a spec is hashable)."""

    def freeze(value: Any) -> Any:
        return tuple(freeze(v) for v in value) if isinstance(value, list | tuple) else value

    return tuple(sorted((k, freeze(v)) for k, v in params.items()))


def _version(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise EntrySpecError(f"version {text!r} is not a whole number ≥ 1 (as in kd@1)")
    return int(text)


def _param_list(text: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in _split_top_level(text):
        name, equals, raw = item.partition("=")
        name = name.strip()
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise EntrySpecError(
                f"{item.strip()!r} is not NAME=VALUE; write the params as "
                "[temperature=4.0, alpha=0.9]"
            )
        if name in params:
            raise EntrySpecError(f"param {name!r} is given twice")
        try:
            params[name] = yaml.safe_load(raw.strip()) if raw.strip() else ""
        except yaml.YAMLError:
            raise EntrySpecError(f"param {name!r}: cannot read the value {raw.strip()!r}") from None
    return params


def _split_top_level(text: str) -> list[str]:
    """``a=1, b=[1, 2]`` → ``["a=1", " b=[1, 2]"]``: commas inside brackets stay."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def same_settings(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two resolved param mappings are the same setting (``4`` equals ``4.0``; lists
    equal tuples; NaN equals NaN)."""
    return normalized(a) == normalized(b)


def normalized(value: Any) -> Any:
    """A param value (or mapping of them) compared by meaning: sequences as tuples, numbers
    as floats (bools stay bools), NaN as a marker that equals itself."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), normalized(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(normalized(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return "nan" if math.isnan(value) else float(value)
    return str(value)
