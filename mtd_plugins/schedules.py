"""Registers the built-in weight schedules, noise schedules and dataset transforms through the ``mtd`` entry-point
group, exactly as a third party would add its own."""

from __future__ import annotations

from collections.abc import Mapping

from mtd_core.plugins import hookimpl
from mtd_core.types import Factory


@hookimpl
def mtd_register_weight_schedules() -> Mapping[str, Factory]:
    """windowed, ratio, constant, zero, custom_w, custom_lambda (mtd_core/diffusion/weights.py, docs/math.md)."""
    from mtd_core.diffusion.weights import SCHEDULES

    return dict(SCHEDULES)


@hookimpl
def mtd_register_noise_schedules() -> Mapping[str, Factory]:
    """linear, cosine and custom betas (mtd_core/diffusion/noise.py)."""
    from mtd_core.diffusion.noise import KINDS, NoiseSchedule

    return {kind: getattr(NoiseSchedule, kind) for kind in KINDS}


@hookimpl
def mtd_register_transforms() -> Mapping[str, Factory]:
    """edges: an edge map of an image field (mtd_core/data/transforms.py); captions: a caption from a label and an
    image field (mtd_plugins/captions.py)."""
    from mtd_core.data.transforms import TRANSFORMS
    from mtd_plugins.captions import CaptionsTransform

    return {**TRANSFORMS, CaptionsTransform.kind: CaptionsTransform}
