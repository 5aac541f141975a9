"""What a modality plugin returns, checked where it is used.

Every call the model, the losses and the samplers make into a plugin goes through these functions: the encoding
E_i(x_i), the head's prediction, the predicted encoding E[E_i | z_t] and the per-example loss -log p(x_i | z_t).
Each result is checked for what a caller relies on, its shape and dtype (never its values, so the checks cost a few
attribute reads a step). A wrong result is a :class:`ModalityDataError` naming the modality, its kind, the plugin
and distribution that provide it, what was expected and what came back, instead of a loss of shape (B, 1) that
broadcasts and trains to the end, or a torch error about "double and float" that names nothing.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import TYPE_CHECKING

import torch
from torch import nn

from mtd_core.errors import ModalityDataError
from mtd_core.types import Prediction

if TYPE_CHECKING:  # modality.py imports the diffusion package, which checks losses with this module
    from mtd_core.modality import Modality


def provenance(m: Modality) -> str:
    """``modality 'label' (kind 'label', plugin 'mtd-label' from distribution mtd 0.1.0)``: whose code ``m`` runs."""
    return f"modality {m.name!r} (kind {m.kind!r}, {_source(type(m))})"


@functools.cache
def _source(cls: type) -> str:
    """The installed plugin (an ``mtd`` entry point) whose module defines ``cls``, read from the package metadata
    (not the registry, a higher layer), or the class itself when no installed plugin defines it."""
    module = cls.__module__
    for ep in importlib.metadata.entry_points(group="mtd"):
        if module == ep.value or module.startswith(ep.value + "."):
            dist = f" from distribution {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
            return f"plugin {ep.name!r}{dist}"
    return f"class {module}.{cls.__qualname__}, not from an installed plugin"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ("," if t.ndim == 1 else "") + ")"


def _dtype(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _fail(m: Modality, what: str, problem: str) -> ModalityDataError:
    return ModalityDataError(f"{provenance(m)}: {what} {problem}")


def check_loss(m: Modality, loss: object, batch: int) -> torch.Tensor:
    """``loss`` (what ``m.loss`` returned for ``batch`` examples) if it is a floating tensor of shape (batch,)."""
    what = "Modality.loss returned"
    if not isinstance(loss, torch.Tensor):
        raise _fail(m, what, f"a {type(loss).__name__}; expected a tensor of shape ({batch},), one loss per example")
    if tuple(loss.shape) != (batch,):
        raise _fail(m, what, f"shape {_shape(loss)}; expected ({batch},), one loss per example "
                             "(reduce every dimension but the batch's)")
    if not loss.is_floating_point():
        raise _fail(m, what, f"dtype {_dtype(loss.dtype)}; expected a floating-point tensor")
    return loss


def checked_loss(m: Modality, pred: Prediction, x: torch.Tensor) -> torch.Tensor:
    """-log p_theta(x | z_t) per example, ``m.loss(pred, x)`` checked to be a floating tensor of shape (B,)."""
    return check_loss(m, m.loss(pred, x), len(x))


def check_encoding(m: Modality, e: object, batch: int | None, shape: tuple[int, ...],
                   dtypes: frozenset[torch.dtype], what: str = "its encoder returned") -> torch.Tensor:
    """``e`` if it is a tensor of shape (batch, *shape) (any batch size for None) with a dtype in ``dtypes`` (the
    model's compute dtypes)."""
    want = f"(B, {', '.join(map(str, shape))})" + (f" with B = {batch}" if batch is not None else "")
    if not isinstance(e, torch.Tensor):
        raise _fail(m, what, f"a {type(e).__name__}; expected a tensor of shape {want}")
    if tuple(e.shape[1:]) != shape or e.ndim == 0 or (batch is not None and e.shape[0] != batch):
        raise _fail(m, what, f"shape {_shape(e)}; expected {want}")
    if e.dtype not in dtypes:
        raise _fail(m, what, f"dtype {_dtype(e.dtype)}; expected {' or '.join(sorted(map(_dtype, dtypes)))}, the "
                             "model's (cast the encoder's output, or the data before it)")
    return e


def _tensors(pred: object) -> list[torch.Tensor]:
    """The tensors a prediction is made of: itself, a tuple's or dict's items, an attrs class's fields."""
    if isinstance(pred, torch.Tensor):
        return [pred]
    if isinstance(pred, (tuple, list)):
        return [t for p in pred for t in _tensors(p)]
    if isinstance(pred, dict):
        return [t for p in pred.values() for t in _tensors(p)]
    fields = getattr(type(pred), "__attrs_attrs__", ())  # an attrs class, e.g. BasePrediction
    return [t for f in fields for t in _tensors(getattr(pred, f.name))]


def checked_head(m: Modality, head: nn.Module, features: torch.Tensor) -> Prediction:
    """``head(features)``, checked to hold at least one floating tensor and one prediction per example."""
    pred = head(features)
    parts = _tensors(pred)
    B = features.shape[0]
    if not parts:
        raise _fail(m, "its head returned", f"a {type(pred).__name__} holding no tensor; expected a prediction "
                                            f"for each of the {B} examples")
    for t in parts:
        if t.ndim == 0 or t.shape[0] != B:
            raise _fail(m, "its head returned", f"a tensor of shape {_shape(t)}; expected its first dimension to "
                                                f"be the batch's, {B}")
        if not t.is_floating_point():
            raise _fail(m, "its head returned", f"a tensor of dtype {_dtype(t.dtype)}; expected floating point")
    return pred


__all__ = ["check_encoding", "check_loss", "checked_head", "checked_loss", "provenance"]
