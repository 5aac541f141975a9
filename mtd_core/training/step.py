"""The pieces of one optimisation step that every training loop shares (the Trainer and the experiments' baselines
that train outside it): the learning-rate schedule, backward with gradient clipping, and the seeds of a step's
random streams."""

from __future__ import annotations

import math

import torch
from torch import nn

from mtd_core.model import MultiTaskModel
from mtd_core.training.config import TrainConfig


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64), so nearby (seed, step, stream) triples give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def lr_at(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up, then constant or cosine decay."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        f = config.final_lr_fraction
        return config.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * progress)))
    return config.lr


def backward_and_clip(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float,
                      grad_clip: float, scope: str = "model") -> torch.Tensor:
    """Set the learning rate, backpropagate ``loss`` and clip the gradients to norm ``grad_clip`` (0: no clipping);
    the gradient norm before clipping over every parameter (a tensor: reading it is left to the caller, one
    synchronisation a step). The caller then checks it and calls ``optimizer.step()``.

    ``scope`` (TrainConfig ``grad_clip_scope``): "model" clips one norm over every parameter; "part" clips the
    backbone and each modality's encoder and head apart (``MultiTaskModel.parts``), each to ``grad_clip``, so that
    the large gradients of one modality's head never shrink the backbone's step (any other module is one part)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss.backward()
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    parts = (model.parts() if scope == "part" and isinstance(model, MultiTaskModel)
             else {"model": list(model.parameters())})
    groups = [[p for p in ps if p.grad is not None] for ps in parts.values()]
    norms = [torch.nn.utils.clip_grad_norm_(g, max_norm) for g in groups if g]
    if not norms:
        return torch.zeros((), device=loss.device)
    return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
