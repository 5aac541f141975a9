"""Registers the built-in backbones through the ``mtd`` entry-point group, exactly as a third party would."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from mtd_core.plugins import hookimpl

if TYPE_CHECKING:
    from torch import nn


@hookimpl
def mtd_register_backbones() -> Mapping[str, Callable[..., nn.Module]]:
    """{"unet": the ADM-style U-Net factory ``build_unet(latent, **options)``}."""
    from mtd_core.backbones.unet import build_unet

    return {"unet": build_unet}
