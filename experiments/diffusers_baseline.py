"""The diffusers baseline: UNet2DModel + DDPMScheduler trained on the same data, steps, batch size, learning-rate
schedule, gradient clipping and EMA as mtd's single-task run, with a parameter count within 10% of ours (the
structure mirrors our U-Net; benchmarks/_diffusers_baseline.py searches the width and blocks per level).

Sampling uses diffusers' DPMSolverMultistepScheduler at its defaults (DPM-Solver++(2M)) with the preset's NFE; the
weights are saved (``unet_ema.safetensors`` in the run folder) so that experiments.sampler_study can sample them with
other schedulers and NFE. The ELBO is the same bound as ours (fixed variance beta_t; diffusers' timestep index k is
our t = k + 1). diffusers is the optional extra
``bench``; without it this experiment stops with the install command.

    python -m experiments.diffusers_baseline --preset cpu --seed 0
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from experiments import common
from experiments.presets import Preset
from mtd_core.errors import ConfigError

NAME = "diffusers_baseline"
SAMPLER = "diffusers_dpmpp"


def metric_keys(preset: Preset) -> list[str]:
    """Every metric this experiment reports."""
    return ["fid", "kid_mean", "kid_std", "precision", "recall", "n_generated", "elbo_bpd", "elbo_bpd_se", "elbo_n",
            "feature_net_test_accuracy", "params_ours", "params_diffusers", "param_ratio", "noise_like"]


def _baseline_module() -> Any:
    """benchmarks/_diffusers_baseline.py (imported lazily: it needs diffusers)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        from benchmarks import _diffusers_baseline
    except ImportError as e:
        raise ConfigError(f"experiment {NAME!r} needs diffusers (the optional extra 'bench'): "
                          f"pip install 'mtd[bench]'. ({e})") from None
    return _diffusers_baseline


class DiffusersDenoiser(torch.nn.Module):
    """A UNet2DModel seen through mtd's Denoiser interface, so mtd's ELBO can evaluate it.

    Args:
        unet: the trained UNet2DModel (predicts eps at diffusers' timestep index t - 1).
        taskset: the single-image task set (its forward process and image modality).
    """

    def __init__(self, unet: torch.nn.Module, taskset: Any) -> None:
        super().__init__()
        self.unet, self.taskset = unet, taskset

    @property
    def device(self) -> torch.device:
        """Where the UNet's weights are."""
        return next(self.unet.parameters()).device

    def to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch's tensors on the UNet's device."""
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def encode(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z_0 = the image (the base's identity encoder); no aggregated modalities."""
        return batch["image"], {}

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> Any:
        """eps_theta(z_t, t) for our t in 1..T."""
        from mtd_core.types import DenoiserOutput

        return DenoiserOutput(eps=self.unet(z_t, t - 1).sample, preds={})

    def predicted_encodings(self, preds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """No aggregated modalities."""
        return {}


def train_unet(unet: torch.nn.Module, images: torch.Tensor, preset: Preset, seed: int) -> float:
    """eps-MSE training on DDPMScheduler.add_noise with AdamW, our warm-up + cosine schedule, clipping at 1 and an
    EMA of the same decay (copied into ``unet`` at the end). Returns the wall time."""
    from diffusers import DDPMScheduler

    from mtd_core.training import EMA
    from mtd_core.training.config import TrainConfig

    cfg = TrainConfig(steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr,
                      warmup_steps=preset.warmup_steps, lr_schedule="cosine", final_lr_fraction=0.1)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    ema = EMA(unet, preset.ema_decay)
    g = torch.Generator().manual_seed(seed)
    dev = next(unet.parameters()).device
    n = len(images)
    order, pos = torch.randperm(n, generator=g), 0
    start = time.perf_counter()
    unet.train()
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        x0 = images[order[pos:pos + cfg.batch_size]].to(dev)
        pos += cfg.batch_size
        eps = torch.randn(x0.shape, generator=g).to(dev)
        t = torch.randint(0, 1000, (len(x0),), generator=g).to(dev)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, eps, t), t).sample.float(), eps)
        common.optimizer_step(unet, opt, ema, cfg, step, loss)
    ema.copy_to(unet)
    unet.eval()
    return time.perf_counter() - start


