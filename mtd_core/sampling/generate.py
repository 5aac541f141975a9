"""generate(): joint, conditional and read-out generation from a MultiTaskModel (docs/sampling.md).

``given`` maps observed modality names to data; every other modality is generated. Three modes follow:

    joint        nothing given. Reverse diffusion from z_K ~ N(0, I); every step uses the posterior means
                 E[E_i | z_t] of every head's prediction (``encoding_temperature``, or the kind's
                 ``default_encoding_temperature``, e.g. a caption's 0.7, sharpens a categorical head's
                 probabilities there). The base comes from z_0, each aggregated modality from its head at the
                 last step. With ``joint = "commit"`` (the default) a modality whose head is its whole
                 distribution (``Modality.exact_sample``: a label) is instead drawn from its head at z_K, the
                 model's prior of it, and everything else is generated given it: p(y) p(x | y), one model. A
                 kind that keeps values of its training data (``Modality.empirical_prior``: a representation) is
                 committed to one of them, drawn uniformly, at no network evaluation.
    conditional  some aggregated modalities given, the base not. Their part sum_j lambda_t^(j) E_j(x_j) of z_t is
                 known exactly. Three ways to use it (``conditioning``):
                 "replace" (default): z_0 is estimated from the network's own decomposition of z_t (its eps and
                     the encodings of its heads' predictions, as in joint mode), then the observed modalities'
                     part of z_t, as the heads see it, is replaced by the true one before stepping; every next
                     state thus carries the true encodings (RePaint-style replacement, in the latent).
                 "inject": the true encodings enter both the z_0 estimate and the step, with the network's
                     unconditional eps = E[eps | z_t]. Not the conditional: that needs E[eps | z_t, y].
                 "exact": "inject" with E[eps | z_t, y] = E[eps | z_t] - sqrt(1 - abar_t) grad log p(y | z_t), the
                     model's own guidance at scale 1 for every observed modality (guidance.py); exact for a model
                     whose eps and heads are exact. A task set with ``known_input`` shows the network the observed
                     part, so its eps is E[eps | z_t, y] already and the three modes coincide; there
                     ``cfg_scale`` w > 1 applies classifier-free guidance, eps_untold + w (eps_told - eps_untold),
                     by default (the largest ``design.cfg_scale`` of the given kinds, DEFAULT_CFG_SCALE for the
                     built-ins; cfg.py) where the encodings have channels of their own.
                 Base values that a given modality shows as they are (a masked image's unhidden pixels,
                 ``Modality.observed_base``) are kept in every step's base estimate (``keep_observed``, estimate.py).
    readout      the base given (classification, representation or caption prediction). No reverse process: the
                 heads are read from z_t = sqrt(abar_t) z_0 + sum_j lambda_t^(j) E_j(x_j) + sqrt(1 - abar_t) eps
                 at the small t = read_t * T (the unknown modalities' injected parts, tiny at small t, are left out).

Guidance towards a target of a generated modality also puts the target's encoding into the steps, as "inject" does
for an observed one (the steered trajectory carries what it is steered to). Every step's base estimate is clipped,
thresholded or left as it is (``clip``, estimate.py). Observed modalities are returned unchanged (the very objects
passed in).

Every network evaluation counts against the budget (``nfe``, else DEFAULT_STEPS): the committed draw at z_K, and
both passes of classifier-free guidance, come out of it (budget.py). Where each part lives: plan.py checks the
options (with cfg.py, temperature.py and observed.py), budget.py fixes the sampler's steps, reverse.py runs the
reverse process, readout.py the read-out, and samples.py assembles what is returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import torch

from mtd_core.sampling.base import Callback
from mtd_core.sampling.budget import Budget, check_sampler
from mtd_core.sampling.denoiser import base_range
from mtd_core.sampling.guidance import GuidanceConfig
from mtd_core.sampling.options import (
    DEFAULT_CFG_SCALE,
    DEFAULT_CLIP,
    DEFAULT_CLIP_EPS,
    DEFAULT_JOINT,
    DEFAULT_READ_T,
    DEFAULT_SAMPLER,
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    JOINT,
    SamplingOptions,
    sampling_options,
)
from mtd_core.sampling.plan import Plan, check_device, make_plan
from mtd_core.sampling.readout import read_ts, readout
from mtd_core.sampling.reverse import denoiser_args, needs_head_draw, reverse
from mtd_core.sampling.samples import samples as assemble
from mtd_core.types import Batch, BatchValue, ConfigValue, Prediction

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel
    from mtd_core.plugins.registry import Registry


@attrs.frozen
class GenerationOutput:
    """What :func:`generate` returns.

    Attributes:
        samples: every modality of the task set by name, in task-set order: generated data (each passing its
            modality's ``validate``) and the observed data exactly as given.
        predictions: the raw head prediction of every generated aggregated modality (last sampling step, or
            the read-out), e.g. a label's logits.
        mode: "joint", "conditional" or "readout".
        nfe: network evaluations per sample, every one spent: the committed draw at z_K (joint = "commit"), the
            sampler's (twice with classifier-free guidance) or the read-out's; never more than a given ``nfe``
            (budget.py).
        cfg_scale: the classifier-free guidance scale applied (1: none), the default's resolution included.
    """

    samples: Batch
    predictions: dict[str, Prediction]
    mode: str
    nfe: int = 0
    cfg_scale: float = 1.0


def generate(
    model: MultiTaskModel,
    n: int | None = None,
    given: Mapping[str, BatchValue] | None = None,
    *,
    guidance: GuidanceConfig | None = None,
    inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    registry: Registry | None = None,
    options: SamplingOptions | None = None,
    **sampling: ConfigValue,
) -> GenerationOutput:
    """Generate every modality not in ``given`` (see the module docstring for the three modes).

    Args:
        model: a MultiTaskModel (already on its device; it is put in eval mode and restored afterwards).
        n: the number of samples; inferred from ``given`` when it is omitted (a ConfigError if they disagree).
        given: observed modality name -> a batch of its data (a tensor, or raw values its ``derive`` turns into
            one, e.g. caption strings).
        guidance: steer towards a target value of an aggregated modality with its own head (not in readout mode).
        inpaint: (images, mask): generate the base around the known part of ``images`` (a batch of the base's
            data), ``mask`` a bool tensor broadcasting to it, True where a value is to be generated (as
            ``mtd_plugins.masked_image.make_mask``); the known values are kept in every step's base estimate, as
            ``keep_observed`` keeps a given masked image's (training-free inpainting, any model with a base; not
            in readout mode). ``n`` defaults to the number of images.
        generator: the RNG for every random draw; with a seeded CPU generator, generation is bit-for-bit repeatable.
        callback: called with a SamplerStep after each reverse step.
        progress: show a tqdm progress bar.
        device: where to sample (default: the model's device; the model must already be there).
        registry: the plugin registry that provides the samplers (default: ``get_registry()``).
        options: how to sample, a :class:`SamplingOptions` (sampler, steps or NFE, spacing, base estimate, ...).
        **sampling: the same fields by keyword instead (``generate(model, 8, nfe=10, sampler="heun")``); not both.
    """
    o = sampling_options(options, sampling)
    given = dict(given or {})
    dev = check_device(model, given, device)
    if inpaint is not None and n is None and not given and isinstance(inpaint, tuple) and len(inpaint) == 2:
        n = len(inpaint[0])
    plan = make_plan(model, given, n, generator, o, guidance, dev, inpaint)
    budget = None
    if plan.mode != "readout":
        budget = check_sampler(o, registry, plan.cfg_scale, draws=int(needs_head_draw(model, plan.commit)))
        plan.estimate.check(base_range(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            z0, predictions, committed, used = _run(model, plan, budget, o, generator, callback, progress, dev)
    finally:
        model.train(was_training)
    samples = assemble(model, given, plan.mode, committed, z0, predictions, generator)
    return GenerationOutput(samples=samples, predictions=predictions, mode=plan.mode, nfe=used,
                            cfg_scale=plan.cfg_scale)


def _run(model: MultiTaskModel, plan: Plan, budget: Budget | None, o: SamplingOptions,
         generator: torch.Generator | None, callback: Callback | None, progress: bool, dev: torch.device
         ) -> tuple[torch.Tensor, dict[str, Prediction], dict[str, torch.Tensor], int]:
    """Encode the given data, then read the heads out (``budget`` None) or run the reverse process: z_0, the
    heads' predictions, the committed draws and the network evaluations spent."""
    z0, observed = model.encode_some(plan.data, list(plan.data))
    if budget is None:
        z0, predictions = readout(model, z0, observed, o.read_t, generator)
        return z0, predictions, {}, len(read_ts(o.read_t, model.forward_process.T))
    z0, predictions, committed = reverse(model, plan.B, observed, budget.spec, budget.steps, o.spacing,
                                         budget.options, denoiser_args(model, plan, observed, o, dev),
                                         generator, callback, progress, dev, plan.commit)
    return z0, predictions, committed, budget.nfe


__all__ = [  # the defaults are re-exported here, where callers imported them before options.py existed
    "DEFAULT_CFG_SCALE",
    "DEFAULT_CLIP",
    "DEFAULT_CLIP_EPS",
    "DEFAULT_JOINT",
    "DEFAULT_READ_T",
    "DEFAULT_SAMPLER",
    "DEFAULT_SPACING",
    "DEFAULT_STEPS",
    "JOINT",
    "GenerationOutput",
    "SamplingOptions",
    "generate",
]
