"""How a modality's values are shown, read from the command line and scored, by default.

These are the defaults behind :meth:`Modality.describe`, :meth:`Modality.parse` and :meth:`Modality.readout_scores`
(docs/plugins.md, "Showing, parsing and scoring values"). They read only the modality's :class:`DataSpec` and its
``class_names()``, so a plugin's values appear in sample grids, in ``mtd sample --given`` and in ``mtd eval``
without any code of its own; a modality overrides a method when its values need more (a caption is detokenized).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtd_core.errors import ModalityDataError, closest

if TYPE_CHECKING:
    from mtd_core.modality import Modality

MAX_DESCRIBED = 16
"""Examples with more values than this (an image, a representation) are not described as text."""


def describe(m: Modality, value: torch.Tensor, class_names: Sequence[str] | None = None) -> str | None:
    """One example as a short text, or None when it is better drawn than written.

    A class index by its name (``class_names``, else the modality's own) or number; any other example of at most
    :data:`MAX_DESCRIBED` values as numbers ("0 1 1 0", "0.25 -1.3"); anything larger None.
    """
    if value.numel() > MAX_DESCRIBED:
        return None
    names = list(class_names) if class_names else m.class_names()
    if value.ndim == 0 and not value.is_floating_point():
        k = int(value)
        return names[k] if names and 0 <= k < len(names) else str(k)
    if value.is_floating_point():
        return " ".join(f"{v:.3g}" for v in value.flatten().tolist())
    return " ".join(str(v) for v in value.flatten().tolist())


def parse(m: Modality, text: str, class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Examples from a command-line string, as a batch (one row per example).

    - a ``.npy`` file: one example or a batch (never unpickled);
    - an image file, for (C, H, W) float data: converted to C channels, scaled to [-1, 1], the size checked;
    - class indices or names separated by commas, for scalar integer data: one row each (``0,3,shoe``);
    - numbers separated by commas, for scalar float data: one row each (``0.2,-0.5``);
    - numbers separated by commas or spaces, for 1-D data: one example (``0,1,1,0``).

    Raises:
        ModalityDataError: naming the modality, what was given and what it accepts.
    """
    from mtd_core.imageio import read_image, read_npy  # Pillow only when a file is read, not on every import

    spec = m.data_spec()
    who = f"modality {m.name!r} (kind {m.kind!r})"
    if text.endswith(".npy"):
        x = read_npy(text)
        x = x if x.ndim == len(spec.shape) + 1 else x[None]
        if x.is_floating_point() != spec.torch_dtype.is_floating_point:
            raise ModalityDataError(f"{text}: {who} takes {spec.dtype} data, the file holds {x.dtype}")
        return x.to(spec.torch_dtype)
    if len(spec.shape) == 3 and spec.torch_dtype.is_floating_point:
        c, h, w = spec.shape
        a = read_image(Path(text), c)
        if a.shape[1:] != (h, w):
            raise ModalityDataError(f"{text}: the image is {a.shape[2]}x{a.shape[1]}, {who} needs {w}x{h}")
        return torch.from_numpy(a.copy()).float().div(127.5).sub(1.0)[None]
    if spec.shape == () and not spec.torch_dtype.is_floating_point:
        return torch.tensor([_class_index(m, v.strip(), class_names) for v in text.split(",")])
    if spec.shape == ():
        try:
            return torch.tensor([float(v) for v in text.split(",")], dtype=spec.torch_dtype)
        except ValueError:
            raise ModalityDataError(f"{text!r}: {who} takes numbers separated by commas (one row each)") from None
    if len(spec.shape) == 1:
        parts = text.replace(",", " ").split()
        try:
            values = [float(v) if spec.torch_dtype.is_floating_point else int(v) for v in parts]
        except ValueError:
            raise ModalityDataError(f"{text!r}: {who} takes {spec.shape[0]} {spec.dtype} numbers separated by commas "
                                    "or spaces") from None
        if len(values) != spec.shape[0]:
            raise ModalityDataError(f"{text!r}: {who} takes {spec.shape[0]} values, got {len(values)}")
        return torch.tensor([values], dtype=spec.torch_dtype)
    raise ModalityDataError(f"{text!r}: give {who} as a .npy file of shape {spec.shape} or (B, {spec.shape})")


def _class_index(m: Modality, v: str, class_names: Sequence[str] | None) -> int:
    """A class given by index or (case-insensitive) name."""
    spec = m.data_spec()
    k = int(spec.high) + 1 if spec.high is not None else None
    names = list(class_names) if class_names else (m.class_names() or [])
    lower = [s.lower() for s in names]
    if v.lstrip("-").isdigit():
        if (spec.low is not None and int(v) < spec.low) or (k is not None and int(v) >= k):
            listing = f": {names}" if names else ""
            raise ModalityDataError(f"{v}: class index out of range; modality {m.name!r} has classes "
                                    f"{int(spec.low or 0)}..{(k or 1) - 1}{listing}")
        return int(v)
    if v.lower() in lower:
        return lower.index(v.lower())
    raise ModalityDataError(f"{v}: not a class index or name of modality {m.name!r}{closest(v.lower(), lower)}"
                            + (f"; classes: {names}" if names else ""))


def readout_scores(m: Modality, predicted: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example scores of a read-out (``predicted`` from the head, given the base) against the true ``x``.

    Integer data: "accuracy" (the whole example right) and, for examples of several values, "element_accuracy";
    float data: "mse" (mean squared error per example).
    """
    predicted = torch.as_tensor(predicted).to(x.device)
    if not x.is_floating_point():
        equal = (predicted == x).reshape(len(x), -1).float()
        scores = {"accuracy": equal.all(1).float()}
        if equal.shape[1] > 1:
            scores["element_accuracy"] = equal.mean(1)
        return scores
    return {"mse": (predicted.float() - x.float()).pow(2).reshape(len(x), -1).mean(1)}
