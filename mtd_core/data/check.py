"""Checks of loaded data that name the file and the first bad example's row in it (before any training step runs).

``where(i)`` gives the location of example ``i`` ("data.npz, row 199", "labels.csv, line 12 (shirt.png)"); without
it the message says "example i"."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from mtd_core.errors import ModalityDataError

from mtd_core.modality import Modality

if TYPE_CHECKING:
    from mtd_core.taskset import TaskSet


def _first(mask: torch.Tensor) -> int:
    """Index of the first example for which ``mask`` (B, ...) is true anywhere."""
    return int(torch.nonzero(mask.reshape(mask.shape[0], -1).any(1))[0])


Where = Callable[[int], str]


def _at(source: str, where: Where | None, i: int) -> str:
    return where(i) if where is not None else f"{source}, example {i}"


def check_images(x: torch.Tensor, source: str, field: str = "image", where: Where | None = None) -> None:
    """Raise unless ``x`` is a finite float32 (N, C, H, W) tensor with values in [-1, 1]."""
    who = f"{source}: field {field!r}"
    if x.ndim != 4:
        raise ModalityDataError(f"{who}: expected images of shape (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ModalityDataError(f"{who}: expected float images, got dtype {x.dtype}")
    bad = ~torch.isfinite(x)
    if bad.any():
        raise ModalityDataError(f"{_at(source, where, _first(bad))}: field {field!r} contains NaN or infinity")
    out = (x < -1.0) | (x > 1.0)
    if out.any():
        i = _first(out)
        raise ModalityDataError(
            f"{_at(source, where, i)}: field {field!r} has values in [{float(x[i].min()):.4g}, "
            f"{float(x[i].max()):.4g}]; images must lie in [-1, 1] (uint8 arrays are scaled from [0, 255] "
            "automatically)"
        )


def check_labels(y: torch.Tensor, source: str, field: str = "label", num_classes: int | None = None,
                 where: Where | None = None) -> None:
    """Raise unless ``y`` is a 1-D integer tensor with values in [0, num_classes - 1] (or >= 0)."""
    who = f"{source}: field {field!r}"
    if y.ndim != 1:
        raise ModalityDataError(f"{who}: expected one class index per example (shape (N,)), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ModalityDataError(f"{who}: expected integer class indices, got dtype {y.dtype}")
    neg = y < 0
    if neg.any():
        i = int(torch.nonzero(neg)[0])
        raise ModalityDataError(f"{_at(source, where, i)}: field {field!r} has label {int(y[i])}; labels must be >= 0")
    if num_classes is not None and (y >= num_classes).any():
        i = int(torch.nonzero(y >= num_classes)[0])
        raise ModalityDataError(f"{_at(source, where, i)}: field {field!r} has label {int(y[i])}, out of range for "
                                f"{num_classes} classes (expected 0..{num_classes - 1})")


def check_against_taskset(taskset: TaskSet, fields: Mapping[str, object], source: str, where: Where | None = None
                          ) -> None:
    """Check every field named like a task-set modality against that modality's DataSpec.

    Unlike ``Modality.validate`` on a batch, the message names ``source`` and the row of the first bad example in
    it (``where``). Fields the task set does not use and non-tensor fields (raw captions) are skipped.
    """
    for name, m in taskset.modalities.items():
        x = fields.get(name)
        if not isinstance(x, torch.Tensor):
            if x is not None and type(m).derive is Modality.derive:
                _not_derivable(m, x, source)
            continue
        spec = m.data_spec()
        who = f"{source}: modality {name!r} (kind {m.kind!r})"
        if tuple(x.shape[1:]) != tuple(spec.shape):
            raise ModalityDataError(
                f"{who}: expected examples of shape {tuple(spec.shape)}, the dataset has {tuple(x.shape[1:])}.\n"
                "Change the modality's options (channels, size, ...) to match the data, or the data to match them."
            )
        if x.dtype != spec.torch_dtype:
            raise ModalityDataError(f"{who}: expected dtype {spec.dtype}, the dataset has {str(x.dtype).replace('torch.', '')}")
        if x.is_floating_point():
            bad = ~torch.isfinite(x)
            if bad.any():
                raise ModalityDataError(f"{_at(source, where, _first(bad))}: modality {name!r} (kind {m.kind!r}) "
                                        "contains NaN or infinity")
        low = torch.zeros_like(x, dtype=torch.bool) if spec.low is None else x < spec.low
        high = torch.zeros_like(x, dtype=torch.bool) if spec.high is None else x > spec.high
        out = low | high
        if out.any():
            i = _first(out)
            value = x[i].flatten()[out[i].flatten()][0]
            shown = f"{float(value):.6g}" if x.is_floating_point() else str(int(value))
            raise ModalityDataError(f"{_at(source, where, i)}: modality {name!r} (kind {m.kind!r}) has value "
                                    f"{shown}, outside the allowed range [{spec.low}, {spec.high}]")


def raw_dtype(values: object) -> str:
    """How a field that is not a tensor reads in a message: numpy's dtype of its values (``<U3`` for strings of
    up to 3 characters, as an npz string array has) and an example, else its Python type."""
    import numpy as np

    if isinstance(values, (list, tuple)) and values:
        try:
            dtype = np.asarray(values).dtype.str
        except (ValueError, TypeError):
            dtype = f"a {type(values).__name__} of {type(values[0]).__name__}"
        return f"dtype {dtype}, e.g. {values[0]!r}"
    return f"type {type(values).__name__}"


def _not_derivable(m: Modality, values: object, source: str) -> None:
    """Raise for a field that holds raw values (e.g. strings) a modality that derives nothing cannot take."""
    spec = m.data_spec()
    shape = f"of shape {tuple(spec.shape)} per example" if spec.shape else "one per example"
    bounds = "" if spec.low is None and spec.high is None else f", in [{spec.low}, {spec.high}]"
    text = isinstance(values, (list, tuple)) and all(isinstance(v, str) for v in values)
    raise ModalityDataError(
        f"{source}: field {m.name!r} holds {'text' if text else 'values that are not a tensor'} "
        f"({raw_dtype(values)}), but modality {m.name!r} (kind {m.kind!r}) "
        f"expects {spec.dtype} numbers, {shape}{bounds}.\nStore them as numbers (an npz string array "
        "is read as captions, for a text modality)."
    )
