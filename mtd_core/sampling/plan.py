"""generate()'s plan: its options checked against each other and the task set before anything is sampled.

The mode follows from what is given (generate.py): "readout" where the base is given, "conditional" where other
modalities are, "joint" where nothing is. The plan fixes the observed data and batch size, the base estimate
(estimate.py), the modalities that joint = "commit" draws first from their heads at z_K (p(y) p(x | y)), the
encoding temperatures (temperature.py), the guidance terms, the classifier-free guidance scale (cfg.py) and the base
values kept in every step's estimate (observed.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import torch

from mtd_core.errors import ConfigError, closest
from mtd_core.modality import Modality, Role
from mtd_core.sampling.cfg import cfg_scale as resolve_cfg_scale
from mtd_core.sampling.denoiser import GuideTerm, base_range, check_conditioning
from mtd_core.sampling.estimate import BaseEstimate, ObservedBase
from mtd_core.sampling.guidance import Classifier, GuidanceConfig, check_guidance, resolve_target
from mtd_core.sampling.observed import inpainted, observed_base, observed_data
from mtd_core.sampling.options import DEFAULT_CLIP, JOINT, SamplingOptions
from mtd_core.sampling.temperature import check_temperature, default_temperatures
from mtd_core.types import Batch

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel


@attrs.frozen
class Plan:
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


def make_plan(model: MultiTaskModel, given: Batch, n: int | None, generator: torch.Generator | None,
              o: SamplingOptions, guidance: GuidanceConfig | None, dev: torch.device,
              inpaint: tuple[torch.Tensor, torch.Tensor] | None = None) -> Plan:
    """Check generate()'s options against each other and the task set: the mode, the observed data, the base
    estimate, the modalities committed first, the temperatures and the guidance terms."""
    modalities: dict[str, Modality] = model.taskset.modalities
    check_conditioning(o.conditioning)
    estimate = _estimate(model, o)
    data, B = observed_data(modalities, given, n, generator)
    base = model.taskset.base
    mode = "readout" if base is not None and base.name in given else ("conditional" if given else "joint")
    if not isinstance(o.keep_observed, bool):
        raise ConfigError(f"generate: keep_observed must be true or false, got {o.keep_observed!r}")
    commit = _commit(modalities, given, mode, o.joint, guidance)
    temperature = _temperatures(modalities, given, mode, o, commit)
    cfg_scale = resolve_cfg_scale(model, o.cfg_scale, mode, list(given))
    if mode == "readout" and guidance is not None:
        raise ConfigError("generate: guidance needs a reverse process; it does not apply when the base is given")
    guide: list[GuideTerm] = []
    classifiers: dict[str, Classifier] = {}
    if guidance is not None:
        gm = check_guidance(guidance, modalities)
        guide.append((gm, resolve_target(gm, guidance.target, B, dev), float(guidance.scale)))
        if guidance.classifier is not None:
            classifiers[gm.name] = guidance.classifier
    kept = observed_base(model, data, dev) if o.keep_observed and mode == "conditional" else None
    if inpaint is not None:
        kept = inpainted(model, inpaint, B, mode, dev, kept)
    return Plan(mode, B, data, estimate, commit, temperature, guide, classifiers, cfg_scale, kept)


def _estimate(model: MultiTaskModel, o: SamplingOptions) -> BaseEstimate:
    """Every step's base estimate: ``clip`` (None: DEFAULT_CLIP where the base has a data range, else "none")."""
    clip = o.clip
    if clip is None:
        bounded = base_range(model)
        clip = DEFAULT_CLIP if bounded is not None and None not in (bounded.low, bounded.high) else "none"
    return BaseEstimate(clip, o.clip_eps, o.clip_percentile)  # type: ignore[arg-type]


def _commit(modalities: dict[str, Modality], given: Batch, mode: str, joint: str,
            guidance: GuidanceConfig | None) -> list[str]:
    """The generated aggregated modalities that joint = "commit" draws first: from their heads at z_K
    (``exact_sample``) or from the values they kept of their training data (``empirical_prior``); not guided; none
    in readout mode or with joint = "flow"."""
    if joint not in JOINT:
        raise ConfigError(f"generate: joint must be one of {list(JOINT)}, got {joint!r}")
    if mode == "readout" or joint == "flow":
        return []
    guided = {guidance.modality} if guidance is not None else set()
    return [name for name, m in modalities.items()
            if m.role is Role.AGGREGATED and name not in given and name not in guided
            and (m.exact_sample or m.empirical_prior() is not None)]


def _temperatures(modalities: dict[str, Modality], given: Batch, mode: str, o: SamplingOptions,
                  commit: list[str]) -> dict[str, float]:
    """The encoding temperatures: ``encoding_temperature`` checked, then the kinds' own defaults where it is silent
    (not for the committed modalities, which have no encoding to temper)."""
    temperature = check_temperature(modalities, given, mode, o.encoding_temperature)
    tempered = [name for name in temperature if name in commit]
    if tempered:
        raise ConfigError(f"generate: encoding_temperature names {tempered}, which joint = 'commit' draws from the "
                          "head at the first step (no encoding to temper); pass joint='flow' to temper them")
    if mode != "readout":  # the kinds' own defaults where the option is silent
        temperature.update(default_temperatures(modalities, [*given, *commit, *temperature]))
    return temperature


def check_device(model: MultiTaskModel, given: Batch, device: torch.device | str | None) -> torch.device:
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


__all__ = ["Plan", "check_device", "make_plan"]
