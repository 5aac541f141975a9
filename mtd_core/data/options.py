"""Checks of a ``[dataset]`` table's factory options before any data is read (``mtd config show`` runs them too).

Every option is checked against its factory's signature: a parameter without a default is required (a missing
``dataset.path`` is a ConfigError naming the key, not Python's "missing 1 required positional argument"); a value
must have the annotated type when that is a plain one (str, int, float, bool, list[str], or one of them or None);
options named like the built-in datasets' common options follow their rules (``seed`` an integer in 0..2**64-1,
``test_fraction`` strictly between 0 and 1, ``limit_*`` a positive integer). Nothing is converted.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable

from mtd_core.errors import ConfigError
from mtd_core.types import ConfigMapping

SEED_MAX = 2**64 - 1
"""The largest seed a torch.Generator takes (seeds are unsigned 64-bit integers)."""

_PLAIN = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "none"}


def _describe(value: object) -> str:
    """``value`` and its TOML-ish type, for messages: ``1.5 (float)``."""
    return f"{value!r} ({type(value).__name__})"


def _accepts(kind: object, value: object) -> bool | None:
    """Whether ``value`` has the plain type ``kind``; None when ``kind`` is not a plain type (not checked)."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (str, type(None)):
        return isinstance(value, kind)
    if typing.get_origin(kind) is list and typing.get_args(kind) == (str,):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return None


def _expected(kind: object) -> str | None:
    """What ``kind`` (an annotation) accepts, in words; None when it is not a plain type."""
    parts = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    words = []
    for p in parts:
        if p in _PLAIN:
            words.append(_PLAIN[p])
        elif typing.get_origin(p) is list and typing.get_args(p) == (str,):
            words.append("a list of strings")
        else:
            return None
    return " or ".join(words)


def _check_type(key: str, kind: object, value: object) -> None:
    expected = _expected(kind)
    if expected is None:
        return
    parts = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if not any(_accepts(p, value) for p in parts):
        raise ConfigError(f"{key}: expected {expected}, got {_describe(value)}")


def check_seed(key: str, value: object) -> int:
    """``value`` when it is an integer in 0..2**64-1 (what a torch.Generator takes), else a ConfigError naming
    ``key`` and that range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key}: expected an integer in 0..{SEED_MAX} (0 to 2**64 - 1), got {_describe(value)}")
    return value


def _check_rule(key: str, name: str, value: object) -> None:
    """The rules of the built-in datasets' common options, by name."""
    if name == "seed":
        check_seed(key, value)
    elif name == "test_fraction" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ConfigError(f"{key}: expected a number strictly between 0 and 1 (the share held out for "
                              f"testing), got {value!r}")
    elif name.startswith("limit_") and value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}: expected a positive integer (use only the first N examples) or no value, "
                              f"got {_describe(value)}")


def _hints(factory: Callable[..., object]) -> dict[str, object]:
    """The factory's resolved annotations ({} when they cannot be resolved: then only presence is checked)."""
    try:
        return typing.get_type_hints(factory)
    except Exception:  # a plugin's annotations may name types that are not importable here
        return {}


def check_option_values(where: str, factory: Callable[..., object], options: ConfigMapping) -> None:
    """Raise a ConfigError naming ``where.KEY`` (e.g. ``dataset.path``) for a required option that is missing or
    none, a value of the wrong type, or a value outside its rule (see the module docstring)."""
    hints = _hints(factory)
    for name, p in inspect.signature(factory).parameters.items():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        key = f"{where}.{name}"
        required = p.default is inspect.Parameter.empty
        if required and options.get(name) is None:
            what = _expected(hints.get(name, object)) or "a value"
            raise ConfigError(f"{key} is required (expected {what}) but is not set; add `{name} = ...` to the "
                              f"[dataset] table or pass --set {key}=...")
        if name not in options:
            continue
        value = options[name]
        _check_rule(key, name, value)  # first: a seed's message gives its range
        if name in hints:
            _check_type(key, hints[name], value)
