"""The ``image`` modality: an image in [-1, 1], either the base of the diffusion or an aggregated second image.

As the BASE its encoding is z_0 itself (identity encoder, no head): the backbone's eps prediction is its decoder
and its reconstruction term L_0 is the discretised Gaussian of DDPM (Ho et al. 2020, eq. 13). As AGGREGATED (image
transition: the second image of a pair is injected through E_i with weights w_t) a small conv head predicts its
mean from the backbone's full-resolution feature map, under a Gaussian likelihood with fixed std ``sigma``.

The encoder and head modules defined here are reused by the masked image modality.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mtd_core.diffusion.elbo import discretised_gaussian_nll
from mtd_core.errors import ModalityDataError
from mtd_core.modality import BasePrediction, DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, Role
from mtd_core.plugins import hookimpl
from mtd_core.plugins.validate import is_bool, positive_float, positive_int
from mtd_plugins.bounds import int_in


LOG_2PI = math.log(2.0 * math.pi)
MAX_CHANNELS = 4096
MAX_SIZE = 16384
"""The largest image channels and size an image option takes (a larger image is a mistake, not a dataset)."""
image_channels = int_in(1, MAX_CHANNELS)
image_size = int_in(1, MAX_SIZE)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """Elementwise -log N(x; mean, sigma^2) in nats, with its constant terms (a true NLL, not a scaled MSE)."""
    return 0.5 * ((x - mean) / sigma) ** 2 + math.log(sigma) + 0.5 * LOG_2PI


class ImageEncoder(nn.Module):
    """E_i for an image whose shape differs from the latent's: resize to the latent's H, W, then a learned 1x1
    conv to its channels.

    Args:
        channels: the image's channels C.
        latent: the latent space Z (C_z, H, W).
    """

    def __init__(self, channels: int, latent: LatentSpec) -> None:
        super().__init__()
        self.size = tuple(latent.shape[1:])
        self.proj = nn.Conv2d(channels, latent.shape[0], kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B, C_z, H, W)."""
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return self.proj(x)


class ImageHead(nn.Module):
    """Predicts the mean image from the backbone's last full-resolution feature map (HeadInput.MAP).

    Two 3x3 convs; the output is resized to the image's size when it differs from the latent's.

    Args:
        map_channels: channels of the feature map (FeatureSpec.map_channels).
        channels: the image's channels C.
        size: the image's height and width.
    """

    def __init__(self, map_channels: int, channels: int, size: int) -> None:
        super().__init__()
        self.size = (size, size)
        self.net = nn.Sequential(
            nn.Conv2d(map_channels, map_channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(map_channels, channels, 3, padding=1),
        )

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, map_channels, H, W) features -> (B, C, size, size) mean image (unbounded; sampling clamps)."""
        mean = self.net(fmap)
        if tuple(mean.shape[-2:]) != self.size:
            mean = F.interpolate(mean, size=self.size, mode="bilinear", align_corners=False)
        return mean


def image_encoder(channels: int, size: int, latent: LatentSpec) -> nn.Module:
    """The identity when a (channels, size, size) image already has the latent's shape, else an ImageEncoder."""
    if (channels, size, size) == tuple(latent.shape):
        return nn.Identity()
    return ImageEncoder(channels, latent)


def check_mean(modality: Modality, pred: object, x: torch.Tensor) -> torch.Tensor:
    """The head's mean-image prediction, checked to be a tensor shaped like ``x`` (ModalityDataError otherwise)."""
    if not isinstance(pred, torch.Tensor):
        raise ModalityDataError(
            f"modality {modality.name!r} ({modality.kind}, role {modality.role.value}): expected the head's mean "
            f"image as a torch.Tensor, got {type(pred).__name__}"
        )
    if pred.shape != x.shape:
        raise ModalityDataError(
            f"modality {modality.name!r} ({modality.kind}): predicted mean has shape {tuple(pred.shape)}, "
            f"the data has shape {tuple(x.shape)}"
        )
    return pred


def sample_gaussian_image(mean: torch.Tensor, sigma: float, greedy: bool,
                          generator: torch.Generator | None) -> torch.Tensor:
    """The clamped mean (greedy) or a clamped draw from N(mean, sigma^2), as float32 data in [-1, 1]."""
    mean = mean.detach().float()
    if not greedy:
        mean = mean + sigma * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean.clamp(-1.0, 1.0)


