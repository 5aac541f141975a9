"""The built-in metrics, registered through the ``mtd_register_metrics`` hook exactly as a third party would.

Each is a :class:`mtd_core.metrics.Metric`: called as ``metric(ctx: EvalContext) -> MetricReport``, with
``applies_to(taskset)`` (by the kinds of modality present) and ``missing(ctx)`` (what the context lacks, so
the runner can skip it with a reason). "base" below is the task set's base image modality.

    fid                   FID of generated base images vs real[base]               needs feature_net
    kid                   KID (mean, std over subsets), same sets                   needs feature_net
    precision_recall      k-NN precision and recall (k = 3), same sets              needs feature_net
    conditional_fidelity  feature-net accuracy on images generated given a label    needs feature_net
    joint_coherence       feature-net agreement with jointly generated labels       needs feature_net
    label_accuracy        generated labels of given images vs targets (classification)
    representation_consistency   cosine of generated representations vs targets or extractor(generated image)
    psnr, ssim            generated base images vs targets[base] (restoration)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from mtd_core.metrics import (
    EvalContext,
    Metric,
    MetricReport,
    classification_accuracy,
    conditional_fidelity,
    cosine_consistency,
    fid,
    joint_coherence,
    kid,
    precision_recall,
    psnr,
    ssim,
)
from mtd_core.metrics.base import has_base_image
from mtd_core.metrics.context import TaskSetLike, base_name, modality_kinds
from mtd_core.plugins import hookimpl

if TYPE_CHECKING:
    from mtd_core.metrics.agreement import AgreementResult
    from mtd_core.metrics.fid import FIDResult
    from mtd_core.metrics.image import PairedImageScore
    from mtd_core.metrics.kid import KIDResult
    from mtd_core.metrics.precision_recall import PrecisionRecallResult


def _kinds(taskset: TaskSetLike) -> set[str]:
    return set(modality_kinds(taskset).values())


def _needs_images(ctx: EvalContext, *, reference: bool) -> list[str]:
    """What the feature-based image metrics need from the context."""
    out = []
    if ctx.base is None or ctx.kinds.get(ctx.base) != "image":
        out.append("the task set has no base image modality")
        return out
    if ctx.feature_net is None:
        out.append("no feature network (EvalContext.feature_net)")
    if ctx.base not in ctx.generated:
        out.append(f"no generated base images (generated[{ctx.base!r}])")
    if reference and ctx.reference is None and ctx.base not in ctx.real:
        out.append(f"no real reference images (real[{ctx.base!r}]) or precomputed reference")
    return out


class _DistributionMetric(Metric):
    """Common part of FID, KID and precision/recall: generated vs real base images in feature space."""

    def applies_to(self, taskset: TaskSetLike) -> bool:
        """Applies to task sets whose base modality is an image."""
        return has_base_image(taskset)

    def missing(self, ctx: EvalContext) -> list[str]:
        """Needs the feature network, generated base images and real base images (or cached reference)."""
        return _needs_images(ctx, reference=True)

    def _report(self, ctx: EvalContext, result: FIDResult | KIDResult | PrecisionRecallResult) -> MetricReport:
        return MetricReport(metric=self.name, scores=result.scores(), n_generated=result.n_generated,
                            n_reference=result.n_reference, feature_net=result.feature_net, detail=result)


class FIDMetric(_DistributionMetric):
    """FID between generated and real base images (scores: "fid")."""

    default_name = "fid"
    description = "Frechet distance of feature-net features, generated vs real base images"

    def compute(self, ctx: EvalContext) -> MetricReport:
        """FID of ``generated[base]`` against ``real[base]``."""
        return self._report(ctx, fid(ctx.generated_features(), ctx.reference_features(), feature_net=ctx.feature_net))


class KIDMetric(_DistributionMetric):
    """KID between generated and real base images (scores: "kid_mean", "kid_std").

    Args:
        name: registered name.
        n_subsets: subsets averaged over.
        subset_size: samples per subset (default: min(1000, both set sizes)).
    """

    default_name = "kid"
    description = "unbiased polynomial-kernel MMD^2 of feature-net features, generated vs real base images"

    def __init__(self, name: str | None = None, n_subsets: int = 100, subset_size: int | None = None) -> None:
        super().__init__(name)
        self.n_subsets, self.subset_size = n_subsets, subset_size

    def compute(self, ctx: EvalContext) -> MetricReport:
        """KID of ``generated[base]`` against ``real[base]``, subsets seeded by ``ctx.seed``."""
        return self._report(ctx, kid(ctx.generated_features(), ctx.reference_features(), n_subsets=self.n_subsets,
                                     subset_size=self.subset_size, seed=ctx.seed, feature_net=ctx.feature_net))


class PrecisionRecallMetric(_DistributionMetric):
    """k-NN precision and recall of generated vs real base images (scores: "precision", "recall").

    Args:
        name: registered name.
        k: the neighbour index of the manifold radii.
    """

    default_name = "precision_recall"
    description = "Kynkaanniemi et al. 2019 precision (fidelity) and recall (coverage), k-NN manifolds"

    def __init__(self, name: str | None = None, k: int = 3) -> None:
        super().__init__(name)
        self.k = k

    def compute(self, ctx: EvalContext) -> MetricReport:
        """Precision and recall of ``generated[base]`` against ``real[base]``."""
        return self._report(ctx, precision_recall(ctx.generated_features(), ctx.reference_features(), k=self.k,
                                                  feature_net=ctx.feature_net))


class _LabelImageMetric(Metric):
    """Common part of the two label-agreement metrics (base image + a label modality)."""

    def applies_to(self, taskset: TaskSetLike) -> bool:
        """Applies to task sets with a base image and a label modality."""
        return has_base_image(taskset) and "label" in _kinds(taskset)

    def _report(self, result: AgreementResult) -> MetricReport:
        return MetricReport(metric=self.name, scores={**result.scores(), "chance": result.chance},
                            n_generated=result.n_generated, feature_net=result.feature_net, detail=result)


class ConditionalFidelityMetric(_LabelImageMetric):
    """Accuracy of the feature net on images generated given labels (scores: "conditional_fidelity", "chance")."""

    default_name = "conditional_fidelity"
    description = "feature-net accuracy on label-conditioned samples vs the requested labels"

    def missing(self, ctx: EvalContext) -> list[str]:
        """Needs a given label, generated base images and the feature network."""
        out = _needs_images(ctx, reference=False)
        if not any(n in ctx.given for n in ctx.names("label")):
            out.append("no label was given (conditional generation from a label)")
        return out

    def compute(self, ctx: EvalContext) -> MetricReport:
        """Agreement of the feature net's class of ``generated[base]`` with the first given label."""
        label = next(n for n in ctx.names("label") if n in ctx.given)
        assert ctx.feature_net is not None and ctx.base is not None  # guaranteed by missing()
        return self._report(conditional_fidelity(ctx.feature_net, ctx.generated[ctx.base], ctx.given[label],
                                                 batch_size=ctx.batch_size))


