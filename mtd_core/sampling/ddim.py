"""DDIM (Song et al. 2021, eq. 12) for the aggregated forward process.

Subtracting the known aggregation part turns the process into a plain DDPM: with y_t = z_t - sum_i lambda_t^(i) E_i,
y_t = sqrt(alpha_t) y_{t-1} + sqrt(1 - alpha_t) noise and y_0 = z_0. DDIM in y, mapped back to z, from the step's
base estimate z0 and noise eps (StepPrediction; mtd_core/sampling/estimate.py):

    z_{k-1} = sqrt(abar_{k-1}) z0 + sum_i lambda_{k-1}^(i) E_i + sqrt(1 - abar_{k-1} - sigma_k^2) eps + sigma_k noise
    sigma_k = eta sqrt((1 - abar_{k-1}) / (1 - abar_k)) sqrt(1 - abar_k / abar_{k-1})

E_i are the predicted encodings of generated modalities and the true E_j(x_j) of observed ones. eta = 0 is
deterministic; eta = 1 equals ancestral sampling with sigma^2 = beta~.

With eta = 0 and eps re-derived from z0 (:func:`ddim_data_step`) the step is the first-order exponential integrator
of the probability-flow ODE of the aggregated process (docs/math.md, section 9): in q = z / sqrt(1 - abar),

    dq = z0 dphi + sum_i E_i drho^(i),   phi_t = sqrt(abar_t) / sqrt(1 - abar_t),
                                         rho_t^(i) = lambda_t^(i) / sqrt(1 - abar_t),

integrated with z0 and E_i held at their values at index k. The second-order samplers (heun.py, dpmpp.py) are
this step with better estimates of z0 and E_i over the interval.
"""

from __future__ import annotations

import math

import torch

from mtd_core.diffusion.forward import Encodings, ForwardProcess
from mtd_core.errors import ConfigError
from mtd_core.sampling.base import Callback, SamplerOutput, StepDenoiser, StepPrediction, StepResult, run_steps


def ddim_sigma(fp: ForwardProcess, k: int, eta: float) -> float:
    """sigma_k of the DDIM step from index k to k - 1 (eq. 16 of the DDIM paper)."""
    ab, ab_prev = float(fp.abar[k]), float(fp.abar[k - 1])
    return eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))


def ddim_step(fp: ForwardProcess, z_t: torch.Tensor, k: int, z0: torch.Tensor, eps: torch.Tensor, enc: Encodings,
              noise: torch.Tensor | None = None, eta: float = 0.0) -> StepResult:
    """One DDIM step from index ``k`` to ``k - 1`` (eq. 12); ``noise`` is required when ``eta > 0`` and k > 1."""
    ab_prev = float(fp.abar[k - 1])
    sigma = ddim_sigma(fp, k, eta)
    z_prev = math.sqrt(ab_prev) * z0 + fp.injected(enc, k - 1, z_t)
    z_prev = z_prev + math.sqrt(max(0.0, 1 - ab_prev - sigma**2)) * eps.to(z_t.dtype)
    if sigma > 0:
        if noise is None:
            raise ValueError(f"ddim step {k}: eta = {eta} > 0 needs noise")
        z_prev = z_prev + sigma * noise
    return StepResult(z_prev=z_prev, z0_hat=z0)


def ddim_data_step(fp: ForwardProcess, z_t: torch.Tensor, k: int, z0: torch.Tensor, enc: Encodings,
                   noise: torch.Tensor | None = None, sde: float = 0.0) -> StepResult:
    """The DDIM step from (z0, E) alone, its noise re-derived from z_t. With ``sde`` = 0 it is deterministic, the
    exact solution of the flow over [t_{k-1}, t_k] when z0 and E stay constant there (module docstring). With
    ``sde`` = eta > 0 it is the first-order step of the reverse SDE (Lu et al. 2022, SDE-DPM-Solver++; k-diffusion's
    eta), in the data form: with h = l_{k-1} - l_k the step in half log-SNR,

        z_{k-1} = sqrt(abar_{k-1}) z0 + sum_i lambda_{k-1}^(i) E_i + sqrt(1 - abar_{k-1}) (e^(-eta h) eps
                  + sqrt(1 - e^(-2 eta h)) noise).
    """
    eps = fp.eps_from_z0(z_t, z0, enc, k)
    if sde <= 0 or k == 1:
        return ddim_step(fp, z_t, k, z0, eps, enc)
    if noise is None:
        raise ValueError(f"sde step {k}: eta = {sde} > 0 needs noise")
    ab, ab_prev = float(fp.abar[k]), float(fp.abar[k - 1])
    h = 0.5 * (math.log(ab_prev / (1 - ab_prev)) - math.log(ab / (1 - ab)))
    keep = math.exp(-sde * h)
    z_prev = math.sqrt(ab_prev) * z0 + fp.injected(enc, k - 1, z_t)
    z_prev = z_prev + math.sqrt(1 - ab_prev) * (keep * eps.to(z_t.dtype) + math.sqrt(1 - keep**2) * noise)
    return StepResult(z_prev=z_prev, z0_hat=z0)


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
    if isinstance(eta, bool) or not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
        raise ConfigError(f"ddim sampler: eta must lie in [0, 1], got {eta!r}")

    def step(fp: ForwardProcess, z: torch.Tensor, k: int, pred: StepPrediction,
             noise: torch.Tensor | None) -> StepResult:
        return ddim_step(fp, z, k, pred.z0, pred.eps, pred.enc, noise, eta)

    return run_steps(step, lambda k: eta > 0 and k > 1, denoise, z, fp, generator=generator, callback=callback,
                     progress=progress, desc="ddim")
