"""The validators and converters of the ``[trainer]`` table's fields (mtd_core/training/config.py): each raises a
ConfigError naming ``trainer.<key>`` and what it accepts; nothing is coerced except an int where a float is meant."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs

from mtd_core.config_types import is_float32, is_int
from mtd_core.errors import ConfigError, closest

Validator = Callable[[object, attrs.Attribute, object], None]
"""An attrs validator: (instance, attribute, value) -> None, raising a ConfigError for a bad value."""


def int_at_least(name: str, low: int) -> Validator:
    """A validator: an integer (not a bool, not a float such as 2.5) of at least ``low``."""
    def check(_: object, __: attrs.Attribute, value: object) -> None:
        if not is_int(value) or value < low:  # not a bool, not 2.0, within int64 (torch's seeds and counters)
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            what += " below 2**63" if isinstance(value, int) and not isinstance(value, bool) and value >= low else ""
            raise ConfigError(f"trainer.{name} must be {what}, got {value!r}")
    return check


def in_range(name: str, value: object, low: float, high: float = math.inf, *, low_open: bool = False) -> float:
    """``value`` as a float when it is a finite number in [low, high) (or (low, high) with ``low_open``), else a
    ConfigError naming the key and the accepted range."""
    v = float(value) if is_float32(value) else math.nan  # float32: what the optimizer computes in
    if not (math.isfinite(v) and (v > low if low_open else v >= low) and v < high):
        accepted = f"{'(' if low_open else '['}{low:g}, {high:g})"
        raise ConfigError(f"trainer.{name} must be a finite number in {accepted}, got {value!r}")
    return v


def to_float(value: object) -> object:
    """A converter: an int (not a bool) as a float; anything else is left for the validator to name."""
    return float(value) if is_int(value) and is_float32(value) else value


def float_in(name: str, low: float, high: float = math.inf, *, low_open: bool = False) -> Validator:
    """A validator: a finite float in [low, high) (or (low, high) with ``low_open``)."""
    def check(_: object, __: attrs.Attribute, value: object) -> None:
        in_range(name, value, low, high, low_open=low_open)
    return check


def boolean(name: str) -> Validator:
    def check(_: object, __: attrs.Attribute, value: object) -> None:
        if not isinstance(value, bool):
            raise ConfigError(f"trainer.{name} must be true or false, got {value!r}")
    return check


def non_empty_str(name: str) -> Validator:
    def check(_: object, __: attrs.Attribute, value: object) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"trainer.{name} must be a non-empty string, got {value!r}")
    return check


def device_name(_: object, __: attrs.Attribute, value: object) -> None:
    """"auto", or a device torch names ("cpu", "cuda", "cuda:1", ...)."""
    import torch

    try:
        ok = isinstance(value, str) and (value == "auto" or bool(torch.device(value).type))
    except (RuntimeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"trainer.device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got {value!r}")


def one_of(name: str, options: Sequence[str]) -> Validator:
    def check(_: object, __: attrs.Attribute, value: object) -> None:
        if value not in options:
            raise ConfigError(f"trainer.{name} must be one of {list(options)}, got {value!r}{closest(str(value), options)}")
    return check


def betas_pair(value: object) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"trainer.betas must be two numbers in [0, 1), got {value!r}")
    return in_range("betas", value[0], 0.0, 1.0), in_range("betas", value[1], 0.0, 1.0)
