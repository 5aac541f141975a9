"""Ancestral sampling (DDPM, Ho et al. 2020, Algorithm 2) with the MT-Diffusion reverse mean.

    z_{k-1} = mu(z_k, k) + sigma_k noise,   sigma_k^2 = beta_k ("beta") or beta~_k ("beta_tilde")
    mu = c_0 z0 + c_t z_k + sum_i (beta_k lambda_k^(i) / (sqrt(alpha_k) (1 - abar_k)) - w_k^(i)) E_i

the posterior mean q(z_{k-1} | z_k, z0, X) at the step's base estimate z0 and encodings E_i (ForwardProcess.posterior;
ADM's form, so a clipped estimate enters the mean). With eps re-derived from z0 it equals the eps form
(1 / sqrt(alpha_k)) (z_k - beta_k / sqrt(1 - abar_k) eps) - sum_i w_k^(i) E_i exactly. On a respaced process alpha_k,
beta_k and w_k are those of the jump between kept steps, so the same formula holds for any number of steps. No noise
is added at the last step (k = 1).
"""

from __future__ import annotations

import torch

from mtd_core.diffusion.forward import Encodings, ForwardProcess
from mtd_core.errors import ConfigError
from mtd_core.sampling.base import Callback, SamplerOutput, StepDenoiser, StepPrediction, StepResult, run_steps

VARIANCES = ("beta", "beta_tilde")


def ddpm_step(fp: ForwardProcess, z_t: torch.Tensor, k: int, z0: torch.Tensor, enc: Encodings,
              noise: torch.Tensor | None = None, variance: str = "beta_tilde") -> StepResult:
    """One ancestral step from index ``k`` to ``k - 1``: the posterior mean plus ``sigma_k * noise`` (no noise if None
    or at k = 1)."""
    mean, _ = fp.posterior(z_t, z0, enc, k)
    if noise is None or k == 1:
        return StepResult(z_prev=mean, z0_hat=z0)
    return StepResult(z_prev=mean + fp.reverse_variance(k, z_t, variance).sqrt() * noise, z0_hat=z0)


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
        return ddpm_step(fp, z, k, pred.z0, pred.enc, noise, variance)

    return run_steps(step, lambda k: k > 1, denoise, z, fp, generator=generator, callback=callback,
                     progress=progress, desc="ddpm")
