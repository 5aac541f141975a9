"""The metric library's warnings; ``MetricError`` lives in :mod:`mtd_core.errors` and is re-exported here."""

from __future__ import annotations

from mtd_core.errors import MetricError


class MetricWarning(UserWarning):
    """A metric can be computed but its value is unreliable (e.g. FID with fewer samples than feature dims)."""


class CacheWarning(UserWarning):
    """A cache entry was unreadable or corrupt and has been recomputed."""


__all__ = ["CacheWarning", "MetricError", "MetricWarning"]
