"""The read-out mode of generate(): with the base given, each other modality is read off its head at a small
noise level t = read_t * T (docs/sampling.md, "Read-out"). No reverse process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mtd_core.errors import ConfigError
from mtd_core.sampling.base import randn_like
from mtd_core.types import Prediction

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel


def read_ts(read_t: float | Sequence[float], T: int) -> list[int]:
    us = [read_t] if isinstance(read_t, (int, float)) else list(read_t)
    if not us or not all(isinstance(u, (int, float)) and 0 < u <= 1 for u in us):
        raise ConfigError("generate: read_t must be a fraction of T in (0, 1] or a non-empty list of them, "
                          f"got {read_t!r}")
    return [max(1, round(float(u) * T)) for u in us]


def readout(model: MultiTaskModel, z0: torch.Tensor, observed: dict[str, torch.Tensor], read_t: float | Sequence[float],
             generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, Prediction]]:
    """Read the heads of the unobserved modalities from the noised base at t = read_t * T (averaged over several)."""
    fp = model.forward_process
    zeros = {name: torch.zeros_like(z0) for name in fp.names if name not in observed}
    enc = {**zeros, **observed}
    runs: list[dict[str, Prediction]] = []
    known = model.taskset.known_input and bool(observed)  # tell the network the observed parts (TaskSet known_input)
    for t in read_ts(read_t, fp.T):
        tt = torch.full((z0.shape[0],), t, dtype=torch.long, device=z0.device)
        z_t = fp.q_sample(z0, enc, tt, randn_like(z0, generator))
        preds = (model(z_t, tt, fp.known_part(observed, tt, z_t)) if known else model(z_t, tt)).preds
        runs.append({n: p for n, p in preds.items() if n not in observed})
    if len(runs) == 1:
        return z0, runs[0]
    averaged = {}
    for name in runs[0]:
        ps = [r[name] for r in runs]
        if not all(isinstance(p, torch.Tensor) for p in ps):
            raise ConfigError(f"generate: modality {name!r} predicts {type(ps[0]).__name__}, which cannot be averaged "
                              "over several read_t; pass a single read_t")
        averaged[name] = torch.stack(ps).mean(0)
    return z0, averaged
