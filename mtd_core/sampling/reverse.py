"""The reverse process of joint and conditional generation: the sampler from z_K ~ N(0, I) down to z_0 on the
process respaced to the run's steps, each step's prediction from a ModelDenoiser (denoiser.py).

With joint = "commit", the modalities of ``commit`` are first drawn, y ~ p(y), and then treated as observed: their
part sum_j lambda_t^(j) E_j(y_j) of z_t is known in every step, so the rest is generated given them, p(y) p(x | y).
p(y) is the head at z_K, p(y | z_K) (the model's prior of y, one network evaluation for all of them), or for a kind
that keeps values of its training data (``Modality.empirical_prior``) a uniform draw of one of them (no evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from mtd_core.diffusion.noise import respaced_timesteps
from mtd_core.errors import ConfigError, ModalityDataError, ScheduleError
from mtd_core.sampling.base import Callback, Sampler, randn_like
from mtd_core.sampling.denoiser import ModelDenoiser, base_range
from mtd_core.sampling.options import SamplingOptions
from mtd_core.sampling.plan import Plan
from mtd_core.types import ConfigDict, Prediction

if TYPE_CHECKING:
    from mtd_core.diffusion.forward import ForwardProcess
    from mtd_core.modality import Modality
    from mtd_core.model import MultiTaskModel


def denoiser_args(model: MultiTaskModel, plan: Plan, observed: dict[str, torch.Tensor], o: SamplingOptions,
                  dev: torch.device) -> dict[str, Any]:  # Any: ModelDenoiser's keywords (several types)
    """The keyword arguments of every step's ModelDenoiser (the guidance targets' encodings included)."""
    targets: dict[str, torch.Tensor] = {}
    for gm, target, scale in plan.guide:
        if scale > 0 and gm.name not in observed:
            targets.update(model.encode_some({gm.name: target}, [gm.name])[1])
    return {"guidance": plan.guide, "conditioning": o.conditioning, "temperature": plan.temperature,
            "estimate": plan.estimate, "base": base_range(model), "targets": targets,
            "observed_data": {k: v.to(dev) for k, v in plan.data.items()}, "classifiers": plan.classifiers,
            "cfg_scale": plan.cfg_scale, "observed_base": plan.observed_base}


def reverse(model: MultiTaskModel, B: int, observed: dict[str, torch.Tensor], spec: Sampler, steps: int, spacing: str,
            options: ConfigDict, denoiser_args: dict[str, Any],  # Any: ModelDenoiser's keywords (several types)
            generator: torch.Generator | None, callback: Callback | None, progress: bool, dev: torch.device,
            commit: Sequence[str] = ()
            ) -> tuple[torch.Tensor, dict[str, Prediction], dict[str, torch.Tensor]]:
    """Joint or conditional generation: the sampler from z_K down to z_0 on the respaced process. The modalities of
    ``commit`` are first drawn from their heads at z_K and then treated as observed (returned as the third value)."""
    full = model.forward_process
    try:
        fp = full.respace(respaced_timesteps(full.T, steps, spacing, full.abar))
    except ScheduleError as e:
        raise ConfigError(f"generate: steps = {steps!r}, spacing = {spacing!r}: {e}") from None
    z = randn_like(torch.empty(B, *model.taskset.latent.shape, device=dev), generator)
    committed: dict[str, torch.Tensor] = {}
    if commit:
        committed = draw_committed(model, fp, z, commit, generator)
        observed = {**observed, **model.encode_some(committed, list(committed))[1]}
        denoiser_args = {**denoiser_args, "observed_data": {**denoiser_args["observed_data"], **committed}}
    # The observed modalities' part of z_K (lambda_T is ~0 by validation; kept for exactness).
    zeros = {name: torch.zeros_like(z) for name in fp.names if name not in observed}
    z = z + fp.injected({**zeros, **observed}, fp.T, z)
    denoise = ModelDenoiser(model, fp, observed, **denoiser_args)
    out = spec(denoise, z, fp, generator=generator, callback=callback, progress=progress, **options)
    predictions = {n: p for n, p in out.last.preds.items() if n not in observed or n in committed}
    return out.z0, predictions, committed


def draw_committed(model: MultiTaskModel, fp: ForwardProcess, z: torch.Tensor, commit: Sequence[str],
                   generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """y_i ~ p(y_i) for every modality of ``commit``: a uniform draw of its ``empirical_prior`` values where it
    keeps them, else y_i ~ p(y_i | z_K) from its head at the first timestep (one network evaluation for all of
    those; budget.py counts it)."""
    drawn = {n: empirical_draw(model.taskset[n], len(z), generator, z.device) for n in commit}
    headed = [n for n, y in drawn.items() if y is None]
    if headed:
        preds = model(z, fp.timesteps[fp.T].to(z.device).expand(len(z))).preds
        drawn.update({n: model.taskset[n].sample(preds[n], greedy=False, generator=generator) for n in headed})
    return {n: y for n, y in drawn.items() if y is not None}


def empirical_draw(m: Modality, B: int, generator: torch.Generator | None, dev: torch.device) -> torch.Tensor | None:
    """B values drawn uniformly, with replacement, from ``m.empirical_prior()`` (checked), or None without one."""
    values = m.empirical_prior()
    if values is None:
        return None
    if not isinstance(values, torch.Tensor) or len(values) == 0:
        got = f"an empty tensor {tuple(values.shape)}" if isinstance(values, torch.Tensor) else type(values).__name__
        raise ModalityDataError(f"modality {m.name!r} ({m.kind}): empirical_prior() must return a non-empty "
                                f"tensor of values, got {got}")
    m.validate(values, where="empirical_prior()")
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randint(len(values), (B,), generator=generator, device=gen_dev).to(values.device)
    return values[idx].to(dev)


def needs_head_draw(model: MultiTaskModel, commit: Sequence[str]) -> bool:
    """Whether drawing ``commit`` costs a network evaluation (some of them are drawn from their heads)."""
    return any(model.taskset[n].empirical_prior() is None for n in commit)


__all__ = ["denoiser_args", "draw_committed", "empirical_draw", "needs_head_draw", "reverse"]
