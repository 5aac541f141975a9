"""The peak memory of one training step, estimated from the resolved run config before anything is allocated.

``trainer.batch_size = 100000`` must fail before the first batch, naming the key, not after the process has grown to
tens of GB. :func:`estimate_batch_memory` builds the model on torch's meta device (shapes only, no storage) and
adds up, for one process:

    fixed        parameters x 4 bytes x (weights, gradients, AdamW's two moments, one copy per EMA when ema_decay > 0)
    per example  data: every modality's example (``data_spec`` shape x dtype size), twice (the batch and the
                 derived/transformed copy);
                 latent: the step's latent tensors (z_0, eps, z_t, the noise estimate, every aggregated encoding,
                 the known part), float32, with a gradient each;
                 activations: the bytes autograd saves for backward in one backbone pass, measured on the meta
                 device as the difference between a batch of 2 and a batch of 1 (so weights saved for backward are
                 not counted per example); halved under bf16.

With gradient accumulation (``trainer.accumulate = k``) the batch counted is one micro-step's, 1/k of the process's
share: only its activations are alive at a time (the data the step draws for its whole batch is small beside them).

The heads' own activations, temporaries freed within an operation and the allocator's slack are not counted; a
tensor saved by several operations is counted once, one returned and saved may be counted twice. It is an estimate
within a small factor, enough to refuse a batch that is far too large before anything is allocated.
:func:`check_batch_memory` compares it with the memory the device has free and raises a ConfigError naming
``trainer.batch_size``, the estimate and the memory available. :func:`time_forward_backward` times a few
forward+backward passes of a small synthetic batch, for ``mtd train --dry-run``'s step-time estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch
from torch import nn

from mtd_core.errors import ConfigError, MTDError

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel
    from mtd_core.plugins.registry import Registry
    from mtd_core.taskset import TaskSet
    from mtd_core.training.config import RunConfig, TrainConfig

FLOAT_BYTES = 4
OPTIMIZER_COPIES = 4
"""Per parameter: the weight, its gradient and AdamW's two moments (each EMA adds one more: ema_copies)."""
LATENT_TENSORS = 4
"""z_0, eps, z_t and the noise estimate; each aggregated encoding and the known part add one."""
GiB = 2**30


@attrs.frozen
class MemoryEstimate:
    """The estimated peak bytes of one training step of one process.

    Attributes:
        batch_size: the examples per process the estimate is for (per micro-step with gradient accumulation).
        parameters: the model's parameters (encoders, heads and backbone; frozen ones included).
        fixed_bytes: what does not grow with the batch (weights, gradients, optimizer state, EMA).
        data_bytes: per example: the modalities' data.
        latent_bytes: per example: the step's latent tensors and their gradients.
        activation_bytes: per example: what autograd saves for backward in one backbone pass.
        accumulate: the micro-steps per optimisation step (``trainer.accumulate``); each holds ``batch_size``.
    """

    batch_size: int
    parameters: int
    fixed_bytes: float
    data_bytes: float
    latent_bytes: float
    activation_bytes: float
    accumulate: int = 1

    @property
    def per_example_bytes(self) -> float:
        """The bytes each example of the batch adds."""
        return self.data_bytes + self.latent_bytes + self.activation_bytes

    @property
    def total_bytes(self) -> float:
        """The estimated peak: fixed + batch_size x per example."""
        return self.fixed_bytes + self.batch_size * self.per_example_bytes


def backbone_inputs(config: RunConfig, registry: Registry | None, taskset: TaskSet | None
                    ) -> tuple[Registry, TaskSet, str, dict[str, object], tuple[int, int, int]]:
    """What building a run's backbone needs: the registry, the task set, the backbone's name and options, and its input
    shape (the latent, twice the channels with known input)."""
    from mtd_core.taskset import TaskSet

    if registry is None:
        from mtd_core.plugins.registry import get_registry

        registry = get_registry()
    ts = taskset if taskset is not None else TaskSet.from_config(config.taskset, registry, saved=True)
    options = dict(config.backbone)
    name = str(options.pop("name", "unet"))
    C, H, W = ts.latent.shape
    return registry, ts, name, options, (2 * C if ts.known_input else C, H, W)


def ema_copies(trainer: TrainConfig) -> int:
    """The float32 copies of the weights the EMAs keep: the default one and each of ``trainer.emas``."""
    return 1 + len(trainer.emas) if trainer.ema_decay > 0 else 0


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

    registry, ts, name, options, shape = backbone_inputs(config, registry, taskset)
    with torch.device("meta"):
        try:
            backbone: nn.Module = MultiTaskModel(ts, name, options, registry=registry)
        except MTDError:  # a modality not fitted yet (a text tokenizer): the backbone alone
            backbone = registry.backbone(name)(LatentSpec(shape), **options)
        except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # sizes beyond what torch can describe
            raise ConfigError(f"the model of this config cannot be sized ({type(e).__name__}: {e}); an option of a "
                              f"modality or of the backbone is far too large") from None
    params = sum(p.numel() for p in backbone.parameters())
    copies = OPTIMIZER_COPIES + ema_copies(config.trainer)
    activations = _activation_bytes(getattr(backbone, "backbone", backbone), shape)
    if config.trainer.bf16:
        activations /= 2
    batch = config.trainer.batch_size if batch_size is None else batch_size
    accumulate = accumulate_of(config)
    return MemoryEstimate(batch_size=max(1, math.ceil(batch / (max(1, world_size) * accumulate))),
                          parameters=params, fixed_bytes=float(params * FLOAT_BYTES * copies),
                          data_bytes=_data_bytes(ts), latent_bytes=_latent_bytes(ts), activation_bytes=activations,
                          accumulate=accumulate)


