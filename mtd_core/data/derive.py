"""Filling in the task set's modalities that a dataset does not hold (masks, captions, representations)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from mtd_core.data.check import raw_dtype
from mtd_core.errors import ModalityDataError
from mtd_core.types import Batch, BatchValue

if TYPE_CHECKING:
    from mtd_core.taskset import TaskSet


def derive_batch(taskset: TaskSet, batch: Mapping[str, BatchValue], generator: torch.Generator | None = None) -> Batch:
    """``batch`` with every modality of ``taskset`` present as a tensor.

    A modality missing from the batch, or present as raw non-tensor data (e.g. a list of caption strings), is
    produced by its ``Modality.derive(batch, generator)``, in task-set order (so a later modality may derive from
    an earlier derived one). Fields the task set does not use are kept (a derivation may read them).
    """
    out = dict(batch)
    for name, m in taskset.modalities.items():
        if isinstance(out.get(name), torch.Tensor):
            continue
        value = m.derive(out, generator)
        if value is None and name in out:
            shape = tuple(m.data_spec().shape)
            raise ModalityDataError(
                f"field {name!r} holds values that are not a tensor ({raw_dtype(out[name])}), but modality {name!r} "
                f"(kind {m.kind!r}) expects {m.data_spec().dtype} numbers, "
                f"{f'of shape {shape} per example' if shape else 'one per example'}, and cannot derive them from "
                "these; store them as numbers"
            )
        if value is None:
            raise ModalityDataError(
                f"modality {name!r} (kind {m.kind!r}) is not in the data (fields: {sorted(out)}) and cannot be "
                "derived from it.\nMap a dataset field to it with the dataset option `keys = {field = "
                f"\"{name}\"}}`, or add a transform that produces it (e.g. transforms = [{{kind = \"edges\", "
                f"into = \"{name}\"}}])."
            )
        out[name] = value
    return out


def model_inputs(taskset: TaskSet, batch: Mapping[str, BatchValue]) -> dict[str, torch.Tensor]:
    """Only the task set's modalities of a derived batch (what the model encodes)."""
    return {name: batch[name] for name in taskset.modalities}
