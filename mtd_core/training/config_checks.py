"""The validators and converters of the ``[trainer]`` table's fields (mtd_core/training/config.py): each raises a
ConfigError naming ``trainer.<key>`` and what it accepts; nothing is coerced except an int where a float is meant."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

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


COMPILE_OFF = "off"
"""``trainer.compile``'s value for no compilation (the default)."""


def compile_modes() -> tuple[str, ...]:
    """The ``mode`` values torch.compile knows in the installed torch (read from it, not a list kept here)."""
    from torch._inductor import list_mode_options

    return tuple(list_mode_options())


def compile_mode(_: object, __: attrs.Attribute, value: object) -> None:
    """``trainer.compile``: "off", or a mode of torch.compile ("default", "reduce-overhead", "max-autotune", ...)."""
    if value == COMPILE_OFF:
        return
    modes = compile_modes()
    if not isinstance(value, str) or value not in modes:
        raise ConfigError(f"trainer.compile must be \"{COMPILE_OFF}\" or a mode torch.compile knows "
                          f"{list(modes)}, got {value!r}{closest(str(value), modes)}")


def one_of(name: str, options: Sequence[str]) -> Validator:
    def check(_: object, __: attrs.Attribute, value: object) -> None:
        if value not in options:
            raise ConfigError(f"trainer.{name} must be one of {list(options)}, got {value!r}{closest(str(value), options)}")
    return check


def betas_pair(value: object) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"trainer.betas must be two numbers in [0, 1), got {value!r}")
    return in_range("betas", value[0], 0.0, 1.0), in_range("betas", value[1], 0.0, 1.0)


EMA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
RESERVED_EMA_NAMES = ("ema", "model")  # the default EMA's name, and the raw weights at sampling time


@attrs.frozen
class EMASpec:
    """One entry of ``trainer.emas``: an EMA kept beside the default one, chosen at sampling time by ``name``.

    Args:
        name: what ``mtd sample --ema NAME`` and ``load_run(path, ema=NAME)`` call it.
        halflife: its half-life in training examples (EDM's definition; ``trainer.ema_rampup`` applies).
    """

    name: str
    halflife: float


def ema_lengths(value: object) -> tuple[EMASpec, ...]:
    """A converter: ``trainer.emas``, a list of ``{name = "...", halflife = N}`` tables, as EMASpecs; a malformed
    entry, an unknown key, a reserved or repeated name, or a half-life that is not a positive number is a ConfigError
    naming ``trainer.emas.<i>``."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ConfigError(f"trainer.emas must be a list of {{name = \"...\", halflife = N}} tables, got {value!r:.80}")
    out: list[EMASpec] = []
    for i, item in enumerate(value):
        where = f"trainer.emas.{i}"
        if isinstance(item, EMASpec):
            item = attrs.asdict(item)
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a table {{name = \"...\", halflife = N}}, got {item!r:.80}")
        unknown = sorted(set(item) - {"name", "halflife"})
        if unknown or "name" not in item or "halflife" not in item:
            raise ConfigError(f"{where} must have exactly the keys 'name' and 'halflife' (half-life in training "
                              f"examples), got {sorted(item)}{closest(str(unknown[0]), ['name', 'halflife']) if unknown else ''}")
        name = item["name"]
        if not isinstance(name, str) or not EMA_NAME.match(name) or name in RESERVED_EMA_NAMES:
            raise ConfigError(f"{where}.name must be a letter followed by up to 39 letters, digits, '_' or '-', and not "
                              f"{' or '.join(repr(n) for n in RESERVED_EMA_NAMES)} (reserved), got {name!r}")
        if name in [e.name for e in out]:
            raise ConfigError(f"{where}.name: {name!r} is used twice; each EMA needs its own name")
        out.append(EMASpec(name=name, halflife=in_range(f"emas.{i}.halflife", item["halflife"], 0.0, low_open=True)))
    return tuple(out)


def check_emas(ema_decay: float, ema_halflife: float, emas: Sequence[EMASpec]) -> None:
    """``trainer.ema_decay = 0`` turns every EMA off, so a half-life or further EMAs with it are a contradiction."""
    if ema_decay == 0 and (emas or ema_halflife):
        given = f"trainer.emas lists {[e.name for e in emas]}" if emas else f"trainer.ema_halflife = {ema_halflife:g}"
        raise ConfigError(f"{given} but trainer.ema_decay = 0 turns the EMAs off; keep ema_decay > 0 (its default; "
                          "ema_halflife, when > 0, sets the default EMA's length instead), or drop "
                          f"{'emas' if emas else 'ema_halflife'}")
