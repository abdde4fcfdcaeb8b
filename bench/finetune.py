"""Transfer learning for students: start from a pretrained state dict, train only some parts.

Two options of a trial drive it (see :mod:`bench.suite` for the suite keys):

* ``TrialConfig.student_checkpoint``: a state dict (loaded with ``weights_only=True``, in any
  of the forms :mod:`bench.checkpoint` reads) the student starts from. Tensors whose name
  and shape match the student's are copied; the others (a classifier for another number of
  classes) keep their fresh initialisation, which must be the classifier only: anything else
  missing or mismatched is an error, since it means the checkpoint belongs to another
  architecture.
* ``Recipe.trainable``: the parts that train; everything else is frozen. ``head`` names the
  classifier (``model.get_classifier()``), any other entry is a parameter name prefix. Frozen
  parameters get no gradient (so neither the optimizer's update nor its weight decay touches
  them), and BatchNorm layers whose parameters are all frozen keep their running statistics:
  they normalise with them in training too, as a frozen feature extractor should.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from bench.checkpoint import CheckpointError, read_state_dict
from bench.config import ConfigError, TrialConfig

HEAD = "head"
WHAT = "student_checkpoint"


def prepare_student(student: nn.Module, config: TrialConfig) -> nn.Module:
    """Apply a trial's ``student_checkpoint`` and ``recipe.trainable`` to a fresh student.

    Returns:
        The same module, loaded and partly frozen as the config says (untouched when the
        config asks for neither).

    Raises:
        CheckpointError: The checkpoint is missing, unreadable or does not fit the student.
        ConfigError: A ``trainable`` entry matches no parameter.
    """
    if config.student_checkpoint is not None:
        load_pretrained(student, config.student_checkpoint)
    if config.recipe.trainable:
        freeze_all_but(student, config.recipe.trainable)
    return student


def classifier_prefixes(model: nn.Module) -> list[str]:
    """Module names of the model's classifier (``get_classifier()``), e.g. ``["fc"]``."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module):
        return []
    return [name for name, module in model.named_modules() if module is head and name]


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the tensors of a pretrained state dict that fit ``model`` into it.

    Returns:
        Names of the model's tensors left at their initialisation (classifier tensors whose
        shape differs, e.g. 1000 pretrained classes against 2 here).

    Raises:
        CheckpointError: The file is missing or cannot be read as a checkpoint (see
            :mod:`bench.checkpoint` for the forms read), or a tensor outside the classifier
            is missing or has another shape.
    """
    path = Path(path)
    state = read_state_dict(path, WHAT)
    own = model.state_dict()
    heads = tuple(f"{p}." for p in classifier_prefixes(model))
    fresh: list[str] = []
    wrong: list[str] = []
    for name, tensor in own.items():
        source = state.get(name)
        if source is not None and source.shape == tensor.shape:
            continue
        (fresh if name.startswith(heads) and heads else wrong).append(name)
    unused = [n for n in state if n not in own]
    if wrong or unused:
        shown = ", ".join((wrong + unused)[:5])
        raise CheckpointError(
            WHAT,
            path,
            f"it does not fit {type(model).__name__}: {len(wrong)} tensor(s) outside the "
            f"classifier are missing or have another shape and {len(unused)} are unknown to "
            f"the model (first: {shown})",
            "give a checkpoint of the same architecture (only the classifier may differ)",
        )
    model.load_state_dict({n: t for n, t in state.items() if n not in fresh}, strict=False)
    return fresh


def freeze_all_but(model: nn.Module, trainable: Sequence[str]) -> list[str]:
    """Freeze every parameter of ``model`` except those under ``trainable``.

    Args:
        model: The student.
        trainable: ``head`` (the classifier) and/or parameter name prefixes.

    Returns:
        Names of the parameters that still train.

    Raises:
        ConfigError: An entry matches no parameter (the message lists the model's top-level
            parts).
    """
    prefixes: list[str] = []
    for entry in trainable:
        if entry == HEAD:
            heads = classifier_prefixes(model)
            if not heads:
                raise ConfigError(
                    f"recipe.trainable: {type(model).__name__} names no classifier "
                    "(get_classifier); list its parameter name prefixes instead of 'head'"
                )
            prefixes += heads
        else:
            prefixes.append(entry)
    names = [n for n, _ in model.named_parameters()]
    for entry in trainable:
        if entry != HEAD and not any(_under(n, entry) for n in names):
            parts = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"recipe.trainable: {entry!r} matches no parameter of "
                f"{type(model).__name__}; its parts are {', '.join(parts)} (or 'head')"
            )
    kept = []
    for name, param in model.named_parameters():
        train = any(_under(name, p) for p in prefixes)
        param.requires_grad_(train)
        if train:
            kept.append(name)
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in own
        ):
            module.register_forward_pre_hook(_normalise_with_running_stats)
    return kept


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip(".") + ".")


def _normalise_with_running_stats(module: nn.Module, args: tuple) -> None:
    # A frozen BatchNorm behaves as in evaluation whatever mode the student is in: its
    # running statistics neither change nor give way to batch statistics.
    module.training = False
