"""Optimizer and RNG state as tensors plus JSON, so that a checkpoint never needs pickle to hold them."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch

from mtd_core.errors import CheckpointError
from mtd_core.types import ConfigDict, ConfigMapping

StateDict: TypeAlias = dict[str, Any]  # Any: torch's own type of a state_dict(): tensors and JSON values, nested
"""An optimizer's ``state_dict()``, or the RNG states of :func:`capture_rng_state`: tensors and JSON values."""


def optimizer_to_parts(state: StateDict) -> tuple[dict[str, torch.Tensor], ConfigDict]:
    """Split an optimizer ``state_dict()`` into tensors (for safetensors) and a JSON-representable rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, ConfigDict] = {}
    for pid, st in state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def optimizer_from_parts(tensors: Mapping[str, torch.Tensor], meta: ConfigMapping, where: Path | None = None) -> StateDict:
    """Inverse of :func:`optimizer_to_parts`; a tensor name that is not ``state.<param index>.<name>`` is a
    CheckpointError naming ``where`` (the optimizer.safetensors it came from)."""
    state: dict[int, dict[str, object]] = {}
    for key, v in tensors.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or not parts[2]:
            raise CheckpointError(f"{where or 'optimizer state'}: tensor {key!r} is not named state.<parameter "
                                  "index>.<name>")
        state.setdefault(int(parts[1]), {})[parts[2]] = v
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng_state() -> StateDict:
    """The global RNG states: torch CPU (and every CUDA device, if initialised), python ``random``, numpy."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_json = {**np_state, "state": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                      for k, v in np_state["state"].items()}}
    return {"tensors": tensors, "python": [version, list(internal), gauss], "numpy": np_json}


def restore_rng_state(rng: StateDict, where: Path | None = None) -> None:
    """Restore what :func:`capture_rng_state` returned (CUDA states only for devices that exist); a state the
    generators refuse is a CheckpointError naming ``where`` (the checkpoint) and the generator."""
    tensors = rng.get("tensors", {})
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("torch_cuda_")),
                                       key=lambda k: int(k.rsplit("_", 1)[1]))]
    name = "rng.safetensors 'torch_cpu'"
    try:
        if "torch_cpu" in tensors:
            torch.set_rng_state(tensors["torch_cpu"])
        name = "rng.safetensors 'torch_cuda_<i>'"
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
        name = "state.json 'rng.python'"
        if rng.get("python") is not None:
            version, internal, gauss = rng["python"]
            random.setstate((version, tuple(internal), gauss))
        name = "state.json 'rng.numpy'"
        if rng.get("numpy") is not None:
            s = dict(rng["numpy"])
            s["state"] = {k: (np.asarray(v, dtype=np.uint32) if k == "key" else v) for k, v in s["state"].items()}
            np.random.set_state(s)
    except (TypeError, ValueError, KeyError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"{where or 'RNG state'}: {name} is not a generator state this version accepts "
                              f"({type(e).__name__}: {e})") from None
