"""The trainer's opt-in speed paths: ``trainer.compile`` (torch.compile of the backbone) and
``trainer.channels_last`` (the backbone's weights and 4-D inputs in the channels-last memory format). bf16 autocast
(``trainer.bf16``) is applied around each forward pass by the trainer itself.

Both change how the backbone runs, not what it computes (equal to float tolerance: tests/test_speed_paths.py), and
neither changes a parameter's name: ``nn.Module.compile`` compiles the module in place (no ``_orig_mod.`` prefix in
its state_dict), so a checkpoint of a compiled run resumes eagerly and the other way round.

The whole backbone forward is compiled as one graph (its output record, :class:`~mtd_core.backbones.BackboneOutput`,
is a dataclass, which graph capture traces). Compiling the blocks one by one instead would share one code object
among blocks of many shapes and exceed torch's recompile limit on an ADM-size U-Net.
"""

from __future__ import annotations

import torch
from torch import nn

from mtd_core.training.config_checks import COMPILE_OFF

COMPILE_BACKEND = "inductor"
"""The torch.compile backend of ``trainer.compile`` (torch's default). Tests set it to "eager" (the graph capture
alone, without inductor's code generation: seconds instead of minutes on a CPU)."""


def prepare_backbone(model: nn.Module, compile_mode: str = COMPILE_OFF, channels_last: bool = False) -> None:
    """Apply ``trainer.channels_last`` and ``trainer.compile`` to ``model.backbone`` in place (after the model is
    on its device, before the optimizer's state exists). Nothing to do when both are off."""
    backbone = getattr(model, "backbone", model)
    if channels_last:
        to_channels_last(backbone)
    if compile_mode != COMPILE_OFF:
        compile_in_place(backbone, compile_mode)


def to_channels_last(module: nn.Module) -> None:
    """The module's 4-D weights (convolutions) and every 4-D tensor passed to its forward in channels-last layout
    (a forward pre-hook converts the inputs; a tensor already in that layout is passed through as it is)."""
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def inputs_channels_last(_: nn.Module, args: tuple[object, ...]) -> tuple[object, ...]:
        return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4
                     else a for a in args)

    module.register_forward_pre_hook(inputs_channels_last)


def compile_in_place(module: nn.Module, mode: str) -> None:
    """``module.compile(mode=mode)`` with :data:`COMPILE_BACKEND`: the forward is compiled on its first call, and the
    module keeps its parameters and their names."""
    module.compile(mode=mode, backend=COMPILE_BACKEND)


__all__ = ["COMPILE_BACKEND", "compile_in_place", "prepare_backbone", "to_channels_last"]
