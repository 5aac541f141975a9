"""generate(): joint, conditional and read-out generation from a MultiTaskModel (docs/sampling.md).

``given`` maps observed modality names to data; every other modality is generated. Three modes follow:

    joint        nothing given. Reverse diffusion from z_K ~ N(0, I); every step uses the posterior means
                 E[E_i | z_t] of every head's prediction (``encoding_temperature``, or the kind's
                 ``default_encoding_temperature``, e.g. a caption's 0.7, sharpens a categorical head's
                 probabilities there). The base comes from z_0, each aggregated modality from its head at the
                 last step. With ``joint = "commit"`` (the default) a modality whose head is its whole
                 distribution (``Modality.exact_sample``: a label) is instead drawn from its head at z_K, the
                 model's prior of it, and everything else is generated given it: p(y) p(x | y), one model.
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
                     by default (DEFAULT_CFG_SCALE) where the encodings have channels of their own.
                 Base values that a given modality shows as they are (a masked image's unhidden pixels,
                 ``Modality.observed_base``) are kept in every step's base estimate (``keep_observed``, estimate.py).
    readout      the base given (classification, representation or caption prediction). No reverse process: the
                 heads are read from z_t = sqrt(abar_t) z_0 + sum_j lambda_t^(j) E_j(x_j) + sqrt(1 - abar_t) eps
                 at the small t = read_t * T (the unknown modalities' injected parts, tiny at small t, are left out).

Guidance towards a target of a generated modality also puts the target's encoding into the steps, as "inject" does
for an observed one (the steered trajectory carries what it is steered to). Every step's base estimate is clipped,
thresholded or left as it is (``clip``, estimate.py). Observed modalities are returned unchanged (the very objects
passed in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

from mtd_core.diffusion.noise import respaced_timesteps
from mtd_core.errors import ConfigError, ModalityDataError, ScheduleError, closest
from mtd_core.modality import Modality, Role, is_temperature
from mtd_core.sampling.base import Callback, Sampler, randn_like
from mtd_core.sampling.estimate import BaseEstimate, ObservedBase
from mtd_core.sampling.denoiser import GuideTerm, ModelDenoiser, base_range, check_conditioning
from mtd_core.sampling.guidance import Classifier, GuidanceConfig, check_guidance, resolve_target
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
from mtd_core.sampling.readout import read_ts, readout
from mtd_core.types import Batch, BatchValue, ConfigDict, ConfigValue, Prediction

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
        nfe: network evaluations per sample (the sampler's, twice with classifier-free guidance, or the read-out's).
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
    dev = _check_device(model, given, device)
    if inpaint is not None and n is None and not given and isinstance(inpaint, tuple) and len(inpaint) == 2:
        n = len(inpaint[0])
    plan = _plan(model, given, n, generator, o, guidance, dev, inpaint)
    spec = kwargs = steps = None
    if plan.mode != "readout":
        spec, steps, kwargs = _check_sampler(o, registry, plan.cfg_scale)
        plan.estimate.check(base_range(model))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            z0, observed = model.encode_some(plan.data, list(plan.data))
            if plan.mode == "readout":
                z0, predictions = readout(model, z0, observed, o.read_t, generator)
                used, committed = len(read_ts(o.read_t, model.forward_process.T)), dict[str, torch.Tensor]()
            else:
                assert spec is not None and steps is not None and kwargs is not None
                z0, predictions, committed = _reverse(model, plan.B, observed, spec, steps, o.spacing, kwargs,
                                                      _denoiser_args(model, plan, observed, o, dev),
                                                      generator, callback, progress, dev, plan.commit)
                used = spec.nfe(steps) * _passes(plan.cfg_scale) + (1 if plan.commit else 0)
    finally:
        model.train(was_training)
    samples = _samples(model, given, plan.mode, committed, z0, predictions, generator)
    return GenerationOutput(samples=samples, predictions=predictions, mode=plan.mode, nfe=used,
                            cfg_scale=plan.cfg_scale)


@attrs.frozen
class _Plan:
    """What generate() checked and resolved before sampling."""

    mode: str
    B: int
    data: dict[str, torch.Tensor]
    estimate: BaseEstimate
    commit: list[str]
    temperature: dict[str, float]
    guide: list[GuideTerm]
    classifiers: dict[str, Classifier]
    cfg_scale: float
    observed_base: ObservedBase | None


def _plan(model: MultiTaskModel, given: Batch, n: int | None, generator: torch.Generator | None,
          o: SamplingOptions, guidance: GuidanceConfig | None, dev: torch.device,
          inpaint: tuple[torch.Tensor, torch.Tensor] | None = None) -> _Plan:
    """Check generate()'s options against each other and the task set: the mode, the observed data, the base
    estimate, the modalities committed first, the temperatures and the guidance terms."""
    modalities: dict[str, Modality] = model.taskset.modalities
    check_conditioning(o.conditioning)
    clip = o.clip
    if clip is None:
        bounded = base_range(model)
        clip = DEFAULT_CLIP if bounded is not None and None not in (bounded.low, bounded.high) else "none"
    estimate = BaseEstimate(clip, o.clip_eps, o.clip_percentile)  # type: ignore[arg-type]
    data, B = _observed_data(modalities, given, n, generator)
    base = model.taskset.base
    mode = "readout" if base is not None and base.name in given else ("conditional" if given else "joint")
    if not isinstance(o.keep_observed, bool):
        raise ConfigError(f"generate: keep_observed must be true or false, got {o.keep_observed!r}")
    if o.joint not in JOINT:
        raise ConfigError(f"generate: joint must be one of {list(JOINT)}, got {o.joint!r}")
    guided = {guidance.modality} if guidance is not None else set()
    commit = [] if mode == "readout" or o.joint == "flow" else [
        name for name, m in modalities.items()
        if m.role is Role.AGGREGATED and m.exact_sample and name not in given and name not in guided]
    temperature = _check_temperature(modalities, given, mode, o.encoding_temperature)
    tempered = [name for name in temperature if name in commit]
    if tempered:
        raise ConfigError(f"generate: encoding_temperature names {tempered}, which joint = 'commit' draws from the "
                          "head at the first step (no encoding to temper); pass joint='flow' to temper them")
    if mode != "readout":  # the kinds' own defaults where the option is silent
        temperature.update(_default_temperatures(modalities, [*given, *commit, *temperature]))
    cfg_scale = _cfg_scale(model, o.cfg_scale, mode)
    if mode == "readout" and guidance is not None:
        raise ConfigError("generate: guidance needs a reverse process; it does not apply when the base is given")
    guide: list[GuideTerm] = []
    classifiers: dict[str, Classifier] = {}
    if guidance is not None:
        gm = check_guidance(guidance, modalities)
        guide.append((gm, resolve_target(gm, guidance.target, B, dev), float(guidance.scale)))
        if guidance.classifier is not None:
            classifiers[gm.name] = guidance.classifier
    kept = _observed_base(model, data, dev) if o.keep_observed and mode == "conditional" else None
    if inpaint is not None:
        kept = _inpaint(model, inpaint, B, mode, dev, kept)
    return _Plan(mode, B, data, estimate, commit, temperature, guide, classifiers, cfg_scale, kept)


def _cfg_scale(model: MultiTaskModel, w: object, mode: str) -> float:
    """The classifier-free guidance scale: None resolves to DEFAULT_CFG_SCALE on a conditional run of a told task
    set with a trained untold path and the encodings on channels of their own, else to 1 (off); a given scale
    needs a number >= 0 and, unless 1, a conditional run of a told model whose untold path was trained (known_input
    with known_dropout > 0)."""
    ts = model.taskset
    if w is None:
        applies = mode == "conditional" and ts.known_input and ts.known_dropout > 0 and ts.aux_channels > 0
        return DEFAULT_CFG_SCALE if applies else 1.0
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise ConfigError(f"generate: cfg_scale must be a finite number >= 0 (1 turns classifier-free guidance off), "
                          f"got {w!r}")
    if w == 1:
        return 1.0
    if mode != "conditional":
        raise ConfigError(f"generate: cfg_scale = {w} guides towards given aggregated modalities, but this run is "
                          f"{mode} (give the label, caption, ... to condition on, and not the base)")
    if not ts.known_input or ts.known_dropout == 0:
        raise ConfigError(f"generate: cfg_scale = {w} needs a network trained both told and untold the given part: "
                          f"a task set with known_input = true and known_dropout > 0 (this one has known_input = "
                          f"{str(ts.known_input).lower()}, known_dropout = {ts.known_dropout}); use guidance= (the "
                          "model's own heads) instead")
    return float(w)


def _denoiser_args(model: MultiTaskModel, plan: _Plan, observed: dict[str, torch.Tensor], o: SamplingOptions,
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


def _samples(model: MultiTaskModel, given: Batch, mode: str, committed: dict[str, torch.Tensor], z0: torch.Tensor,
             predictions: dict[str, Prediction], generator: torch.Generator | None) -> Batch:
    """Every modality's samples: the given data as given, committed draws, the decoded base, the heads' reads."""
    samples: Batch = {}
    for name, m in model.taskset.modalities.items():
        if name in given:
            samples[name] = given[name]
        elif mode != "readout" and name in committed:
            samples[name] = committed[name]
        elif m.role is Role.BASE:
            samples[name] = _decode_base(m, model.base_part(z0))
        else:
            x = m.sample(predictions[name], greedy=True, generator=generator)
            m.validate(x, where="generated sample")
            samples[name] = x
    return samples


def _check_device(model: MultiTaskModel, given: Batch, device: torch.device | str | None) -> torch.device:
    """Reject unknown modalities and a device the model is not on; return the sampling device."""
    modalities = model.taskset.modalities
    for name in given:
        if name not in modalities:
            raise ConfigError(f"generate: given has an unknown modality {name!r}{closest(name, list(modalities))}; "
                              f"the task set has {list(modalities)}")
    model_device = model.device
    dev = torch.device(device) if device is not None else model_device
    if dev != model_device and not (dev.type == model_device.type and dev.index is None):
        raise ConfigError(f"generate: the model is on {model_device}, not {dev}; move it with model.to({str(dev)!r})")
    return dev


def _passes(cfg_scale: float) -> int:
    """The network evaluations behind each of the sampler's: two under classifier-free guidance (told and untold)."""
    return 1 if cfg_scale == 1 else 2


