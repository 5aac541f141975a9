"""Classifier-free guidance's scale and cost in generate() (Ho & Salimans 2022; denoiser.py applies it):

    eps = eps_untold + w (eps_told - eps_untold),

where the told pass shows the network the given modalities' known part sum_j lambda_t^(j) E_j(x_j) of z_t and the
untold pass hides it (``known_input``; ``known_dropout`` trains the untold path). w = 1 is the told eps alone (off).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TYPE_CHECKING

from mtd_core.errors import ConfigError
from mtd_core.modality import Role

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel


def cfg_scale(model: MultiTaskModel, w: object, mode: str, given: Collection[str]) -> float:
    """The classifier-free guidance scale w of a run.

    None resolves, on a conditional run of a told task set with a trained untold path and the encodings on channels
    of their own, to the largest ``design.cfg_scale`` among the given aggregated modalities' kinds (a kind's measured
    scale; the built-ins' is DEFAULT_CFG_SCALE), else to 1 (off). A given scale needs a number >= 0 and, unless 1, a
    conditional run of a told model whose untold path was trained (known_input with known_dropout > 0).
    """
    ts = model.taskset
    if w is None:
        applies = mode == "conditional" and ts.known_input and ts.known_dropout > 0 and ts.aux_channels > 0
        return _declared(model, given) if applies else 1.0
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise ConfigError(f"generate: cfg_scale must be a finite number >= 0 (1 turns classifier-free guidance off), "
                          f"got {w!r}")
    if w == 1:
        return 1.0
    if mode != "conditional":
        raise ConfigError(f"generate: cfg_scale = {w} guides towards given aggregated modalities, but this run is "
                          f"{mode} (give the label, caption, ... to condition on, and not the base)")
    if not ts.known_input or ts.known_dropout == 0:
        raise ConfigError(f"generate: cfg_scale = {w} needs a network trained both told and untold the given part: "
                          f"a task set with known_input = true and known_dropout > 0 (this one has known_input = "
                          f"{str(ts.known_input).lower()}, known_dropout = {ts.known_dropout}); use guidance= (the "
                          "model's own heads) instead")
    return float(w)


def _declared(model: MultiTaskModel, given: Collection[str]) -> float:
    """The largest ``design.cfg_scale`` of the given aggregated modalities' kinds (1 where none is given)."""
    scales = [m.design.cfg_scale for name, m in model.taskset.modalities.items()
              if name in given and m.role is Role.AGGREGATED]
    return float(max(scales, default=1.0))


def passes(cfg_scale: float) -> int:
    """The network evaluations behind each of the sampler's: two under classifier-free guidance (told and untold)."""
    return 1 if cfg_scale == 1 else 2


__all__ = ["cfg_scale", "passes"]
