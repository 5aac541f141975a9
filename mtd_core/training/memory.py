"""The peak memory of one training step, estimated from the resolved run config before anything is allocated.

``trainer.batch_size = 100000`` must fail before the first batch, naming the key, not after the process has grown to
tens of GB. :func:`estimate_batch_memory` builds the model on torch's meta device (shapes only, no storage) and
adds up, for one process:

    fixed        parameters x 4 bytes x (weights, gradients, AdamW's two moments, the EMA copy when ema_decay > 0)
    per example  data: every modality's example (``data_spec`` shape x dtype size), twice (the batch and the
                 derived/transformed copy);
                 latent: the step's latent tensors (z_0, eps, z_t, the noise estimate, every aggregated encoding,
                 the known part), float32, with a gradient each;
                 activations: the bytes autograd saves for backward in one backbone pass, measured on the meta
                 device as the difference between a batch of 2 and a batch of 1 (so weights saved for backward are
                 not counted per example); halved under bf16.

The heads' own activations, temporaries freed within an operation and the allocator's slack are not counted; a
tensor saved by several operations is counted once, one returned and saved may be counted twice. It is an estimate
within a small factor, enough to refuse a batch that is far too large before anything is allocated.
:func:`check_batch_memory` compares it with the memory the device has free and raises a ConfigError naming
``trainer.batch_size``, the estimate and the memory available.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch
from torch import nn

from mtd_core.errors import ConfigError, MTDError

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry
    from mtd_core.taskset import TaskSet
    from mtd_core.training.config import RunConfig

FLOAT_BYTES = 4
OPTIMIZER_COPIES = 4
"""Per parameter: the weight, its gradient and AdamW's two moments (the EMA adds one more when on)."""
LATENT_TENSORS = 4
"""z_0, eps, z_t and the noise estimate; each aggregated encoding and the known part add one."""
GiB = 2**30


@attrs.frozen
class MemoryEstimate:
    """The estimated peak bytes of one training step of one process.

    Attributes:
        batch_size: the examples per process the estimate is for.
        parameters: the model's parameters (encoders, heads and backbone; frozen ones included).
        fixed_bytes: what does not grow with the batch (weights, gradients, optimizer state, EMA).
        data_bytes: per example: the modalities' data.
        latent_bytes: per example: the step's latent tensors and their gradients.
        activation_bytes: per example: what autograd saves for backward in one backbone pass.
    """

    batch_size: int
    parameters: int
    fixed_bytes: float
    data_bytes: float
    latent_bytes: float
    activation_bytes: float

    @property
    def per_example_bytes(self) -> float:
        """The bytes each example of the batch adds."""
        return self.data_bytes + self.latent_bytes + self.activation_bytes

    @property
    def total_bytes(self) -> float:
        """The estimated peak: fixed + batch_size x per example."""
        return self.fixed_bytes + self.batch_size * self.per_example_bytes


def _data_bytes(ts: TaskSet) -> float:
    total = 0.0
    for m in ts.modalities.values():
        spec = m.data_spec()
        total += math.prod(spec.shape) * torch.empty((), dtype=spec.torch_dtype).element_size()
    return 2.0 * total


def _latent_bytes(ts: TaskSet) -> float:
    tensors = LATENT_TENSORS + len(ts.aggregated) + (1 if ts.known_input else 0)
    return 2.0 * tensors * ts.latent.numel * FLOAT_BYTES


def _saved_bytes(backbone: nn.Module, shape: tuple[int, ...], batch: int) -> int:
    """Bytes autograd saves for backward in one pass of ``backbone`` at ``batch`` (on the meta device)."""
    seen: dict[int, torch.Tensor] = {}  # a tensor saved by several operations is held once

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen.setdefault(id(t), t)
        return t

    z = torch.empty((batch, *shape), device="meta", requires_grad=True)
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        backbone(z, t)
    return sum(x.numel() * x.element_size() for x in seen.values())


def _activation_bytes(backbone: nn.Module, shape: tuple[int, ...]) -> float:
    """Per example, measured as the slope between batches of 1 and 2; a rough fallback (64 float32 values per
    latent value) where the backbone does not run on the meta device."""
    try:
        return float(_saved_bytes(backbone, shape, 2) - _saved_bytes(backbone, shape, 1))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return 64.0 * math.prod(shape) * FLOAT_BYTES


