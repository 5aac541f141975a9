"""Ancestral sampling (DDPM, Ho et al. 2020, Algorithm 2) with the MT-Diffusion reverse mean.

    z_{k-1} = mu_theta(z_k, k) + sigma_k noise,   sigma_k^2 = beta_k ("beta") or beta~_k ("beta_tilde")
    mu_theta = (1 / sqrt(alpha_k)) (z_k - beta_k / sqrt(1 - abar_k) eps_theta) - sum_i w_k^(i) E_i

(ForwardProcess.reverse_mean). On a respaced process alpha_k, beta_k and w_k are those of the jump between
kept steps, so the same formula holds for any number of steps. No noise is added at the last step (k = 1).
"""

from __future__ import annotations

import torch

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.errors import ConfigError
from mtd_core.sampling.base import Callback, SamplerOutput, StepDenoiser, StepPrediction, StepResult, run_steps

VARIANCES = ("beta", "beta_tilde")


def ddpm_step(fp: ForwardProcess, z_t: torch.Tensor, k: int, eps: torch.Tensor, enc: dict[str, torch.Tensor],
              noise: torch.Tensor | None = None, variance: str = "beta_tilde") -> StepResult:
    """One ancestral step from index ``k`` to ``k - 1``: mu_theta plus ``sigma_k * noise`` (no noise if None)."""
    eps = eps.to(z_t.dtype)
    mean = fp.reverse_mean(z_t, eps, enc, k)
    z0_hat = fp.z0_from_eps(z_t, eps, enc, k)
    if noise is None or k == 1:
        return StepResult(z_prev=mean, z0_hat=z0_hat)
    return StepResult(z_prev=mean + fp.reverse_variance(k, z_t, variance).sqrt() * noise, z0_hat=z0_hat)


def sample_ddpm(denoise: StepDenoiser, z: torch.Tensor, fp: ForwardProcess, *,
                generator: torch.Generator | None = None, callback: Callback | None = None, progress: bool = False,
                variance: str = "beta_tilde") -> SamplerOutput:
    """Ancestral sampling from ``z`` (= z_K) down to z_0 on ``fp``.

    Args:
        denoise: (z_k, k) -> StepPrediction.
        z: the initial state at index K = fp.T.
        fp: the (respaced) forward process.
        generator: the RNG of the per-step noise.
        callback: called with a SamplerStep after each step.
        progress: show a tqdm progress bar.
        variance: sigma_k^2 = beta_k ("beta") or the posterior variance beta~_k ("beta_tilde", better with few steps).
    """
    if variance not in VARIANCES:
        raise ConfigError(f"ddpm sampler: variance must be one of {VARIANCES}, got {variance!r}")

    def step(fp: ForwardProcess, z: torch.Tensor, k: int, pred: StepPrediction,
             noise: torch.Tensor | None) -> StepResult:
        return ddpm_step(fp, z, k, pred.eps, pred.enc, noise, variance)

    return run_steps(step, lambda k: k > 1, denoise, z, fp, generator=generator, callback=callback,
                     progress=progress, desc="ddpm")
