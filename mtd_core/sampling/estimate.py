"""The base estimate z0_hat of a reverse step: clipped, thresholded or left as it is (docs/sampling.md).

From the network's noise estimate and the encodings of a step (ForwardProcess.z0_from_eps),

    z0_hat = (z_k - sum_i lambda_k^(i) E_i - sqrt(1 - abar_k) eps) / sqrt(abar_k),

which divides every error of eps and of E_i by sqrt(abar_k). The base's data lie in a known range, so the estimate
can be brought back into it before the step uses it:

    "none"     z0_hat as it is.
    "static"   clipped to the base modality's range [low, high] (ADM's clip_denoised, diffusers' clip_sample).
    "dynamic"  Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3), in the range's own units
               u = (z0_hat - c) / h (centre c, half-width h): s = max(1, the ``percentile`` quantile of |u| per
               example), u <- clip(u, -s, s) / s.

and the state follows one of two rules (``eps``), both of which keep the decomposition
z_k = sqrt(abar_k) z0 + sum_i lambda_k^(i) E_i + sqrt(1 - abar_k) eps exact, so every sampler can step from it:

    "rederive" the state z_k stays; the noise is re-derived from the processed estimate,
               eps' = (z_k - sqrt(abar_k) z0 - sum_i lambda_k^(i) E_i) / sqrt(1 - abar_k) (ADM's DDIM). The part of
               z0_hat that was clipped away stays in the state, as noise, and a step moves only its own fraction of
               it.
    "keep"     the network's eps stays and the state moves onto the processed estimate,
               z_k' = z_k - sqrt(abar_k) (z0_hat - z0): the clipped-away part leaves the state at once. For DDIM this
               is diffusers' clipped step (``use_clipped_model_output=False``); the other samplers step from z_k'.

When the task set places the aggregated encodings in channels of their own (TaskSet ``aux_channels``), z_0 is zero
there by construction, so those channels of z0_hat are set to 0 whatever the rule. Where a given modality shows part
of the base as it is (``Modality.observed_base``: a masked image's unhidden pixels), those values replace the
estimate's after clipping (``observed``), under the same rule: the data-consistency step of training-free
restoration (DDNM, Wang et al. 2023: z0 <- A^+ y + (I - A^+ A) z0_hat, here with A a mask), which keeps every
observed value in z_0 and lets the network fill in the rest around it.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from mtd_core.diffusion.forward import Encodings, ForwardProcess
from mtd_core.errors import ConfigError

Clip = Literal["none", "static", "dynamic"]
EpsRule = Literal["rederive", "keep"]
CLIPS: tuple[Clip, ...] = ("none", "static", "dynamic")
EPS_RULES: tuple[EpsRule, ...] = ("rederive", "keep")
ObservedBase = tuple[torch.Tensor, torch.Tensor]
"""(values, known): base values shaped like the base's channels of z_0 and a bool mask broadcasting to them, True
where the value is observed (``Modality.observed_base``)."""


@attrs.frozen
class BaseRange:
    """Where the base lives in z_0: its channels and its data range.

    Attributes:
        channels: the base's channels (the first ones of Z); channels beyond them are zero in z_0.
        low, high: the base's data range, or None where it has no bound.
        name: the base modality's name (for error messages).
    """

    channels: int
    low: float | None
    high: float | None
    name: str


@attrs.frozen
class BaseEstimate:
    """How a step turns the network's output into the base estimate it uses (the module docstring).

    Args:
        clip: "none", "static" or "dynamic".
        eps: "rederive" or "keep".
        percentile: the quantile of dynamic thresholding, in (0, 1] (Imagen: 0.995).
    """

    clip: Clip = "none"
    eps: EpsRule = "rederive"
    percentile: float = 0.995

    def __attrs_post_init__(self) -> None:
        if self.clip not in CLIPS:
            raise ConfigError(f"base estimate: clip must be one of {list(CLIPS)}, got {self.clip!r}")
        if self.eps not in EPS_RULES:
            raise ConfigError(f"base estimate: clip_eps must be one of {list(EPS_RULES)}, got {self.eps!r}")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ConfigError(f"base estimate: clip_percentile must lie in (0, 1], got {p!r}")

    def check(self, base: BaseRange | None) -> None:
        """Raise a ConfigError when clipping is asked for but the base defines no range to clip to."""
        if self.clip == "none":
            return
        if base is None:
            raise ConfigError(f"base estimate: clip = {self.clip!r} needs a base modality; this task set has none "
                              "(use clip = 'none')")
        if base.low is None or base.high is None:
            raise ConfigError(f"base estimate: clip = {self.clip!r} needs the base modality {base.name!r} to define "
                              f"a data range, but its data_spec() has low = {base.low}, high = {base.high} (use "
                              "clip = 'none')")

    def apply(self, fp: ForwardProcess, z_t: torch.Tensor, k: int, z0_hat: torch.Tensor, eps: torch.Tensor,
              enc: Encodings, base: BaseRange | None, observed: ObservedBase | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z0, eps, state) for a step at index ``k`` from ``z_t``, whose decomposition with the encodings ``enc``
        gave ``z0_hat`` and ``eps``: the processed estimate, the noise and the state the step starts from.
        ``observed`` (values, known) replaces the base's known values of the estimate (the module docstring)."""
        z0 = z0_hat
        if base is not None and (self.clip != "none" or base.channels < z0.shape[1] or observed is not None):
            z0 = z0.clone()
            part = z0[:, : base.channels]
            if self.clip != "none":
                part = _clip(part, base, self.clip, self.percentile)
            if observed is not None:
                part = torch.where(observed[1], observed[0].to(part.dtype), part)
            z0[:, : base.channels] = part
            z0[:, base.channels:] = 0.0
        if z0 is z0_hat:
            return z0, eps, z_t
        if self.eps == "rederive":
            return z0, fp.eps_from_z0(z_t, z0, enc, k), z_t
        return z0, eps, z_t - float(fp.abar[k]) ** 0.5 * (z0_hat - z0)


def _clip(x: torch.Tensor, base: BaseRange, clip: Clip, percentile: float) -> torch.Tensor:
    assert base.low is not None and base.high is not None
    if clip == "static":
        return x.clamp(base.low, base.high)
    c, h = 0.5 * (base.high + base.low), 0.5 * (base.high - base.low)
    u = (x - c) / h
    s = torch.quantile(u.abs().flatten(1).float(), percentile, dim=1).clamp_min(1.0).to(u.dtype)
    s = s.reshape(-1, *([1] * (u.ndim - 1)))
    return c + h * (torch.maximum(torch.minimum(u, s), -s) / s)


__all__ = ["CLIPS", "EPS_RULES", "BaseEstimate", "BaseRange", "Clip", "EpsRule", "ObservedBase"]
