"""The diffusers side of benchmarks/speed.py: a UNet2DModel mirroring our U-Net, its training step and DDIM sampler.

The baseline is built to be the same *kind* of network as ours (``mtd_core/backbones/unet.py``), so that the speed
comparison measures the frameworks rather than two different architectures: the same per-level width multipliers,
residual blocks per level, self-attention at the same feature-map heights and in the bottleneck, GroupNorm groups
and scale-shift (FiLM) time conditioning. Its size is then set by a search over the base width and the blocks per
level for the parameter count closest to ours (within 10%, or the benchmark refuses to run).

diffusers is the optional extra ``bench``; this module is imported only by the benchmark, never by mtd_core or
mtd_plugins.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

try:  # the optional extra "bench"
    import diffusers
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "benchmarks/speed.py compares against diffusers, which is not installed.\n"
        "Install the optional extra: pip install 'mtd[bench]' (diffusers >= 0.25)."
    ) from e

# The tolerance of the parameter match: |params_diffusers / params_ours - 1| must not exceed it.
PARAM_TOLERANCE = 0.10

DPM_SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "best": {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True, "thresholding": True,
             "sample_max_value": 1.0},
}
"""DPMSolverMultistepScheduler's settings the baseline is sampled with: its defaults (DPM-Solver++(2M)) and its
best documented settings for a bounded image in [-1, 1] (the SDE variant, Karras sigmas, dynamic thresholding at
1.0); :func:`scheduler_options` checks them against the installed version's signature."""


