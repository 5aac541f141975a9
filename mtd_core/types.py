"""The types every layer shares: roles, data and latent specs, head inputs and the denoiser's output.

The bottom layer of mtd_core: it imports only torch and attrs, so the math (mtd_core/diffusion), the Modality
contract, the model and the samplers can all use it without importing one another.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeAlias

import attrs
import torch


# -- the documented uses of Any -------------------------------------------------------------------------------
# mtd_core keeps ``Any`` only where no precise type (a Protocol, a Union, ``object``) can say what a value is;
# these aliases name those places, and every other ``Any`` carries a ``# Any: <why>`` comment (tests/test_typing.py).

ConfigValue: TypeAlias = Any  # Any: arbitrary JSON/TOML data, checked at run time (attrs validators, from_config)
"""A value of a JSON/TOML table (str, number, bool, list or nested table): a config option, a field of a manifest or
a report. Whoever reads it checks it at run time, so readers need no narrowing."""

ConfigDict: TypeAlias = dict[str, ConfigValue]
"""A JSON/TOML-representable table: a config (``to_config``/``from_config``), a manifest, a report."""

ConfigMapping: TypeAlias = Mapping[str, ConfigValue]
"""A read-only :data:`ConfigDict`, as a function that only reads a config takes it."""

BatchValue: TypeAlias = Any  # Any: a tensor or raw values a dataset plugin chose; Modality.validate checks it
"""One field of a batch: a (B, ...) tensor, or raw values (captions as a list of str) that a modality's ``derive``
turns into one."""

Batch: TypeAlias = dict[str, BatchValue]
"""A batch: field (a modality name, or a dataset field) -> its values."""

Prediction: TypeAlias = Any  # Any: modality-specific; subclasses narrow it, which no other base type allows
"""What a decoder head predicts: a modality-specific object (a tensor of logits or means, a :class:`BasePrediction`,
...) that only its own modality's methods read. A Modality subclass narrows its ``pred`` parameters to it; parameters
are contravariant, so a base type other than ``Any`` (``object``, a Protocol) would make every such override an
error."""

Factory: TypeAlias = Callable[..., Any]  # Any: the product differs by registry table; the hook documents it
"""A registered factory (a dataset, a backbone, a metric, a schedule): options in, the product out (DatasetSplits, an
``nn.Module``, a Metric, ...; each hook of mtd_core/plugins/hookspecs.py says which)."""


class BatchTransform(Protocol):
    """A dataset transform (mtd_core/data/transforms.py): called on a collated batch, it returns the batch with fields
    added or changed; ``to_config()`` gives ``{"kind": ..., **options}`` back."""

    def __call__(self, batch: Mapping[str, BatchValue]) -> Batch: ...

    def to_config(self) -> ConfigDict: ...


class Role(str, enum.Enum):
    """Where a modality enters the forward process."""

    BASE = "base"
    AGGREGATED = "aggregated"


class HeadInput(str, enum.Enum):
    """Which backbone features a decoder head reads."""

    POOLED = "pooled"  # a (B, pooled_dim) vector from the bottleneck
    MAP = "map"  # the (B, map_channels, H, W) last full-resolution feature map
    NONE = "none"  # no head (the base modality: the backbone's eps prediction is its decoder)


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8,
           "bool": torch.bool}


@attrs.frozen
class DataSpec:
    """What one example of a modality looks like (without the batch dimension).

    Args:
        shape: per-example shape; ``()`` for a scalar such as a class index.
        dtype: torch dtype name: "float32", "int64", ...
        low: smallest allowed value (inclusive), or None for unbounded.
        high: largest allowed value (inclusive), or None for unbounded.
    """

    shape: tuple[int, ...] = attrs.field(converter=tuple)
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype as a ``torch.dtype``."""
        return _DTYPES[self.dtype]


def _shape3(shape: Iterable[int]) -> tuple[int, int, int]:
    """A converter: any (C, H, W) sequence as a tuple."""
    s = tuple(shape)
    if len(s) != 3:
        raise ValueError(f"the diffusion space Z has shape (C, H, W), got {s}")
    return s[0], s[1], s[2]


@attrs.frozen
class LatentSpec:
    """The shared diffusion space Z: every encoding and z_t is (B, C, H, W) with ``shape = (C, H, W)``."""

    shape: tuple[int, int, int] = attrs.field(converter=_shape3)

    @property
    def numel(self) -> int:
        """Dimensions per example (for bits per dimension)."""
        c, h, w = self.shape
        return c * h * w


@attrs.frozen
class FeatureSpec:
    """The features a backbone exposes to heads.

    Args:
        pooled_dim: width of the pooled bottleneck vector (HeadInput.POOLED).
        map_channels: channels of the last full-resolution feature map (HeadInput.MAP), spatially like Z.
    """

    pooled_dim: int
    map_channels: int


@attrs.frozen
class BasePrediction:
    """What the base modality's reconstruction term reads: z_0 ~ N(mean, exp(log_var)) at t = 1."""

    mean: torch.Tensor
    log_var: torch.Tensor


@attrs.frozen
class DenoiserOutput:
    """One forward pass of a multi-task denoiser at (z_t, t).

    Attributes:
        eps: eps_theta(z_t, t), shaped like z_t.
        preds: aggregated modality name -> its head's prediction xhat_i(z_t, t) (a modality-specific object).
    """

    eps: torch.Tensor
    preds: dict[str, Prediction]


class Denoiser(Protocol):
    """What the ELBO and the losses need from a model; the MultiTaskModel implements it."""

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, known: torch.Tensor | None = None) -> DenoiserOutput: ...

    def predicted_encodings(self, preds: Mapping[str, Prediction]) -> dict[str, torch.Tensor]: ...


__all__ = ["BasePrediction", "Batch", "BatchTransform", "BatchValue", "ConfigDict", "ConfigMapping", "ConfigValue",
           "DataSpec", "Denoiser", "DenoiserOutput", "Factory", "FeatureSpec", "HeadInput", "LatentSpec", "Prediction",
           "Role"]
