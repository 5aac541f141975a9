"""Paired image-quality metrics for restoration: PSNR and SSIM, per image and averaged, in pure torch.

Images are (B, C, H, W) floating tensors; ``data_range`` is the width of their value range (2.0 for mtd's
[-1, 1] images, 1.0 for [0, 1] images). Both are computed in float64.

    PSNR = 10 log10(L^2 / MSE)                                                 (L = data_range)
    SSIM = mean over windows of ((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))

SSIM follows Wang et al. 2004 (eq. 13 per window, eq. 17 the mean): an 11x11 Gaussian window with sigma 1.5,
C1 = (0.01 L)^2, C2 = (0.03 L)^2, Gaussian-weighted (biased) local moments, only windows fully inside the image
("valid"), each channel separately, then the mean over channels and windows. Images smaller than 11 pixels use
the largest odd window that fits (7x7 for 8x8 digits), with the same sigma.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch.nn import functional as F

from mtd_core.metrics.checks import check_images
from mtd_core.metrics.errors import MetricError
from mtd_core.metrics.results import fmt

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


@attrs.frozen
class PairedImageScore:
    """A paired image metric: one value per (generated, reference) image pair and their mean.

    Attributes:
        metric: "psnr" or "ssim".
        per_image: (n,) float64 values.
        mean: the mean over images (inf for PSNR when any pair is identical).
        data_range: the value range width L used.
        pooled: PSNR only (None for SSIM): 10 log10(L^2 / MSE) with the MSE over every pixel of every pair, the
            "PSNR of the set"; finite unless every pair is identical, so it stays comparable when a restoration that
            keeps the observed pixels reproduces some images exactly.
    """

    metric: str
    per_image: torch.Tensor
    mean: float
    data_range: float
    pooled: float | None = None

    @property
    def n_generated(self) -> int:
        """Number of generated images (equal to the number of reference images: they are paired)."""
        return int(self.per_image.shape[0])

    @property
    def n_reference(self) -> int:
        """Number of reference images (one per generated image)."""
        return int(self.per_image.shape[0])

    def scores(self) -> dict[str, float]:
        """The named numbers of this result."""
        return {self.metric: self.mean}

    def __str__(self) -> str:
        unit = " dB" if self.metric == "psnr" else ""
        return (f"{self.metric.upper()} {fmt(self.mean)}{unit} (mean over n={self.n_generated} image pairs, "
                f"data_range={self.data_range:g})")


def _check_pair(x: torch.Tensor, y: torch.Tensor, data_range: float, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise MetricError(f"{who}: data_range must be a positive number (2.0 for [-1, 1], 1.0 for [0, 1]), "
                          f"got {data_range!r}")
    check_images(x, f"{who}: generated images", value_range=None)
    check_images(y, f"{who}: reference images", value_range=None)
    if x.shape != y.shape:
        raise MetricError(f"{who}: generated and reference images must have the same shape, got "
                          f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise MetricError(f"{who}: needs at least one image pair, got 0")
    lo, hi = float(torch.minimum(x.min(), y.min())), float(torch.maximum(x.max(), y.max()))
    if hi - lo > data_range * (1 + 1e-6) + 1e-6:
        raise MetricError(f"{who}: the images span [{lo:.4g}, {hi:.4g}], wider than data_range={data_range:g}; "
                          "pass the width of the images' value range (2.0 for [-1, 1], 1.0 for [0, 1], 255 for uint8)")
    return x.detach().to("cpu", torch.float64), y.detach().to("cpu", torch.float64)


def psnr(generated: torch.Tensor, reference: torch.Tensor, *, data_range: float = 2.0) -> PairedImageScore:
    """Peak signal-to-noise ratio in dB per image pair, 10 log10(L^2 / MSE), inf for identical images; and pooled
    over the pairs (``pooled``)."""
    x, y = _check_pair(generated, reference, data_range, "PSNR")
    mse = (x - y).pow(2).flatten(1).mean(1)
    per = 10.0 * torch.log10(data_range**2 / mse)  # mse = 0 gives +inf
    pooled = 10.0 * math.log10(data_range**2 / float(mse.mean())) if float(mse.mean()) > 0 else math.inf
    return PairedImageScore(metric="psnr", per_image=per, mean=float(per.mean()), data_range=float(data_range),
                            pooled=pooled)


def gaussian_window(size: int, sigma: float = SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian window (size,) in float64."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_window_size(height: int, width: int) -> int:
    """11, or the largest odd size fitting in a smaller image."""
    size = min(WINDOW, height, width)
    return size if size % 2 else size - 1


def ssim(generated: torch.Tensor, reference: torch.Tensor, *, data_range: float = 2.0) -> PairedImageScore:
    """Mean structural similarity per image pair (Wang et al. 2004); 1 for identical images."""
    x, y = _check_pair(generated, reference, data_range, "SSIM")
    c = x.shape[1]
    size = ssim_window_size(x.shape[2], x.shape[3])
    if size < 1:
        raise MetricError(f"SSIM: images of size {x.shape[2]}x{x.shape[3]} are too small for a window")
    g = gaussian_window(size)
    kh = g.reshape(1, 1, size, 1).expand(c, 1, size, 1)
    kw = g.reshape(1, 1, 1, size).expand(c, 1, 1, size)

    def blur(v: torch.Tensor) -> torch.Tensor:  # separable Gaussian filter, valid region, per channel
        return F.conv2d(F.conv2d(v, kh, groups=c), kw, groups=c)

    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    s_xx = blur(x * x) - mu_x**2
    s_yy = blur(y * y) - mu_y**2
    s_xy = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * s_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (s_xx + s_yy + c2))  # eq. 13
    per = ssim_map.flatten(1).mean(1)  # eq. 17, averaged over channels too
    return PairedImageScore(metric="ssim", per_image=per, mean=float(per.mean()), data_range=float(data_range))
