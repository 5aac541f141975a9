"""Improved precision and recall with k-nearest-neighbour manifolds (Kynkaanniemi et al. 2019, eqs. 1-3).

The manifold of a feature set is the union of balls around its points, each with the radius of the distance
to its k-th nearest neighbour in the same set (k = 3 by default, as in the paper). Precision is the fraction of
generated samples inside the real manifold (fidelity); recall is the fraction of real samples inside the
generated manifold (coverage). Distances are exact Euclidean distances in float64.
"""

from __future__ import annotations

import attrs
import torch

from mtd_core.metrics.checks import check_features, check_same_dim
from mtd_core.metrics.errors import MetricError
from mtd_core.metrics.features import FeatureNetInfo
from mtd_core.metrics.fid import ReferenceFeatures
from mtd_core.metrics.results import NetLike, counts_text, fmt, net_info

_CHUNK = 1024  # query rows per distance block: bounds memory at _CHUNK x n floats


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """The distance from each row of x to its k-th nearest neighbour among the other rows (n,)."""
    out = [_cdist(x[i:i + _CHUNK], x).topk(k + 1, dim=1, largest=False).values[:, k]
           for i in range(0, x.shape[0], _CHUNK)]
    return torch.cat(out)


def inside_manifold(query: torch.Tensor, points: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each query row, whether it lies in some ball B(points_j, radii_j) (closed balls): bool (n_query,)."""
    out = [(_cdist(query[i:i + _CHUNK], points) <= radii[None, :]).any(1) for i in range(0, query.shape[0], _CHUNK)]
    return torch.cat(out)


@attrs.frozen
class PrecisionRecallResult:
    """Precision (fidelity) and recall (coverage) of generated samples against real ones.

    Attributes:
        precision: fraction of generated samples inside the real k-NN manifold.
        recall: fraction of real samples inside the generated k-NN manifold.
        k: the neighbour index defining the ball radii.
        n_generated: generated samples.
        n_reference: real samples.
        feature_net: the feature network, or None for raw features.
    """

    precision: float
    recall: float
    k: int
    n_generated: int
    n_reference: int
    feature_net: FeatureNetInfo | None = None

    def scores(self) -> dict[str, float]:
        """The named numbers of this result."""
        return {"precision": self.precision, "recall": self.recall}

    def __str__(self) -> str:
        return (f"precision {fmt(self.precision)}, recall {fmt(self.recall)} (k={self.k}) "
                f"{counts_text(self.n_generated, self.n_reference, self.feature_net)}")


def precision_recall(generated: torch.Tensor, reference: torch.Tensor | ReferenceFeatures, *, k: int = 3,
                     feature_net: NetLike = None) -> PrecisionRecallResult:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated vs reference features.

    Args:
        generated: features of the generated images (n, D), n > k.
        reference: features of the real images (n, D), n > k, or a :class:`ReferenceFeatures`.
        k: the k of the k-th nearest neighbour radius (3 in the paper).
        feature_net: the network the features came from (recorded in the result).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise MetricError(f"precision/recall: k must be a positive integer, got {k!r}")
    ref = reference.features if isinstance(reference, ReferenceFeatures) else reference
    why = f"each point needs k={k} neighbours besides itself"
    x = check_features(generated, "precision/recall: generated features", min_n=k + 1, why=why)
    y = check_features(ref, "precision/recall: reference features", min_n=k + 1, why=why)
    check_same_dim(x, y, "precision/recall: generated features", "the reference features")
    precision = float(inside_manifold(x, y, knn_radii(y, k)).double().mean())
    recall = float(inside_manifold(y, x, knn_radii(x, k)).double().mean())
    return PrecisionRecallResult(precision=precision, recall=recall, k=k, n_generated=int(x.shape[0]),
                                 n_reference=int(y.shape[0]), feature_net=net_info(feature_net))
