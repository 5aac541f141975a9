"""Backbones: the shared denoising network eps_theta(z_t, t) that also exposes features to the decoder heads.

A backbone factory is called as ``factory(latent: LatentSpec, **options)`` and returns an ``nn.Module`` with a
``feature_spec: FeatureSpec`` attribute and ``forward(z_t, t) -> BackboneOutput``. The built-in U-Net is
registered under the name "unet" by ``mtd_plugins.backbones``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


# A dataclass, not attrs: torch.compile's graph capture traces a dataclass's constructor (not a frozen attrs one), so
# a compiled backbone stays one graph (trainer.compile; mtd_core/training/speed.py).
@dataclasses.dataclass(frozen=True, slots=True)
class BackboneOutput:
    """One backbone pass at (z_t, t).

    Attributes:
        eps: eps_theta(z_t, t), shaped like z_t (B, C, H, W).
        pooled: a (B, pooled_dim) vector from the bottleneck, read by HeadInput.POOLED heads.
        fmap: the last full-resolution feature map (B, map_channels, H, W), read by HeadInput.MAP heads.
    """

    eps: torch.Tensor
    pooled: torch.Tensor
    fmap: torch.Tensor


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """The number of (trainable, by default) parameters of ``module``, for logs and model cards."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


from mtd_core.backbones.unet import UNet, UNetConfig, build_unet  # noqa: E402  (needs BackboneOutput)

__all__ = ["BackboneOutput", "UNet", "UNetConfig", "build_unet", "count_parameters"]
