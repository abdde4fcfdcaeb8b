"""The plugin API: everything a distillation method may use, and nothing else of ``bench``.

A method file imports from here only (``from bench.api import Method, register_method, ...``);
the harness implements :class:`TrainContext` and calls the hooks. Shared loss math of
kdbench's own methods lives in ``methods/_common.py``.
"""

from bench.api.method import (
    KNOWLEDGE_KINDS,
    METHODS,
    MODES,
    NEEDS,
    Method,
    TrainContext,
    register_method,
)
from bench.api.params import ParamError, Params, coerce_value
from bench.api.stages import (
    INIT_STAGE_FRACTION,
    MIN_SPATIAL_SIZE,
    align_stages,
    conv_connector,
    describe_pairs,
    hint_pair,
    init_stage_epochs,
    match_spatial,
    require_teacher,
    same_classes,
    spatial_pair_supports,
    spatial_pairs,
    spatial_supports,
    stage_size,
)
from bench.api.types import Batch, ModelInfo, Outputs, TaskInfo, TrialFailed
from bench.ranges import Range

__all__ = [
    "INIT_STAGE_FRACTION",
    "KNOWLEDGE_KINDS",
    "METHODS",
    "MIN_SPATIAL_SIZE",
    "MODES",
    "NEEDS",
    "Batch",
    "Method",
    "ModelInfo",
    "Outputs",
    "ParamError",
    "Params",
    "Range",
    "TaskInfo",
    "TrainContext",
    "TrialFailed",
    "align_stages",
    "coerce_value",
    "conv_connector",
    "describe_pairs",
    "hint_pair",
    "init_stage_epochs",
    "match_spatial",
    "register_method",
    "require_teacher",
    "same_classes",
    "spatial_pair_supports",
    "spatial_pairs",
    "spatial_supports",
    "stage_size",
]
