"""Gradient accumulation (TrainConfig ``accumulate = k``): one optimisation step as k micro-steps whose gradients
add up to those of the whole batch's mean loss, exactly, even where the loss depends on batch statistics.

Without EncodingScale the loss is a mean over examples: each micro-step's loss is scaled by 1/k and the gradients
sum. An aggregated encoding scaled by its batch's statistics (m, r) (mtd_core/encoding_scale.py) couples the
examples: with micro-batches both the value and the encoder's gradient would come from the micro-batch. Here
(i) a no-grad pre-pass encodes the whole batch, which sets the running statistics once and gives the whole
batch's (m, r); (ii) every micro-step scales by those (m, r), held as leaves that collect dL/dm and dL/dr, and stops
the gradient at the encoding; (iii) after the last micro-step each encoding e_i gets its complete gradient

    dL/de_i = dL/de_i|_(m, r fixed) + (dL/dm) / n + (dL/dr) (e_i - m) / (n D r)

(m = mean of e over the n examples, r = the RMS over n D elements of e - m; the dL/dm term only for "spread",
whose m depends on e), which one backward through the kept encoder graphs sends into the encoders. Under
data-parallel training dL/dm and dL/dr are summed over the ranks (every rank's loss uses the same statistics), the
micro-steps run under ``no_sync`` and the gradients are averaged over the ranks once, flattened, at the end. An
encoder that draws random numbers (dropout) draws them again in the micro-steps, so there it is not exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtd_core.diffusion.loss import LossOutput
from mtd_core.encoding_scale import EncodingScale, global_sums
from mtd_core.model import MultiTaskModel

Autocast = Callable[[], contextlib.AbstractContextManager[object]]
"""A fresh autocast context (or a null one) per forward pass."""


def accumulate_gradients(model: MultiTaskModel, loss_module: nn.Module, batch: Mapping[str, torch.Tensor],
                         t: torch.Tensor, eps: torch.Tensor, hide: torch.Tensor | None, k: int,
                         autocast: Autocast) -> LossOutput:
    """Backward over ``k`` equal micro-batches of this rank's batch (gradients left in ``.grad``); the step's loss
    and terms, the means over the micro-steps."""
    ddp = loss_module if isinstance(loss_module, DistributedDataParallel) else None
    scales = [s for s in model.modules() if isinstance(s, EncodingScale)] if k > 1 else []
    if scales:
        scales = _pin_statistics(model, scales, batch, autocast)
    size = len(t) // k
    outs: list[LossOutput] = []
    try:
        for j in range(k):
            part = slice(j * size, (j + 1) * size)
            micro = {name: v[part] for name, v in batch.items()}
            sync = ddp is None or (j == k - 1 and not scales)
            with contextlib.nullcontext() if sync else ddp.no_sync():  # type: ignore[union-attr]
                with autocast():
                    out = loss_module(micro, t[part], eps[part], None if hide is None else hide[part])
                (out.loss if k == 1 else out.loss / k).backward()
            outs.append(out)
        if scales:
            _backward_through_statistics(scales)
            if ddp is not None:
                _average_gradients(model)
    finally:
        for s in scales:
            s.pinned, s.captured = None, []
    if k == 1:
        return outs[0]
    return LossOutput(loss=torch.stack([o.loss.detach() for o in outs]).mean(),
                      parts={name: torch.stack([o.parts[name] for o in outs]).mean() for name in outs[0].parts})


def _pin_statistics(model: MultiTaskModel, scales: list[EncodingScale], batch: Mapping[str, torch.Tensor],
                    autocast: Autocast) -> list[EncodingScale]:
    """The pre-pass: the whole batch's statistics (running ones updated once), pinned as leaves on each scale the
    batch reaches. The global RNG is left as it was, so the micro-steps draw what accumulate = 1 would."""
    for s in scales:
        s.last_stats = None
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices), autocast():
        model.encode(batch, validate=False)
    pinned = [s for s in scales if s.last_stats is not None]
    for s in pinned:
        m, r, _ = s.last_stats  # type: ignore[misc]
        s.pinned = (m.clone().requires_grad_(), r.clone().requires_grad_())
    return pinned


def _backward_through_statistics(scales: list[EncodingScale]) -> None:
    """Completes every kept encoding's gradient with the statistics' part (the module docstring's equation) and
    backpropagates it into the encoders."""
    tensors: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    for s in scales:
        m, r = s.pinned  # type: ignore[misc]
        _, r_value, n = s.last_stats  # type: ignore[misc]
        g_m = m.grad if m.grad is not None else torch.zeros_like(m)
        g_r = r.grad if r.grad is not None else torch.zeros_like(r)
        g = global_sums(torch.cat([g_m.flatten(), g_r.reshape(1)]).detach())
        g_m, g_r = g[:-1].view_as(m), g[-1]
        if s.mean is None:  # "rms": m is the constant 0
            g_m = torch.zeros_like(g_m)
        if float(r_value) <= 1e-6:  # the clamp of r is flat
            g_r = torch.zeros_like(g_r)
        D = m.numel()
        for e, x in s.captured:
            direct = x.grad if x.grad is not None else torch.zeros_like(x)
            total = direct + g_m / n + g_r * (x.detach() - m.detach()) / (n * D * r.detach())
            tensors.append(e)
            grads.append(total.to(e.dtype))
    if tensors:
        torch.autograd.backward(tensors, grads)


def _average_gradients(model: nn.Module) -> None:
    """Every gradient averaged over the data-parallel ranks in one flattened all-reduce (what DDP's sync does)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
