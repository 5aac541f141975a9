"""Exceptions raised by mtd. Every message names the modality, file or key at fault and what was expected."""

from __future__ import annotations

from collections.abc import Iterable


class MTDError(Exception):
    """Base class of every error mtd raises on purpose."""


class ScheduleError(MTDError, ValueError):
    """A noise or weight schedule is malformed (wrong length, non-finite, lambda_T too large, ...)."""


class ModalityDataError(MTDError, ValueError):
    """Data handed to a modality does not match its :class:`~mtd_core.modality.DataSpec`."""


class ConfigError(MTDError, ValueError):
    """A configuration (task set, TOML file, modality config) is invalid."""


class PluginError(MTDError):
    """A plugin failed to load, registered something invalid, or clashes with another plugin."""


class MetricError(MTDError, ValueError):
    """A metric cannot be computed from what it was given (too few samples, mismatched shapes, NaN, ...)."""


class NonFiniteLossError(MTDError):
    """The loss or a gradient became NaN or infinite; training stopped without saving the bad step."""


class CheckpointError(MTDError):
    """A checkpoint is missing, truncated, corrupt or does not match the model."""


def closest(name: str, candidates: Iterable[str]) -> str:
    """A ``did you mean 'x'?`` suffix for ``name`` among ``candidates`` ('' when nothing is close)."""
    import difflib

    match = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
