"""What generate() is given: the observed modalities' data as tensors, and the base values kept in every step's
base estimate, (values, known) (``keep_observed`` and ``inpaint``; estimate.py keeps them:
z0_hat = where(known, values, z0_hat))."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.modality import Modality
from mtd_core.sampling.estimate import ObservedBase
from mtd_core.sampling.samples import base_decoder, encoder_of
from mtd_core.types import Batch

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel


def observed_data(modalities: dict[str, Modality], given: Batch, n: int | None,
                  generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], int]:
    """The given data as tensors (raw values such as caption strings go through the modality's ``derive``) and
    the batch size, checked against ``n``."""
    data = {}
    for name, x in given.items():
        if isinstance(x, torch.Tensor):
            data[name] = x
            continue
        derived = modalities[name].derive({name: x}, generator)
        if derived is None:
            raise ModalityDataError(f"modality {name!r}: given data must be a tensor, got {type(x).__name__}")
        data[name] = derived
    return data, _batch_size(data, n)


def _batch_size(data: Mapping[str, torch.Tensor], n: int | None) -> int:
    """The common batch size of ``data``, else ``n`` where nothing is given; a positive integer."""
    sizes = {name: len(x) for name, x in data.items()}
    if len(set(sizes.values())) > 1:
        raise ModalityDataError(f"generate: given modalities must have the same batch size, got {sizes}")
    if sizes:
        B = next(iter(sizes.values()))
        if n is not None and n != B:
            raise ConfigError(f"generate: n = {n} but the given data has {B} examples")
    elif n is None:
        raise ConfigError("generate: n (the number of samples) is required when nothing is given")
    else:
        B = n
    if not isinstance(B, int) or isinstance(B, bool) or B < 1:
        raise ConfigError(f"generate: n must be a positive integer, got {B!r}")
    return B


def observed_base(model: MultiTaskModel, data: Mapping[str, torch.Tensor], dev: torch.device
                  ) -> ObservedBase | None:
    """(values, known) of the base that the given modalities show as it is (``Modality.observed_base``; where
    several show a value, the later one in ``data``), checked; None where none shows any."""
    base = model.taskset.base
    if base is None:
        return None
    shape = (len(next(iter(data.values()))), *base.data_spec().shape)
    kept: ObservedBase | None = None
    for name, x in data.items():
        shown = model.taskset[name].observed_base(x, base)
        if shown is None:
            continue
        _check_pixel_base(model, base, f"modality {name!r} shows values of it to keep (keep_observed=False skips them)")
        v, k = shown
        if tuple(v.shape) != shape or k.dtype != torch.bool or not _broadcasts(k.shape, v.shape):
            raise ModalityDataError(
                f"modality {name!r} ({model.taskset[name].kind}): observed_base() must return values shaped like "
                f"the base {base.name!r}'s batch {shape} and a bool mask broadcasting to them, got values "
                f"{tuple(v.shape)} and a {k.dtype} mask {tuple(k.shape)}")
        kept = _join(kept, v.to(dev), k.to(dev))
    return kept


def inpainted(model: MultiTaskModel, inpaint: object, B: int, mode: str, dev: torch.device,
              kept: ObservedBase | None) -> ObservedBase:
    """generate's ``inpaint`` (images, mask: True where generated) checked and turned into (values, known), joined
    with what the given modalities show (``kept``; the inpainted images win where both know a value)."""
    base = model.taskset.base
    if mode == "readout" or base is None:
        raise ConfigError("generate: inpaint generates the base around known values; "
                          + ("the base is given here (read-out)" if base is not None else "this task set has no base"))
    _check_pixel_base(model, base, "inpaint keeps known values of it")
    shape = (B, *base.data_spec().shape)
    if not (isinstance(inpaint, tuple) and len(inpaint) == 2 and all(isinstance(t, torch.Tensor) for t in inpaint)):
        raise ConfigError(f"generate: inpaint must be a tuple (images, mask) of tensors, got {type(inpaint).__name__}")
    images, mask = inpaint
    if tuple(images.shape) != shape or mask.dtype != torch.bool or not _broadcasts(mask.shape, images.shape):
        raise ModalityDataError(f"generate: inpaint needs images shaped like a batch of the base {base.name!r} "
                                f"{shape} and a bool mask broadcasting to them (True where generated), got images "
                                f"{tuple(images.shape)} and a {mask.dtype} mask {tuple(mask.shape)}")
    base.validate(images, where="inpaint images")
    return _join(kept, images.to(dev), ~mask.to(dev))


def _check_pixel_base(model: MultiTaskModel, base: Modality, what: str) -> None:
    """A ConfigError when the base's z_0 is a latent (its encoder decodes, samples.py): the values kept in the base
    estimate are data, which only a base whose z_0 is its data can hold."""
    if base_decoder(encoder_of(model, base.name)) is not None:
        raise ConfigError(f"generate: {what}, but the base {base.name!r} (kind {base.kind!r}) is diffused in a latent "
                          "space (its encoder decodes z_0), where values of its data cannot be kept")


def _join(kept: ObservedBase | None, values: torch.Tensor, known: torch.Tensor) -> ObservedBase:
    """``kept`` with ``values`` known where ``known`` is True (the new values win where both know one)."""
    if kept is None:
        return values, known
    return torch.where(known, values, kept[0]), known | kept[1]


def _broadcasts(shape: torch.Size, to: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``to`` unchanged."""
    return len(shape) <= len(to) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(to), strict=False))


__all__ = ["inpainted", "observed_base", "observed_data"]
