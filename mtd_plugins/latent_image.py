"""The ``latent_image`` modality: an image in [-1, 1] whose diffusion runs in the latent space of a frozen autoencoder.

It is a base only. Its encoder maps an image x to z_0 = scaling_factor * (E(x) - shift_factor) with a diffusers
``AutoencoderKL`` read from a local folder (option ``vae``; mtd_plugins/autoencoder.py), so Z is the autoencoder's
latent (C_z, S / f, S / f) and every aggregated modality (a label, a caption) adds its encoding to that latent
exactly as it would to pixels. At the end of sampling ``generate`` decodes the predicted z_0 through the encoder's
``decode`` (clamped to [-1, 1]). Its L_0 term is the Gaussian NLL of the image's z_0 under p(z_0 | z_1), so the
ELBO of a latent model bounds -log p(z_0), not the likelihood of the pixels.

The autoencoder is frozen and kept outside the model's weights: a run's config records the folder (made absolute
when the config is read, as every command-line path is relative to the current directory) and the SHA-256
fingerprint of its files, and a config or checkpoint whose fingerprint differs from the folder's is refused.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn

from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.modality import (
    BasePrediction,
    DataSpec,
    HeadInput,
    LatentSpec,
    Modality,
    Role,
)
from mtd_core.plugins import hookimpl
from mtd_core.plugins.validate import one_of, option
from mtd_core.types import Prediction
from mtd_plugins.autoencoder import (
    FrozenAutoencoder,
    LatentCodec,
    read_autoencoder,
    require_diffusers,
)
from mtd_plugins.image import image_channels, image_size

LOG_2PI = math.log(2.0 * math.pi)


def _shape3(value: object) -> tuple[int, ...] | None:
    """attrs converter: a list of numbers becomes a tuple (TOML gives lists); anything else is left to the
    validator."""
    return tuple(value) if isinstance(value, list) else value  # type: ignore[return-value]


def _is_shape(v: object) -> bool:
    return v is None or (isinstance(v, tuple) and len(v) == 3
                         and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v))


def _is_fingerprint(v: object) -> bool:
    return v is None or (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v))


@attrs.frozen
class LatentImageConfig:
    """Options of the latent image modality.

    Attributes:
        vae: the folder of a diffusers AutoencoderKL saved with ``save_pretrained`` (required; nothing is ever
            downloaded). A relative folder is read against the current directory and stored absolute, so a run
            finds it from any directory.
        channels: image channels C, checked against the autoencoder's in/out channels (1: Fashion-MNIST).
        size: height and width S of the square image, a multiple of the autoencoder's down-sampling factor
            (28: Fashion-MNIST).
        posterior: "mean" encodes each image to the mean of the autoencoder's latent distribution, "sample" draws
            from it. Default "mean": z_0 is a fixed function of the image, so the L_0 term re-encodes the same
            z_0 and runs repeat; a KL-regularised autoencoder's posterior std is small next to the scaled latent.
        latent_shape: the (C_z, h, w) expected of the autoencoder; None (default) takes what it gives. Set it to
            catch a wrong folder or size where the config is read.
        fingerprint: the SHA-256 of the autoencoder's config.json and weight files; None (default) records the
            folder's when the config is read. A saved config carries it, so a checkpoint refuses another
            autoencoder.
    """

    vae: str | None = attrs.field(default=None, validator=option(
        "the folder of an AutoencoderKL (a non-empty string)", lambda v: v is None or (isinstance(v, str) and v != "")))
    channels: int = attrs.field(default=1, validator=image_channels)
    size: int = attrs.field(default=28, validator=image_size)
    posterior: str = attrs.field(default="mean", validator=one_of("mean", "sample"))
    latent_shape: tuple[int, ...] | None = attrs.field(default=None, converter=_shape3, validator=option(
        "a list of three positive integers [C, h, w]", _is_shape))
    fingerprint: str | None = attrs.field(default=None, validator=option(
        "a SHA-256 hex digest (64 lowercase hex digits)", _is_fingerprint))


class LatentImageModality(Modality):
    """An image (channels, size, size), float32 in [-1, 1], diffused in a frozen autoencoder's latent; base only.

    Options: see :class:`LatentImageConfig`. Everything else about the latent (its channels, the down-sampling
    factor, the scaling and shift factors) is read from the autoencoder's config.json.
    """

    kind = "latent_image"
    roles = (Role.BASE,)
    head_input = HeadInput.NONE
    Config = LatentImageConfig
    required_options = ("vae",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Any: Modality.__init__'s arguments, passed on
        super().__init__(*args, **kwargs)
        who = f"modality {self.name!r} (kind 'latent_image')"
        c = self.config
        if c.vae is None:
            raise ConfigError(f"{who}: option 'vae' is required: the folder of a diffusers AutoencoderKL saved with "
                              "save_pretrained (scripts/train_fashion_vae.py makes one for Fashion-MNIST)")
        require_diffusers(who)
        info = read_autoencoder(c.vae, who)
        folder = f"{who}: the autoencoder {info.folder}"
        if c.fingerprint is not None and c.fingerprint != info.fingerprint:
            raise ConfigError(f"{folder} is not the one this config (or checkpoint) was made with: option "
                              f"'fingerprint' is {c.fingerprint[:12]}..., the folder's files are "
                              f"{info.fingerprint[:12]}...; a model trained in one autoencoder's latent cannot use "
                              "another's (point 'vae' at the original folder)")
        data = (c.channels, c.size, c.size)
        if (info.in_channels, info.out_channels) != (c.channels, c.channels):
            raise ConfigError(f"{folder} encodes images of shape ({info.in_channels}, S, S) and decodes "
                              f"({info.out_channels}, S, S), but option 'channels' makes the data {data}")
        f = info.factor
        if c.size % f:
            raise ConfigError(f"{folder} down-samples by {f}: option 'size' = {c.size} (data {data}) is not a "
                              f"multiple of {f}, so its latent would be ({info.latent_channels}, {c.size / f:g}, "
                              f"{c.size / f:g})")
        self._latent = (info.latent_channels, c.size // f, c.size // f)
        if c.latent_shape is not None and tuple(c.latent_shape) != self._latent:
            raise ConfigError(f"{folder} gives data {data} the latent {self._latent}, but option 'latent_shape' "
                              f"expects {tuple(c.latent_shape)}")
        self.config = attrs.evolve(c, vae=str(info.folder), fingerprint=info.fingerprint)
        self.autoencoder = FrozenAutoencoder(info, c.posterior, who)

    def data_spec(self) -> DataSpec:
        c = self.config
        return DataSpec((c.channels, c.size, c.size), "float32", -1.0, 1.0)

    def latent_shape(self) -> tuple[int, int, int]:
        """(C_z, S / f, S / f): the autoencoder's latent of one image."""
        return self._latent

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        """A :class:`LatentCodec` of the frozen autoencoder (no parameters: nothing of it is trained or saved)."""
        if tuple(latent.shape) != self._latent:
            raise ConfigError(f"modality {self.name!r} (kind 'latent_image'): the autoencoder "
                              f"{self.autoencoder.info.folder} gives the latent {self._latent}, but the encoder was "
                              f"asked for {tuple(latent.shape)}")
        return LatentCodec(self.autoencoder)

    def _mean(self, pred: Prediction, what: str) -> BasePrediction:
        if not isinstance(pred, BasePrediction):
            raise ModalityDataError(f"modality {self.name!r} (latent_image, role base): {what} expects a "
                                    f"BasePrediction(mean, log_var) of z_0, got {type(pred).__name__}")
        return pred

    def loss(self, pred: Prediction, x: torch.Tensor) -> torch.Tensor:
        """L_0 per example: the Gaussian NLL of the images' z_0 under ``pred`` = p(z_0 | z_1), summed over the
        latent, in nats (a density of z_0, not of the pixels)."""
        p = self._mean(pred, "loss")
        z0 = self.autoencoder.encode(x).to(p.mean.dtype)
        if p.mean.shape != z0.shape:
            raise ModalityDataError(f"modality {self.name!r} (latent_image): the predicted z_0 has shape "
                                    f"{tuple(p.mean.shape)}, the images' latent has shape {tuple(z0.shape)}")
        log_var = p.log_var.expand_as(p.mean)
        nll = 0.5 * ((z0 - p.mean) ** 2 * torch.exp(-log_var) + log_var + LOG_2PI)
        return nll.flatten(1).sum(1).float()

    def predicted_encoding(self, encoder: nn.Module, pred: Prediction) -> torch.Tensor:
        """The predicted z_0 itself (the base's encoding is z_0)."""
        return self._mean(pred, "predicted_encoding").mean.float()

    def sample(self, pred: Prediction, *, greedy: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """The decoded images of the predicted z_0 (greedy), or of a draw from N(mean, exp(log_var)); float32 in
        [-1, 1]."""
        p = self._mean(pred, "sample")
        z = p.mean.detach().float()
        if not greedy:
            std = torch.exp(0.5 * p.log_var.detach().float())
            z = z + std * torch.randn(z.shape, generator=generator, device=z.device)
        return self.autoencoder.decode(z)


@hookimpl
def mtd_register_modalities() -> list[type[Modality]]:
    """The latent image modality."""
    return [LatentImageModality]
