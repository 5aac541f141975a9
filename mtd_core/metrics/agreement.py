"""Metrics of agreement between modalities: does what was generated match what was asked for or co-generated?

    conditional fidelity   accuracy of the feature network on label-conditioned samples vs the requested labels
    joint coherence        agreement of jointly generated labels with the feature network's label for the image
    classification         accuracy (and confusion matrix) of predicted vs true labels, e.g. the model's own
                           label head reading real test images
    cosine consistency     cosine similarity between generated representation vectors and their targets

The two label metrics rely on the feature network being a good classifier: its test accuracy is carried in the
result and printed beside the value (an agreement can be no more trustworthy than that accuracy).
"""

from __future__ import annotations

import attrs
import torch
from torch.nn import functional as F

from mtd_core.metrics.checks import check_labels
from mtd_core.metrics.errors import MetricError
from mtd_core.metrics.features import FeatureNet, FeatureNetInfo, FeatureNetResult, classify
from mtd_core.metrics.results import counts_text, fmt


@attrs.frozen
class ClassificationReport:
    """Accuracy and confusion matrix of predicted vs target labels.

    Attributes:
        accuracy: fraction of predictions equal to their target.
        confusion: (K, K) int64 counts; row = target class, column = predicted class.
        n: number of examples.
    """

    accuracy: float
    confusion: torch.Tensor
    n: int

    @property
    def num_classes(self) -> int:
        """K."""
        return int(self.confusion.shape[0])

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        """(K,) float64 recall of each target class; NaN for a class with no examples."""
        rows = self.confusion.sum(1).double()
        return self.confusion.diagonal().double() / rows  # 0 / 0 -> nan for absent classes

    def __str__(self) -> str:
        return f"accuracy {fmt(self.accuracy)} over {self.num_classes} classes (n={self.n})"


def classification_accuracy(predicted: torch.Tensor, target: torch.Tensor, *,
                            num_classes: int | None = None) -> ClassificationReport:
    """Accuracy and confusion matrix of ``predicted`` vs ``target`` class indices (both (n,), n >= 1).

    ``num_classes`` (default: 1 + the largest index seen) sizes the confusion matrix.
    """
    t = check_labels(target, "target labels", num_classes=num_classes)
    p = check_labels(predicted, "predicted labels", n=t.shape[0], num_classes=num_classes)
    if t.shape[0] == 0:
        raise MetricError("classification accuracy needs at least one example, got 0")
    k = num_classes if num_classes is not None else 1 + max(int(t.max()), int(p.max()))
    confusion = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
    return ClassificationReport(accuracy=float((p == t).double().mean()), confusion=confusion, n=int(t.shape[0]))


@attrs.frozen
class AgreementResult:
    """How often the feature network's label for generated images agrees with a label that came with them.

    Attributes:
        metric: "conditional_fidelity" or "joint_coherence".
        accuracy: the agreement rate.
        chance: the rate a uniform random guess would reach (1 / K).
        report: the full :class:`ClassificationReport` (row = the label that came with the image, column =
            the feature network's label).
        feature_net: the feature network used.
    """

    metric: str
    accuracy: float
    chance: float
    report: ClassificationReport
    feature_net: FeatureNetInfo

    @property
    def n_generated(self) -> int:
        """Number of generated samples."""
        return self.report.n

    def scores(self) -> dict[str, float]:
        """The named numbers of this result."""
        return {self.metric: self.accuracy}

    def __str__(self) -> str:
        return (f"{self.metric.replace('_', ' ')} {fmt(self.accuracy)} (chance {fmt(self.chance)}) "
                f"{counts_text(self.n_generated, None, self.feature_net)}")


def _agreement(metric: str, net: FeatureNet | FeatureNetResult, images: torch.Tensor, labels: torch.Tensor,
               who: str, batch_size: int) -> AgreementResult:
    if not isinstance(net, FeatureNetResult):
        raise MetricError(f"{metric}: needs a FeatureNetResult (its test accuracy is reported), got {type(net).__name__}")
    k = net.net.num_classes
    labels = check_labels(labels, f"{metric}: {who}", num_classes=k)
    if not isinstance(images, torch.Tensor) or images.ndim < 1 or images.shape[0] != labels.shape[0]:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise MetricError(f"{metric}: expected one generated image per label ({labels.shape[0]}), got images {got}")
    if labels.shape[0] == 0:
        raise MetricError(f"{metric}: needs at least one generated sample, got 0")
    report = classification_accuracy(classify(net, images, batch_size), labels, num_classes=k)
    return AgreementResult(metric=metric, accuracy=report.accuracy, chance=1.0 / k, report=report,
                           feature_net=net.info)


def conditional_fidelity(net: FeatureNetResult, images: torch.Tensor, requested: torch.Tensor, *,
                         batch_size: int = 256) -> AgreementResult:
    """Accuracy of the feature network on images generated given ``requested`` labels (n,) vs those labels."""
    return _agreement("conditional_fidelity", net, images, requested, "requested labels", batch_size)


def joint_coherence(net: FeatureNetResult, images: torch.Tensor, labels: torch.Tensor, *,
                    batch_size: int = 256) -> AgreementResult:
    """Agreement of jointly generated ``labels`` (n,) with the feature network's label for the generated images."""
    return _agreement("joint_coherence", net, images, labels, "generated labels", batch_size)


@attrs.frozen
class CosineResult:
    """Cosine similarity between generated vectors and their targets, per example and summarised.

    Attributes:
        per_example: (n,) float64 cosine similarities in [-1, 1].
        mean: their mean.
        std: their standard deviation (divisor n - 1; 0 for n = 1).
    """

    per_example: torch.Tensor
    mean: float
    std: float

    @property
    def n_generated(self) -> int:
        """Number of generated vectors."""
        return int(self.per_example.shape[0])

    def scores(self) -> dict[str, float]:
        """The named numbers of this result."""
        return {"cosine_mean": self.mean, "cosine_std": self.std}

    def __str__(self) -> str:
        return f"cosine consistency {fmt(self.mean)} +- {fmt(self.std)} {counts_text(self.n_generated, None, None)}"


def cosine_consistency(generated: torch.Tensor, target: torch.Tensor) -> CosineResult:
    """Cosine similarity of each generated vector (n, d) with its target (n, d).

    A zero vector has no direction: it is an error rather than a silent similarity of 0.
    """
    for who, v in (("generated vectors", generated), ("target vectors", target)):
        if not isinstance(v, torch.Tensor) or v.ndim != 2 or not v.is_floating_point():
            got = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise MetricError(f"cosine consistency: {who} must be a floating tensor (n, d), got {got}")
        if not torch.isfinite(v).all():
            raise MetricError(f"cosine consistency: {who} contain NaN or infinity")
    if generated.shape != target.shape or generated.shape[0] == 0:
        raise MetricError(f"cosine consistency: expected generated and target vectors of the same shape (n >= 1, d), "
                          f"got {tuple(generated.shape)} and {tuple(target.shape)}")
    g, t = generated.detach().to("cpu", torch.float64), target.detach().to("cpu", torch.float64)
    for who, v in (("generated", g), ("target", t)):
        zero = (v.norm(dim=1) == 0).nonzero()
        if zero.numel():
            raise MetricError(f"cosine consistency: {who} vector {int(zero[0])} is all zeros (no direction)")
    per = F.cosine_similarity(g, t, dim=1, eps=0.0)
    std = float(per.std()) if per.shape[0] > 1 else 0.0
    return CosineResult(per_example=per, mean=float(per.mean()), std=std)
