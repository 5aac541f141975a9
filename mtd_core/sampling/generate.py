"""generate(): joint, conditional and read-out generation from a MultiTaskModel (docs/sampling.md).

``given`` maps observed modality names to data; every other modality is generated. Three modes follow:

    joint        nothing given. Reverse diffusion from z_K ~ N(0, I); every step uses E_i(xhat_i) of every head's
                 prediction (``encoding_temperature`` sharpens a categorical head's probabilities there). The
                 base comes from z_0, each aggregated modality from its head at the last step.
    conditional  some aggregated modalities given, the base not. Their part sum_j lambda_t^(j) E_j(x_j) of z_t is
                 known exactly. Two ways to use it (``conditioning``):
                 "replace" (default): z_0 is estimated from the network's own decomposition of z_t (its eps and
                     the encodings of its heads' predictions, as in joint mode), then the observed modalities'
                     part of z_t, as the heads see it, is replaced by the true one before stepping; every next
                     state thus carries the true encodings (RePaint-style replacement, in the latent).
                 "inject": the true encodings enter both the z_0 estimate and the step. Exact for an oracle, but
                     a learned network's error in separating the injected encodings from z_0 is divided by
                     sqrt(abar_t) in the z_0 estimate; with image-shaped conditions this diverges (docs/sampling.md).
    readout      the base given (classification, representation or caption prediction). No reverse process: the
                 heads are read from z_t = sqrt(abar_t) z_0 + sum_j lambda_t^(j) E_j(x_j) + sqrt(1 - abar_t) eps
                 at the small t = read_t * T (the unknown modalities' injected parts, tiny at small t, are left out).

Observed modalities are returned unchanged (the very objects passed in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.diffusion.noise import respaced_timesteps
from mtd_core.errors import ConfigError, ModalityDataError, ScheduleError, closest
from mtd_core.modality import Modality, Role
from mtd_core.sampling.base import Callback, StepPrediction, randn_like
from mtd_core.sampling.ddim import sample_ddim
from mtd_core.sampling.ddpm import sample_ddpm
from mtd_core.sampling.guidance import GuidanceConfig, check_guidance, guided_eps, resolve_target

SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm}

# Read-out at t = 0.02 T by default: small enough that the label (or caption) signal, which the heads were trained to
# see injected into z_t but is unknown here, is negligible (lambda_t -> 0 as t -> 0 for the default windowed
# schedule), and large enough to be a noise level the heads saw often in training. See docs/sampling.md.
DEFAULT_READ_T: tuple[float, ...] = (0.02,)


@attrs.frozen
class GenerationOutput:
    """What :func:`generate` returns.

    Attributes:
        samples: every modality of the task set by name, in task-set order: generated data (each passing its
            modality's ``validate``) and the observed data exactly as given.
        predictions: the raw head prediction of every generated aggregated modality (last sampling step, or
            the read-out), e.g. a label's logits.
        mode: "joint", "conditional" or "readout".
    """

    samples: dict[str, Any]
    predictions: dict[str, Any]
    mode: str


CONDITIONING = ("replace", "inject")


def _check_conditioning(conditioning: str) -> None:
    if conditioning not in CONDITIONING:
        raise ConfigError(f"generate: conditioning must be one of {list(CONDITIONING)}, got {conditioning!r}")


class ModelDenoiser:
    """The StepDenoiser of a model on a (respaced) process: true encodings for observed modalities, predicted
    encodings E_i(xhat_i) for the others, eps optionally guided.

    Args:
        model: the MultiTaskModel (or anything with ``__call__(z_t, t) -> DenoiserOutput``, ``predicted_encodings``).
        fp: the process the sampler walks; ``fp.timesteps[k]`` is the original t fed to the network.
        observed: aggregated name -> true encoding E_j(x_j) of every observed aggregated modality.
        guidance: (guiding modality, its target batch, scale), or None.
        conditioning: how observed encodings enter a step, "replace" or "inject" (see the module docstring).
        temperature: generated modality name -> the temperature of its head's probabilities behind E_i(xhat_i)
            (``Modality.temper``); the predictions returned in each StepPrediction stay untempered.
    """

    def __init__(self, model: Any, fp: ForwardProcess, observed: Mapping[str, torch.Tensor],
                 guidance: tuple[Modality, torch.Tensor, float] | None = None, conditioning: str = "replace",
                 temperature: Mapping[str, float] | None = None) -> None:
        _check_conditioning(conditioning)
        self.model, self.fp, self.observed, self.guidance = model, fp, dict(observed), guidance
        self.conditioning, self.temperature = conditioning, dict(temperature or {})

    def _encodings(self, preds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """E_i(xhat_i) of the given predictions, tempered where asked."""
        tempered = {n: self.model.taskset[n].temper(p, self.temperature[n]) if n in self.temperature else p
                    for n, p in preds.items()}
        return self.model.predicted_encodings(tempered)

    def __call__(self, z: torch.Tensor, k: int) -> StepPrediction:
        t = self.fp.timesteps[k].to(z.device).expand(z.shape[0])
        if self.guidance is not None and self.guidance[2] > 0:
            m, target, scale = self.guidance
            eps, preds = guided_eps(self.model, z, t, float(self.fp.abar[k]), m, target, scale)
        else:
            out = self.model(z, t)
            eps, preds = out.eps.to(z.dtype), out.preds
        if not self.observed or self.conditioning == "inject":
            generated = {n: p for n, p in preds.items() if n not in self.observed}
            enc = {n: e.to(z.dtype) for n, e in self._encodings(generated).items()}
            return StepPrediction(eps=eps, enc={**enc, **self.observed}, preds=preds)
        # replace: z_t = sqrt(abar) z0_hat + sum_i lambda_i E_i(xhat_i) + sqrt(1 - abar) eps as the network sees it;
        # swapping the observed E_j(xhat_j) for the true E_j leaves z0_hat unchanged and steps with the truth.
        enc = {n: e.to(z.dtype) for n, e in self._encodings(preds).items()}
        delta = {n: self.observed[n] - e if n in self.observed else torch.zeros_like(e) for n, e in enc.items()}
        z_t = z + self.fp.injected(delta, k, z)
        return StepPrediction(eps=eps, enc={**enc, **self.observed}, preds=preds, z_t=z_t)


def generate(
    model: Any,
    n: int | None = None,
    given: Mapping[str, Any] | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance: GuidanceConfig | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    read_t: float | Sequence[float] = DEFAULT_READ_T,
    variance: str | None = None,
    conditioning: str = "replace",
    encoding_temperature: Mapping[str, float] | None = None,
    spacing: str = "uniform",
) -> GenerationOutput:
    """Generate every modality not in ``given`` (see the module docstring for the three modes).

    Args:
        model: a MultiTaskModel (already on its device; it is put in eval mode and restored afterwards).
        n: the number of samples; inferred from ``given`` when it is omitted (a ConfigError if they disagree).
        given: observed modality name -> a batch of its data (a tensor, or raw values its ``derive`` turns into
            one, e.g. caption strings).
        sampler: "ddim" or "ddpm" (ancestral).
        steps: the number of reverse steps; the process is respaced to ``steps`` timesteps (``spacing``).
        eta: DDIM's noise level (0 = deterministic); only for "ddim".
        guidance: steer towards a target value of an aggregated modality with its own head (not in readout mode).
        generator: the RNG for every random draw; with a seeded CPU generator, generation is bit-for-bit repeatable.
        callback: called with a SamplerStep after each reverse step.
        progress: show a tqdm progress bar.
        device: where to sample (default: the model's device; the model must already be there).
        read_t: readout mode only: the read-out timestep(s) as fractions of T in (0, 1]; with several, the heads'
            tensor predictions (e.g. logits) are averaged over them.
        variance: "ddpm" only: sigma_t^2 = "beta" or "beta_tilde" (default "beta_tilde").
        conditioning: conditional mode only: "replace" (default) or "inject" (see the module docstring). A
            stochastic sampler (``"ddpm"``, or ``"ddim"`` with eta > 0) lets replacement correct itself across steps
            and restores image-shaped conditions much better than deterministic DDIM (docs/sampling.md).
        encoding_temperature: generated categorical modality name -> temperature of its head's probabilities
            behind E_i(xhat_i) in every reverse step (``Modality.temper``). Below 1 the trajectory commits to one
            class (or token) earlier instead of following the probability-weighted mixture of encodings, which
            made jointly generated images and labels agree more on the digits (docs/sampling.md). Not in
            readout mode; the returned samples and predictions are the heads' own.
        spacing: where the ``steps`` timesteps fall: "uniform" (evenly from 1 to T, the default), "quad"
            (denser at small t) or "leading" (every T // steps from 1, so the first step is below T, as in
            diffusers' DDIMScheduler; slightly better FID in docs/sampling.md).
    """
    modalities: dict[str, Modality] = model.taskset.modalities
    given = dict(given or {})
    dev = _check_arguments(model, given, sampler, eta, variance, device)
    _check_conditioning(conditioning)
    data, B = _observed_data(modalities, given, n, generator)

    base = model.taskset.base
    mode = "readout" if base is not None and base.name in given else ("conditional" if given else "joint")
    temperature = _check_temperature(modalities, given, mode, encoding_temperature)
    if mode == "readout" and guidance is not None:
        raise ConfigError("generate: guidance needs a reverse process; it does not apply when the base is given")
    guide = None
    if guidance is not None:
        gm = check_guidance(guidance, modalities)
        guide = (gm, resolve_target(gm, guidance.target, B, dev), float(guidance.scale))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            z0, observed = model.encode_some(data, list(data))
            if mode == "readout":
                z0, predictions = _readout(model, z0, observed, read_t, generator)
            else:
                z0, predictions = _reverse(model, B, observed, sampler, steps, eta, variance, guide, generator,
                                           callback, progress, dev, conditioning, temperature, spacing)
    finally:
        model.train(was_training)

    samples: dict[str, Any] = {}
    for name, m in modalities.items():
        if name in given:
            samples[name] = given[name]
        elif m.role is Role.BASE:
            samples[name] = _decode_base(m, z0)
        else:
            x = m.sample(predictions[name], greedy=True, generator=generator)
            m.validate(x, where="generated sample")
            samples[name] = x
    return GenerationOutput(samples=samples, predictions=predictions, mode=mode)


def _check_arguments(model: Any, given: dict[str, Any], sampler: str, eta: float, variance: str | None,
                     device: torch.device | str | None) -> torch.device:
    """Reject unknown modalities, samplers and options that do not apply; return the sampling device."""
    modalities = model.taskset.modalities
    for name in given:
        if name not in modalities:
            raise ConfigError(f"generate: given has an unknown modality {name!r}{closest(name, list(modalities))}; "
                              f"the task set has {list(modalities)}")
    model_device = model.device
    dev = torch.device(device) if device is not None else model_device
    if dev != model_device and not (dev.type == model_device.type and dev.index is None):
        raise ConfigError(f"generate: the model is on {model_device}, not {dev}; move it with model.to({str(dev)!r})")
    if sampler not in SAMPLERS:
        raise ConfigError(f"generate: unknown sampler {sampler!r}{closest(str(sampler), list(SAMPLERS))}; "
                          f"expected one of {list(SAMPLERS)}")
    if sampler != "ddim" and eta != 0.0:
        raise ConfigError(f"generate: eta applies to the 'ddim' sampler only, got eta = {eta} with {sampler!r}")
    if sampler != "ddpm" and variance is not None:
        raise ConfigError(f"generate: variance applies to the 'ddpm' sampler only, got {variance!r} with {sampler!r}")
    return dev


def _check_temperature(modalities: dict[str, Modality], given: dict[str, Any], mode: str,
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
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < float("inf"):
            raise ConfigError(f"generate: encoding_temperature[{name!r}] must be a positive finite number, got {tau!r}")
    return {n: float(t) for n, t in temperature.items()}


def _observed_data(modalities: dict[str, Modality], given: dict[str, Any], n: int | None,
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


def _reverse(model: Any, B: int, observed: dict[str, torch.Tensor], sampler: str, steps: int, eta: float,
             variance: str | None, guide: tuple[Modality, torch.Tensor, float] | None,
             generator: torch.Generator | None, callback: Callback | None, progress: bool, dev: torch.device,
             conditioning: str, temperature: Mapping[str, float], spacing: str
             ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Joint or conditional generation: the sampler from z_K down to z_0 on the respaced process."""
    full = model.forward_process
    try:
        fp = full.respace(respaced_timesteps(full.T, steps, spacing))
    except ScheduleError as e:
        raise ConfigError(f"generate: steps = {steps!r}, spacing = {spacing!r}: {e}") from None
    z = randn_like(torch.empty(B, *model.taskset.latent.shape, device=dev), generator)
    # The observed modalities' part of z_K (lambda_T is ~0 by validation; kept for exactness).
    zeros = {name: torch.zeros_like(z) for name in fp.names if name not in observed}
    z = z + fp.injected({**zeros, **observed}, fp.T, z)
    denoise = ModelDenoiser(model, fp, observed, guide, conditioning, temperature)
    options: dict[str, Any] = {"eta": eta} if sampler == "ddim" else {"variance": variance or "beta_tilde"}
    out = SAMPLERS[sampler](denoise, z, fp, generator=generator, callback=callback, progress=progress, **options)
    predictions = {n: p for n, p in out.last.preds.items() if n not in observed}
    return out.z0, predictions


def _read_ts(read_t: float | Sequence[float], T: int) -> list[int]:
    us = [read_t] if isinstance(read_t, (int, float)) else list(read_t)
    if not us or not all(isinstance(u, (int, float)) and 0 < u <= 1 for u in us):
        raise ConfigError("generate: read_t must be a fraction of T in (0, 1] or a non-empty list of them, "
                          f"got {read_t!r}")
    return [max(1, round(float(u) * T)) for u in us]


def _readout(model: Any, z0: torch.Tensor, observed: dict[str, torch.Tensor], read_t: float | Sequence[float],
             generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read the heads of the unobserved modalities from the noised base at t = read_t * T (averaged over several)."""
    fp = model.forward_process
    zeros = {name: torch.zeros_like(z0) for name in fp.names if name not in observed}
    enc = {**zeros, **observed}
    runs: list[dict[str, Any]] = []
    for t in _read_ts(read_t, fp.T):
        tt = torch.full((z0.shape[0],), t, dtype=torch.long, device=z0.device)
        z_t = fp.q_sample(z0, enc, tt, randn_like(z0, generator))
        preds = model(z_t, tt).preds
        runs.append({n: p for n, p in preds.items() if n not in observed})
    if len(runs) == 1:
        return z0, runs[0]
    averaged = {}
    for name in runs[0]:
        ps = [r[name] for r in runs]
        if not all(isinstance(p, torch.Tensor) for p in ps):
            raise ConfigError(f"generate: modality {name!r} predicts {type(ps[0]).__name__}, which cannot be averaged "
                              "over several read_t; pass a single read_t")
        averaged[name] = torch.stack(ps).mean(0)
    return z0, averaged


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