class JointCoherenceMetric(_LabelImageMetric):
    """Agreement of jointly generated labels with the feature net (scores: "joint_coherence", "chance")."""

    default_name = "joint_coherence"
    description = "agreement of generated labels with the feature net's label for the generated image"

    def missing(self, ctx: EvalContext) -> list[str]:
        """Needs generated labels, generated base images and the feature network."""
        out = _needs_images(ctx, reference=False)
        if not any(n in ctx.generated for n in ctx.names("label")):
            out.append("no generated label (joint generation of image and label)")
        return out

    def compute(self, ctx: EvalContext) -> MetricReport:
        """Agreement of the first generated label with the feature net's class of ``generated[base]``."""
        label = next(n for n in ctx.names("label") if n in ctx.generated)
        assert ctx.feature_net is not None and ctx.base is not None  # guaranteed by missing()
        return self._report(joint_coherence(ctx.feature_net, ctx.generated[ctx.base], ctx.generated[label],
                                            batch_size=ctx.batch_size))


class LabelAccuracyMetric(Metric):
    """Classification: labels generated from given base images vs their true labels (scores: "accuracy")."""

    default_name = "label_accuracy"
    description = "accuracy of labels predicted from given images against targets (classification task)"

    def applies_to(self, taskset: TaskSetLike) -> bool:
        """Applies to task sets with a base modality and a label modality."""
        return "label" in _kinds(taskset) and base_name(taskset) is not None

    def missing(self, ctx: EvalContext) -> list[str]:
        """Needs a generated label with its targets."""
        if not any(n in ctx.generated and n in ctx.targets for n in ctx.names("label")):
            return ["no generated label with targets (targets[label]: the true labels of the given data)"]
        return []

    def compute(self, ctx: EvalContext) -> MetricReport:
        """Accuracy and confusion matrix of the first label with targets."""
        label = next(n for n in ctx.names("label") if n in ctx.generated and n in ctx.targets)
        r = classification_accuracy(ctx.generated[label], ctx.targets[label])
        return MetricReport(metric=self.name, scores={"accuracy": r.accuracy}, n_generated=r.n, n_reference=r.n,
                            detail=r)


