"""Sampling: the base estimate (estimate.py), samplers as small pure functions (ddim.py, ddpm.py, heun.py, dpmpp.py),
guidance by the model's own heads or an external classifier (guidance.py) and generate()."""

from mtd_core.sampling.base import (
    Sampler,
    SamplerFn,
    SamplerOutput,
    SamplerStep,
    StepDenoiser,
    StepPrediction,
    StepResult,
)
from mtd_core.sampling.ddim import ddim_data_step, ddim_sigma, ddim_step, sample_ddim
from mtd_core.sampling.ddpm import ddpm_step, sample_ddpm
from mtd_core.sampling.denoiser import CONDITIONING, ModelDenoiser
from mtd_core.sampling.dpmpp import sample_dpmpp_2m
from mtd_core.sampling.estimate import BaseEstimate, BaseRange
from mtd_core.sampling.generate import GenerationOutput, generate
from mtd_core.sampling.guidance import Classifier, GuidanceConfig, guided_eps, head_classifier
from mtd_core.sampling.heun import sample_heun
from mtd_core.sampling.options import DEFAULT_READ_T, SamplingOptions

__all__ = [
    "CONDITIONING",
    "DEFAULT_READ_T",
    "BaseEstimate",
    "BaseRange",
    "Classifier",
    "GenerationOutput",
    "GuidanceConfig",
    "ModelDenoiser",
    "Sampler",
    "SamplingOptions",
    "SamplerFn",
    "SamplerOutput",
    "SamplerStep",
    "StepDenoiser",
    "StepPrediction",
    "StepResult",
    "ddim_data_step",
    "ddim_sigma",
    "ddim_step",
    "ddpm_step",
    "generate",
    "guided_eps",
    "head_classifier",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_heun",
]
