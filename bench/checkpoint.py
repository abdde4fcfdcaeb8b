"""Checkpoint files read safely, in the forms other code bases save them, with one clear
message when one cannot be used.

Every file is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, so a pickled payload never runs. The weights may be the file's top level (a state dict
as ``torch.save(model.state_dict(), path)`` writes it) or wrapped as training scripts save
them: under a ``state_dict``, ``model_state_dict``, ``model``, ``net`` or ``student`` key
beside others (``{'model': state_dict, 'epoch': k}``), and with the ``module.`` prefix that
``DataParallel`` adds to every name. A file that cannot be used raises
:class:`CheckpointError`: which file, what is wrong with it, and what to do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.config import ConfigError

__all__ = [
    "WRAPPER_KEYS",
    "CheckpointError",
    "fit_problem",
    "load_weights",
    "read_checkpoint",
    "read_state_dict",
    "unwrap",
]

#: Keys under which training scripts keep the weights, in the order they are looked for.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "student")
_PREFIX = "module."
_SAVE_HINT = "save the weights with torch.save(model.state_dict(), path)"
_SHOWN = 3  # names shown per kind of mismatch


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be used.

    Attributes:
        path: The file.
        problem: What is wrong with it (without the file's name or the fix), for callers that
            repair their own files and report in their own words.
    """

    def __init__(self, what: str, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"{what} {path}: {problem} — {fix}")
        self.path = path
        self.problem = problem


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """The object saved in ``path``, loaded on the CPU with ``weights_only=True``.

    Args:
        path: The file.
        what: What the file is to the user (``teacher checkpoint``), for the message.

    Raises:
        CheckpointError: The file is missing, empty, unreadable, damaged, of another format,
            or holds Python objects that only a full unpickling could rebuild.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(what, path, "no such file", "check the path")
    if not path.is_file():
        raise CheckpointError(what, path, "not a file", "give the checkpoint file itself")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise CheckpointError(
            what, path, f"cannot be read ({exc.strerror})", "check its permissions"
        ) from None
    if not head:
        raise CheckpointError(
            what, path, "the file is empty (0 bytes)", f"the save did not finish; {_SAVE_HINT}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports bad files with many types (pickle, zip, EOF)
        raise _load_error(what, path, head, exc) from None


def _load_error(what: str, path: Path, head: bytes, exc: Exception) -> CheckpointError:
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return CheckpointError(
            what,
            path,
            f"it holds a pickled Python object ({found.group(1)}), which kdbench does not "
            "load since unpickling it could run any code",
            _SAVE_HINT,
        )
    # torch.save writes a zip archive (older versions a pickle): a file that starts like
    # one but does not load was cut short or damaged.
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return CheckpointError(
            what,
            path,
            f"the file is damaged or truncated ({_first_sentence(exc)})",
            f"copy or save it again; {_SAVE_HINT}",
        )
    return CheckpointError(
        what,
        path,
        f"not a PyTorch checkpoint (it starts with {head!r}; torch.save writes a zip archive)",
        _SAVE_HINT,
    )


def _first_sentence(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or "the file ends early"
    sentence = text.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {sentence[:160]}"


def read_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The weights in ``path`` as a flat state dict (unwrapped, ``module.`` prefix removed).

    Raises:
        CheckpointError: As :func:`read_checkpoint`, or the file holds no state dict (its
            keys are named), or its weights hold NaN or infinite values.
    """
    import torch

    path = Path(path)
    raw = read_checkpoint(path, what)
    state = unwrap(raw)
    if not isinstance(state, Mapping) or not state:
        kind = "an empty mapping" if isinstance(state, Mapping) else f"a {type(state).__name__}"
        raise CheckpointError(what, path, f"it holds no weights ({kind})", _SAVE_HINT)
    others = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointError(
            what,
            path,
            f"it holds no state dict: {_names(others)} are not tensors (top-level keys: "
            f"{_names([str(k) for k in raw]) if isinstance(raw, Mapping) else '-'}; weights "
            f"are looked for under {', '.join(WRAPPER_KEYS)})",
            _SAVE_HINT,
        )
    broken = [
        str(k)
        for k, v in state.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if broken:
        raise CheckpointError(
            what,
            path,
            f"{len(broken)} tensor(s) hold NaN or infinite values ({_names(broken)}); the "
            "training that saved it diverged",
            "use a checkpoint from before it diverged",
        )
    return {_strip(str(k), state): v for k, v in state.items()}


def unwrap(raw: Any) -> Any:
    """The state dict inside a training script's checkpoint (``raw`` itself when it is one)."""
    import torch

    while isinstance(raw, Mapping) and not all(isinstance(v, torch.Tensor) for v in raw.values()):
        inner = next(
            (raw[k] for k in WRAPPER_KEYS if k in raw and isinstance(raw[k], Mapping)), None
        )
        if inner is None:
            break
        raw = inner
    return raw


def _strip(name: str, state: Mapping[Any, Any]) -> str:
    if all(str(k).startswith(_PREFIX) for k in state):
        return name[len(_PREFIX) :]
    return name


def fit_problem(model: Any, state: Mapping[str, Any]) -> str | None:
    """Why ``state`` cannot load into ``model`` strictly (missing, unknown and reshaped
    tensors, a few of each named), or None when it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unknown or reshaped):
        return None
    parts = [
        f"{len(found)} {kind} ({_names(found)})"
        for found, kind in (
            (missing, "of its tensors are missing"),
            (unknown, "tensor(s) are unknown to it"),
            (reshaped, "tensor(s) have another shape"),
        )
        if found
    ]
    return f"it does not fit {type(model).__name__}: " + "; ".join(parts)


def load_weights(model: Any, path: str | Path, what: str = "checkpoint", fix: str = "") -> None:
    """Load the weights in ``path`` into ``model`` (strictly: every tensor, same shapes).

    Args:
        model: The module.
        path: The checkpoint file.
        what: What the file is to the user, for the message.
        fix: What to do when it does not fit (default: give one of the same architecture).

    Raises:
        CheckpointError: As :func:`read_state_dict`, or the weights do not fit ``model``.
    """
    path = Path(path)
    state = read_state_dict(path, what)
    problem = fit_problem(model, state)
    if problem is not None:
        raise CheckpointError(
            what,
            path,
            problem,
            fix or "give a checkpoint of the same architecture and number of classes",
        )
    model.load_state_dict(state)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", … {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
