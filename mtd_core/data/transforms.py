"""Deterministic batch transforms that add derived fields to a batch (configured in ``[dataset] transforms``).

A transform reads existing fields and writes a new one, so a paired task (image transition: a garment and its
edge map) needs no second copy of a dataset. Random derivations (masks) belong to ``Modality.derive`` instead.
Transform kinds are looked up in the plugin registry (``mtd_register_transforms``): the ones defined here, and the
built-in ``captions`` (mtd_plugins/captions.py: a caption from a label and an image, for the text modality).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import attrs
import torch
import torch.nn.functional as F

from mtd_core.errors import ConfigError, ModalityDataError, closest
from mtd_core.types import Batch, BatchTransform, BatchValue, ConfigDict, ConfigMapping


@attrs.frozen
class EdgesTransform:
    """A Sobel edge map of an image as a second image in [-1, 1] (background -1, strongest edge +1).

    Args:
        source: the field holding the image, float (B, C, H, W) in [-1, 1].
        into: the field to write (the name of an image modality of the task set).
        threshold: edge strengths below this fraction of each image's strongest edge become background;
            0 keeps the graded magnitude.
    """

    kind: ClassVar[str] = "edges"
    source: str = "image"
    into: str = "edges"
    threshold: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"transform 'edges': threshold must lie in [0, 1), got {self.threshold}")

    def __call__(self, batch: Mapping[str, BatchValue]) -> Batch:
        if self.source not in batch:
            raise ModalityDataError(f"transform 'edges': the batch has no field {self.source!r} "
                                    f"(fields: {sorted(batch)}); set the transform's 'source'")
        x = batch[self.source]
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ModalityDataError(f"transform 'edges': field {self.source!r} must be float images (B, C, H, W), "
                                    f"got {getattr(x, 'shape', type(x).__name__)}")
        gray = x.mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
        k = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3): d/dx and d/dy
        g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), k)
        mag = g.pow(2).sum(1, keepdim=True).sqrt()
        mag = mag / mag.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
        if self.threshold > 0:
            mag = torch.where(mag >= self.threshold, mag, torch.zeros_like(mag))
        edges = (mag * 2.0 - 1.0).expand(-1, x.shape[1], -1, -1).contiguous()
        return {**batch, self.into: edges.clamp(-1.0, 1.0)}

    def to_config(self) -> ConfigDict:
        """A plain dict with ``kind``; :func:`build_transform` rebuilds an equal transform."""
        return {"kind": self.kind, **attrs.asdict(self)}


TRANSFORMS: dict[str, type] = {"edges": EdgesTransform}


def build_transform(config: ConfigMapping, kinds: Mapping[str, type] | None = None) -> BatchTransform:
    """A transform from ``{"kind": ..., **options}``; unknown kinds or options are ConfigErrors with a suggestion.
    ``kinds``: kind -> class (default: the built-in TRANSFORMS; datasets pass the registry's, plugins' included)."""
    config = dict(config)
    table = TRANSFORMS if kinds is None else kinds
    kind = config.pop("kind", None)
    if kind not in table:
        raise ConfigError(f"dataset.transforms: unknown transform kind {kind!r}{closest(str(kind), table)}; "
                          f"known kinds: {sorted(table)}")
    cls = table[kind]
    fields = {f.name for f in attrs.fields(cls)}
    for key in config:
        if key not in fields:
            raise ConfigError(f"dataset.transforms ({kind!r}): unknown option {key!r}{closest(key, fields)}; "
                              f"valid options: {sorted(fields)}")
    return cls(**config)


def apply_transforms(transforms: Sequence[BatchTransform], batch: Mapping[str, BatchValue]) -> Batch:
    """Apply ``transforms`` in order to a collated batch."""
    out = dict(batch)
    for tf in transforms:
        out = tf(out)
    return out
