"""Type checks of config values against their attrs field annotations, shared by every config table.

A modality's ``Config``, a backbone's config and a weight schedule declare their options as attrs fields; a value
of the wrong type must be an error naming the key, never coerced (``True`` is not the integer 1, ``2.0`` is not
the integer 2, ``"abc"`` is not a number). :func:`check_fields` checks what an annotation states plainly:

    int                 an integer (not a bool) in the int64 range torch holds
    float               a finite number (an int is accepted: TOML writes ``1`` for 1.0) of magnitude at most
                        float32's largest, 3.4e38 (the model computes in float32, where a larger one is infinity)
    bool, str           exactly that type
    tuple[X, ...]       a list (or tuple) of X
    X | None            X, or None (the option's default)

Any other annotation is left to the field's own validator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeGuard

import attrs

from mtd_core.errors import ConfigError

INT64 = 2**63
FLOAT32_MAX = 3.4028234663852886e38

_EXPECTED = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}
_PLURAL = {"int": "integers", "float": "finite numbers", "bool": "booleans", "str": "strings"}


def is_int(v: object) -> TypeGuard[int]:
    """An integer (not a bool) that fits in int64."""
    return isinstance(v, int) and not isinstance(v, bool) and -INT64 <= v < INT64


def is_float32(v: object) -> TypeGuard[float]:
    """A finite real number (not a bool; an int within int64) that float32 holds without becoming infinity."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, int) and not is_int(v)):
        return False  # an int beyond int64 is no number torch multiplies by
    a = abs(float(v))
    return math.isfinite(a) and a <= FLOAT32_MAX


_TESTS: dict[str, Callable[[object], bool]] = {
    "int": is_int, "float": is_float32, "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}


def _annotation(field: attrs.Attribute) -> tuple[str, bool] | None:
    """(base type name, optional) of a field's annotation, or None when it is not one this module checks."""
    t = field.type
    text = t if isinstance(t, str) else getattr(t, "__name__", None) if isinstance(t, type) else None
    if text is None:
        return None
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    rest = [p for p in parts if p != "None"]
    if len(rest) != 1:
        return None
    base = rest[0].replace("typing.", "").replace("Tuple", "tuple")
    if base in _TESTS or (base.startswith("tuple[") and base.endswith(", ...]") and base[6:-6] in _TESTS):
        return base, optional
    return None


def check_value(where: str, base: str, optional: bool, value: object) -> None:
    """Raise a ConfigError "``where`` must be <expected>, got <value>" unless ``value`` has the type ``base``."""
    if value is None and optional:
        return
    if base in _TESTS:
        if _TESTS[base](value):
            return
        expected = _EXPECTED[base] + (" (at most 3.4e38 in magnitude: float32)" if base == "float" else "")
        expected += " (64-bit)" if base == "int" and isinstance(value, int) and not isinstance(value, bool) else ""
    else:
        item = base[6:-6]
        ok = isinstance(value, Sequence) and not isinstance(value, str) and all(_TESTS[item](x) for x in value)
        if ok:
            return
        expected = f"a list of {_PLURAL[item]}"
    raise ConfigError(f"{where} must be {expected}{' or omitted' if optional else ''}, got {value!r}")


def check_fields(cls: type, options: Mapping[str, object], where: Callable[[str], str]) -> None:
    """Check every option of ``options`` that names a field of the attrs class ``cls`` against its annotation;
    ``where(key)`` names the key in the message (e.g. ``backbone.channels``)."""
    if not attrs.has(cls):
        return
    fields = {f.name: f for f in attrs.fields(cls)}
    for key, value in options.items():
        field = fields.get(key)
        ann = _annotation(field) if field is not None else None
        if ann is not None:
            check_value(where(key), ann[0], ann[1], value)



def check_weights(value: object, modality: str, kinds: Mapping[str, object]) -> None:
    """A modality's ``weights`` config: a table whose ``kind`` is a registered weight schedule (``kinds``) and
    whose parameters have the types the schedule's class declares; a ConfigError naming ``weights.<key>``."""
    from mtd_core.errors import closest

    where = f"modality {modality!r}: weights"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table with a 'kind' (e.g. {{kind = \"windowed\", peak = 1.0}}), "
                          f"got {value!r}")
    kind = value.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        raise ConfigError(f"{where}.kind must be one of {sorted(kinds)}, got {kind!r}{closest(str(kind), kinds)}")
    cls = kinds[kind]
    if isinstance(cls, type):
        check_fields(cls, {k: v for k, v in value.items() if k != "kind"}, lambda key: f"{where}.{key}")


__all__ = ["FLOAT32_MAX", "INT64", "check_fields", "check_value", "check_weights", "is_float32", "is_int"]
