"""Frechet distance between Gaussian fits of two feature sets (FID), and cached reference statistics.

    FID = ||mu_g - mu_r||^2 + tr(C_g) + tr(C_r) - 2 tr((C_g C_r)^(1/2))

the Frechet (2-Wasserstein) distance between N(mu_g, C_g) and N(mu_r, C_r) (Dowson & Landau 1982; FID:
Heusel et al. 2017, eq. 6), computed in float64 on features of the locally trained feature network
(:mod:`mtd_core.metrics.features`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import attrs
import torch

from mtd_core.metrics.cache import TensorCache, json_digest, tensor_digest
from mtd_core.metrics.checks import check_features, check_images
from mtd_core.metrics.errors import MetricError, MetricWarning
from mtd_core.metrics.features import FeatureNetInfo, FeatureNetResult, features
from mtd_core.metrics.results import NetLike, counts_text, fmt, net_info


@attrs.frozen
class GaussianStats:
    """The Gaussian fit of a feature set: mean (D,) and covariance (D, D) in float64, and the sample count n."""

    mean: torch.Tensor
    cov: torch.Tensor
    n: int

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, feats: torch.Tensor, who: str = "features") -> GaussianStats:
        """Mean and unbiased covariance (divisor n - 1) of features (n, D); n >= 2 is required."""
        x = check_features(feats, who, min_n=2, why="a covariance needs two")
        mean = x.mean(0)
        xc = x - mean
        return cls(mean=mean, cov=(xc.T @ xc) / (x.shape[0] - 1), n=int(x.shape[0]))


def _psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues are clamped to 0."""
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def trace_sqrt_product(a: torch.Tensor, b: torch.Tensor) -> float:
    """tr((A B)^(1/2)) for symmetric PSD A, B.

    A B is not symmetric, but A^(1/2) B A^(1/2) is (and PSD) and has the same eigenvalues, so the trace is the
    sum of the square roots of its eigenvalues from a symmetric eigendecomposition. No inverse is taken, so
    singular or near-singular covariances (fewer samples than dimensions, dead features) are handled exactly.
    """
    sa = _psd_sqrt(a)
    m = sa @ b @ sa
    return float(torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """The Frechet distance between N(a.mean, a.cov) and N(b.mean, b.cov) (Heusel et al. 2017, eq. 6).

    Clamped at 0: the exact value is >= 0 and only round-off makes it slightly negative.
    """
    if a.dim != b.dim:
        raise MetricError(f"Frechet distance: the two statistics have feature dimensions {a.dim} and {b.dim}")
    d2 = float(((a.mean - b.mean) ** 2).sum())
    value = d2 + float(torch.trace(a.cov)) + float(torch.trace(b.cov)) - 2.0 * trace_sqrt_product(a.cov, b.cov)
    return max(value, 0.0)


@attrs.frozen
class FIDResult:
    """An FID value with the counts and feature network it was computed with.

    Attributes:
        value: the Frechet distance.
        n_generated: generated samples.
        n_reference: reference samples behind the reference statistics.
        feature_dim: feature dimension D.
        feature_net: the feature network, or None for raw features.
    """

    value: float
    n_generated: int
    n_reference: int
    feature_dim: int
    feature_net: FeatureNetInfo | None = None

    def scores(self) -> dict[str, float]:
        """The named numbers of this result."""
        return {"fid": self.value}

    def __str__(self) -> str:
        return f"FID {fmt(self.value)} {counts_text(self.n_generated, self.n_reference, self.feature_net)}"


@attrs.frozen
class ReferenceFeatures:
    """Features of the real (test) images under one feature network, with their Gaussian fit.

    Attributes:
        features: (n, D) float32.
        stats: their :class:`GaussianStats`.
        key: the cache key (feature network key + image hash).
        from_cache: whether they were read from the cache.
    """

    features: torch.Tensor
    stats: GaussianStats
    key: str
    from_cache: bool = False

    @property
    def n(self) -> int:
        """Number of reference samples."""
        return int(self.features.shape[0])


def _warn_small(n: int, dim: int, who: str) -> None:
    if n < dim:
        warnings.warn(
            f"FID: {who} has n={n} samples but the features have D={dim} dimensions; the covariance is rank-"
            f"deficient and FID is strongly biased upward. Compare FIDs only at equal n, preferably n >= {10 * dim}.",
            MetricWarning, stacklevel=3,
        )


def fid(generated: torch.Tensor, reference: torch.Tensor | GaussianStats | ReferenceFeatures, *,
        feature_net: NetLike = None) -> FIDResult:
    """FID between generated features (n, D) and reference features, their statistics, or cached reference.

    Args:
        generated: features of the generated images (n >= 2; n < D warns).
        reference: features of the real images, a :class:`GaussianStats`, or a :class:`ReferenceFeatures`.
        feature_net: the network the features came from (recorded in the result).
    """
    info = net_info(feature_net)
    gen = GaussianStats.fit(generated, "FID: generated features")
    if isinstance(reference, ReferenceFeatures):
        ref = reference.stats
    elif isinstance(reference, GaussianStats):
        ref = reference
    else:
        ref = GaussianStats.fit(reference, "FID: reference features")
    if gen.dim != ref.dim:
        raise MetricError(f"FID: generated features have {gen.dim} dimensions but the reference has {ref.dim}: "
                          "both must come from the same feature network")
    if info is not None and info.feature_dim != gen.dim:
        raise MetricError(f"FID: the features have {gen.dim} dimensions but {info.name} gives {info.feature_dim}")
    _warn_small(gen.n, gen.dim, "the generated set")
    _warn_small(ref.n, ref.dim, "the reference set")
    return FIDResult(value=frechet_distance(gen, ref), n_generated=gen.n, n_reference=ref.n, feature_dim=gen.dim,
                     feature_net=info)


def reference_features(feature_net: FeatureNetResult, images: torch.Tensor, *, batch_size: int = 256,
                       cache_dir: str | Path | None = None, use_cache: bool = True) -> ReferenceFeatures:
    """The features and Gaussian fit of real images under ``feature_net``, cached by content.

    Args:
        feature_net: the trained feature network (its key is part of the cache key).
        images: the real images (n, C, H, W) in [-1, 1], usually the test split; n >= 2.
        batch_size: images per forward pass.
        cache_dir: cache root (default ``$MTD_CACHE_DIR`` or ``~/.cache/mtd``); entries go in ``stats/``.
        use_cache: read and write the cache.
    """
    if not isinstance(feature_net, FeatureNetResult):
        raise MetricError(f"reference_features needs a FeatureNetResult (for its cache key), got {type(feature_net).__name__}")
    net = feature_net.net
    check_images(images, "reference images", channels=net.in_channels, size=net.image_size)
    key = json_digest({"net": feature_net.key, "images": tensor_digest(images.detach().to("cpu", torch.float32))})
    cache = TensorCache("stats", cache_dir)
    if use_cache:
        entry = cache.load(key)
        if entry is not None and {"features", "mean", "cov"} <= set(entry.tensors) and entry.meta.get("key") == key:
            t = entry.tensors
            stats = GaussianStats(mean=t["mean"], cov=t["cov"], n=int(t["features"].shape[0]))
            return ReferenceFeatures(features=t["features"], stats=stats, key=key, from_cache=True)
    feats = features(net, images, batch_size)
    stats = GaussianStats.fit(feats, "reference features")
    if use_cache:
        cache.save(key, {"features": feats, "mean": stats.mean, "cov": stats.cov},
                   {"key": key, "feature_net": feature_net.key, "n": stats.n, "feature_dim": stats.dim})
    return ReferenceFeatures(features=feats, stats=stats, key=key, from_cache=False)

