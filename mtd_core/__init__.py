"""mtd: multi-modal, multi-task diffusion (MT-Diffusion, Chen et al. 2024) as a PyTorch plugin framework.

The public API is curated here; heavier parts (models, samplers, training) are imported lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mtd_core.diffusion import (
    ConstantWeight,
    CustomLambda,
    CustomWeight,
    ELBOTerms,
    ForwardProcess,
    LossOutput,
    MultiModalELBO,
    NoiseSchedule,
    WeightSchedule,
    WindowedLambda,
    ZeroWeight,
    training_loss,
    weight_schedule_from_config,
)
from mtd_core.errors import (
    CheckpointError,
    ConfigError,
    MetricError,
    ModalityDataError,
    MTDError,
    NonFiniteLossError,
    PluginError,
    ScheduleError,
)
from mtd_core.modality import BasePrediction, DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, Role

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access so `import mtd_core` stays fast.
_LAZY: dict[str, str] = {
    "TaskSet": "mtd_core.taskset",
    "MultiTaskModel": "mtd_core.model",
    "generate": "mtd_core.sampling",
    "GenerationOutput": "mtd_core.sampling",
    "GuidanceConfig": "mtd_core.sampling",
    "UNet": "mtd_core.backbones",
    "BackboneOutput": "mtd_core.backbones",
    "Registry": "mtd_core.plugins",
    "get_registry": "mtd_core.plugins",
    "hookimpl": "mtd_core.plugins",
    "EvalContext": "mtd_core.metrics",
    "Trainer": "mtd_core.training",
    "TrainConfig": "mtd_core.training",
    "RunConfig": "mtd_core.training",
    "build_run": "mtd_core.training",
    "load_run": "mtd_core.training",
    "read_config": "mtd_core.training",
    "DatasetSplits": "mtd_core.data",
    "load_dataset": "mtd_core.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mtd_core' has no attribute {name!r}")


__all__ = [
    "BasePrediction",
    "CheckpointError",
    "ConfigError",
    "ConstantWeight",
    "CustomLambda",
    "CustomWeight",
    "DataSpec",
    "ELBOTerms",
    "FeatureSpec",
    "ForwardProcess",
    "HeadInput",
    "LatentSpec",
    "LossOutput",
    "MTDError",
    "MetricError",
    "Modality",
    "ModalityDataError",
    "MultiModalELBO",
    "NonFiniteLossError",
    "NoiseSchedule",
    "PluginError",
    "Role",
    "ScheduleError",
    "WeightSchedule",
    "WindowedLambda",
    "ZeroWeight",
    "training_loss",
    "weight_schedule_from_config",
    *_LAZY,
]
