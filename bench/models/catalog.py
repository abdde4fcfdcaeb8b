"""The catalogue of models kdbench ships: literature names → timm entry points.

kdbench registers its models into timm's own registry (so ``timm.create_model`` builds them)
under a ``cifar_``/``test_`` prefixed timm name, and records here the name researchers use in
suites and papers (``resnet32x4``, ``vgg13``, ``ShuffleV2``…). A catalogue name shadows a timm
model of the same name (timm's ImageNet ``vgg13`` stays reachable as ``timm:vgg13``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    """A model kdbench ships.

    Attributes:
        name: The name used in suites and on the command line.
        timm_name: The name it is registered under in timm.
        family: Architecture family ("resnet", "wrn", "vgg", "mobilenetv2", "shufflenet", …);
            methods and the conformance suite use it to tell same- from cross-family pairs.
        description: One line for ``kdbench ls models``.
        test_only: A tiny model for tests and the conformance suite, not for benchmarks.
    """

    name: str
    timm_name: str
    family: str
    description: str = ""
    test_only: bool = False


MODELS: Registry[ModelEntry] = Registry("model")


def register_catalog_model(
    name: str, timm_name: str, family: str, description: str = "", *, test_only: bool = False
) -> ModelEntry:
    """Record a model under its literature name; it must already be registered in timm."""
    entry = ModelEntry(name, timm_name, family, description, test_only)
    MODELS.register(name, entry, origin=f"{timm_name} (bench.models)")
    return entry
