"""DDIM (Song et al. 2021, eq. 12) for the aggregated forward process.

Subtracting the known aggregation part turns the process into a plain DDPM: with y_t = z_t - sum_i lambda_t^(i) E_i,
y_t = sqrt(alpha_t) y_{t-1} + sqrt(1 - alpha_t) noise and y_0 = z_0. DDIM in y, mapped back to z:

    z0_hat  = (z_k - sum_i lambda_k^(i) E_i - sqrt(1 - abar_k) eps) / sqrt(abar_k)        (ForwardProcess.z0_from_eps)
    z_{k-1} = sqrt(abar_{k-1}) z0_hat + sum_i lambda_{k-1}^(i) E_i
              + sqrt(1 - abar_{k-1} - sigma_k^2) eps + sigma_k noise
    sigma_k = eta sqrt((1 - abar_{k-1}) / (1 - abar_k)) sqrt(1 - abar_k / abar_{k-1})

E_i are the predicted encodings E_i(xhat_i) of generated modalities and the true E_j(x_j) of observed ones.
eta = 0 is deterministic; eta = 1 equals ancestral sampling with sigma^2 = beta~.
"""

from __future__ import annotations

import math

import torch

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.errors import ConfigError
from mtd_core.sampling.base import Callback, SamplerOutput, StepDenoiser, StepPrediction, StepResult, run_steps


def ddim_sigma(fp: ForwardProcess, k: int, eta: float) -> float:
    """sigma_k of the DDIM step from index k to k - 1 (eq. 16 of the DDIM paper)."""
    ab, ab_prev = float(fp.abar[k]), float(fp.abar[k - 1])
    return eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))


def ddim_step(fp: ForwardProcess, z_t: torch.Tensor, k: int, eps: torch.Tensor, enc: dict[str, torch.Tensor],
              noise: torch.Tensor | None = None, eta: float = 0.0) -> StepResult:
    """One DDIM step from index ``k`` to ``k - 1``; ``noise`` is required when ``eta > 0`` and k > 1."""
    eps = eps.to(z_t.dtype)
    z0_hat = fp.z0_from_eps(z_t, eps, enc, k)
    ab_prev = float(fp.abar[k - 1])
    sigma = ddim_sigma(fp, k, eta)
    z_prev = math.sqrt(ab_prev) * z0_hat + fp.injected(enc, k - 1, z_t)
    z_prev = z_prev + math.sqrt(max(0.0, 1 - ab_prev - sigma**2)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError(f"ddim step {k}: eta = {eta} > 0 needs noise")
        z_prev = z_prev + sigma * noise
    return StepResult(z_prev=z_prev, z0_hat=z0_hat)


def sample_ddim(denoise: StepDenoiser, z: torch.Tensor, fp: ForwardProcess, *, generator: torch.Generator | None = None,
                callback: Callback | None = None, progress: bool = False, eta: float = 0.0) -> SamplerOutput:
    """DDIM from ``z`` (= z_K) down to z_0 on ``fp``.

    Args:
        denoise: (z_k, k) -> StepPrediction.
        z: the initial state at index K = fp.T.
        fp: the (respaced) forward process.
        generator: the RNG of the per-step noise (used only when eta > 0).
        callback: called with a SamplerStep after each step.
        progress: show a tqdm progress bar.
        eta: 0 for deterministic DDIM, 1 for ancestral-equivalent sampling, in between to interpolate.
    """
    if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
        raise ConfigError(f"ddim sampler: eta must lie in [0, 1], got {eta!r}")

    def step(fp: ForwardProcess, z: torch.Tensor, k: int, pred: StepPrediction,
             noise: torch.Tensor | None) -> StepResult:
        return ddim_step(fp, z, k, pred.eps, pred.enc, noise, eta)

    return run_steps(step, lambda k: eta > 0 and k > 1, denoise, z, fp, generator=generator, callback=callback,
                     progress=progress, desc="ddim")
