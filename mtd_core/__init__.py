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
    ModalityDataError,
    MTDError,
    PluginError,
    ScheduleError,
)
from mtd_core.modality import BasePrediction, DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, Role

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access so `import mtd_core` stays fast.
_LAZY: dict[str, str] = {}


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
    "Modality",
    "ModalityDataError",
    "MultiModalELBO",
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
