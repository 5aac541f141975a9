"""Bounded integer options of the built-in modalities: a size beyond these is a mistake, not a model, and must fail
where the config is read (naming the option) instead of when the first tensor is allocated."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from mtd_core.plugins.validate import option

MAX_WIDTH = 65536
"""The widest hidden layer, embedding or representation a built-in modality option takes."""
MAX_CLASSES = 2**24
"""The most classes a label takes (16.7 million; a vocabulary or a class set beyond that is an error)."""


def int_in(low: int, high: int) -> Callable[[object, attrs.Attribute, object], None]:
    """An attrs validator: an integer (not a bool) >= low and at most high (two messages, one per bound)."""
    at_least = option(f"an integer >= {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low)

    def validator(inst: object, attribute: attrs.Attribute, value: object) -> None:
        at_least(inst, attribute, value)
        if isinstance(value, int) and value > high:
            raise ValueError(f"option {attribute.name!r} must be at most {high}, got {value!r}")

    return validator


__all__ = ["MAX_CLASSES", "MAX_WIDTH", "int_in"]
