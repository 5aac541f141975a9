"""The EMAs of a run, kept side by side and chosen by name when sampling.

    "ema"        the default EMA: ``trainer.ema_decay`` (with ``ema_warmup``), or ``trainer.ema_halflife`` examples
    <name> ...   ``trainer.emas``: further half-lives, each ``{name, halflife}``

Every EMA is updated after every optimisation step. A checkpoint stores the default one in ``ema.safetensors`` (as
before there were several, so older checkpoints load and resume unchanged) and each further one in
``ema_<name>.safetensors``; its update count is ``trainer.ema_updates`` of state.json (the same for every EMA: all
start with the run). Sample grids and ``load_run(path)`` use the default; ``load_run(path, ema="<name>")``,
``mtd sample --ema NAME`` and ``mtd eval --ema NAME`` pick another, ``"model"`` the raw weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mtd_core.errors import CheckpointError, ConfigError
from mtd_core.training.ema import EMA

if TYPE_CHECKING:
    from mtd_core.training.config import TrainConfig

DEFAULT = "ema"  # the default EMA's name (ema.safetensors)
RAW = "model"  # the raw trained weights, by name
FILE_PREFIX = "ema_"  # a further EMA's file: ema_<name>.safetensors

Tensors = dict[str, torch.Tensor]


def ema_file(name: str) -> str:
    """The checkpoint file of the EMA called ``name``."""
    return "ema.safetensors" if name == DEFAULT else f"{FILE_PREFIX}{name}.safetensors"


def ema_name(rel: str) -> str | None:
    """The name of a further EMA stored in the checkpoint file ``rel``, or None when ``rel`` is not one."""
    if "/" in rel or not (rel.startswith(FILE_PREFIX) and rel.endswith(".safetensors")):
        return None
    return rel[len(FILE_PREFIX):-len(".safetensors")] or None


class EMABank:
    """The EMAs of one run by name, the default first (empty when ``trainer.ema_decay = 0``).

    Args:
        members: name -> EMA, the default ("ema") first.
    """

    def __init__(self, members: Mapping[str, EMA]) -> None:
        self.members = dict(members)

    @classmethod
    def from_config(cls, model: nn.Module, config: TrainConfig) -> EMABank:
        """The EMAs ``config`` asks for, each starting from ``model``'s current weights."""
        if config.ema_decay <= 0:
            return cls({})
        members = {DEFAULT: EMA(model, config.ema_decay, config.ema_warmup, halflife=config.ema_halflife,
                                rampup=config.ema_rampup, batch_size=config.batch_size)}
        for spec in config.emas:
            members[spec.name] = EMA(model, config.ema_decay, halflife=spec.halflife, rampup=config.ema_rampup,
                                     batch_size=config.batch_size)
        return cls(members)

    @property
    def default(self) -> EMA | None:
        """The default EMA (sample grids, ``load_run(path)``), or None when the run keeps none."""
        return self.members.get(DEFAULT)

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def further(self) -> dict[str, Tensors]:
        """The weights of every EMA but the default, by name (a checkpoint's ``emas``)."""
        return {name: ema.state_dict() for name, ema in self.members.items() if name != DEFAULT}

    def to(self, device: torch.device | str) -> EMABank:
        for ema in self.members.values():
            ema.to(device)
        return self

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every EMA towards ``model``'s current weights (after an optimisation step)."""
        for ema in self.members.values():
            ema.update(model)

    def restore(self, default: Tensors | None, further: Mapping[str, Tensors], updates: int, where: Path | None,
                device: torch.device) -> None:
        """Load every EMA from a checkpoint's ``ema`` and ``emas`` (``where`` names it in errors); one the run keeps
        that the checkpoint lacks is a CheckpointError."""
        for name, ema in self.members.items():
            state = default if name == DEFAULT else further.get(name)
            if state is None:
                why = "trainer.ema_decay > 0" if name == DEFAULT else f"trainer.emas lists {name!r}"
                raise CheckpointError(f"{where}: has no {ema_file(name)} (EMA weights) but {why}")
            ema.load_state_dict({k: v.to(device) for k, v in state.items()}, updates)


def choose_ema(default: Tensors | None, further: Mapping[str, Tensors], ema: bool | str, where: Path | None
               ) -> tuple[str, Tensors | None]:
    """Which weights ``load_run(..., ema=...)`` puts in the model: (name, the EMA's tensors, or None for the raw
    weights). ``True`` is the default EMA when the checkpoint has one (else the raw weights, as always), ``False`` or
    ``"model"`` the raw weights, a name that EMA; an unknown name is a ConfigError listing those the checkpoint has."""
    if ema is False or ema == RAW:
        return RAW, None
    if ema is True:
        return (DEFAULT, default) if default is not None else (RAW, None)
    if ema == DEFAULT and default is not None:
        return DEFAULT, default
    if isinstance(ema, str) and ema in further:
        return ema, further[ema]
    names = ([DEFAULT] if default is not None else []) + sorted(further)
    has = f"the EMAs {names}" if names else "no EMA weights"
    raise ConfigError(f"EMA {ema!r}: {where} has {has}; choose one of {names + [RAW]} ({RAW!r}: the raw weights)")
