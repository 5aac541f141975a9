"""The floating-point work of one training step, counted from the config before anything is allocated: for
``mtd train --dry-run`` on a device this machine does not have, and for the GPU check's share of the matmul peak.

The backbone's forward pass is run once on torch's meta device (shapes only) under torch's FLOP counter
(``torch.utils.flop_counter``: matrix products, convolutions and attention; element-wise work is not counted), and
forward + backward is taken as 3x the forward (the backward computes a gradient for the input and one for the
weights of every product). The modalities' encoders and heads, the optimizer step and the EMA update are small
beside the backbone and left out, so a measured rate computed from this count slightly understates the real one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import torch
from torch import nn

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry
    from mtd_core.taskset import TaskSet
    from mtd_core.training.config import RunConfig

BACKWARD_FACTOR = 3.0
"""Forward + backward FLOPs over forward FLOPs."""
REFERENCE_DEVICE = "an H100 SXM"
REFERENCE_PEAK_TFLOPS = {True: 989.0, False: 67.0}
"""Its dense peak, TFLOP/s: bf16 tensor cores (trainer.bf16 = true) and float32 without tensor cores (false)."""
REFERENCE_UTILISATION = 0.4
"""The share of the peak assumed sustained by a training step when the device is not here (issue 44's target)."""


def backbone_forward_flops(backbone: nn.Module, input_shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass of ``backbone`` on one zero example of ``input_shape``, run on the device of its
    parameters (built on the meta device, nothing is computed: shapes only)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(backbone.parameters()).device
    z = torch.zeros((1, *input_shape), device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone(z, t)
    return float(counter.get_total_flops())


def step_flops_per_example(config: RunConfig, registry: Registry | None = None,
                           taskset: TaskSet | None = None) -> float:
    """Forward + backward FLOPs of the backbone per training example of a resolved run config (meta device)."""
    from mtd_core.modality import LatentSpec
    from mtd_core.training.memory import backbone_inputs

    registry, _, name, options, shape = backbone_inputs(config, registry, taskset)
    with torch.device("meta"):
        backbone: nn.Module = registry.backbone(name)(LatentSpec(shape), **options)
    return BACKWARD_FACTOR * backbone_forward_flops(backbone, shape)


@attrs.frozen
class FlopEstimate:
    """A step time estimated from counted FLOPs and an assumed sustained rate.

    Attributes:
        per_example: forward + backward FLOPs of the backbone per example.
        batch_size: examples per step (the global batch, over all micro-steps).
        tflops: the sustained TFLOP/s assumed.
        assumed: where that rate comes from (words).
    """

    per_example: float
    batch_size: int
    tflops: float
    assumed: str

    @property
    def step_flops(self) -> float:
        return self.per_example * self.batch_size

    @property
    def seconds(self) -> float:
        return self.step_flops / (self.tflops * 1e12)

    def sentence(self) -> str:
        """``about 1.2 PFLOP per step ...: about 3 s per step at ...``."""
        return (f"about {self.step_flops / 1e15:.3g} PFLOP per step of {self.batch_size} ({self.per_example / 1e9:.3g} "
                "GFLOP per example, the backbone's forward + backward counted on torch's meta device): about "
                f"{self.seconds:.3g} s per step at {self.tflops:g} TFLOP/s sustained ({self.assumed})")


def estimate_step_time(per_example: float, batch_size: int, bf16: bool, tflops: float | None = None) -> FlopEstimate:
    """The step time at ``tflops`` (the device's sustained rate, e.g. from ``--device-tflops``), or at
    :data:`REFERENCE_UTILISATION` of the reference device's peak when not given."""
    if tflops is not None:
        return FlopEstimate(per_example, batch_size, tflops, "given by --device-tflops")
    peak = REFERENCE_PEAK_TFLOPS[bf16]
    words = (f"{REFERENCE_UTILISATION:.0%} of {REFERENCE_DEVICE}'s {peak:g} TFLOP/s dense "
             f"{'bf16' if bf16 else 'float32'} peak; give the device's own rate with --device-tflops")
    return FlopEstimate(per_example, batch_size, REFERENCE_UTILISATION * peak, words)


__all__ = ["FlopEstimate", "backbone_forward_flops", "estimate_step_time", "step_flops_per_example"]
