"""The MT-Diffusion math: noise schedules, aggregation weights, the forward process and the ELBO."""

from mtd_core.diffusion.elbo import (
    ELBOTerms,
    MultiModalELBO,
    discretised_gaussian_nll,
    gaussian_kl,
    stratified_timesteps,
)
from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.diffusion.loss import LossOutput, training_loss
from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.diffusion.weights import (
    ConstantWeight,
    CustomLambda,
    CustomWeight,
    WeightSchedule,
    WindowedLambda,
    ZeroWeight,
    weight_schedule_from_config,
)

__all__ = [
    "ConstantWeight",
    "CustomLambda",
    "CustomWeight",
    "ELBOTerms",
    "ForwardProcess",
    "LossOutput",
    "MultiModalELBO",
    "NoiseSchedule",
    "WeightSchedule",
    "WindowedLambda",
    "ZeroWeight",
    "discretised_gaussian_nll",
    "gaussian_kl",
    "stratified_timesteps",
    "training_loss",
    "weight_schedule_from_config",
]
