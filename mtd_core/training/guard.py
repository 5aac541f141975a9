"""The non-finite guard: a step whose loss, gradient or resulting weights are not finite stops the run before
anything of it is saved, with a message naming the step, the loss terms, each modality at fault (its kind, plugin
and distribution; the base's denoising term 'eps' or 'vlb' by the base modality) and the last good checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from mtd_core.diffusion.loss import LossOutput
from mtd_core.errors import NonFiniteLossError
from mtd_core.taskset import TaskSet


def _where(last_checkpoint: Path | None) -> str:
    return (f"the last good checkpoint is {last_checkpoint} (continue from it with --resume)"
            if last_checkpoint is not None else "no checkpoint was saved yet")


def check_parameters(model: nn.Module, step: int, lr: float, last_checkpoint: Path | None) -> None:
    """Raise NonFiniteLossError when the update of step ``step + 1`` left a non-finite weight (a finite loss and
    gradient can still give one, e.g. with an infinite learning rate): the last good checkpoint stays the last."""
    params = [p.detach() for p in model.parameters()]
    if not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        return
    bad = next(n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all()))
    raise NonFiniteLossError(
        f"training stopped at step {step + 1}: the update made the weights non-finite (first: {bad!r}, "
        f"learning rate {lr:.4g}).\nNothing of this step was saved; {_where(last_checkpoint)}.\n"
        "Usual causes: a learning rate too high (trainer.lr) or bf16 overflow (trainer.bf16).")


def diverged(taskset: TaskSet, out: LossOutput, grad_norm: float, step: int, loss_bad: bool,
             last_checkpoint: Path | None) -> NonFiniteLossError:
    """The error for a step whose loss (on this or another process) or gradient norm is not finite."""
    terms = ", ".join(f"{k}={v:.4g}" for k, v in out.terms.items())
    loss = float(out.loss.detach())
    what = (f"the loss is {loss:.4g}" if not math.isfinite(loss)
            else "the loss is not finite on another process" if loss_bad
            else f"the gradient norm is {grad_norm}")
    return NonFiniteLossError(
        f"training stopped at step {step + 1}: {what} (terms: {terms}).\n{culprits(taskset, out)}"
        f"The update of that step was discarded and nothing was saved; {_where(last_checkpoint)}.\n"
        "Usual causes: a learning rate too high (trainer.lr), no gradient clipping (trainer.grad_clip = 0), "
        "bf16 overflow (trainer.bf16), or extreme data values."
    )


def culprits(taskset: TaskSet, out: LossOutput) -> str:
    """A line per loss term that is not finite: a modality's term names the modality, the base's denoising term
    ('eps', or 'vlb' for the variational bound) names the base modality; each with its kind, plugin and
    distribution. A term of neither (no base) is named as it is."""
    from mtd_core.plugins.registry import get_registry

    base = taskset.base
    lines = []
    for term, value in out.terms.items():
        if math.isfinite(float(value)):
            continue
        m = taskset.modalities.get(term)
        if m is None and term in ("eps", "vlb") and base is not None:
            m, what = base, f"The denoising loss of the base modality {base.name!r} (term {term!r}"
        elif m is not None:
            what = f"The loss of modality {term!r} ("
        else:
            lines.append(f"The loss term {term!r} (of no modality) is {float(value):.4g}.\n")
            continue
        info = get_registry().provider("modality", m.kind)
        source = info.describe() if info is not None else "a modality class not registered as a plugin"
        sep = ", " if what.endswith("'") else ""
        lines.append(f"{what}{sep}kind {m.kind!r}, from {source}) is {float(value):.4g}.\n")
    return "".join(lines)
