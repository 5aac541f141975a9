"""The ``representation`` modality: a d-dimensional feature vector of the base image, aggregated into the latent.

The vector comes from a frozen feature extractor: one supplied by the user (any callable or nn.Module, passed as
``extractor=`` to the constructor; it is code, so it is not part of the JSON config), the built-in seeded random
conv net (``builtin_extractor = "random_conv"``, no download, deterministic), or precomputed with the dataset.
A learned linear map encodes it into Z; a head regresses it back, from the backbone's pooled features (an MLP, the
default) or from its full-resolution feature map (``head = "map"``: convs, a coarse grid, an MLP).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from mtd_core.diffusion.weights import WeightSchedule
from mtd_core.errors import CheckpointError, ModalityDataError
from mtd_core.heads import MapReader
from mtd_core.modality import DataSpec, Design, FeatureSpec, HeadInput, LatentSpec, Modality, Role, rms_normalize
from mtd_core.plugins import hookimpl
from mtd_core.plugins.validate import (
    is_bool,
    modality_name,
    one_of,
    option,
    positive_float,
)
from mtd_core.types import BatchValue, ConfigMapping, ConfigValue
from mtd_plugins.bounds import MAX_WIDTH, int_in
from mtd_plugins.image import gaussian_nll

Extractor = Callable[[torch.Tensor], torch.Tensor]
PRIOR_SIZE = 4096
"""The most training vectors ``prior = "training"`` keeps (16 KiB per dimension)."""
PRIOR_ASSET = "prior.safetensors"
MAX_DIM = 65536
"""The largest representation dimension d (the builtin extractor is built with the config: a bound before it)."""


class RandomConvExtractor(nn.Module):
    """A frozen, seeded random conv net: (B, C, H, W) images -> (B, dim) vectors of unit RMS.

    Channels are averaged first, so it reads images of any channel count and size. Its weights depend only on
    (dim, seed), so every process builds the same extractor without downloading or saving anything.

    Args:
        dim: the output dimension d.
        seed: seeds the random weights.
    """

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.proj = nn.Linear(32 * 4, dim)
        for p in self.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5 if p.ndim > 1 else
                        0.1 * torch.randn(p.shape, generator=gen))
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, dim) float32, RMS-normalised per example."""
        h = x.float().mean(1, keepdim=True)
        h = F.relu(self.conv2(F.relu(self.conv1(h))))
        h = F.adaptive_avg_pool2d(h, 2).flatten(1)
        return rms_normalize(self.proj(h))


