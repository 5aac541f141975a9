"""Encoding temperatures of generate(): the temperature tau of a generated categorical modality's head
probabilities behind its encoding in every reverse step, E[E_i | z_t] under softmax(logits / tau)
(``Modality.temper``); tau < 1 commits the trajectory to one class (or token) earlier, tau = 1 is the posterior mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mtd_core.errors import ConfigError, closest
from mtd_core.modality import Modality, Role, is_temperature
from mtd_core.types import Batch


def check_temperature(modalities: dict[str, Modality], given: Batch, mode: str,
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


def default_temperatures(modalities: dict[str, Modality], skip: Sequence[str]) -> dict[str, float]:
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


__all__ = ["check_temperature", "default_temperatures"]
