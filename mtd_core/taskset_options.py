"""The task set's options resolved from its modality kinds' designs (mtd_core/design.py), checked, and read back from
saved configs.

A config or a Python composition that is silent about an option gets the value its modalities' kinds were measured
best with, so that a minimal config builds the design every claim is measured on (docs/models.md, "Defaults and
why"). A saved config (a checkpoint's) is read as it was written: an option it leaves out takes the value it had
when it was left out (:func:`saved_taskset_config`), and a retired value loads as pinned instead of being replaced.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from mtd_core.config_types import check_value, is_float32
from mtd_core.design import ENCODING_SCALES, EncodingScaleKind
from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.diffusion.weights import ZeroWeight
from mtd_core.errors import ConfigError, MTDError, ScheduleError, closest
from mtd_core.modality import Modality
from mtd_core.types import ConfigDict, ConfigValue

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry

AuxEps = Literal["network", "heads"]
AUX_EPS: tuple[AuxEps, ...] = ("network", "heads")
DEFAULT_KNOWN_DROPOUT = 0.1
"""The share of training examples whose known part of one modality is hidden from the backbone's known input, so
that the untold path (classifier-free guidance's second pass) is trained."""


class RetiredOptionWarning(UserWarning):
    """A config names an option value that measured worse in every setting; the message says what replaced it."""


def injected(aggregated: Sequence[Modality]) -> list[Modality]:
    """The aggregated modalities that reach z_t: all but those weighted zero (a noise-aware classifier's label)."""
    return [m for m in aggregated if not isinstance(m.weights, ZeroWeight)]


def resolve_aux(given: object, has_base: bool, aggregated: Sequence[Modality]) -> int:
    """aux_channels: the given count, or the most channels of their own any injected kind asks for (0 without a
    base or an aggregated modality: nothing to place)."""
    placeable = has_base and bool(aggregated)
    if given is None:
        return max((m.design.own_channels for m in injected(aggregated)), default=0) if placeable else 0
    if isinstance(given, bool) or not isinstance(given, int) or given < 0:
        raise ConfigError(f"taskset: aux_channels must be an integer >= 0, got {given!r}")
    if given >= 2**31:
        raise ConfigError(f"taskset: aux_channels must be below 2**31 (channels of a latent), got {given!r}")
    if given and not placeable:
        why = "there is no base modality" if not has_base else "there is no aggregated modality"
        raise ConfigError(f"taskset: aux_channels = {given} needs a base and at least one aggregated modality, "
                          f"but {why}; drop aux_channels")
    return given


def resolve_aux_eps(given: object, aux: int, pinned: bool) -> AuxEps:
    """aux_eps: "heads" wherever the encodings have channels of their own. "network" is retired (measured worse in
    every setting): a config naming it gets "heads" and a RetiredOptionWarning, a saved one keeps it."""
    if given is not None and given not in AUX_EPS:
        raise ConfigError(f"taskset: aux_eps must be one of {list(AUX_EPS)}, got {given!r}")
    if not aux:
        if given == "heads":
            raise ConfigError("taskset: aux_eps = \"heads\" needs channels of the encodings' own (aux_channels > 0); "
                              "drop aux_eps or set aux_channels")
        return "network"  # the base's channels: the backbone's own estimate is the only one
    if given == "network" and not pinned:
        warnings.warn("taskset: aux_eps = \"network\" is retired: the backbone's own noise estimate of the encodings' "
                      "channels measured worse than the one the heads imply in every setting (docs/models.md, "
                      "\"Defaults and why\"); using aux_eps = \"heads\". Drop the option.",
                      RetiredOptionWarning, stacklevel=4)
        return "heads"
    return "network" if given == "network" else "heads"


def resolve_known(given: object, dropout: object, aggregated: Sequence[Modality]) -> tuple[bool, float]:
    """(known_input, known_dropout): the given flag, or whether any injected kind asks to be told its part."""
    if given is None:
        given = any(m.design.known_input for m in injected(aggregated))
    if not isinstance(given, bool):
        raise ConfigError(f"taskset: known_input must be true or false, got {given!r}")
    if given and not aggregated:
        raise ConfigError("taskset: known_input = true needs at least one aggregated modality; drop known_input")
    if dropout is None:
        return given, DEFAULT_KNOWN_DROPOUT
    if not given:
        raise ConfigError(f"taskset: known_dropout = {dropout!r} applies only with known_input = true")
    if not is_float32(dropout) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"taskset: known_dropout must be a probability in [0, 1), got {dropout!r}")
    return given, float(dropout)


def _scale(value: object, where: str) -> EncodingScaleKind:
    for kind in ENCODING_SCALES:
        if value == kind:
            return kind
    raise ConfigError(f"{where} must be one of {list(ENCODING_SCALES)}, got {value!r}")


