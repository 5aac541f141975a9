"""Evaluation metrics (docs/metrics.md): distribution metrics on features of a locally trained classifier
(FID, KID, precision/recall), paired image metrics (PSNR, SSIM), cross-modal agreement, and the evaluation
context and contract through which registered metric plugins are run.

Every metric function takes tensors; nothing here depends on the model, the samplers or the data loaders.
"""

from mtd_core.metrics.agreement import (
    AgreementResult,
    ClassificationReport,
    CosineResult,
    classification_accuracy,
    conditional_fidelity,
    cosine_consistency,
    joint_coherence,
)
from mtd_core.metrics.base import Evaluation, Metric, run_metrics
from mtd_core.metrics.context import EvalContext
from mtd_core.metrics.errors import CacheWarning, MetricError, MetricWarning
from mtd_core.metrics.features import (
    FeatureNet,
    FeatureNetInfo,
    FeatureNetResult,
    FeatureRecipe,
    classify,
    features,
    logits,
    train_feature_net,
)
from mtd_core.metrics.fid import FIDResult, GaussianStats, ReferenceFeatures, fid, frechet_distance, reference_features
from mtd_core.metrics.image import PairedImageScore, psnr, ssim
from mtd_core.metrics.kid import KIDResult, kid
from mtd_core.metrics.noise_like import NoiseLikeResult, noise_like_share, total_variation
from mtd_core.metrics.precision_recall import PrecisionRecallResult, precision_recall
from mtd_core.metrics.results import MetricReport

__all__ = [
    "AgreementResult",
    "CacheWarning",
    "ClassificationReport",
    "CosineResult",
    "EvalContext",
    "Evaluation",
    "FIDResult",
    "FeatureNet",
    "FeatureNetInfo",
    "FeatureNetResult",
    "FeatureRecipe",
    "GaussianStats",
    "KIDResult",
    "Metric",
    "MetricError",
    "MetricReport",
    "MetricWarning",
    "NoiseLikeResult",
    "PairedImageScore",
    "PrecisionRecallResult",
    "ReferenceFeatures",
    "classification_accuracy",
    "classify",
    "conditional_fidelity",
    "cosine_consistency",
    "features",
    "fid",
    "frechet_distance",
    "joint_coherence",
    "kid",
    "logits",
    "noise_like_share",
    "precision_recall",
    "psnr",
    "reference_features",
    "run_metrics",
    "ssim",
    "total_variation",
    "train_feature_net",
]
