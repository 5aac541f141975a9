"""What every sampler shares: the per-step prediction, the callback payload, the output, the registered spec and
the loop of one-evaluation samplers.

A sampler is a function ``sampler(denoise, z, fp, *, generator=None, callback=None, progress=False, **options)
-> SamplerOutput`` (k-diffusion style). It walks the (respaced) process ``fp`` from index K = fp.T down to 0;
``denoise(z_k, k)`` returns a :class:`StepPrediction` (the base estimate z0_hat, the noise and the encodings E_i to
use at that step), so that joint, conditional and guided generation, and the handling of the base estimate
(clipping, thresholding), differ only in the denoiser, never in the sampler. A plugin registers samplers through
the ``mtd_register_samplers`` hook as :class:`Sampler` specs (or bare functions).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import attrs
import torch
from tqdm.auto import tqdm

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.types import Prediction


@attrs.frozen
class StepPrediction:
    """The denoiser's answer at one step: an exact decomposition of the state the step starts from,
    ``z_t`` (or z_k) = sqrt(abar_k) z0 + sum_i lambda_k^(i) E_i + sqrt(1 - abar_k) eps (mtd_core/sampling/estimate.py).

    Attributes:
        eps: the noise estimate (eps_theta after guidance, or re-derived from the processed ``z0``), like z_k.
        z0: the base estimate z0_hat used by the step (clipped or thresholded when asked), like z_k.
        enc: aggregated name -> the encoding used in the reverse step: the posterior mean E[E_i | z_k] given by the
            head of a generated modality, the true E_j(x_j) of an observed one. Holds every aggregated modality.
        preds: aggregated name -> the raw head prediction at this step.
        z_t: the state the step starts from when the denoiser changed z_k (conditional generation by replacement,
            or a clipped estimate under the "keep" rule; :class:`~mtd_core.sampling.generate.ModelDenoiser`);
            None: z_k itself.
    """

    eps: torch.Tensor
    z0: torch.Tensor
    enc: dict[str, torch.Tensor]
    preds: dict[str, Prediction]
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
        z0_hat: the base estimate the step used (the prediction's ``z0``; for multistep and second-order
            samplers, the combination of several predictions that entered the step).
        prediction: the denoiser's prediction at z_t (the first of the step's evaluations).
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


SamplerFn = Callable[..., SamplerOutput]
"""The signature every sampler function shares::

    fn(denoise: StepDenoiser, z: Tensor, fp: ForwardProcess, *, generator: Generator | None = None,
       callback: Callback | None = None, progress: bool = True, **its_own_options) -> SamplerOutput

Written ``Callable[..., SamplerOutput]``: a Protocol with ``**options`` would refuse every sampler whose own
options are named keywords (``eta``, ``variance``); tests/test_sampling.py checks each registered one."""


@attrs.frozen
class Sampler:
    """A registered sampler: its function and what :func:`~mtd_core.sampling.generate` needs to know about it.

    Attributes:
        fn: the sampler function (the shared signature above).
        evals_per_step: network evaluations per step; the last step (to t = 0) always takes one. NFE for K steps:
            ``evals_per_step * K - (evals_per_step - 1)``.
        min_steps: the fewest steps it accepts (a second-order method needs two to be more than DDIM).
        description: one line for ``mtd plugins list`` and the docs.
    """

    fn: SamplerFn
    evals_per_step: int = 1
    min_steps: int = 1
    description: str = ""

    def nfe(self, steps: int) -> int:
        """The network evaluations of ``steps`` steps."""
        return self.evals_per_step * steps - (self.evals_per_step - 1)

    def steps_for(self, nfe: int) -> int:
        """The most steps whose NFE does not exceed ``nfe``."""
        return (nfe + self.evals_per_step - 1) // self.evals_per_step

    def option_names(self) -> list[str]:
        """The keyword options of ``fn`` beyond the shared ones."""
        shared = {"denoise", "z", "fp", "generator", "callback", "progress"}
        params = inspect.signature(self.fn).parameters.values()
        return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in shared]

    def __call__(self, denoise: StepDenoiser, z: torch.Tensor, fp: ForwardProcess, **kwargs: object) -> SamplerOutput:
        return self.fn(denoise, z, fp, **kwargs)


def randn_like(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``z``, drawn on the generator's device (so a seeded CPU generator gives
    the same numbers whatever device sampling runs on) and moved to ``z``'s device."""
    if generator is None:
        return torch.randn_like(z)
    return torch.randn(z.shape, generator=generator, device=generator.device, dtype=z.dtype).to(z.device)


def run_steps(step: Callable[[ForwardProcess, torch.Tensor, int, StepPrediction, torch.Tensor | None], StepResult],
              stochastic: Callable[[int], bool], denoise: StepDenoiser, z: torch.Tensor, fp: ForwardProcess, *,
              generator: torch.Generator | None, callback: Callback | None, progress: bool, desc: str) -> SamplerOutput:
    """The loop of the one-evaluation samplers: for k = K..1 predict, draw noise if ``stochastic(k)``, step, call
    back. ``step`` may keep state between calls (a multistep method) or evaluate ``denoise`` again (Heun)."""
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
