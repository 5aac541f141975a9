"""The ``brightness`` modality: the mean intensity of the base image, a scalar in [-1, 1] per example.

Not built into mtd; it shows every part of the Modality contract a third-party plugin implements:

    data        float32 of shape (B,) in [-1, 1]
    derive      computed from the base image (the mean over its pixels), so no dataset has to store it
    encoder     E(b) = b * u + v: a learned linear map of the scalar into Z (then scaled to unit RMS by the model;
                linear, so the encoding of the head's mean brightness is the expected encoding)
    head        an MLP on the backbone's pooled features predicting the mean of a Gaussian
    loss        the Gaussian negative log-likelihood with a fixed std ``sigma``, in nats per example
    sample      the predicted mean (greedy) or a draw from the Gaussian, clipped to [-1, 1]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from mtd_core.errors import ModalityDataError
from mtd_core.modality import DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, Role


@attrs.frozen
class BrightnessConfig:
    """Options of the brightness modality (every value JSON-representable).

    Attributes:
        source: the name of the base image modality whose mean intensity :meth:`BrightnessModality.derive` reads.
        sigma: the std of the head's Gaussian likelihood, in brightness units (the image range is [-1, 1]).
        hidden: width of the head's hidden layer.
        normalize: scale the encoding to unit RMS so that the weight schedule w_t alone sets its strength.
    """

    source: str = attrs.field(default="image", validator=attrs.validators.instance_of(str))
    sigma: float = attrs.field(default=0.05, converter=float, validator=attrs.validators.gt(0.0))
    hidden: int = attrs.field(default=64, validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)])
    normalize: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))


class BrightnessEncoder(nn.Module):
    """E(b) = b * u + v reshaped to the latent: a learned linear map of one scalar into Z.

    Args:
        latent: the latent space Z.
    """

    def __init__(self, latent: LatentSpec) -> None:
        super().__init__()
        self.shape = tuple(latent.shape)
        self.linear = nn.Linear(1, latent.numel)

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        """(B,) brightness -> (B, C, H, W)."""
        return self.linear(b.unsqueeze(-1)).reshape(-1, *self.shape)


class BrightnessHead(nn.Module):
    """The mean of the predicted brightness from the pooled backbone features.

    Args:
        pooled_dim: width of the pooled features.
        hidden: width of the hidden layer.
    """

    def __init__(self, pooled_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(pooled_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, pooled_dim) -> (B,) predicted mean brightness."""
        return self.net(pooled).squeeze(-1)


class BrightnessModality(Modality):
    """The mean intensity of the base image, float32 of shape (B,) in [-1, 1], as an aggregated modality.

    Options: see :class:`BrightnessConfig` (source, sigma, hidden, normalize).
    """

    kind = "brightness"
    roles = (Role.AGGREGATED,)
    head_input = HeadInput.POOLED
    Config = BrightnessConfig

    def data_spec(self) -> DataSpec:
        return DataSpec((), "float32", -1.0, 1.0)

    def derive(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """The mean over every pixel of ``batch[source]`` (a (B, C, H, W) image in [-1, 1]); deterministic."""
        source = self.config.source
        if source not in batch:
            raise ModalityDataError(
                f"modality {self.name!r} (kind 'brightness'): derive reads the image {source!r}, which the batch "
                f"does not hold (keys: {sorted(batch)}); set the option source to the base image's name"
            )
        image = batch[source]
        if not isinstance(image, torch.Tensor) or image.ndim < 2 or not image.is_floating_point():
            got = f"{image.dtype} of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise ModalityDataError(
                f"modality {self.name!r} (kind 'brightness'): derive expects {source!r} to be a float image batch "
                f"(B, C, H, W), got {got}"
            )
        return image.detach().flatten(1).mean(1).clamp(-1.0, 1.0).to(torch.float32)

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        return BrightnessEncoder(latent)

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        return BrightnessHead(features.pooled_dim, self.config.hidden)

    def loss(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log N(x; pred, sigma^2) per example, in nats."""
        sigma = self.config.sigma
        return 0.5 * ((x - pred) / sigma) ** 2 + math.log(sigma) + 0.5 * math.log(2 * math.pi)

    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """The predicted mean (``greedy``) or a draw from N(pred, sigma^2), clipped to the data range [-1, 1]."""
        mean = pred.detach().to(torch.float32)
        if not greedy:
            device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=device).to(mean.device)
            mean = mean + self.config.sigma * noise
        return mean.clamp(-1.0, 1.0)

    def predicted_encoding(self, encoder: nn.Module, pred: Any) -> torch.Tensor:
        """E(clip(pred)): the encoding of the predicted mean (gradients flow into the head through it)."""
        return self.encode(encoder, pred.clamp(-1.0, 1.0))