@attrs.frozen
class UNet2DSpec:
    """The UNet2DModel options that the benchmark varies; everything else mirrors our U-Net.

    Attributes:
        sample_size: image height and width.
        in_channels: image channels (also the output channels: the network predicts eps).
        base_channels: the width of the first level; level i has ``base_channels * channel_mult[i]``.
        channel_mult: width multiplier per level (ours, unchanged by the search).
        layers_per_block: residual blocks per level on the way down (the up path has one more, as ours).
        attention_levels: per level, whether its blocks carry self-attention (ours: the level's height is in
            ``attention_resolutions``).
        mid_attention: whether the bottleneck has self-attention.
        num_heads: attention heads (diffusers takes a head width: the bottleneck width divided by this).
        groups: GroupNorm groups.
    """

    sample_size: int
    in_channels: int
    base_channels: int
    channel_mult: tuple[int, ...]
    layers_per_block: int
    attention_levels: tuple[bool, ...]
    mid_attention: bool
    num_heads: int
    groups: int

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        """diffusers' per-level widths."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``UNet2DModel``."""
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels))
        return {
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.in_channels,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "down_block_types": down,
            "up_block_types": up,
            "add_attention": self.mid_attention,
            "attention_head_dim": max(1, self.block_out_channels[-1] // self.num_heads),
            "norm_num_groups": self.groups,
            "resnet_time_scale_shift": "scale_shift",
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-representable options (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self).items()}


def mirror_spec(ours: Any, sample_size: int, in_channels: int) -> UNet2DSpec:
    """The UNet2DModel spec with exactly our U-Net's structure (``ours`` is its :class:`UNetConfig`).

    Raises:
        ValueError: ``sample_size`` is not divisible by 2 ** (levels - 1): diffusers' UNet2DModel upsamples by a
            factor of 2 and cannot undo the rounding of an odd height (ours resizes to the skip's size).
    """
    levels = len(ours.channel_mult)
    if sample_size % (2 ** (levels - 1)):
        raise ValueError(
            f"diffusers baseline: size {sample_size} is not divisible by 2**{levels - 1} (channel_mult "
            f"{list(ours.channel_mult)} has {levels} levels); UNet2DModel cannot restore odd heights. "
            "Use fewer levels or a size such as 8, 28 or 32 with at most 3 levels."
        )
    heights = [sample_size // 2**i for i in range(levels)]
    return UNet2DSpec(
        sample_size=sample_size,
        in_channels=in_channels,
        base_channels=ours.channels,
        channel_mult=tuple(ours.channel_mult),
        layers_per_block=ours.num_res_blocks,
        attention_levels=tuple(h in ours.attention_resolutions for h in heights),
        mid_attention=bool(ours.mid_attention),
        num_heads=ours.num_heads,
        groups=ours.groups,
    )


def count_parameters(module: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _count_spec(spec: UNet2DSpec) -> int:
    """Parameters of the model ``spec`` describes, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return count_parameters(UNet2DModel(**spec.kwargs()))


@attrs.frozen
class ParamMatch:
    """The outcome of :func:`match_parameters`.

    Attributes:
        spec: the chosen UNet2DModel spec.
        params: its parameter count.
        target: the parameter count it was matched to (ours).
        ratio: params / target.
        tried: how many (base width, blocks per level) candidates were counted.
    """

    spec: UNet2DSpec
    params: int
    target: int
    ratio: float
    tried: int


def match_parameters(mirror: UNet2DSpec, target: int, widths: Sequence[int] | None = None,
                     layers: Sequence[int] | None = None) -> ParamMatch:
    """Search the base width and the blocks per level for the parameter count closest to ``target``.

    Args:
        mirror: the structure to keep (from :func:`mirror_spec`); only ``base_channels`` and ``layers_per_block``
            change.
        target: our model's parameter count.
        widths: candidate base widths (default: multiples of ``groups`` from half to twice the mirror's width).
        layers: candidate blocks per level (default: the mirror's, one fewer and one more).

    Raises:
        ValueError: no candidate is within :data:`PARAM_TOLERANCE` of ``target``.
    """
    g = mirror.groups
    if widths is None:
        lo, hi = max(g, mirror.base_channels // 2), 2 * mirror.base_channels
        widths = [w for w in range(g, hi + 1, g) if w >= lo] or [mirror.base_channels]
    if layers is None:
        layers = sorted({max(1, mirror.layers_per_block + d) for d in (-1, 0, 1)})
    best: tuple[tuple[float, float], UNet2DSpec, int] | None = None
    tried = 0
    for lpb in layers:
        for w in widths:
            spec = attrs.evolve(mirror, base_channels=int(w), layers_per_block=int(lpb))
            n = _count_spec(spec)
            tried += 1
            # The closest count wins; on a tie, the structure nearest the mirror's.
            key = (abs(n / target - 1.0), abs(lpb - mirror.layers_per_block) + abs(w - mirror.base_channels) / g)
            if best is None or key < best[0]:
                best = (key, spec, n)
    assert best is not None
    _, spec, n = best
    ratio = n / target
    if abs(ratio - 1.0) > PARAM_TOLERANCE:
        raise ValueError(
            f"diffusers baseline: no UNet2DModel within {PARAM_TOLERANCE:.0%} of our {target:,} parameters; the "
            f"closest ({spec.block_out_channels}, {spec.layers_per_block} blocks per level) has {n:,} "
            f"(ratio {ratio:.3f}). Widen the search (widths, layers)."
        )
    return ParamMatch(spec=spec, params=n, target=target, ratio=ratio, tried=tried)


def build_unet2d(spec: UNet2DSpec, device: torch.device) -> UNet2DModel:
    """The UNet2DModel of ``spec``, initialised, on ``device``, in training mode."""
    return UNet2DModel(**spec.kwargs()).to(device).train()


def scheduler_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` of the scheduler class ``cls``, after checking that the installed diffusers accepts each one.

    Raises:
        ValueError: an option the installed version's ``cls.__init__`` does not take (named, with the version).
    """
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise ValueError(f"diffusers {diffusers.__version__}: {cls.__name__} does not take {unknown}; it takes "
                         f"{sorted(k for k in accepted if k != 'self')}")
    return dict(options)


def dpm_solver(setting: str, num_train_timesteps: int = 1000, **options: Any) -> DPMSolverMultistepScheduler:
    """DPMSolverMultistepScheduler with linear betas at DPM_SETTINGS[``setting``] (then ``options``)."""
    if setting not in DPM_SETTINGS:
        raise ValueError(f"unknown DPM-Solver setting {setting!r}; expected one of {sorted(DPM_SETTINGS)}")
    chosen = scheduler_options(DPMSolverMultistepScheduler, {**DPM_SETTINGS[setting], **options})
    return DPMSolverMultistepScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", **chosen)


class DiffusersTrainStep:
    """One diffusers training step as its examples write it: eps MSE on DDPMScheduler.add_noise, AdamW (without
    weight decay by default, as mtd's trainer).

    Args:
        unet: the UNet2DModel (on its device).
        lr: AdamW's learning rate.
        num_train_timesteps: T of the DDPM schedule (linear betas, as ours).
        autocast: run the forward pass and the loss under bfloat16 autocast (backward and the step outside it).
        weight_decay: AdamW's decoupled weight decay (mtd's default 0, where torch's AdamW defaults to 0.01).
    """

    def __init__(self, unet: UNet2DModel, lr: float = 1e-4, num_train_timesteps: int = 1000,
                 autocast: bool = False, weight_decay: float = 0.0) -> None:
        self.unet = unet
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear")
        self.optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=weight_decay)
        self.T = num_train_timesteps
        self.autocast = autocast

    def __call__(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Forward, loss, backward and optimizer step on the clean batch ``x0``; returns the detached loss (not
        synchronised: the caller synchronises the device)."""
        dev = x0.device
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        t = torch.randint(0, self.T, (x0.shape[0],), generator=generator, device=dev)
        z_t = self.scheduler.add_noise(x0, eps, t)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = F.mse_loss(self.unet(z_t, t).sample.float(), eps.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def ddim_pipeline(unet: UNet2DModel, num_train_timesteps: int = 1000) -> DDIMPipeline:
    """A DDIMPipeline on ``unet`` with linear betas and no clipping of x_0 (ours does not clip either), its
    progress bar off."""
    scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", clip_sample=False)
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_ddim(pipe: DDIMPipeline, batch: int, steps: int, generator: torch.Generator | None,
                eta: float = 0.0) -> torch.Tensor:
    """``batch`` images from ``steps`` DDIM steps, returned as a tensor in [0, 1] (no PIL conversion)."""
    return pipe(batch_size=batch, generator=generator, num_inference_steps=steps, eta=eta, output_type="pt").images


__all__ = [
    "DPM_SETTINGS",
    "PARAM_TOLERANCE",
    "DiffusersTrainStep",
    "ParamMatch",
    "UNet2DSpec",
    "build_unet2d",
    "count_parameters",
    "ddim_pipeline",
    "dpm_solver",
    "match_parameters",
    "mirror_spec",
    "sample_ddim",
    "scheduler_options",
]