def resolve_encoding_scales(given: object, aggregated: Sequence[Modality]) -> dict[str, EncodingScaleKind]:
    """Aggregated name -> how the model scales its encodings: one kind for all (a string), a table naming some
    modalities (the others keep their kind's), or, when silent, each kind's ``design.encoding_scale``."""
    scales = {m.name: m.design.encoding_scale for m in aggregated}
    if given is None:
        return scales
    if not aggregated:
        raise ConfigError(f"taskset: encoding_scale = {given!r} needs an aggregated modality; drop encoding_scale")
    if isinstance(given, Mapping):
        for name, value in given.items():
            if name not in scales:
                raise ConfigError(f"taskset: encoding_scale names {name!r}, which is no aggregated modality; "
                                  f"they are {list(scales)}")
            scales[str(name)] = _scale(value, f"taskset: encoding_scale.{name}")
        return scales
    kind = _scale(given, "taskset: encoding_scale")
    return dict.fromkeys(scales, kind)


def encoding_scale_config(scales: Mapping[str, EncodingScaleKind]) -> ConfigValue:
    """``encoding_scale`` as a config writes it: one string when every modality has the same, else a table."""
    kinds = set(scales.values())
    return next(iter(kinds)) if len(kinds) == 1 else dict(scales)


def _former_defaults(registry: Registry | None, kind: object) -> Mapping[str, ConfigValue]:
    """The kind's ``former_defaults`` ({} without a registry, or for a kind it does not know: that error comes
    where the modality is built)."""
    if registry is None or not isinstance(kind, str):
        return {}
    try:
        return registry.modality_class(kind).former_defaults
    except MTDError:
        return {}


def saved_taskset_config(config: ConfigValue, registry: Registry | None = None) -> ConfigValue:
    """A saved task-set config (a checkpoint's) with every option it leaves out made explicit, at the value it had
    when it was left out: configs written before the kinds declared their designs omitted aux_channels (0),
    known_input (false), aux_eps ("network"), encoding_scale ("rms") and each aggregated modality's head_grad (1)
    and train_encoder (true); with ``registry``, a modality's options its kind changed the default of since take
    the kind's ``former_defaults``. Configs written since hold every option, which this leaves as they are."""
    if not isinstance(config, Mapping) or not isinstance(config.get("modalities"), list):
        return config
    mods: list[ConfigValue] = []
    for m in config["modalities"]:
        if isinstance(m, Mapping):
            m = {**_former_defaults(registry, m.get("kind")), **m}
        if isinstance(m, Mapping) and m.get("role", "aggregated") != "base":
            m = {"head_grad": 1.0, "train_encoder": True, **m}
        mods.append(m)
    roles = [m.get("role", "aggregated") if isinstance(m, Mapping) else None for m in mods]
    out: ConfigDict = {**config, "modalities": mods}
    aggregated = any(r != "base" for r in roles)
    if aggregated:
        out.setdefault("known_input", False)
        out.setdefault("encoding_scale", "rms")
    if aggregated and "base" in roles:
        out.setdefault("aux_channels", 0)
        if out["aux_channels"]:
            out.setdefault("aux_eps", "network")
    return out


MAX_T = 1_000_000
"""The most diffusion steps a noise schedule may have (its tensors hold T values; DDPM uses 1000)."""


def noise_from_config(config: object, kinds: Mapping[str, Callable[..., NoiseSchedule]]) -> NoiseSchedule:
    """The noise schedule of a ``diffusion`` table (``kinds``: the registered noise schedules), checking its keys
    against the schedule kind's parameters and their values against the parameters' annotations (int, float)."""
    if config is None:
        return NoiseSchedule.linear(1000)
    if isinstance(config, NoiseSchedule):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"taskset: 'diffusion' must be a table/dict, got {type(config).__name__}")
    kind = config.get("kind", "linear")
    if not isinstance(kind, str) or kind not in kinds:
        raise ConfigError(f"taskset: diffusion.kind must be one of {sorted(kinds)}, "
                          f"got {kind!r}{closest(str(kind), kinds)}")
    params = inspect.signature(kinds[kind]).parameters
    for key, value in config.items():
        if key == "kind":
            continue
        if key not in params:
            raise ConfigError(f"taskset: unknown key diffusion.{key}{closest(str(key), params)} for a {kind!r} "
                              f"schedule; valid keys: {['kind', *params]}")
        ann = params[key].annotation
        ann = ann if isinstance(ann, str) else getattr(ann, "__name__", "")
        if ann in ("int", "float"):
            check_value(f"taskset: diffusion.{key}", ann, False, value)
    T = config.get("T")
    if isinstance(T, int) and not 1 <= T <= MAX_T:
        raise ConfigError(f"taskset: diffusion.T must be an integer in [1, {MAX_T}], got {T!r}")
    try:
        return NoiseSchedule.from_config(dict(config), kinds)
    except (ScheduleError, TypeError, ValueError, OverflowError) as e:  # named with the keys that made it
        given = ", ".join(f"{k} = {v!r}" for k, v in config.items())
        raise ConfigError(f"taskset: diffusion ({given}): {' '.join(str(e).split())}") from None  # one line


__all__ = ["AUX_EPS", "DEFAULT_KNOWN_DROPOUT", "MAX_T", "AuxEps", "RetiredOptionWarning", "encoding_scale_config",
           "noise_from_config", "resolve_aux", "resolve_aux_eps", "resolve_encoding_scales", "resolve_known",
           "saved_taskset_config"]
