"""The Monte Carlo multi-task training loss (docs/math.md, section 6).

One t ~ U{1..T} and one eps ~ N(0, I) per example, z_t from the closed-form marginal, one forward pass:

    simple:  ||eps - eps_theta(z_t, t)||^2 / D            + sum_i c_i (-log p_theta(x_i | z_t)) / D_i
    vlb:     T * L_{t-1} / D (t >= 2) or T * L_0 / D (t = 1) + sum_i c_i (-log p_theta(x_i | z_t)) / D_i

D is the number of elements of one example of the base (the latent dimension without a base), D_i that of
modality i and c_i its loss weight, so every term is in nats per dimension of its data. The eps error is summed
over all of Z, auxiliary channels included (TaskSet ``aux_channels``), and divided by the base's D, so the base's
own term weighs exactly what it weighs in single-task DDPM; with TaskSet ``aux_eps = "heads"`` the auxiliary channels'
eps is the heads' (model.py), so their part of the error is a loss on the heads. The decoding terms are read at the sampled t (the paper's multi-task loss),
which trains every head across noise levels; the ELBO itself reads them at t = 1 (elbo.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from mtd_core.diffusion.elbo import base_prediction, step_kl
from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.errors import ConfigError
from mtd_core.outputs import checked_loss
from mtd_core.types import Denoiser, DenoiserOutput, Role

if TYPE_CHECKING:
    from mtd_core.modality import Modality

LOSS_KINDS = ("simple", "vlb")


# A dataclass, not attrs: DistributedDataParallel finds the tensors a forward returned (to learn which parameters
# the backward will reach) only inside tensors, lists, tuples, dicts and dataclasses. An opaque output makes it
# count every parameter unused, and with find_unused_parameters the first gradient is then "marked ready twice".
@dataclasses.dataclass(frozen=True, slots=True)
class LossOutput:
    """The scalar loss to minimise and its parts.

    Args:
        loss: the scalar to minimise.
        parts: each term's detached batch mean, a 0-d tensor on the loss's device. Kept as tensors so that a
            training step forces no host-device synchronisation per term; read them as floats with ``terms``.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]

    @property
    def terms(self) -> dict[str, float]:
        """The parts as floats (for logging, which reads them every ``log_every`` steps, not every step)."""
        return {k: float(v) for k, v in self.parts.items()}


def training_loss(
    fp: ForwardProcess,
    denoiser: Denoiser,
    modalities: Mapping[str, Modality],
    batch: Mapping[str, torch.Tensor],
    encode: Callable[[Mapping[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    *,
    kind: str = "simple",
    t: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    known_dropout: float | None = None,
    hide: torch.Tensor | None = None,
) -> LossOutput:
    """The multi-task loss of one batch.

    Args:
        fp: the forward process (full, not respaced).
        denoiser: the model; returns eps_theta and every head's prediction.
        modalities: name -> Modality for every modality in the task set.
        batch: name -> data for every modality.
        encode: maps the batch to (z_0, {aggregated name -> E_i(x_i)}), with gradients to the encoders.
        kind: "simple" or "vlb".
        t, eps: fix the timesteps (B,) and noise instead of drawing them (for tests).
        generator: the RNG for t and eps.
        known_dropout: for a denoiser that also reads the known aggregated part of z_t (TaskSet ``known_input``):
            the probability that one modality's part is hidden from that input, drawn per example and modality.
            None: the denoiser is called as ``denoiser(z_t, t)``.
        hide: with ``known_dropout``, fixed uniform draws (B, number of aggregated modalities) instead of drawing
            them: a modality's part is hidden where its draw is below ``known_dropout`` (the trainer draws them for
            the global batch, as t and eps, so that N processes hide what one process would).
    """
    if kind not in LOSS_KINDS:
        raise ConfigError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
    z0, enc = encode(batch)
    base = next((n for n, m in modalities.items() if m.role is Role.BASE), None)
    B, D = z0.shape[0], batch[base][0].numel() if base is not None else z0[0].numel()
    if t is None:
        t = torch.randint(1, fp.T + 1, (B,), generator=generator, device=generator.device if generator else "cpu").to(z0.device)
    if eps is None:
        eps = torch.randn(z0.shape, generator=generator, dtype=z0.dtype,
                          device=generator.device if generator else "cpu").to(z0.device)
    z_t = fp.q_sample(z0, enc, t, eps)
    t_orig = fp.timesteps.to(t.device)[t]  # the original t (differs from t only after respacing)
    if known_dropout is None:
        out = denoiser(z_t, t_orig)
    else:
        out = denoiser(z_t, t_orig, known=fp.injected(_shown(enc, known_dropout, generator, hide), t, z_t))
    if kind == "simple":
        terms = {"eps": (out.eps.float() - eps.float()).pow(2).flatten(1).sum(1) / D}
    else:
        terms = {"vlb": _vlb_term(fp, denoiser, out, t, z_t, z0, enc, batch, modalities[base] if base is not None else None, D)}
    total = sum(terms.values(), torch.zeros(B, device=z0.device))
    if base is not None and modalities[base].loss_weight != 1.0:  # c_0: 0 trains the heads alone
        total = modalities[base].loss_weight * total
    for name in fp.names:  # -log p(x_i | z_t) / D_i, checked to be one loss per example (outputs.py)
        m = modalities[name]
        terms[name] = checked_loss(m, out.preds[name], batch[name]) / max(1, math.prod(m.data_spec().shape))
    loss = (total + sum(modalities[n].loss_weight * terms[n] for n in fp.names)).mean()
    return LossOutput(loss=loss, parts={k: v.detach().mean() for k, v in terms.items()})


def _vlb_term(fp: ForwardProcess, denoiser: Denoiser, out: DenoiserOutput, t: torch.Tensor, z_t: torch.Tensor,
              z0: torch.Tensor, enc: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
              base: Modality | None, D: int) -> torch.Tensor:
    """T * L_{t-1} per example, per dimension: the KL of the reverse step for t >= 2, the base's reconstruction
    NLL at t = 1 (docs/math.md, section 5)."""
    enc_hat = denoiser.predicted_encodings(out.preds)
    kl = step_kl(fp, t.clamp(min=2), z_t, z0, enc, out.eps.to(z0.dtype), enc_hat) / D
    if base is not None:
        channels = (base.latent_shape() or batch[base.name].shape[1:])[0]  # z_0's channels (a latent base's differ)
        pred0 = base_prediction(fp, z_t, out.eps.to(z0.dtype), enc_hat, channels)
        nll0 = checked_loss(base, pred0, batch[base.name]) / D
    else:
        nll0 = torch.zeros_like(kl)
    return fp.T * torch.where(t == 1, nll0, kl)


def _shown(enc: Mapping[str, torch.Tensor], p: float, generator: torch.Generator | None,
           hide: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each encoding with its examples hidden (zeroed) independently with probability ``p``: what the known input
    shows in training, so that the network learns both to use a known part and to work without it. ``hide``: the
    uniform draws (B, len(enc)) to use instead of drawing them from ``generator``."""
    dev = generator.device if generator is not None else "cpu"
    shown = {}
    for i, (name, e) in enumerate(enc.items()):
        u = torch.rand(e.shape[0], generator=generator, device=dev) if hide is None else hide[:, i]
        keep = u.to(e.device) >= p
        shown[name] = e.detach() * keep.to(e.dtype).reshape(-1, *([1] * (e.ndim - 1)))
    return shown