def _check_sampler(o: SamplingOptions, registry: Registry | None, cfg_scale: float
                   ) -> tuple[Sampler, int, ConfigDict]:
    """The sampler spec, its number of steps and its options, after checking every one of them. ``nfe`` and the
    default budget count every network evaluation, both passes of classifier-free guidance (``cfg_scale``, resolved)
    included."""
    name, steps, nfe, eta, variance, sampler_options = o.sampler, o.steps, o.nfe, o.eta, o.variance, o.sampler_options
    if registry is None:
        from mtd_core.plugins.registry import get_registry

        registry = get_registry()
    try:
        spec: Sampler = registry.sampler(name)
    except ConfigError as e:
        raise ConfigError(f"generate: {e}") from None
    if steps is not None and nfe is not None:
        raise ConfigError(f"generate: give steps or nfe, not both (got steps = {steps}, nfe = {nfe})")
    for key, value in (("steps", steps), ("nfe", nfe)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"generate: {key} must be a positive integer, got {value!r}")
    passes = _passes(cfg_scale)
    if nfe is not None:
        steps = spec.steps_for(nfe // passes)
    steps = DEFAULT_STEPS // passes if steps is None else steps
    if steps < spec.min_steps:
        got = f"nfe = {nfe} gives {steps} step(s)" if nfe is not None else f"steps = {steps}"
        twice = (f" with classifier-free guidance's two passes a step: cfg_scale = {cfg_scale:g}, 1 turns it off"
                 if passes > 1 else "")
        raise ConfigError(f"generate: sampler {name!r} needs at least {spec.min_steps} steps "
                          f"(NFE >= {spec.nfe(spec.min_steps) * passes}{twice}); {got}")
    options = dict(sampler_options or {})
    if eta != 0.0:
        options["eta"] = eta
    if variance is not None:
        options["variance"] = variance
    accepted = spec.option_names()
    for key in options:
        if key not in accepted:
            raise ConfigError(f"generate: sampler {name!r} has no option {key!r}{closest(key, accepted)}; "
                              f"its options: {accepted}")
    return spec, steps, options


def _check_temperature(modalities: dict[str, Modality], given: Batch, mode: str,
                       temperature: Mapping[str, float] | None) -> dict[str, float]:
    """The encoding temperatures, checked: generated aggregated modalities that support one, values in (0, inf)."""
    temperature = dict(temperature or {})
    if temperature and mode == "readout":
        raise ConfigError("generate: encoding_temperature needs a reverse process; it does not apply when the base "
                          "is given")
    for name, tau in temperature.items():
        if name not in modalities or modalities[name].role is not Role.AGGREGATED or name in given:
            generated = [n for n, m in modalities.items() if m.role is Role.AGGREGATED and n not in given]
            raise ConfigError(f"generate: encoding_temperature names {name!r}, which is not a generated aggregated "
                              f"modality{closest(name, generated)}; those are {generated}")
        if type(modalities[name]).temper is Modality.temper:
            raise ConfigError(f"generate: encoding_temperature: modality {name!r} ({modalities[name].kind}) has "
                              "categorical predictions only if it overrides Modality.temper; it does not")
        if not is_temperature(tau):
            raise ConfigError(f"generate: encoding_temperature[{name!r}] must be a positive finite number, got {tau!r}")
    return {n: float(t) for n, t in temperature.items()}


def _default_temperatures(modalities: dict[str, Modality], skip: Sequence[str]) -> dict[str, float]:
    """``Modality.default_encoding_temperature`` of every generated aggregated modality not in ``skip`` where it is
    not 1 (a kind's value that is not a positive finite number, or set without ``temper``, is a ConfigError)."""
    out = {}
    for name, m in modalities.items():
        tau = m.default_encoding_temperature
        if m.role is not Role.AGGREGATED or name in skip or tau == 1.0:
            continue
        if not is_temperature(tau) or type(m).temper is Modality.temper:
            raise ConfigError(f"modality {name!r} ({m.kind}, {type(m).__module__}): default_encoding_temperature must "
                              f"be a positive finite number on a kind that overrides Modality.temper, got {tau!r}")
        out[name] = float(tau)
    return out


def _observed_data(modalities: dict[str, Modality], given: Batch, n: int | None,
                   generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], int]:
    """The given data as tensors (raw values such as caption strings go through the modality's ``derive``) and
    the batch size, checked against ``n``."""
    data = {}
    for name, x in given.items():
        if isinstance(x, torch.Tensor):
            data[name] = x
            continue
        derived = modalities[name].derive({name: x}, generator)
        if derived is None:
            raise ModalityDataError(f"modality {name!r}: given data must be a tensor, got {type(x).__name__}")
        data[name] = derived
    sizes = {name: len(x) for name, x in data.items()}
    if len(set(sizes.values())) > 1:
        raise ModalityDataError(f"generate: given modalities must have the same batch size, got {sizes}")
    if sizes:
        B = next(iter(sizes.values()))
        if n is not None and n != B:
            raise ConfigError(f"generate: n = {n} but the given data has {B} examples")
    elif n is None:
        raise ConfigError("generate: n (the number of samples) is required when nothing is given")
    else:
        B = n
    if not isinstance(B, int) or isinstance(B, bool) or B < 1:
        raise ConfigError(f"generate: n must be a positive integer, got {B!r}")
    return data, B