class RepresentationConsistencyMetric(Metric):
    """Cosine similarity of generated representations with their targets (scores: "cosine_mean", "cosine_std").

    The target is ``targets[rep]`` when given (representation prediction from given images), else the
    modality's extractor applied to the generated base images (joint generation).
    """

    default_name = "representation_consistency"
    description = "cosine similarity of generated representation vectors with targets or extractor(image)"

    def applies_to(self, taskset: TaskSetLike) -> bool:
        """Applies to task sets with a representation modality."""
        return "representation" in _kinds(taskset)

    def _target(self, ctx: EvalContext) -> tuple[str, str] | None:
        for n in ctx.names("representation"):
            if n in ctx.generated and n in ctx.targets:
                return n, "targets"
            if n in ctx.generated and n in ctx.extractors and ctx.base is not None and ctx.base in ctx.generated:
                return n, "extractor"
        return None

    def missing(self, ctx: EvalContext) -> list[str]:
        """Needs a generated representation and either its targets or an extractor and generated base images."""
        if self._target(ctx) is None:
            return ["no generated representation with targets[rep], or with extractors[rep] and generated base images"]
        return []

    def compute(self, ctx: EvalContext) -> MetricReport:
        """Cosine consistency of the first representation that has a target."""
        found = self._target(ctx)
        assert found is not None  # guaranteed by missing()
        name, source = found
        if source == "targets":
            target = ctx.targets[name]
        else:
            assert ctx.base is not None  # _target gives "extractor" only with generated base images
            target = ctx.extractors[name](ctx.generated[ctx.base])
        r = cosine_consistency(ctx.generated[name], target)
        return MetricReport(metric=self.name, scores=r.scores(), n_generated=r.n_generated, detail=r)


class _RestorationMetric(Metric):
    """Common part of PSNR and SSIM: generated base images vs the clean targets, on [-1, 1] (data_range 2)."""

    fn: Callable[..., PairedImageScore]

    def applies_to(self, taskset: TaskSetLike) -> bool:
        """Applies to task sets with a base image and another image-like modality (e.g. masked_image)."""
        kinds = list(modality_kinds(taskset).values())
        return has_base_image(taskset) and ("masked_image" in kinds or kinds.count("image") > 1)

    def missing(self, ctx: EvalContext) -> list[str]:
        """Needs generated base images and their clean targets."""
        if ctx.base is None or ctx.base not in ctx.generated or ctx.base not in ctx.targets:
            return [f"no generated base images with targets[{ctx.base!r}] (the clean images of a restoration task)"]
        return []

    def compute(self, ctx: EvalContext) -> MetricReport:
        """The paired score of ``generated[base]`` vs ``targets[base]``."""
        assert ctx.base is not None  # guaranteed by missing()
        r = self.fn(ctx.generated[ctx.base], ctx.targets[ctx.base], data_range=2.0)
        return MetricReport(metric=self.name, scores=r.scores(), n_generated=r.n_generated,
                            n_reference=r.n_reference, detail=r)


class PSNRMetric(_RestorationMetric):
    """PSNR in dB of restored vs clean base images (scores: "psnr")."""

    default_name = "psnr"
    description = "peak signal-to-noise ratio of generated vs target base images (restoration)"
    fn = staticmethod(psnr)


class SSIMMetric(_RestorationMetric):
    """SSIM of restored vs clean base images (scores: "ssim")."""

    default_name = "ssim"
    description = "structural similarity of generated vs target base images (restoration)"
    fn = staticmethod(ssim)


def builtin_metrics() -> dict[str, Metric]:
    """A fresh instance of every built-in metric, keyed by its registered name."""
    metrics: list[Metric] = [FIDMetric(), KIDMetric(), PrecisionRecallMetric(), ConditionalFidelityMetric(),
                             JointCoherenceMetric(), LabelAccuracyMetric(), RepresentationConsistencyMetric(),
                             PSNRMetric(), SSIMMetric()]
    return {m.name: m for m in metrics}


@hookimpl
def mtd_register_metrics() -> Mapping[str, Metric]:
    """Register the built-in metrics."""
    return builtin_metrics()
