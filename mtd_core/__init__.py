"""mtd: multi-modal, multi-task diffusion (MT-Diffusion, Chen et al. 2024) as a PyTorch plugin framework.

The public API is curated here; heavier parts (models, samplers, training) are imported lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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

__version__ = "0.1.0"

if TYPE_CHECKING:  # what a type checker sees for the lazily imported names below
    from mtd_core.diffusion import (  # noqa: F401
        ConstantWeight, CustomLambda, CustomWeight, ELBOTerms, ForwardProcess, LossOutput, MultiModalELBO,
        NoiseSchedule, WeightSchedule, WindowedLambda, ZeroWeight, training_loss, weight_schedule_from_config)
    from mtd_core.modality import BasePrediction, DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, Role  # noqa: F401
    from mtd_core.backbones import BackboneOutput, UNet  # noqa: F401
    from mtd_core.data import DatasetSplits, load_dataset  # noqa: F401
    from mtd_core.metrics import EvalContext  # noqa: F401
    from mtd_core.model import MultiTaskModel  # noqa: F401
    from mtd_core.plugins import Registry, get_registry, hookimpl  # noqa: F401
    from mtd_core.sampling import GenerationOutput, GuidanceConfig  # noqa: F401
    from mtd_core.sampling.generate import generate  # noqa: F401
    from mtd_core.taskset import TaskSet  # noqa: F401
    from mtd_core.training import RunConfig, TrainConfig, Trainer, build_run, load_run, read_config  # noqa: F401

# name -> module that defines it; imported on first attribute access, so that `import mtd_core` loads neither torch
# nor the model, samplers, training and metrics (a Ctrl-C while `mtd` starts is then the CLI's to handle; the
# TYPE_CHECKING block above gives a type checker the same names).
_DIFFUSION = ("ConstantWeight", "CustomLambda", "CustomWeight", "ELBOTerms", "ForwardProcess", "LossOutput",
              "MultiModalELBO", "NoiseSchedule", "WeightSchedule", "WindowedLambda", "ZeroWeight", "training_loss",
              "weight_schedule_from_config")
_MODALITY = ("BasePrediction", "DataSpec", "FeatureSpec", "HeadInput", "LatentSpec", "Modality", "Role")
_LAZY: dict[str, str] = {
    **dict.fromkeys(_DIFFUSION, "mtd_core.diffusion"),
    **dict.fromkeys(_MODALITY, "mtd_core.modality"),
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


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mtd_core' has no attribute {name!r}")


__all__ = ["CheckpointError", "ConfigError", "MTDError", "MetricError", "ModalityDataError", "NonFiniteLossError",
           "PluginError", "ScheduleError", *_LAZY]