@torch.no_grad()
def diffusers_samples(unet: Any, sampler: str, nfe: int, n: int, seed: int, preset: Preset,
                       options: Mapping[str, Any]) -> torch.Tensor:
    """``n`` images from diffusers' own scheduler loop (linear betas, T = 1000; ``options`` change its defaults),
    ``nfe`` network evaluations, in [-1, 1]. ``sampler``: "diffusers_ddim" (DDIMScheduler) or "diffusers_dpmpp"
    (DPMSolverMultistepScheduler: DPM-Solver++(2M))."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cls = {"diffusers_ddim": DDIMScheduler, "diffusers_dpmpp": DPMSolverMultistepScheduler}.get(sampler)
    if cls is None:
        raise ConfigError(f"unknown diffusers sampler {sampler!r}; expected diffusers_ddim or diffusers_dpmpp")
    scheduler = cls(num_train_timesteps=1000, beta_schedule="linear", **options)
    dev = next(unet.parameters()).device
    g = torch.Generator(dev).manual_seed(seed)
    out = []
    for start in range(0, n, preset.eval_batch):
        b = min(preset.eval_batch, n - start)
        x = torch.randn((b, 1, preset.image_size, preset.image_size), generator=g, device=dev)
        scheduler.set_timesteps(nfe)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


def run(preset: Preset, seed: int, out_dir: Path, run_dir: Path) -> common.Outcome:
    """Build the parameter-matched UNet2DModel, train it, sample with DDIM and evaluate (module docstring)."""
    from mtd_core.data.build import load_dataset
    from mtd_core.model import MultiTaskModel
    from mtd_core.plugins.registry import get_registry
    from mtd_core.taskset import TaskSet

    bl = _baseline_module()
    registry = get_registry()
    data = load_dataset(dict(preset.dataset), registry)
    taskset = TaskSet.from_config({"modalities": [common.image_modality(preset)],
                                   "diffusion": {"kind": "linear", "T": 1000}}, registry)
    ours = MultiTaskModel(taskset, "unet", dict(preset.backbone), registry)
    params_ours = common.count_parameters(ours)
    match = bl.match_parameters(bl.mirror_spec(ours.backbone.config, preset.image_size, 1), params_ours)
    print(f"  ours {params_ours:,} parameters; UNet2DModel {match.params:,} (ratio {match.ratio:.3f}), "
          f"{match.spec.to_dict()}")
    torch.manual_seed(seed)
    dev = common.device_of(preset)
    unet = bl.build_unet2d(match.spec, dev)
    train_images = common.split_tensors(data, "train", fields=("image",))["image"]
    key = {"preset": preset.to_dict(), "seed": seed, "unet2d": match.spec.to_dict()}
    wall = common.trained_module(unet, run_dir / "unet_ema.safetensors", key,
                                 lambda: train_unet(unet, train_images, preset, seed))
    unet.eval()
    ev = common.make_evaluator(data, preset)
    print(f"  feature net: {ev.feature_net}")
    images = diffusers_samples(unet, SAMPLER, preset.nfe, preset.n_samples, seed, preset, {})
    metrics = common.distribution_metrics(ev, images)
    metrics.update(common.elbo_bits_per_dim(DiffusersDenoiser(unet, taskset), data, preset, seed))
    metrics.update({"params_ours": float(params_ours), "params_diffusers": float(match.params),
                    "param_ratio": float(match.ratio)})
    grids = [common.save_grid(out_dir / f"seed{seed}_samples.png", taskset, {"image": images},
                              title=f"diffusers, seed {seed}")]
    import diffusers

    protocol = {"dataset": preset.dataset["name"], "steps": preset.steps, "batch_size": preset.batch_size,
                "lr": preset.lr, "unet2d": match.spec.to_dict(), "parameters": match.params,
                "sampler": "diffusers DPMSolverMultistepScheduler (its defaults: DPM-Solver++(2M))", "nfe": preset.nfe,
                "n_samples": preset.n_samples, "train_wall_s": wall, "weights": "EMA",
                "diffusers": diffusers.__version__, **ev.protocol()}
    return common.Outcome(metrics=metrics, protocol=protocol, grids=grids)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.diffusers_baseline``."""
    return common.main(NAME, __doc__ or NAME, run, metric_keys, argv)


if __name__ == "__main__":
    sys.exit(main())
