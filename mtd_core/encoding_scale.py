"""EncodingScale: the fixed affine map that gives an aggregated modality's encodings unit scale (TaskSet
``encoding_scale``), with its batch statistics summed over the ranks of data-parallel training."""

from __future__ import annotations

import torch
from torch import nn

from mtd_core.taskset import EncodingScaleKind


class _SumOverRanks(torch.autograd.Function):
    """y = sum_r x_r over the ranks, differentiable: every rank's loss depends on the same y, so the gradient for
    x_r is the sum over ranks of dL_r/dy (an all-reduce of the incoming gradients)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        torch.distributed.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        torch.distributed.all_reduce(g)
        return g


def global_sums(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks of data-parallel training (with gradients), else ``x``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        return _SumOverRanks.apply(x)  # type: ignore[no-untyped-call]
    return x


class EncodingScale(nn.Module):
    """Scales an aggregated modality's raw encodings, so that unit RMS is what w_t weighs (TaskSet
    ``encoding_scale``).

    "rms": e / RMS(e). "spread": (e - m) / s, with m the per-element mean of e over the examples and s the RMS of
    e - m: an encoder can then neither shrink its output away nor map every example to nearly one vector (which
    "rms" allows: the shared vector costs the denoising loss nothing, so a learned encoder drifts to it and the
    model stops following what it is given; docs/sampling.md).

    In training the true encodings are scaled by their whole batch's statistics (differentiable), which are tracked
    in running averages, the ``rms`` buffer (the divisor of either kind) and, for "spread", the ``mean`` buffer.
    Everywhere else, and for predicted encodings always, the running ones are used: an affine map fixed at sampling
    time, so the encoding of an expected value is the expected encoding (a per-example normalisation would
    re-inflate an unsure prediction).

    Args:
        kind: "rms" or "spread".
        shape: the encoding's shape (C, H, W) without the batch, for the running mean of "spread".
        momentum: the weight of each training batch in the running averages.
    """

    rms: torch.Tensor
    mean: torch.Tensor | None
    pinned: tuple[torch.Tensor, torch.Tensor] | None
    """Gradient accumulation (mtd_core/training/accumulate.py): the whole batch's (m, r) as leaves that collect
    their gradients, used by ``batch_stats`` passes instead of the micro-batch's own statistics."""

    def __init__(self, kind: EncodingScaleKind = "rms", shape: tuple[int, ...] = (), momentum: float = 0.02) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("rms", torch.ones(()))
        self.register_buffer("mean", torch.zeros(shape) if kind == "spread" else None)
        self.pinned = None
        self.captured: list[tuple[torch.Tensor, torch.Tensor]] = []  # (e, its detached float copy), pinned passes
        self.last_stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (m, r, n) of the last batch

    def forward(self, e: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
        """``e`` scaled by the batch's statistics (``batch_stats``; updates the running ones) or the running ones.

        Under data-parallel training the batch is the global one (its sums are reduced over the ranks, with
        gradients), so N processes train exactly as one process with the same global batch."""
        if not batch_stats:
            centred = e if self.mean is None else e - self.mean.to(e.dtype)
            return centred / self.rms.to(e.dtype)
        if self.pinned is not None:  # the encoder's gradient is completed after the micro-steps (accumulate.py)
            m, r = self.pinned
            x = e.detach().float().requires_grad_()
            self.captured.append((e, x))
            return ((x - m) / r).to(e.dtype)
        x = e.float()
        n = global_sums(x.new_tensor(float(x.shape[0])))  # examples in the (global) batch
        m = global_sums(x.sum(0)) / n if self.mean is not None else x.new_zeros(x.shape[1:])
        # centred before squaring: E[e^2] - m^2 would cancel away the tiny spread of a collapsed encoder
        r = (global_sums((x - m).pow(2).sum()) / (n * m.numel())).sqrt().clamp_min(1e-6)  # the RMS of e - m
        self.last_stats = (m.detach(), r.detach(), n.detach())
        with torch.no_grad():
            self.rms.lerp_(r.detach(), self.momentum)
            if self.mean is not None:
                self.mean.lerp_(m.detach(), self.momentum)
        return ((x - m) / r).to(e.dtype)


__all__ = ["EncodingScale", "global_sums"]
