"""Option validators for a modality's attrs ``Config``: ``option(expected, test)`` and the ready-made ones.

Each is an attrs field validator; the ValueError it raises becomes a ConfigError naming the modality, the option,
and expected vs received (``Modality.__init__``). Plugins import them from here or from mtd_core.plugins.validate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias, TypeGuard

import attrs

_Validator: TypeAlias = Callable[[object, attrs.Attribute, object], None]
"""An attrs field validator: (instance, attribute, value) -> None, raising ValueError for a bad value."""


def _number(v: object) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def option(expected: str, test: Callable[[object], bool]) -> _Validator:
    """An attrs validator raising "option 'x' must be <expected>, got <value>" unless ``test(value)``."""

    def validator(_inst: object, attribute: attrs.Attribute, value: object) -> None:
        if not test(value):
            raise ValueError(f"option {attribute.name!r} must be {expected}, got {value!r}")

    return validator


def one_of(*choices: object) -> _Validator:
    """An attrs validator accepting exactly one of ``choices``."""
    return option(f"one of {list(choices)}", lambda v: v in choices)


positive_int = option("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
non_negative_int = option("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
positive_float = option("a finite number > 0", lambda v: _number(v) and v > 0)
unit_interval = option("a number in [0, 1]", lambda v: _number(v) and 0.0 <= v <= 1.0)
pixel_value = option("a pixel value in [-1, 1]", lambda v: _number(v) and -1.0 <= v <= 1.0)
is_bool = option("true or false", lambda v: isinstance(v, bool))
modality_name = option("a modality name (an identifier)", lambda v: isinstance(v, str) and v.isidentifier())


def optional_names(value: object) -> tuple[str, ...] | None:
    """An attrs converter for optional display names: None, or a list of non-empty str kept as a tuple (so the
    frozen Config stays hashable; ``attrs.asdict`` gives a list back). Anything else is a ValueError."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v
                                                                                  for v in value):
        raise ValueError(f"option 'class_names' must be a list of non-empty strings, got {value!r}")
    return tuple(value)
