"""The ``masked_image`` modality: a copy of the base image with a random part hidden (set to ``fill``).

Aggregated into the latent as an image (identity encoder when it has the latent's shape), it turns the model into
an inpainting/restoration model: generating the base image given the masked one restores the hidden pixels. It is
derived on the fly from the base image (:meth:`MaskedImageModality.derive`) with a fresh mask per example; the
module-level :func:`make_mask` and :func:`apply_mask` build the masks used to evaluate restoration at a given ratio,
and :func:`keep_observed` pastes the observed pixels back into a restoration (``generate`` keeps them in every
step's base estimate by default, :meth:`MaskedImageModality.observed_base`).

Masks are boolean tensors of shape (B, 1, H, W), True where a pixel is hidden, shared by every channel.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch
from torch import nn

from mtd_core.errors import ModalityDataError
from mtd_core.modality import DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, Role
from mtd_core.plugins import hookimpl
from mtd_core.plugins.validate import (
    is_bool,
    modality_name,
    one_of,
    pixel_value,
    positive_float,
    unit_interval,
)
from mtd_core.types import BatchValue
from mtd_plugins.bounds import int_in
from mtd_plugins.image import (
    MAX_SIZE,
    ImageHead,
    check_mean,
    gaussian_nll,
    image_channels,
    image_encoder,
    image_size,
    sample_gaussian_image,
)


def _choose(batch: int, units: int, k: int, generator: torch.Generator | None, device: torch.device | None
            ) -> torch.Tensor:
    """(batch, units) bool with exactly ``k`` True per row, at uniformly random positions."""
    scores = torch.rand(batch, units, generator=generator, device=device)
    order = scores.argsort(dim=1)
    chosen = torch.zeros(batch, units, dtype=torch.bool, device=device)
    chosen.scatter_(1, order[:, :k], True)
    return chosen


def make_mask(shape: tuple[int, ...] | torch.Size, ratio: float, generator: torch.Generator | None = None, *,
              kind: str = "pixel", patch: int = 2, device: torch.device | str | None = None) -> torch.Tensor:
    """A random mask hiding ``ratio`` of each image: bool (B, 1, H, W), True = hidden.

    Args:
        shape: the image batch's shape (B, C, H, W) (or (B, H, W)); only B, H, W are used.
        ratio: the fraction hidden, in [0, 1]. Exactly round(ratio * units) units are hidden per example, where a
            unit is a pixel ("pixel") or a patch x patch square on a grid anchored at the top-left ("patch"; edge
            patches are cropped when H or W is not a multiple of ``patch``).
        generator: the random source (masks are reproducible for a seeded generator).
        kind: "pixel" or "patch".
        patch: the side of a patch, for kind "patch".
        device: where to build the mask.
    """
    if len(shape) not in (3, 4):
        raise ModalityDataError(
            f"make_mask: expected an image batch shape (B, C, H, W) or (B, H, W), got {tuple(shape)}")
    if not 0.0 <= ratio <= 1.0:
        raise ModalityDataError(f"make_mask: ratio must lie in [0, 1], got {ratio}")
    if kind not in ("pixel", "patch"):
        raise ModalityDataError(f"make_mask: kind must be 'pixel' or 'patch', got {kind!r}")
    if patch < 1:
        raise ModalityDataError(f"make_mask: patch must be >= 1, got {patch}")
    B, H, W = shape[0], shape[-2], shape[-1]
    dev = torch.device(device) if device is not None else None
    p = patch if kind == "patch" else 1
    gh, gw = -(-H // p), -(-W // p)
    grid = _choose(B, gh * gw, round(ratio * gh * gw), generator, dev).reshape(B, 1, gh, gw)
    return grid.repeat_interleave(p, 2).repeat_interleave(p, 3)[:, :, :H, :W]


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``x`` with the pixels where ``mask`` is True set to ``fill`` (the mask broadcasts over channels)."""
    if mask.dtype != torch.bool:
        raise ModalityDataError(f"apply_mask: the mask must be a bool tensor, got {mask.dtype}")
    return torch.where(mask, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


def keep_observed(generated: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A restoration that keeps what was seen: ``generated`` where ``mask`` hides a pixel, ``observed`` elsewhere.

    Generation given a masked image regenerates every pixel, the observed ones included; pasting them back is the
    usual last step of inpainting, and it is exact where nothing was hidden.
    """
    if mask.dtype != torch.bool:
        raise ModalityDataError(f"keep_observed: the mask must be a bool tensor, got {mask.dtype}")
    if generated.shape != observed.shape:
        raise ModalityDataError(f"keep_observed: generated {tuple(generated.shape)} and observed "
                                f"{tuple(observed.shape)} images must have the same shape")
    return torch.where(mask.to(generated.device), generated, observed.to(generated.device))


@attrs.frozen
class MaskedImageConfig:
    """Options of the masked image modality.

    Attributes:
        channels: image channels C (as the source image's).
        size: height and width S of the square image (as the source image's).
        ratio: the fraction of each image hidden by derive(), in [0, 1].
        mask: "patch" (hide square patches) or "pixel" (hide single pixels).
        patch: the side of a square patch, for mask "patch".
        fill: the value hidden pixels take, in [-1, 1].
        sigma: std of the Gaussian likelihood of the head's mean image.
        source: the name of the base image modality the masked copy is derived from.
        normalize: scale the encoding to unit RMS (the model's EncodingScale; so only w_t sets the injection
            strength).
    """

    channels: int = attrs.field(default=1, validator=image_channels)
    size: int = attrs.field(default=8, validator=image_size)
    ratio: float = attrs.field(default=0.5, validator=unit_interval)
    mask: str = attrs.field(default="patch", validator=one_of("patch", "pixel"))
    patch: int = attrs.field(default=2, validator=int_in(1, MAX_SIZE))
    fill: float = attrs.field(default=0.0, validator=pixel_value)
    sigma: float = attrs.field(default=0.1, validator=positive_float)
    source: str = attrs.field(default="image", validator=modality_name)
    normalize: bool = attrs.field(default=True, validator=is_bool)


class MaskedImageModality(Modality):
    """A masked copy of the base image, float32 (B, channels, size, size) in [-1, 1]; aggregated only.

    Options: see :class:`MaskedImageConfig`.
    """

    kind = "masked_image"
    roles = (Role.AGGREGATED,)
    head_input = HeadInput.MAP
    default_loss_weight = 0.05  # its Gaussian NLL (sigma 0.1) starves the backbone at 1 (docs/modalities.md)
    Config = MaskedImageConfig

    def data_spec(self) -> DataSpec:
        c = self.config
        return DataSpec((c.channels, c.size, c.size), "float32", -1.0, 1.0)

    def make_mask(self, shape: tuple[int, ...] | torch.Size, ratio: float | None = None,
                  generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """A mask of this modality's kind and patch size hiding ``ratio`` (default: the configured ratio)."""
        r = self.config.ratio if ratio is None else ratio
        return make_mask(shape, r, generator, kind=self.config.mask, patch=self.config.patch, device=device)

    def derive(self, batch: Mapping[str, BatchValue], generator: torch.Generator | None = None) -> torch.Tensor:
        """The source image with a fresh random mask (at the configured ratio) per example applied."""
        src = self.config.source
        if src not in batch:
            raise ModalityDataError(
                f"modality {self.name!r} (masked_image): derive() reads the source image {src!r}, which the batch "
                f"lacks (keys: {sorted(batch)}); set the option source to the base image's name"
            )
        x = batch[src]
        try:
            self.validate(x, where=f"source {src!r}")
        except ModalityDataError as e:
            raise ModalityDataError(
                f"{e}\n(derive() needs a source image matching this modality's channels and size)") from None
        mask = self.make_mask(x.shape, generator=generator, device=x.device)
        return apply_mask(x, mask, self.config.fill)

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        """The identity when the image has the latent's shape, else resize + 1x1 conv."""
        return image_encoder(self.config.channels, self.config.size, latent)

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        """A conv head on the feature map predicting the mean masked image."""
        return ImageHead(features.map_channels, self.config.channels, self.config.size)

    def loss(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The Gaussian NLL (std ``sigma``) of the masked image under the head's mean, summed over pixels."""
        return gaussian_nll(x, check_mean(self, pred, x), self.config.sigma).flatten(1).sum(1)

    def predicted_encoding(self, encoder: nn.Module, pred: torch.Tensor) -> torch.Tensor:
        """E(xhat): the encoding of the predicted mean clamped to [-1, 1]."""
        return self.encode(encoder, pred.clamp(-1.0, 1.0))

    def observed_base(self, x: torch.Tensor, base: Modality) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The unhidden pixels, where ``base`` is the source image (same shape): known wherever some channel is not
        ``fill`` (a true pixel that equals ``fill`` in every channel counts as hidden and is generated)."""
        if base.name != self.config.source or base.data_spec().shape != self.data_spec().shape:
            return None
        return x, (x != self.config.fill).any(dim=1, keepdim=True)

    def sample(self, pred: torch.Tensor, *, greedy: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """The clamped mean (greedy), else mean + sigma * noise clamped to [-1, 1]."""
        if not isinstance(pred, torch.Tensor):
            raise ModalityDataError(f"modality {self.name!r} (masked_image): expected the head's mean image as a "
                                    f"torch.Tensor, got {type(pred).__name__}")
        return sample_gaussian_image(pred, self.config.sigma, greedy, generator)


@hookimpl
def mtd_register_modalities() -> list[type[Modality]]:
    """The masked image modality."""
    return [MaskedImageModality]