def estimate_batch_memory(config: RunConfig, registry: Registry | None = None, *, batch_size: int | None = None,
                          world_size: int = 1, taskset: TaskSet | None = None) -> MemoryEstimate:
    """The estimated peak memory of one training step of one process for a resolved run config (see the module
    docstring for how). ``batch_size`` overrides ``trainer.batch_size``; the global batch is split over
    ``world_size`` processes; ``taskset``: the run's (fitted) task set, else built from the config (an unfitted text
    modality then leaves its encoder and head out). Loads no data and allocates no weights (meta device)."""
    from mtd_core.modality import LatentSpec
    from mtd_core.model import MultiTaskModel
    from mtd_core.taskset import TaskSet

    if registry is None:
        from mtd_core.plugins.registry import get_registry

        registry = get_registry()
    ts = taskset if taskset is not None else TaskSet.from_config(config.taskset, registry, saved=True)
    options = dict(config.backbone)
    name = str(options.pop("name", "unet"))
    C, H, W = ts.latent.shape
    shape = (2 * C if ts.known_input else C, H, W)
    with torch.device("meta"):
        try:
            backbone: nn.Module = MultiTaskModel(ts, name, options, registry=registry)
        except MTDError:  # a modality not fitted yet (a text tokenizer): the backbone alone
            backbone = registry.backbone(name)(LatentSpec(shape), **options)
        except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # sizes beyond what torch can describe
            raise ConfigError(f"the model of this config cannot be sized ({type(e).__name__}: {e}); an option of a "
                              f"modality or of the backbone is far too large") from None
    params = sum(p.numel() for p in backbone.parameters())
    copies = OPTIMIZER_COPIES + (1 if config.trainer.ema_decay > 0 else 0)
    activations = _activation_bytes(getattr(backbone, "backbone", backbone), shape)
    if config.trainer.bf16:
        activations /= 2
    batch = config.trainer.batch_size if batch_size is None else batch_size
    return MemoryEstimate(batch_size=max(1, math.ceil(batch / max(1, world_size))), parameters=params,
                          fixed_bytes=float(params * FLOAT_BYTES * copies), data_bytes=_data_bytes(ts),
                          latent_bytes=_latent_bytes(ts), activation_bytes=activations)


def available_memory(device: torch.device | str | None = None) -> tuple[int, str]:
    """(bytes free, where they were read): a CUDA device's free memory, else the machine's available memory
    (psutil when installed, else /proc/meminfo's MemAvailable)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free), f"free memory of {dev}"
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available), "available memory (psutil)"
    except ImportError:
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    raise MTDError("cannot read the available memory (no psutil, no /proc/meminfo)")


def check_batch_memory(config: RunConfig, device: torch.device | str | None = None, *,
                       registry: Registry | None = None, world_size: int = 1, available: int | None = None,
                       taskset: TaskSet | None = None) -> MemoryEstimate:
    """Raise a ConfigError naming ``trainer.batch_size``, the estimate and the memory available when one step's
    estimated peak exceeds the memory ``device`` has free (``available`` overrides the reading, for tests).
    Returns the estimate otherwise. Call it where training starts, before the model and the first batch."""
    est = estimate_batch_memory(config, registry, world_size=world_size, taskset=taskset)
    where = "the given limit"
    if available is None:
        available, where = available_memory(device)
    if est.total_bytes > available:
        fitting = math.floor((available - est.fixed_bytes) / est.per_example_bytes) if est.per_example_bytes else 0
        hint = (f"a batch of at most about {fitting} per process fits" if fitting >= 1 else
                f"even the {est.fixed_bytes / GiB:.3g} GiB of weights and optimizer state do not fit")
        raise ConfigError(
            f"trainer.batch_size = {config.trainer.batch_size} needs about {est.total_bytes / GiB:.3g} GiB per step "
            f"({est.batch_size} examples x {est.per_example_bytes / 2**20:.3g} MiB + {est.fixed_bytes / GiB:.3g} GiB "
            f"for {est.parameters:,} parameters), above the {available / GiB:.3g} GiB {where}; {hint} "
            "(lower trainer.batch_size or the model's size)")
    return est


def memory_report(estimate: MemoryEstimate) -> Mapping[str, float]:
    """The estimate as a flat dict in GiB (for logs)."""
    return {"total_gib": estimate.total_bytes / GiB, "fixed_gib": estimate.fixed_bytes / GiB,
            "per_example_mib": estimate.per_example_bytes / 2**20}


__all__ = ["MemoryEstimate", "available_memory", "check_batch_memory", "estimate_batch_memory", "memory_report"]
