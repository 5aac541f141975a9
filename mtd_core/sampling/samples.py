"""The samples generate() returns: every modality of the task set by name, in task-set order. The given data as
given (the very objects passed in), the draws joint = "commit" made at z_K, the base decoded from z_0 (x = clip(z_0)
to the data range where its encoder is the identity; where the encoder has a ``decode`` method, a latent base's
autoencoder, x = encoder.decode(z_0)) and every other aggregated modality read from its head,
x_i = sample(pred_i, greedy=True)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from mtd_core.errors import ConfigError
from mtd_core.modality import Modality, Role
from mtd_core.types import Batch, Prediction

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel


def samples(model: MultiTaskModel, given: Batch, mode: str, committed: dict[str, torch.Tensor], z0: torch.Tensor,
            predictions: dict[str, Prediction], generator: torch.Generator | None) -> Batch:
    """Every modality's samples: the given data as given, committed draws, the decoded base, the heads' reads."""
    out: Batch = {}
    for name, m in model.taskset.modalities.items():
        if name in given:
            out[name] = given[name]
        elif mode != "readout" and name in committed:
            out[name] = committed[name]
        elif m.role is Role.BASE:
            out[name] = decode_base(m, model.base_part(z0), encoder_of(model, name))
        else:
            x = m.sample(predictions[name], greedy=True, generator=generator)
            m.validate(x, where="generated sample")
            out[name] = x
    return out


def encoder_of(model: object, name: str) -> nn.Module | None:
    """``model.encoders[name]`` when the model has encoders (a MultiTaskModel), else None (any other Denoiser)."""
    encoders = getattr(model, "encoders", None)
    return encoders[name] if isinstance(encoders, nn.ModuleDict) and name in encoders else None


def base_decoder(encoder: nn.Module | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The base encoder's ``decode`` (z_0 -> data) when it has one (a latent base's autoencoder), else None: z_0 is
    then the base's data itself, with the data's range."""
    decode = getattr(encoder, "decode", None)
    return decode if callable(decode) else None


def decode_base(m: Modality, z0: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
    """The base modality's data from z_0: ``encoder.decode(z_0)`` where the base's encoder has a ``decode`` method,
    else z_0 itself (the encoder is the identity); clipped to the data range."""
    spec = m.data_spec()
    decode = base_decoder(encoder)
    if decode is not None:
        z0 = decode(z0)
    if tuple(z0.shape[1:]) != spec.shape:
        raise ConfigError(f"generate: base modality {m.name!r} has data shape {spec.shape} but z_0 is "
                          f"{tuple(z0.shape[1:])}; only bases with an identity encoder, or an encoder with a decode "
                          "method, can be generated")
    x = z0.float().clamp(spec.low if spec.low is not None else -float("inf"),
                         spec.high if spec.high is not None else float("inf")).to(spec.torch_dtype)
    m.validate(x, where="generated sample")
    return x


__all__ = ["base_decoder", "decode_base", "encoder_of", "samples"]
