"""Heun's method (second order; Karras et al. 2022, Algorithm 1) on the probability-flow ODE of the aggregated
process, in its data form (ddim.py; docs/math.md, section 9):

    dq = z0 dphi + sum_i E_i drho^(i),   q = z / sqrt(1 - abar)

    predictor  z'      = DDIM step from z_k with (z0_k, E_k)                              (Euler, ddim_data_step)
    corrector  z_{k-1} = DDIM step from z_k with ((z0_k + z0') / 2, (E_k + E') / 2)        (trapezoid rule)

where (z0', E') is the prediction at (z', k - 1). The trapezoid rule makes the step second order in the step size.
The last step, to t = 0 (where 1 - abar = 0 and the network is not evaluated), is the Euler step, as in EDM. K steps
cost 2K - 1 network evaluations.
"""

from __future__ import annotations

import torch

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.sampling.base import Callback, SamplerOutput, StepDenoiser, StepPrediction, StepResult, run_steps
from mtd_core.sampling.ddim import ddim_data_step


def sample_heun(denoise: StepDenoiser, z: torch.Tensor, fp: ForwardProcess, *, generator: torch.Generator | None = None,
                callback: Callback | None = None, progress: bool = False) -> SamplerOutput:
    """Heun's second-order method from ``z`` (= z_K) down to z_0 on ``fp`` (deterministic; ``generator`` unused).

    Args:
        denoise: (z_k, k) -> StepPrediction.
        z: the initial state at index K = fp.T.
        fp: the (respaced) forward process.
        generator: unused (the method draws no noise); accepted for the shared signature.
        callback: called with a SamplerStep after each step (its ``z0_hat`` is the averaged estimate).
        progress: show a tqdm progress bar.
    """

    def step(fp: ForwardProcess, z: torch.Tensor, k: int, pred: StepPrediction,
             noise: torch.Tensor | None) -> StepResult:
        euler = ddim_data_step(fp, z, k, pred.z0, pred.enc)
        if k == 1:
            return euler
        nxt = denoise(euler.z_prev, k - 1)
        z0 = 0.5 * (pred.z0 + nxt.z0)
        enc = {n: 0.5 * (e + nxt.enc[n]) for n, e in pred.enc.items()}
        return ddim_data_step(fp, z, k, z0, enc)

    return run_steps(step, lambda k: False, denoise, z, fp, generator=generator, callback=callback, progress=progress,
                     desc="heun")