def _observed_base(model: MultiTaskModel, data: Mapping[str, torch.Tensor], dev: torch.device
                   ) -> ObservedBase | None:
    """(values, known) of the base that the given modalities show as it is (``Modality.observed_base``; where
    several show a value, the later one in ``data``), checked; None where none shows any."""
    base = model.taskset.base
    if base is None:
        return None
    shape = (len(next(iter(data.values()))), *base.data_spec().shape)
    kept: ObservedBase | None = None
    for name, x in data.items():
        shown = model.taskset[name].observed_base(x, base)
        if shown is None:
            continue
        v, k = shown
        if tuple(v.shape) != shape or k.dtype != torch.bool or not _broadcasts(k.shape, v.shape):
            raise ModalityDataError(
                f"modality {name!r} ({model.taskset[name].kind}): observed_base() must return values shaped like "
                f"the base {base.name!r}'s batch {shape} and a bool mask broadcasting to them, got values "
                f"{tuple(v.shape)} and a {k.dtype} mask {tuple(k.shape)}")
        kept = _join(kept, v.to(dev), k.to(dev))
    return kept


def _inpaint(model: MultiTaskModel, inpaint: object, B: int, mode: str, dev: torch.device,
             kept: ObservedBase | None) -> ObservedBase:
    """generate's ``inpaint`` (images, mask: True where generated) checked and turned into (values, known), joined
    with what the given modalities show (``kept``; the inpainted images win where both know a value)."""
    base = model.taskset.base
    if mode == "readout" or base is None:
        raise ConfigError("generate: inpaint generates the base around known values; "
                          + ("the base is given here (read-out)" if base is not None else "this task set has no base"))
    shape = (B, *base.data_spec().shape)
    if not (isinstance(inpaint, tuple) and len(inpaint) == 2 and all(isinstance(t, torch.Tensor) for t in inpaint)):
        raise ConfigError(f"generate: inpaint must be a tuple (images, mask) of tensors, got {type(inpaint).__name__}")
    images, mask = inpaint
    if tuple(images.shape) != shape or mask.dtype != torch.bool or not _broadcasts(mask.shape, images.shape):
        raise ModalityDataError(f"generate: inpaint needs images shaped like a batch of the base {base.name!r} "
                                f"{shape} and a bool mask broadcasting to them (True where generated), got images "
                                f"{tuple(images.shape)} and a {mask.dtype} mask {tuple(mask.shape)}")
    base.validate(images, where="inpaint images")
    return _join(kept, images.to(dev), ~mask.to(dev))


