"""What every metric result shares: the sample counts and the feature network they were computed with.

A metric value without its sample count is not comparable (FID in particular is biased by n), so every result
class keeps ``n_generated`` and ``n_reference`` and prints them in ``__str__``; results computed on features
also carry the feature network's identity and test accuracy (:class:`FeatureNetInfo`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import attrs

from mtd_core.metrics.errors import MetricError
from mtd_core.metrics.features import FeatureNetInfo, FeatureNetResult
from mtd_core.types import ConfigDict

NetLike = FeatureNetResult | FeatureNetInfo | None


def net_info(feature_net: NetLike) -> FeatureNetInfo | None:
    """The identity of ``feature_net`` (a trained network's result or its info), or None for raw features."""
    if feature_net is None or isinstance(feature_net, FeatureNetInfo):
        return feature_net
    if isinstance(feature_net, FeatureNetResult):
        return feature_net.info
    raise MetricError(f"feature_net must be a FeatureNetResult, a FeatureNetInfo or None, got {type(feature_net).__name__}")


def counts_text(n_generated: int, n_reference: int | None, feature_net: FeatureNetInfo | None) -> str:
    """The suffix every result prints: ``(n_generated=..., n_reference=..., features: ...)``."""
    parts = [f"n_generated={n_generated}"]
    if n_reference is not None:
        parts.append(f"n_reference={n_reference}")
    if feature_net is not None:
        parts.append(f"features: {feature_net}")
    return "(" + ", ".join(parts) + ")"


def fmt(v: float) -> str:
    """A metric value for printing: 4 significant digits, inf/nan spelled out."""
    return f"{v:.4g}" if math.isfinite(v) else str(v)


@attrs.frozen
class MetricReport(Mapping[str, float]):
    """What a registered metric returns: named float values (a read-only mapping) plus their provenance.

    Args:
        metric: the metric's registered name.
        scores: the named results, e.g. {"fid": 3.2} or {"precision": 0.7, "recall": 0.6} (the mapping's items).
        n_generated: generated samples used.
        n_reference: reference (real) samples used, or None when the metric has no reference set.
        feature_net: the feature network used, or None.
        detail: the full result object(s) the values were taken from (for printing and inspection).
    """

    metric: str
    scores: dict[str, float]
    n_generated: int
    n_reference: int | None = None
    feature_net: FeatureNetInfo | None = None
    detail: object = None

    def __getitem__(self, key: str) -> float:
        try:
            return self.scores[key]
        except KeyError:
            raise KeyError(f"metric {self.metric!r} has no value {key!r}; it has {sorted(self.scores)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> ConfigDict:
        """A JSON-representable dict: the values plus the counts and the feature network's identity."""
        out: ConfigDict = {"metric": self.metric, **self.scores, "n_generated": self.n_generated,
                               "n_reference": self.n_reference}
        if self.feature_net is not None:
            out["feature_net"] = self.feature_net.name
            out["feature_net_test_accuracy"] = self.feature_net.test_accuracy
        return out

    def __str__(self) -> str:
        vals = ", ".join(f"{k}={fmt(v)}" for k, v in self.scores.items())
        return f"{self.metric}: {vals} {counts_text(self.n_generated, self.n_reference, self.feature_net)}"