class RepresentationEncoder(nn.Module):
    """E(r): a learned linear map from the d-vector to C*H*W, reshaped to the latent.

    Args:
        dim: the representation's dimension d.
        latent: the latent space Z.
    """

    def __init__(self, dim: int, latent: LatentSpec) -> None:
        super().__init__()
        self.shape = tuple(latent.shape)
        self.proj = nn.Linear(dim, latent.numel)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, C, H, W) (before the model's scaling)."""
        return self.proj(r).reshape(-1, *self.shape)


@attrs.frozen
class RepresentationConfig:
    """Options of the representation modality.

    Attributes:
        dim: the representation's dimension d.
        hidden: width of the head's hidden layer (its MLP's -> d).
        head: the features the head reads: "map" (the default: the last full-resolution feature map,
            :class:`~mtd_core.heads.MapReader`; measured the better, docs/models.md) or "pooled" (the backbone's
            bottleneck, an MLP).
        loss: "gaussian" (NLL with std sigma) or "cosine" ((1 - cos) / sigma^2, direction only).
        sigma: the std of the Gaussian likelihood; the cosine loss's temperature.
        source: the name of the image modality the extractor reads in derive().
        builtin_extractor: None (a user extractor or precomputed vectors) or "random_conv" (a frozen, seeded random
            conv net; lets a config run without user code).
        seed: seeds the builtin extractor's weights.
        normalize: scale the encoding to unit RMS (the model's EncodingScale; so only w_t sets the injection
            strength).
        prior: "training" (the default): :meth:`fit` keeps the vectors of up to 4096 training examples (saved
            with the run), and joint generation commits to one of them, drawn uniformly, then generates the image
            given it (``Modality.empirical_prior``): the head models only a mean, and a vector generated in the
            flow is one the image cannot follow (measured: docs/models.md). "none": joint generation generates
            the vector with the image (the former default: a saved config without ``prior`` is read so).
    """

    dim: int = attrs.field(default=16, validator=int_in(1, MAX_DIM))
    hidden: int = attrs.field(default=128, validator=int_in(1, MAX_WIDTH))
    head: str = attrs.field(default="map", validator=one_of("pooled", "map"))
    loss: str = attrs.field(default="gaussian", validator=one_of("gaussian", "cosine"))
    sigma: float = attrs.field(default=0.1, validator=positive_float)
    source: str = attrs.field(default="image", validator=modality_name)
    builtin_extractor: str | None = attrs.field(
        default=None, validator=option("None or 'random_conv'", lambda v: v in (None, "random_conv")))
    seed: int = attrs.field(default=0, validator=int_in(0, 2**63 - 1))
    normalize: bool = attrs.field(default=True, validator=is_bool)
    prior: str = attrs.field(default="training", validator=one_of("none", "training"))


class RepresentationModality(Modality):
    """A feature vector float32 (B, dim), unbounded, from a frozen extractor of the base image; aggregated only.

    Args:
        extractor: a callable mapping the source images (B, C, H, W) to (B, dim) vectors (an nn.Module is frozen
            and used under no_grad); overrides ``builtin_extractor``. Not saved in the config: pass it again when
            rebuilding from a config, or store the vectors with the data.
        name, role, weights, loss_weight, **options: see :class:`~mtd_core.modality.Modality` and
            :class:`RepresentationConfig`.
    """

    kind = "representation"
    roles = (Role.AGGREGATED,)
    default_loss_weight = 0.1  # measured as the masked image's (docs/results.md): 1 starves the backbone
    # the head reads the full-resolution feature map (Config.head), none of its gradient shapes the backbone, and
    # the encoder is a fixed random code scaled about its running mean (docs/models.md, "Defaults and why")
    design = Design(head_grad=0.0, encoding_scale="spread", train_encoder=False)
    former_defaults = {"prior": "none"}
    Config = RepresentationConfig

    def __init__(self, name: str | None = None, role: Role | str | None = None,
                 weights: WeightSchedule | ConfigMapping | None = None, loss_weight: float | None = None, *,
                 extractor: Extractor | None = None, **options: ConfigValue) -> None:
        super().__init__(name=name, role=role, weights=weights, loss_weight=loss_weight, **options)
        if extractor is not None and not callable(extractor):
            raise ModalityDataError(f"modality {self.name!r} (representation): extractor must be callable, "
                                    f"got {type(extractor).__name__}")
        if extractor is None and self.config.builtin_extractor == "random_conv":
            extractor = RandomConvExtractor(self.config.dim, self.config.seed)
        if isinstance(extractor, nn.Module):
            extractor.eval().requires_grad_(False)
        self.extractor: Extractor | None = extractor
        self._prior: torch.Tensor | None = None

    @property
    def head_input(self) -> HeadInput:  # type: ignore[override]
        """HeadInput.POOLED, or HeadInput.MAP with ``head = "map"``."""
        return HeadInput.MAP if self.config.head == "map" else HeadInput.POOLED

    def data_spec(self) -> DataSpec:
        return DataSpec((self.config.dim,), "float32")

    def derive(self, batch: Mapping[str, BatchValue], generator: torch.Generator | None = None) -> torch.Tensor | None:
        """The extractor's vectors for batch[source] (no gradient), or None when there is no extractor."""
        if self.extractor is None:
            return None
        src = self.config.source
        if src not in batch:
            raise ModalityDataError(
                f"modality {self.name!r} (representation): derive() reads the source {src!r}, which the batch lacks "
                f"(keys: {sorted(batch)}); set the option source to the image modality's name"
            )
        with torch.no_grad():
            r = self.extractor(batch[src])
        if not isinstance(r, torch.Tensor):
            raise ModalityDataError(f"modality {self.name!r} (representation): the extractor returned "
                                    f"{type(r).__name__}, expected a tensor of shape (B, {self.config.dim})")
        if r.is_floating_point() and r.dtype != torch.float32:
            r = r.float()
        self.validate(r, where="extractor output")
        return r

    def fit(self, batches: Iterable[Mapping[str, BatchValue]]) -> None:
        """With ``prior = "training"``: keep the vectors of the training examples in ``batches`` (the dataset's,
        else the extractor's of their source images)."""
        if self.config.prior == "none":
            return
        kept = []
        for batch in batches:
            given = batch.get(self.name)
            r = given if isinstance(given, torch.Tensor) else self.derive(batch)
            if r is None:
                raise ModalityDataError(f"modality {self.name!r} (representation): prior = 'training' needs the "
                                        "training vectors, but the batches hold none and there is no extractor")
            self.validate(r, where="training vectors for the prior")
            kept.append(r.detach().float().cpu())
        if not kept:
            raise ModalityDataError(f"modality {self.name!r} (representation): prior = 'training' was given no "
                                    "training examples to keep")
        self._prior = torch.cat(kept)[:PRIOR_SIZE].contiguous()

    def empirical_prior(self) -> torch.Tensor | None:
        """The kept training vectors (``prior = "training"``, after fit or load_assets); None with ``prior = "none"``.

        Raises:
            ModalityDataError: ``prior = "training"`` and :meth:`fit` was not called (nor a saved run loaded), so
                there is nothing to draw from: joint generation would silently fall back to the flow otherwise.
        """
        if self._prior is None and self.config.prior == "training":
            raise ModalityDataError(f"modality {self.name!r} (representation): prior = 'training' draws joint samples' "
                                    "vectors from the training vectors fit() keeps, and fit() was not called; train "
                                    "through mtd (build_run / mtd train), call fit(batches) first, or set "
                                    "prior = 'none'")
        return self._prior

    def assets(self) -> dict[str, bytes]:
        """{"prior.safetensors": the kept vectors} with ``prior = "training"`` ({} otherwise)."""
        return {PRIOR_ASSET: save_safetensors({"vectors": self._prior})} if self._prior is not None else {}

    def load_assets(self, assets: Mapping[str, bytes]) -> None:
        """Restore the vectors :meth:`assets` saved (read without unpickling; checked against the config)."""
        if self.config.prior == "none" and not assets:
            return
        if PRIOR_ASSET not in assets:
            raise CheckpointError(f"modality {self.name!r} (representation): the assets lack {PRIOR_ASSET!r} (the "
                                  f"training vectors prior = 'training' keeps); got keys {sorted(assets)}")
        try:
            vectors = load_safetensors(bytes(assets[PRIOR_ASSET]))["vectors"]
        except Exception as e:  # noqa: BLE001 - any corruption becomes one message naming the asset
            raise CheckpointError(f"modality {self.name!r} (representation): {PRIOR_ASSET} does not load: {e}") from None
        self.validate(vectors, where=PRIOR_ASSET)
        self._prior = vectors

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        """A linear map from the d-vector into Z (kept at its initialisation unless ``train_encoder``)."""
        return RepresentationEncoder(self.config.dim, latent)

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        """An MLP from the pooled features to the d-vector, or a :class:`~mtd_core.heads.MapReader` (``head = "map"``)."""
        if self.config.head == "map":
            return MapReader(features.map_channels, self.config.dim, self.config.hidden)
        return nn.Sequential(nn.Linear(features.pooled_dim, self.config.hidden), nn.SiLU(),
                             nn.Linear(self.config.hidden, self.config.dim))

    def _vector(self, pred: object) -> torch.Tensor:
        d = self.config.dim
        if not isinstance(pred, torch.Tensor) or pred.ndim != 2 or pred.shape[1] != d:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ModalityDataError(f"modality {self.name!r} (representation): expected a predicted vector of "
                                    f"shape (B, {d}), got {got}")
        return pred

    def loss(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per example: the Gaussian NLL summed over the d dimensions, or (1 - cos(pred, x)) / sigma^2.

        The cosine form is the Gaussian's quadratic term for unit vectors, |u - v|^2 / (2 sigma^2) = (1 - cos) /
        sigma^2, without its constants: it ignores the vector's norm.
        """
        r = self._vector(pred)
        if self.config.loss == "gaussian":
            return gaussian_nll(x, r, self.config.sigma).sum(1)
        return (1.0 - F.cosine_similarity(r, x, dim=1, eps=1e-8)) / self.config.sigma ** 2

    def sample(self, pred: torch.Tensor, *, greedy: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """The predicted vector (float32), greedy or not: the head regresses the vector directly."""
        return self._vector(pred).detach().float()


@hookimpl
def mtd_register_modalities() -> list[type[Modality]]:
    """The representation modality."""
    return [RepresentationModality]