def accumulate_of(config: RunConfig) -> int:
    """``trainer.accumulate``: the micro-steps of one optimisation step, each over an equal slice of the batch (1
    where the trainer config has no such key); only one micro-batch's activations are alive at a time."""
    return max(1, int(getattr(config.trainer, "accumulate", 1)))


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
    check_estimate(est, config.trainer.batch_size, available, where)
    return est


def largest_fitting_batch(estimate: MemoryEstimate, available: float) -> int:
    """The largest batch per process whose estimate fits in ``available`` bytes (0: not even the fixed part)."""
    room = available - estimate.fixed_bytes
    if room <= 0:
        return 0
    return math.floor(room / estimate.per_example_bytes) if estimate.per_example_bytes else 2**63 - 1


def check_estimate(estimate: MemoryEstimate, batch_size: int, available: float, where: str) -> None:
    """A ConfigError naming ``trainer.batch_size`` (the global ``batch_size``), the estimate and the ``available``
    bytes (``where``: what they are, e.g. "given by --device-memory") when the estimate exceeds them."""
    est = estimate
    if est.total_bytes <= available:
        return
    fitting = largest_fitting_batch(est, available)
    micro = f" per micro-step of trainer.accumulate = {est.accumulate}" if est.accumulate > 1 else ""
    hint = (f"a batch of at most about {fitting} per process{' and micro-step' if micro else ''} fits" if fitting >= 1
            else f"even the {est.fixed_bytes / GiB:.3g} GiB of weights and optimizer state do not fit")
    raise ConfigError(
        f"trainer.batch_size = {batch_size} needs about {est.total_bytes / GiB:.3g} GiB per step "
        f"({est.batch_size} examples{micro} x {est.per_example_bytes / 2**20:.3g} MiB + "
        f"{est.fixed_bytes / GiB:.3g} GiB for {est.parameters:,} parameters), above the {available / GiB:.3g} GiB "
        f"{where}; {hint} (lower trainer.batch_size, raise trainer.accumulate, or lower the model's size)")


@attrs.frozen
class StepTiming:
    """Forward+backward passes of a small synthetic batch, timed (:func:`time_forward_backward`).

    Attributes:
        batch_size: the examples of the timed batch.
        passes: the passes timed (after one untimed warm-up pass).
        seconds: the fastest timed pass (the least disturbed by other work on the machine).
        device: where they ran ("cpu", "cuda:0", ...).
        threads: torch's CPU threads.
    """

    batch_size: int
    passes: int
    seconds: float
    device: str
    threads: int


def extrapolate_seconds(timings: Sequence[StepTiming], batch_size: int) -> float:
    """Seconds of one pass over ``batch_size`` examples: the line through the timings of the smallest and the largest
    timed batch (a fixed cost per pass plus a cost per example), or, with one batch size or a slope that timing
    noise made negative, the largest batch's time scaled in proportion."""
    lo, hi = min(timings, key=lambda t: t.batch_size), max(timings, key=lambda t: t.batch_size)
    slope = (hi.seconds - lo.seconds) / (hi.batch_size - lo.batch_size) if hi.batch_size > lo.batch_size else 0.0
    if slope <= 0:
        return hi.seconds * batch_size / hi.batch_size
    return hi.seconds + (batch_size - hi.batch_size) * slope


def time_forward_backward(model: MultiTaskModel, batch_size: int, device: torch.device | str = "cpu", *,
                          kind: str = "simple", bf16: bool = False, passes: int = 2, seed: int = 0) -> StepTiming:
    """Time ``passes`` forward+backward passes of ``model.loss`` on a batch of ``batch_size`` synthetic examples
    (every modality's ``example_batch``) on ``device``, after one untimed warm-up pass. The optimizer step, the EMA
    update, data loading and derivations are not timed. Leaves the model's gradients set and the global RNG as
    it was."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    for m in model.taskset.modalities.values():
        batch.update({k: v for k, v in m.example_batch(batch_size, gen).items() if isinstance(v, torch.Tensor)})
    model.to(dev).train()
    times: list[float] = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for i in range(passes + 1):
            _synchronize(dev)
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(batch, kind, generator=gen).loss
            loss.backward()
            _synchronize(dev)
            if i > 0:  # the first pass warms up (allocations, kernels chosen)
                times.append(time.perf_counter() - start)
    return StepTiming(batch_size=batch_size, passes=passes, seconds=min(times), device=str(dev),
                      threads=torch.get_num_threads())


def _synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def memory_report(estimate: MemoryEstimate) -> Mapping[str, float]:
    """The estimate as a flat dict in GiB (for logs)."""
    return {"total_gib": estimate.total_bytes / GiB, "fixed_gib": estimate.fixed_bytes / GiB,
            "per_example_mib": estimate.per_example_bytes / 2**20}


__all__ = ["MemoryEstimate", "StepTiming", "accumulate_of", "available_memory", "check_batch_memory",
           "check_estimate", "estimate_batch_memory", "extrapolate_seconds", "largest_fitting_batch",
           "memory_report", "time_forward_backward"]
