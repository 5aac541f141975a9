"""The noise-like share: how many generated images are rougher than almost every real one (docs/metrics.md).

    TV(x)      = mean |x[c, i+1, j] - x[c, i, j]| + mean |x[c, i, j+1] - x[c, i, j]|     (total variation per pixel)
    threshold  = the ``quantile`` (default 0.99) of TV over the real reference images
    share      = the fraction of generated images with TV above the threshold

A failed sample of a diffusion model is typically high-frequency noise (or speckle on a smooth background), whose
total variation is far above that of any real image; real images themselves score 1 - quantile by construction.
It needs no feature network, so it cannot be fooled by one, and it counts failures rather than averaging them into
a distribution distance.
"""

from __future__ import annotations

import attrs
import torch

from mtd_core.metrics.checks import check_images
from mtd_core.metrics.errors import MetricError

DEFAULT_QUANTILE = 0.99


def total_variation(images: torch.Tensor, who: str = "images") -> torch.Tensor:
    """(n,) float64: the mean absolute difference of vertically and of horizontally adjacent pixels, summed."""
    x = check_images(images, who).double()
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise MetricError(f"total variation needs images of at least 2x2 pixels, got {tuple(x.shape[-2:])}")
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dh = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dv + dh


@attrs.frozen
class NoiseLikeResult:
    """The noise-like share of a set of generated images.

    Attributes:
        share: the fraction of generated images whose total variation exceeds ``threshold``.
        threshold: the ``quantile`` of the real images' total variation.
        quantile: the quantile that sets the threshold (real images score 1 - quantile).
        n_generated: generated images scored.
        n_reference: real images behind the threshold.
    """

    share: float
    threshold: float
    quantile: float
    n_generated: int
    n_reference: int

    def __str__(self) -> str:
        return (f"noise-like share {self.share:.2%} (total variation above {self.threshold:.4f}, the "
                f"{self.quantile:g} quantile of {self.n_reference} real images; n_generated={self.n_generated})")


def noise_like_share(generated: torch.Tensor, reference: torch.Tensor, *,
                     quantile: float = DEFAULT_QUANTILE) -> NoiseLikeResult:
    """The share of ``generated`` images rougher than the ``quantile`` of the ``reference`` (real) images."""
    if not 0.0 < quantile < 1.0:
        raise MetricError(f"noise-like share: quantile must lie in (0, 1), got {quantile!r}")
    ref = total_variation(reference, "noise-like share: reference")
    gen = total_variation(generated, "noise-like share: generated")
    if len(ref) < 100:
        raise MetricError(f"noise-like share: the threshold needs at least 100 real images, got {len(ref)}")
    threshold = float(torch.quantile(ref, quantile))
    return NoiseLikeResult(share=float((gen > threshold).double().mean()), threshold=threshold, quantile=quantile,
                           n_generated=len(gen), n_reference=len(ref))


__all__ = ["DEFAULT_QUANTILE", "NoiseLikeResult", "noise_like_share", "total_variation"]
