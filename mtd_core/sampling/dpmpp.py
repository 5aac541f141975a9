"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the probability-flow ODE of the aggregated process, in its
data-prediction form (ddim.py; docs/math.md, section 9):

    dq = z0 dphi + sum_i E_i drho^(i),   q = z / sqrt(1 - abar)

With the half log-SNR l_k = log(sqrt(abar_k) / sqrt(1 - abar_k)) as the time, each step extrapolates every predicted
quantity X (the base estimate z0 and each encoding E_i) linearly in l from the current and the previous step,

    X_eff = X_k + (h_k / (2 h_{k+1})) (X_k - X_{k+1}),   h_k = l_{k-1} - l_k,

and takes the DDIM step with (z0_eff, E_eff). Without aggregated modalities this is exactly the published
DPM-Solver++(2M) update; with them the same extrapolation of E_i keeps the step second order, because the
rho-weighted mean of l over a step is l_k + h_k / 2 + O(h_k^2) for any smooth rho. The first step has no history
and the last one (to t = 0, where l is infinite) none ahead, so both are first order; with ``lower_order_final``
(diffusers' default) the second-to-last is too when there are fewer than 15 steps, which steadies very few steps.

With ``eta`` > 0 each step is instead the first-order step of the reverse SDE with the same extrapolated
predictions (ddim.py, ``ddim_data_step``): SDE-DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's dpmpp_2m_sde with
the midpoint rule, diffusers' "sde-dpmsolver++"). eta = 1 is the reverse SDE; the noise it adds every step
corrects errors of earlier steps instead of carrying them to the end (docs/sampling.md).
"""

from __future__ import annotations

import math

import torch

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.errors import ConfigError
from mtd_core.sampling.base import Callback, SamplerOutput, StepDenoiser, StepPrediction, StepResult, run_steps
from mtd_core.sampling.ddim import ddim_data_step

LOWER_ORDER_BELOW = 15  # steps; diffusers' DPMSolverMultistepScheduler uses the same threshold


def half_log_snr(fp: ForwardProcess, k: int) -> float:
    """l_k = log(sqrt(abar_k) / sqrt(1 - abar_k)) of index k (infinite at k = 0)."""
    ab = float(fp.abar[k])
    return math.inf if ab >= 1.0 else 0.5 * (math.log(ab) - math.log1p(-ab))


def sample_dpmpp_2m(denoise: StepDenoiser, z: torch.Tensor, fp: ForwardProcess, *,
                    generator: torch.Generator | None = None, callback: Callback | None = None, progress: bool = False,
                    lower_order_final: bool = True, eta: float = 0.0) -> SamplerOutput:
    """DPM-Solver++(2M) from ``z`` (= z_K) down to z_0 on ``fp``.

    Args:
        denoise: (z_k, k) -> StepPrediction.
        z: the initial state at index K = fp.T.
        fp: the (respaced) forward process.
        generator: the RNG of the per-step noise (used only when eta > 0).
        callback: called with a SamplerStep after each step (its ``z0_hat`` is the extrapolated estimate).
        progress: show a tqdm progress bar.
        lower_order_final: first order for the second-to-last step when there are fewer than 15 steps.
        eta: 0 for the ODE solver, 1 for the SDE solver (SDE-DPM-Solver++(2M)), in between to interpolate.
    """
    if isinstance(eta, bool) or not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
        raise ConfigError(f"dpmpp_2m sampler: eta must lie in [0, 1], got {eta!r}")
    history: list[StepPrediction] = []
    K = fp.T

    def step(fp: ForwardProcess, z: torch.Tensor, k: int, pred: StepPrediction,
             noise: torch.Tensor | None) -> StepResult:
        first_order = not history or k == 1 or (lower_order_final and k == 2 and K < LOWER_ORDER_BELOW)
        prev = history[-1] if history else None
        history[:] = [pred]
        if first_order or prev is None:
            return ddim_data_step(fp, z, k, pred.z0, pred.enc, noise, eta)
        c = (half_log_snr(fp, k - 1) - half_log_snr(fp, k)) / (2 * (half_log_snr(fp, k) - half_log_snr(fp, k + 1)))
        z0 = pred.z0 + c * (pred.z0 - prev.z0)
        enc = {n: e + c * (e - prev.enc[n]) for n, e in pred.enc.items()}
        return ddim_data_step(fp, z, k, z0, enc, noise, eta)

    return run_steps(step, lambda k: eta > 0 and k > 1, denoise, z, fp, generator=generator, callback=callback,
                     progress=progress, desc="dpm++2m")
