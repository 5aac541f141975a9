"""What every sampler shares: the per-step prediction, the callback payload, the output and the loop.

A sampler is a function ``sampler(denoise, z, fp, *, generator=None, callback=None, progress=False, **options)
-> SamplerOutput`` (k-diffusion style). It walks the (respaced) process ``fp`` from index K = fp.T down to 1;
``denoise(z_k, k)`` returns a :class:`StepPrediction` (eps and the encodings E_i to use at that step), so that
joint, conditional and guided generation differ only in the denoiser, never in the sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import torch
from tqdm.auto import tqdm

from mtd_core.diffusion.forward import ForwardProcess


@attrs.frozen
class StepPrediction:
    """The denoiser's answer at one step.

    Attributes:
        eps: eps_theta(z_k, t_k) (after guidance, if any), shaped and typed like z_k.
        enc: aggregated name -> the encoding used in the reverse step: E_i(xhat_i) for generated modalities,
            the true E_j(x_j) for observed ones. Holds every aggregated modality of ``fp``.
        preds: aggregated name -> the raw head prediction at this step.
        z_t: the state the step starts from when the denoiser replaced part of z_k (conditional generation by
            replacement, see :class:`~mtd_core.sampling.generate.ModelDenoiser`); None: z_k itself.
    """

    eps: torch.Tensor
    enc: dict[str, torch.Tensor]
    preds: dict[str, Any]
    z_t: torch.Tensor | None = None


class StepDenoiser(Protocol):
    """``denoise(z_k, k)``: the prediction at respaced index ``k`` (1..K) of the sampler's process."""

    def __call__(self, z: torch.Tensor, k: int) -> StepPrediction: ...


@attrs.frozen
class SamplerStep:
    """What a sampler's ``callback`` receives after each step.

    Attributes:
        index: the respaced index k (K down to 1).
        t: the original timestep t_k the network saw.
        z_t: the state before the step (before any replacement; ``prediction.z_t`` holds the replaced state).
        z_next: the state after the step (z at index k - 1).
        z0_hat: the step's estimate of z_0 (from eps and the encodings, eq. of ForwardProcess.z0_from_eps).
        prediction: the denoiser's prediction at this step.
    """

    index: int
    t: int
    z_t: torch.Tensor
    z_next: torch.Tensor
    z0_hat: torch.Tensor
    prediction: StepPrediction


@attrs.frozen
class SamplerOutput:
    """The result of a sampler.

    Attributes:
        z0: the final state z_0 (the base modality's encoding, or ~0 without a base).
        last: the prediction at the last step (index 1): its ``preds`` are the generated modalities' heads.
    """

    z0: torch.Tensor
    last: StepPrediction


@attrs.frozen
class StepResult:
    """One reverse step: the next state and the z_0 estimate it was built from."""

    z_prev: torch.Tensor
    z0_hat: torch.Tensor


Callback = Callable[[SamplerStep], None]


def randn_like(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``z``, drawn on the generator's device (so a seeded CPU generator gives
    the same numbers whatever device sampling runs on) and moved to ``z``'s device."""
    if generator is None:
        return torch.randn_like(z)
    return torch.randn(z.shape, generator=generator, device=generator.device, dtype=z.dtype).to(z.device)


def run_steps(step: Callable[[ForwardProcess, torch.Tensor, int, StepPrediction, torch.Tensor | None], StepResult],
              stochastic: Callable[[int], bool], denoise: StepDenoiser, z: torch.Tensor, fp: ForwardProcess, *,
              generator: torch.Generator | None, callback: Callback | None, progress: bool, desc: str) -> SamplerOutput:
    """The loop every sampler shares: for k = K..1 predict, draw noise if ``stochastic(k)``, step, call back."""
    if fp.T < 1:
        raise ValueError(f"{desc}: the process has no steps")
    last: StepPrediction | None = None
    for k in tqdm(range(fp.T, 0, -1), desc=desc, disable=not progress, leave=False):
        pred = denoise(z, k)
        noise = randn_like(z, generator) if stochastic(k) else None
        res = step(fp, z if pred.z_t is None else pred.z_t, k, pred, noise)
        if callback is not None:
            callback(SamplerStep(index=k, t=int(fp.timesteps[k]), z_t=z, z_next=res.z_prev, z0_hat=res.z0_hat,
                                 prediction=pred))
        z, last = res.z_prev, pred
    assert last is not None
    return SamplerOutput(z0=z, last=last)
