"""An exponential moving average (EMA) of a model's weights, the weights samples are usually drawn with.

    theta_ema <- d theta_ema + (1 - d) theta,   d = min(decay, (1 + n) / (10 + n)) with warm-up, else decay

where n counts updates. The warm-up keeps the average from being dominated by the random initial weights in
short runs (a few hundred steps, as in the demo).

By half-life (EDM's definition, Karras et al. 2022): an EMA whose weight on an update halves every ``halflife``
training examples, d = 0.5 ** (batch_size / h) per step, whatever the batch size; with the ramp-up ratio r,
h = min(halflife, r * examples seen before the step), so early on the average forgets the initial weights quickly
(d = 0 at the first update: the EMA starts as a copy of the trained weights). The EMAs of a run, the default one and
``trainer.emas``, are kept together in mtd_core/training/ema_bank.py.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from mtd_core.errors import CheckpointError, ConfigError


def halflife_decay(halflife: float, batch_size: int, seen: int, rampup: float = 0.0) -> float:
    """The per-step decay of an EMA with a half-life of ``halflife`` training examples (EDM's definition):
    0.5 ** (batch_size / h), h = min(halflife, rampup * seen) with a ramp-up (``rampup`` > 0) else ``halflife``,
    ``seen`` the examples trained on before this step. h = 0 (the first step of a ramped EMA) gives 0."""
    h = min(halflife, rampup * seen) if rampup > 0 else halflife
    return 0.5 ** (batch_size / max(h, 1e-8))


class EMA:
    """Shadow copies of every floating-point parameter and buffer of a model.

    Args:
        model: the model to average (its current weights initialise the average).
        decay: the EMA decay d in [0, 1); 0 makes the EMA a copy of the latest weights.
        warmup: use d_n = min(decay, (1 + n) / (10 + n)) for the n-th update instead of a constant decay.
        halflife: when > 0, the half-life in training examples that sets the decay instead (``decay`` and
            ``warmup`` are then unused): :func:`halflife_decay` with ``n * batch_size`` examples seen.
        rampup: the half-life's ramp-up ratio (0: none).
        batch_size: the examples of one update (the global batch).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True, *, halflife: float = 0.0,
                 rampup: float = 0.0, batch_size: int = 1) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"trainer.ema_decay must lie in [0, 1), got {decay}")
        if not (math.isfinite(halflife) and halflife >= 0 and math.isfinite(rampup) and rampup >= 0
                and batch_size >= 1):
            raise ConfigError(f"EMA: the half-life ({halflife}) and ramp-up ratio ({rampup}) must be finite numbers "
                              f">= 0 and the batch size ({batch_size}) positive")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.halflife, self.rampup, self.batch_size = float(halflife), float(rampup), int(batch_size)
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if self.halflife > 0:
            return halflife_decay(self.halflife, self.batch_size, self.updates * self.batch_size, self.rampup)
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        d = self.current_decay()
        state = model.state_dict()
        for k, s in self.shadow.items():
            s.lerp_(state[k].detach().float(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``."""
        state = model.state_dict()
        for k, s in self.shadow.items():
            state[k].copy_(s.to(state[k].dtype))

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily run ``model`` with the averaged weights (restored afterwards, even on error)."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                state = model.state_dict()
                for k, v in backup.items():
                    state[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors (keys as in the model's state dict)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the averaged tensors and the update count (for the warm-up)."""
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise CheckpointError(f"EMA weights do not match the model: missing {missing[:5]}, unexpected "
                                  f"{unexpected[:5]}")
        for k, s in self.shadow.items():
            if state[k].shape != s.shape:
                raise CheckpointError(f"EMA weight {k!r}: shape {tuple(state[k].shape)} in the checkpoint, "
                                      f"{tuple(s.shape)} in the model")
            s.copy_(state[k])
        self.updates = int(updates)

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow tensors to ``device``."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self
