"""An exponential moving average (EMA) of a model's weights, the weights samples are usually drawn with.

    theta_ema <- d theta_ema + (1 - d) theta,   d = min(decay, (1 + n) / (10 + n)) with warm-up, else decay

where n counts updates. The warm-up keeps the average from being dominated by the random initial weights in
short runs (a few hundred steps, as in the demo).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mtd_core.errors import CheckpointError, ConfigError


class EMA:
    """Shadow copies of every floating-point parameter and buffer of a model.

    Args:
        model: the model to average (its current weights initialise the average).
        decay: the EMA decay d in [0, 1); 0 makes the EMA a copy of the latest weights.
        warmup: use d_n = min(decay, (1 + n) / (10 + n)) for the n-th update instead of a constant decay.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"trainer.ema_decay must lie in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    def current_decay(self) -> float:
        """The decay the next update uses."""
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
