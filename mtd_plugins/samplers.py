"""Registers the built-in samplers through the ``mtd`` entry-point group, exactly as a third party would."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from mtd_core.plugins import hookimpl
from mtd_core.sampling.base import Sampler


@hookimpl
def mtd_register_samplers() -> Mapping[str, Sampler]:
    """DDIM, ancestral DDPM, Heun and DPM-Solver++(2M) on the aggregated process (docs/sampling.md)."""
    from mtd_core.sampling.ddim import sample_ddim
    from mtd_core.sampling.ddpm import sample_ddpm
    from mtd_core.sampling.dpmpp import sample_dpmpp_2m
    from mtd_core.sampling.heun import sample_heun

    return {
        "ddim": Sampler(sample_ddim, description="DDIM (first order; eta > 0 adds noise, eta 1 = ancestral)"),
        "ddpm": Sampler(sample_ddpm, description="ancestral sampling (DDPM, Algorithm 2)"),
        "heun": Sampler(sample_heun, evals_per_step=2, min_steps=2,
                        description="Heun's method on the probability-flow ODE (second order, 2K - 1 evaluations)"),
        "dpmpp_2m": Sampler(sample_dpmpp_2m, min_steps=2,
                            description="DPM-Solver++(2M), data prediction (second order multistep; eta > 0: SDE)"),
        "dpmpp_2m_sde": Sampler(partial(sample_dpmpp_2m, eta=1.0), min_steps=2,
                                description="SDE-DPM-Solver++(2M): dpmpp_2m with eta 1 (the reverse SDE)"),
    }
