"""How generate() samples: one typed object (SamplingOptions) holding every choice of sampler, budget, spacing,
base estimate, conditioning and joint mode, with the defaults chosen by measurement (docs/sampling.md, "Defaults").
generate() checks the values against the task set and the registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from mtd_core.errors import ConfigError, closest

if TYPE_CHECKING:
    from mtd_core.types import ConfigMapping

# The defaults of generate() and `mtd sample`, chosen by measurement on Fashion-MNIST validation samples
# (docs/sampling.md, "Defaults").
DEFAULT_SAMPLER = "dpmpp_2m_sde"
DEFAULT_STEPS = 20
DEFAULT_SPACING = "karras"
DEFAULT_CLIP = "static"
DEFAULT_CLIP_EPS = "keep"
DEFAULT_JOINT = "commit"
DEFAULT_KEEP_OBSERVED = True
"""Keep the base values a given modality shows (a masked image's unhidden pixels) in every step's base estimate.
Chosen on Fashion-MNIST validation restorations (docs/sampling.md, "Restoration: keeping the observed pixels")."""
DEFAULT_CFG_SCALE = 1.5
"""Classifier-free guidance of a conditional run where the task set trained its untold path and keeps the encodings on
channels of their own (known_input, known_dropout > 0, aux_channels > 0); 1 (off) everywhere else. The built-in kinds'
measured scale, ``Design.cfg_scale``'s default: a kind may declare its own (``Modality.design``), and a run resolves
to the largest among its given aggregated modalities' kinds (cfg.py). Chosen on
Fashion-MNIST validation: label-conditioned fidelity 91.6% / 93.6% against 88.1% / 88.2% unguided at 20 network
evaluations (seeds 0 / 1); on shared channels it hurt (75.0% against 86.5%). docs/sampling.md, "Conditional
generation"."""
JOINT = ("commit", "flow")

# Read-out at t = 0.02 T by default: small enough that the label (or caption) signal, which the heads were trained to
# see injected into z_t but is unknown here, is negligible (lambda_t -> 0 as t -> 0 for the default windowed
# schedule), and large enough to be a noise level the heads saw often in training. See docs/sampling.md.
DEFAULT_READ_T: tuple[float, ...] = (0.02,)


@attrs.frozen(kw_only=True)
class SamplingOptions:
    """Every option of :func:`~mtd_core.sampling.generate` about how to sample (each defaults as generate does).

    Attributes:
        sampler: a registered sampler: "ddim", "ddpm" (ancestral), "heun", "dpmpp_2m" or "dpmpp_2m_sde" built in
            (``mtd plugins list`` shows every installed one).
        steps: the number of reverse steps (default: the most whose network evaluations fit a budget of
            DEFAULT_STEPS, every evaluation counted as for ``nfe``); the process is respaced to ``steps`` timesteps
            (``spacing``). Give ``nfe`` instead to fix the network evaluations (Heun takes two a step).
        nfe: the network evaluations per sample instead of ``steps``, every one counted: the committed draw of
            joint = "commit" (one) and the two passes of classifier-free guidance; steps = the most whose NFE fits
            what is left (budget.py). GenerationOutput.nfe reports what was spent: ``nfe`` where the sampler's step
            count allows, never more.
        eta: DDIM's noise level (0 = deterministic); only for "ddim".
        variance: "ddpm" only: sigma_t^2 = "beta" or "beta_tilde" (default "beta_tilde").
        sampler_options: further keyword options of the sampler (e.g. ``{"lower_order_final": False}``).
        spacing: where the timesteps fall: "uniform" (evenly from 1 to T), "quad" (denser at small t), "leading"
            (diffusers' DDIMScheduler), "logsnr" (evenly in log-SNR) or "karras" (EDM's rho = 7 spacing).
        clip: the base estimate of every step: "none", "static" (clipped to the base's data range) or "dynamic"
            (Imagen's dynamic thresholding at ``clip_percentile``); estimate.py. None: DEFAULT_CLIP where the base
            defines a data range, else "none".
        clip_eps: "rederive" the step's noise from the processed estimate, or "keep" the network's noise and move
            the state onto the estimate (estimate.py).
        clip_percentile: the quantile of dynamic thresholding, in (0, 1].
        conditioning: conditional mode only: "replace" (default), "inject" or "exact" (generate.py's docstring).
        cfg_scale: conditional mode on a task set with ``known_input`` only: classifier-free guidance (Ho & Salimans
            2022) w on the observed modalities, eps = eps_untold + w (eps_told - eps_untold), where the untold pass
            hides their part from the network's known input (which ``known_dropout`` trains). 1 turns it off (the
            told eps alone); 0 is the untold eps; above 1 follows the given data more strictly, at one more
            network evaluation a step. None: where it applies (a conditional run of a task set with known_input,
            known_dropout > 0 and aux_channels > 0) the largest ``design.cfg_scale`` of the given aggregated
            modalities' kinds (DEFAULT_CFG_SCALE for the built-ins), else 1.
        joint: how generated modalities with ``Modality.exact_sample`` (a label) are generated: "commit" draws
            them from their heads at z_K (one network evaluation, counted in the budget) and generates the rest
            given them; "flow" lets them follow the reverse process with the others. A guided modality always
            follows the flow.
        encoding_temperature: generated categorical modality name -> temperature of its head's probabilities
            behind its encoding in every reverse step (``Modality.temper``). Below 1 the trajectory commits to one
            class (or token) earlier. A modality it does not name gets its kind's
            ``Modality.default_encoding_temperature`` (1, the posterior mean, but for the built-in text). Not in
            readout mode; the returned samples and predictions are the heads' own.
        keep_observed: conditional mode only: keep the base values that the given modalities show as they are
            (``Modality.observed_base``: a masked image's unhidden pixels) in every step's base estimate, so that
            the generated base has them and the rest is generated around them (estimate.py); False regenerates
            every value, the observed ones included.
        read_t: readout mode only: the read-out timestep(s) as fractions of T in (0, 1]; with several, the heads'
            tensor predictions (e.g. logits) are averaged over them.
    """

    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None
    nfe: int | None = None
    eta: float = 0.0
    variance: str | None = None
    sampler_options: ConfigMapping | None = None
    spacing: str = DEFAULT_SPACING
    clip: str | None = None
    clip_eps: str = DEFAULT_CLIP_EPS
    clip_percentile: float = 0.995
    conditioning: str = "replace"
    cfg_scale: float | None = None
    joint: str = DEFAULT_JOINT
    encoding_temperature: Mapping[str, float] | None = None
    keep_observed: bool = DEFAULT_KEEP_OBSERVED
    read_t: float | Sequence[float] = DEFAULT_READ_T


def sampling_options(options: SamplingOptions | None, fields: ConfigMapping) -> SamplingOptions:
    """``options``, or a SamplingOptions built from keyword ``fields`` (an unknown name is a ConfigError naming the
    nearest one; giving both is a ConfigError)."""
    if options is not None:
        if fields:
            raise ConfigError(f"generate: give options=SamplingOptions(...) or the options by keyword, not both "
                              f"(got options and {sorted(fields)})")
        if not isinstance(options, SamplingOptions):
            raise ConfigError(f"generate: options must be a SamplingOptions, got {type(options).__name__}")
        return options
    known = [f.name for f in attrs.fields(SamplingOptions)]
    unknown = [k for k in fields if k not in known]
    if unknown:
        raise ConfigError(f"generate: unknown option {unknown[0]!r}{closest(unknown[0], known)}; the options are "
                          f"{known} (and model, n, given, guidance, generator, callback, progress, device, registry)")
    return SamplingOptions(**fields)