def _join(kept: ObservedBase | None, values: torch.Tensor, known: torch.Tensor) -> ObservedBase:
    """``kept`` with ``values`` known where ``known`` is True (the new values win where both know one)."""
    if kept is None:
        return values, known
    return torch.where(known, values, kept[0]), known | kept[1]


def _broadcasts(shape: torch.Size, to: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``to`` unchanged."""
    return len(shape) <= len(to) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(to), strict=False))


def _reverse(model: MultiTaskModel, B: int, observed: dict[str, torch.Tensor], spec: Sampler, steps: int, spacing: str,
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
        preds = model(z, fp.timesteps[fp.T].to(dev).expand(B)).preds
        committed = {n: model.taskset[n].sample(preds[n], greedy=False, generator=generator) for n in commit}
        observed = {**observed, **model.encode_some(committed, list(committed))[1]}
        denoiser_args = {**denoiser_args, "observed_data": {**denoiser_args["observed_data"], **committed}}
    # The observed modalities' part of z_K (lambda_T is ~0 by validation; kept for exactness).
    zeros = {name: torch.zeros_like(z) for name in fp.names if name not in observed}
    z = z + fp.injected({**zeros, **observed}, fp.T, z)
    denoise = ModelDenoiser(model, fp, observed, **denoiser_args)
    out = spec(denoise, z, fp, generator=generator, callback=callback, progress=progress, **options)
    predictions = {n: p for n, p in out.last.preds.items() if n not in observed or n in committed}
    return out.z0, predictions, committed


def _decode_base(m: Modality, z0: torch.Tensor) -> torch.Tensor:
    """The base modality's data from z_0: its encoder is the identity, so z_0 clipped to the data range."""
    spec = m.data_spec()
    if tuple(z0.shape[1:]) != spec.shape:
        raise ConfigError(f"generate: base modality {m.name!r} has data shape {spec.shape} but z_0 is "
                          f"{tuple(z0.shape[1:])}; only bases with an identity encoder can be generated")
    x = z0.float().clamp(spec.low if spec.low is not None else -float("inf"),
                         spec.high if spec.high is not None else float("inf")).to(spec.torch_dtype)
    m.validate(x, where="generated sample")
    return x


__all__ = [  # the defaults are re-exported here, where callers imported them before options.py existed
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
