"""Kernel Inception Distance: the unbiased MMD^2 between feature sets with a cubic polynomial kernel.

    k(x, y) = (x . y / D + 1)^3
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

(Binkowski et al. 2018, eq. 4 with the kernel of section 4). Unlike FID it is unbiased in the sample size, so
it is comparable across n; it is averaged over random subsets of ``subset_size`` samples from each set, and the
mean and standard deviation over subsets are reported. Computed in float64.
"""

from __future__ import annotations

import math

import attrs
import torch

from mtd_core.metrics.checks import check_features, check_same_dim
from mtd_core.metrics.errors import MetricError
from mtd_core.metrics.features import FeatureNetInfo
from mtd_core.metrics.fid import ReferenceFeatures
from mtd_core.metrics.results import NetLike, counts_text, fmt, net_info


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x . y / D + 1)^3 for every pair of rows: (n, D), (m, D) -> (n, m)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD^2 estimate between two equally sized samples (m >= 2) with the polynomial kernel."""
    m = x.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    off = m * (m - 1)
    return float((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
                 - 2.0 * kxy.sum() / (m * m))


@attrs.frozen
class KIDResult:
    """KID over random subsets: mean and standard deviation of the per-subset MMD^2.

    Attributes:
        mean: the mean over subsets (the KID value).
        std: their standard deviation (divisor n_subsets - 1; 0 for a single subset).
        n_subsets: number of subsets.
        subset_size: samples drawn from each set per subset (without replacement).
        n_generated: generated samples available.
        n_reference: reference samples available.
        feature_net: the feature network, or None for raw features.
    """

    mean: float
    std: float
    n_subsets: int
    subset_size: int
    n_generated: int
    n_reference: int
    feature_net: FeatureNetInfo | None = None

    def scores(self) -> dict[str, float]:
        """The named numbers of this result."""
        return {"kid_mean": self.mean, "kid_std": self.std}

    def __str__(self) -> str:
        return (f"KID {fmt(self.mean)} +- {fmt(self.std)} over {self.n_subsets} subsets of {self.subset_size} "
                f"{counts_text(self.n_generated, self.n_reference, self.feature_net)}")


def kid(generated: torch.Tensor, reference: torch.Tensor | ReferenceFeatures, *, n_subsets: int = 100,
        subset_size: int | None = None, seed: int = 0, feature_net: NetLike = None) -> KIDResult:
    """KID between generated and reference features (both (n, D) from the same network).

    Args:
        generated: features of the generated images.
        reference: features of the real images, or a :class:`ReferenceFeatures`.
        n_subsets: how many random subset pairs to average over.
        subset_size: samples per subset (default: min(1000, n_generated, n_reference)); at least 2 and at most
            the smaller set.
        seed: seeds the subset draws (the result is deterministic for a given seed).
        feature_net: the network the features came from (recorded in the result).
    """
    ref = reference.features if isinstance(reference, ReferenceFeatures) else reference
    x = check_features(generated, "KID: generated features", min_n=2)
    y = check_features(ref, "KID: reference features", min_n=2)
    check_same_dim(x, y, "KID: generated features", "the reference features")
    if not isinstance(n_subsets, int) or n_subsets < 1:
        raise MetricError(f"KID: n_subsets must be a positive integer, got {n_subsets!r}")
    most = min(x.shape[0], y.shape[0])
    m = min(1000, most) if subset_size is None else subset_size
    if not isinstance(m, int) or m < 2 or m > most:
        raise MetricError(f"KID: subset_size must be an integer in [2, {most}] (the smaller set has {most} samples), "
                          f"got {subset_size!r}")
    gen = torch.Generator().manual_seed(seed)
    vals = torch.tensor([mmd2_unbiased(x[torch.randperm(x.shape[0], generator=gen)[:m]],
                                       y[torch.randperm(y.shape[0], generator=gen)[:m]])
                         for _ in range(n_subsets)], dtype=torch.float64)
    std = float(vals.std()) if n_subsets > 1 else 0.0
    return KIDResult(mean=float(vals.mean()), std=std if math.isfinite(std) else 0.0, n_subsets=n_subsets,
                     subset_size=m, n_generated=int(x.shape[0]), n_reference=int(y.shape[0]),
                     feature_net=net_info(feature_net))
