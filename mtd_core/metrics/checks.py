"""Input checks shared by the metrics: each raises a MetricError naming the input and expected vs received."""

from __future__ import annotations

import torch

from mtd_core.metrics.errors import MetricError

# Images may exceed [-1, 1] by this much (float round-off of a clamp or a rescale) before it is an error.
RANGE_TOLERANCE = 1e-4


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def check_images(x: object, who: str, *, channels: int | None = None, size: tuple[int, int] | None = None,
                 value_range: tuple[float, float] | None = (-1.0, 1.0)) -> torch.Tensor:
    """Check a batch of images (B, C, H, W): a floating tensor, finite, with the given channels, size and range."""
    if not isinstance(x, torch.Tensor):
        raise MetricError(f"{who}: expected a torch.Tensor of images (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise MetricError(f"{who}: expected images shaped (B, C, H, W), got shape {_shape(x)}")
    if not x.is_floating_point():
        raise MetricError(f"{who}: expected floating-point images in [-1, 1], got dtype {str(x.dtype).replace('torch.', '')}"
                          " (convert uint8 images with x / 127.5 - 1)")
    if channels is not None and x.shape[1] != channels:
        raise MetricError(f"{who}: expected {channels} channel(s), got {x.shape[1]} (shape {_shape(x)})")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise MetricError(f"{who}: expected images of size {size[0]}x{size[1]} (the size the feature network was "
                          f"trained on), got {x.shape[2]}x{x.shape[3]}")
    if x.numel() and not torch.isfinite(x).all():
        idx = int(torch.nonzero(~torch.isfinite(x.flatten(1)).all(1))[0])
        raise MetricError(f"{who}: image {idx} contains NaN or infinity")
    if value_range is not None and x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < value_range[0] - RANGE_TOLERANCE or hi > value_range[1] + RANGE_TOLERANCE:
            raise MetricError(f"{who}: expected values in [{value_range[0]:g}, {value_range[1]:g}], got values in "
                              f"[{lo:.4g}, {hi:.4g}] (rescale [0, 1] images with 2 x - 1)")
    return x


def check_features(x: object, who: str, *, min_n: int = 1, why: str = "") -> torch.Tensor:
    """Check a feature matrix (N, D): a finite floating tensor with at least ``min_n`` rows (``why`` says
    why, for the message); returned in float64 on CPU."""
    if not isinstance(x, torch.Tensor):
        raise MetricError(f"{who}: expected a torch.Tensor of features (N, D), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] == 0:
        raise MetricError(f"{who}: expected features shaped (N, D) with D >= 1, got shape {_shape(x)}")
    if not x.is_floating_point():
        raise MetricError(f"{who}: expected floating-point features, got dtype {str(x.dtype).replace('torch.', '')}")
    if x.shape[0] < min_n:
        raise MetricError(f"{who}: needs at least {min_n} samples{f' ({why})' if why else ''}, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        idx = int(torch.nonzero(~torch.isfinite(x).all(1))[0])
        raise MetricError(f"{who}: sample {idx} has a NaN or infinite feature")
    return x.detach().to("cpu", torch.float64)


def check_same_dim(a: torch.Tensor, b: torch.Tensor, who_a: str, who_b: str) -> None:
    """Both feature matrices must have the same feature dimension (they come from the same network)."""
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"{who_a} has {a.shape[1]} feature dimensions but {who_b} has {b.shape[1]}: "
                          "both must come from the same feature network")


def check_labels(x: object, who: str, *, n: int | None = None, num_classes: int | None = None) -> torch.Tensor:
    """Check class indices: an integer tensor (N,), N = ``n`` when given, values in [0, num_classes)."""
    if not isinstance(x, torch.Tensor):
        raise MetricError(f"{who}: expected a torch.Tensor of class indices (N,), got {type(x).__name__}")
    if x.ndim != 1:
        raise MetricError(f"{who}: expected class indices shaped (N,), got shape {_shape(x)}")
    if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
        raise MetricError(f"{who}: expected an integer tensor of class indices, got dtype "
                          f"{str(x.dtype).replace('torch.', '')}")
    if n is not None and x.shape[0] != n:
        raise MetricError(f"{who}: expected {n} labels (one per sample), got {x.shape[0]}")
    if x.numel():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            bound = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
            raise MetricError(f"{who}: class indices must lie in {bound}, got values in [{lo}, {hi}]")
    return x.detach().to("cpu", torch.int64)