@attrs.frozen
class ImageConfig:
    """Options of the image modality.

    Attributes:
        channels: image channels C (1 for grey-scale, 3 for RGB).
        size: height and width S of the square image.
        bits: bit depth of the data; the base's discretised Gaussian uses 2**bits bins over [-1, 1].
        sigma: std of the Gaussian likelihood of the head's mean image when aggregated.
        normalize: scale the encoding to unit RMS when aggregated (the model's EncodingScale; so only w_t sets the
            injection strength).
    """

    channels: int = attrs.field(default=1, validator=image_channels)
    size: int = attrs.field(default=8, validator=image_size)
    bits: int = attrs.field(default=8, validator=positive_int)
    sigma: float = attrs.field(default=0.1, validator=positive_float)
    normalize: bool = attrs.field(default=True, validator=is_bool)

    def __attrs_post_init__(self) -> None:
        if self.bits > 16:
            raise ValueError(f"option 'bits' must be at most 16, got {self.bits}")


class ImageModality(Modality):
    """An image of shape (channels, size, size), float32 in [-1, 1]; the base of the diffusion or aggregated.

    Options: see :class:`ImageConfig`. The head input depends on the role: none as the base (the backbone's eps is
    the decoder), the full feature map when aggregated.
    """

    kind = "image"
    roles = (Role.BASE, Role.AGGREGATED)
    Config = ImageConfig

    @classmethod
    def default_loss_weight_for(cls, role: Role) -> float:
        """1 as the base (DDPM's term); 0.05 aggregated (an edge map): its Gaussian NLL is 50 x the squared error per
        pixel and would otherwise starve the backbone's eps objective, as the masked image's does."""
        return 1.0 if role is Role.BASE else 0.05

    @property
    def head_input(self) -> HeadInput:  # type: ignore[override]
        """HeadInput.NONE as the base, HeadInput.MAP when aggregated."""
        return HeadInput.NONE if self.role is Role.BASE else HeadInput.MAP

    def data_spec(self) -> DataSpec:
        c = self.config
        return DataSpec((c.channels, c.size, c.size), "float32", -1.0, 1.0)

    def latent_shape(self) -> tuple[int, int, int] | None:
        """(C, S, S) as the base (z_0 is the image), else None."""
        c = self.config
        return (c.channels, c.size, c.size) if self.role is Role.BASE else None

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        """The identity when the image has the latent's shape (always, as the base), else resize + 1x1 conv."""
        return image_encoder(self.config.channels, self.config.size, latent)

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module | None:
        """None as the base; a conv head on the feature map predicting the mean image when aggregated."""
        if self.role is Role.BASE:
            return None
        return ImageHead(features.map_channels, self.config.channels, self.config.size)

    def loss(self, pred: BasePrediction | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | pred) per example, summed over pixels.

        Base: ``pred`` is a BasePrediction of z_0 at t = 1; the discretised Gaussian NLL with 2**bits bins (L_0,
        DDPM eq. 13). Aggregated: ``pred`` is the head's mean image; the Gaussian NLL with std ``sigma``.
        """
        if self.role is Role.BASE:
            if not isinstance(pred, BasePrediction):
                raise ModalityDataError(
                    f"modality {self.name!r} (image, role base): loss expects a BasePrediction(mean, log_var), "
                    f"got {type(pred).__name__}"
                )
            mean = check_mean(self, pred.mean, x)
            nll = discretised_gaussian_nll(x, mean, pred.log_var.expand_as(mean), bins=2 ** self.config.bits)
            return nll.flatten(1).sum(1)
        mean = check_mean(self, pred, x)
        return gaussian_nll(x, mean, self.config.sigma).flatten(1).sum(1)

    def predicted_encoding(self, encoder: nn.Module, pred: BasePrediction | torch.Tensor) -> torch.Tensor:
        """E_i(xhat): the encoding of the predicted mean clamped to [-1, 1] (differentiable inside the range)."""
        if isinstance(pred, BasePrediction):
            pred = pred.mean
        return self.encode(encoder, pred.clamp(-1.0, 1.0))

    def sample(self, pred: BasePrediction | torch.Tensor, *, greedy: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The clamped mean (greedy), else mean + sigma * noise clamped to [-1, 1] (the base: its BasePrediction's
        mean, with its own std when not greedy)."""
        if isinstance(pred, BasePrediction):
            if greedy:
                return pred.mean.detach().float().clamp(-1.0, 1.0)
            std = torch.exp(0.5 * pred.log_var.detach().float())
            noise = torch.randn(pred.mean.shape, generator=generator, device=pred.mean.device)
            return (pred.mean.detach().float() + std * noise).clamp(-1.0, 1.0)
        return sample_gaussian_image(pred, self.config.sigma, greedy, generator)


@hookimpl
def mtd_register_modalities() -> list[type[Modality]]:
    """The image modality."""
    return [ImageModality]
