"""Sampling: pure reverse-step functions (ddpm.py, ddim.py), self-guidance (guidance.py) and generate()."""

from mtd_core.sampling.base import SamplerOutput, SamplerStep, StepDenoiser, StepPrediction, StepResult
from mtd_core.sampling.ddim import ddim_sigma, ddim_step, sample_ddim
from mtd_core.sampling.ddpm import ddpm_step, sample_ddpm
from mtd_core.sampling.generate import DEFAULT_READ_T, SAMPLERS, GenerationOutput, ModelDenoiser, generate
from mtd_core.sampling.guidance import GuidanceConfig, guided_eps

__all__ = [
    "DEFAULT_READ_T",
    "SAMPLERS",
    "GenerationOutput",
    "GuidanceConfig",
    "ModelDenoiser",
    "SamplerOutput",
    "SamplerStep",
    "StepDenoiser",
    "StepPrediction",
    "StepResult",
    "ddim_sigma",
    "ddim_step",
    "ddpm_step",
    "generate",
    "guided_eps",
    "sample_ddim",
    "sample_ddpm",
]
