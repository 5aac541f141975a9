"""The pieces of one optimisation step that every training loop shares (the Trainer and the experiments' baselines
that train outside it): the learning-rate schedule, backward with gradient clipping, the seeds of a step's random
streams, and the micro-batches of gradient accumulation."""

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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (the step's, from :func:`lr_at`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(model: nn.Module, grad_clip: float, scope: str = "model") -> torch.Tensor:
    """Clip the accumulated gradients to norm ``grad_clip`` (0: no clipping); the norm before clipping over every
    parameter, as a tensor (reading it is left to the caller, one synchronisation a step). ``scope`` as in
    :func:`backward_and_clip`."""
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    parts = (model.parts() if scope == "part" and isinstance(model, MultiTaskModel)
             else {"model": list(model.parameters())})
    groups = [[p for p in ps if p.grad is not None] for ps in parts.values()]
    norms = [torch.nn.utils.clip_grad_norm_(g, max_norm) for g in groups if g]
    if not norms:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.zeros((), device=device)
    return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))


def backward_and_clip(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float,
                      grad_clip: float, scope: str = "model") -> torch.Tensor:
    """Set the learning rate, backpropagate ``loss`` and clip the gradients to norm ``grad_clip`` (0: no clipping);
    the gradient norm before clipping over every parameter (a tensor: reading it is left to the caller, one
    synchronisation a step). The caller then checks it and calls ``optimizer.step()``.

    ``scope`` (TrainConfig ``grad_clip_scope``): "model" clips one norm over every parameter; "part" clips the
    backbone and each modality's encoder and head apart (``MultiTaskModel.parts``), each to ``grad_clip``, so that
    the large gradients of one modality's head never shrink the backbone's step (any other module is one part)."""
    set_lr(optimizer, lr)
    loss.backward()
    return clip_gradients(model, grad_clip, scope)


def micro_positions(batch_size: int, world_size: int, rank: int, accumulate: int) -> list[torch.Tensor]:
    """The positions in the global batch that this rank trains on at each micro-step of a step (TrainConfig
    ``accumulate``): micro-step j covers the j-th of ``accumulate`` contiguous slices of the global batch, split
    evenly over the ranks, so that every micro-batch (and the EncodingScale statistics summed over the ranks) is
    the same whatever the number of processes. With ``accumulate`` = 1: rank r's contiguous r-th slice."""
    micro = batch_size // accumulate
    b = micro // world_size
    return [torch.arange(j * micro + rank * b, j * micro + (rank + 1) * b) for j in range(accumulate)]
