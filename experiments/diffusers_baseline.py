"""The diffusers baseline: UNet2DModel + DDPMScheduler trained on the same data with the same training config as
mtd's single-task run (steps, batch size, AdamW's learning rate, betas and weight decay 0, warm-up and cosine
schedule, gradient clipping, EMA, seed: the single-task run's TrainConfig itself), with a parameter count within 10%
of ours (the structure mirrors our U-Net; benchmarks/_diffusers_baseline.py searches the width and blocks per level).

Sampling uses diffusers' DPMSolverMultistepScheduler twice: at its defaults (DPM-Solver++(2M), "default") and at
its best settings for a bounded image ("best": SDE-DPM-Solver++, Karras sigmas, dynamic thresholding at 1.0;
benchmarks/_diffusers_baseline.py's DPM_SETTINGS), each at the preset's NFE and at 10 NFE; the result's metrics hold
every one under ``<metric>_<setting>_nfe<N>`` and the default at the preset's NFE under the plain names. The weights
are saved (``unet_ema.safetensors`` in the run folder) so that experiments.sampler_study can sample them with other
schedulers and NFE. The ELBO is the same bound as ours (fixed variance beta_t; diffusers' timestep index k is our
t = k + 1). diffusers is the optional extra ``bench``; without it this experiment stops with the install command.

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
SETTINGS = ("default", "best")
"""DPMSolverMultistepScheduler's settings (benchmarks/_diffusers_baseline.py's DPM_SETTINGS)."""
SAMPLERS = {"default": "diffusers_dpmpp", "best": "diffusers_best"}
"""The sampler names of the settings (experiments.sampler_study's ``sampler=``)."""
LOW_NFE = 10


def nfes(preset: Preset) -> list[int]:
    """The NFE every setting is sampled at: the preset's and LOW_NFE."""
    return sorted({preset.nfe, LOW_NFE})


def metric_keys(preset: Preset) -> list[str]:
    """Every metric this experiment reports."""
    per_setting = [f"{k}_{s}_nfe{n}" for s in SETTINGS for n in nfes(preset) for k in common.DRAWN_KEYS]
    return [*common.DISTRIBUTION_KEYS, "elbo_bpd", "elbo_bpd_se", "elbo_n", "params_ours", "params_diffusers",
            "param_ratio", *per_setting]


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


def train_config(preset: Preset, seed: int) -> Any:
    """The training config: mtd's single-task run's TrainConfig (common.run_config), every field of it."""
    return common.run_config(preset, [common.image_modality(preset)], seed, design=False).trainer


def train_unet(unet: torch.nn.Module, images: torch.Tensor, cfg: Any) -> float:
    """eps-MSE training on DDPMScheduler.add_noise with the TrainConfig ``cfg`` as mtd's Trainer reads it: AdamW
    (lr, betas, weight decay), warm-up + cosine schedule, clipping at ``grad_clip`` and an EMA of the same decay and
    warm-up (copied into ``unet`` at the end), data order and noise from ``cfg.seed``. Returns the wall time."""
    from diffusers import DDPMScheduler

    from mtd_core.training import EMA

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = EMA(unet, cfg.ema_decay, cfg.ema_warmup)
    g = torch.Generator().manual_seed(cfg.seed)
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


def make_scheduler(sampler: str, options: Mapping[str, Any]) -> Any:
    """diffusers' scheduler of ``sampler`` (linear betas, T = 1000), ``options`` changing its settings, each checked
    against the installed version's signature."""
    from diffusers import DDIMScheduler

    bl = _baseline_module()
    if sampler == "diffusers_ddim":
        return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                             **bl.scheduler_options(DDIMScheduler, dict(options)))
    setting = {v: k for k, v in SAMPLERS.items()}.get(sampler)
    if setting is None:
        raise ConfigError(f"unknown diffusers sampler {sampler!r}; expected diffusers_ddim or one of "
                          f"{sorted(SAMPLERS.values())}")
    try:
        return bl.dpm_solver(setting, **options)
    except ValueError as e:
        raise ConfigError(str(e)) from None


@torch.no_grad()
def diffusers_samples(unet: Any, sampler: str, nfe: int, n: int, seed: int, preset: Preset,
                      options: Mapping[str, Any]) -> torch.Tensor:
    """``n`` images from diffusers' own scheduler loop, ``nfe`` network evaluations each (counted, under
    ``<sampler>_nfe<N>``), in [-1, 1]. ``sampler``: "diffusers_ddim" (DDIMScheduler), "diffusers_dpmpp"
    (DPMSolverMultistepScheduler at its defaults: DPM-Solver++(2M)) or "diffusers_best" (at its best settings);
    ``options`` change the scheduler's settings."""
    scheduler = make_scheduler(sampler, options)
    dev = next(unet.parameters()).device
    g = torch.Generator(dev).manual_seed(seed)
    out, calls = [], 0
    for start in range(0, n, preset.eval_batch):
        b = min(preset.eval_batch, n - start)
        x = torch.randn((b, 1, preset.image_size, preset.image_size), generator=g, device=dev)
        scheduler.set_timesteps(nfe)
        calls = 0
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=g).prev_sample
            calls += 1
        out.append(x.clamp(-1, 1).cpu())
    common.record_nfe(f"{sampler}_nfe{nfe}", calls)
    return torch.cat(out)


def build(preset: Preset) -> tuple[Any, Any, Any, int]:
    """The single-image task set, the parameter-matched UNet2DModel spec's match, the module of
    benchmarks/_diffusers_baseline.py and our parameter count."""
    from mtd_core.model import MultiTaskModel
    from mtd_core.taskset import TaskSet

    bl = _baseline_module()
    taskset = TaskSet.from_config({"modalities": [common.image_modality(preset)],
                                   "diffusion": {"kind": "linear", "T": 1000}})
    ours = MultiTaskModel(taskset, "unet", dict(preset.backbone))
    params_ours = common.count_parameters(ours)
    match = bl.match_parameters(bl.mirror_spec(ours.backbone.config, preset.image_size, 1), params_ours)
    return taskset, match, bl, params_ours


def training_key(preset: Preset, seed: int, spec: Mapping[str, Any], cfg: Any) -> dict[str, Any]:
    """What decides the baseline's weights (common.trained_module's key): the preset, the seed, the UNet2DModel
    spec and the training config without the options that never change the weights (threads, logging, ...)."""
    from mtd_core.training.config import TrainConfig

    neutral = set(TrainConfig.RESUMABLE_CHANGES) - {"steps"}
    return {"preset": preset.to_dict(), "seed": seed, "unet2d": dict(spec),
            "trainer": {k: v for k, v in cfg.to_dict().items() if k not in neutral}}


def baseline_config(preset: Preset, taskset: Any, spec: Mapping[str, Any], cfg: Any) -> dict[str, Any]:
    """The baseline's own config (the result's provenance): its data, the single-image task set it models (the
    single-task run's), its network and noise schedule (diffusers' DDPMScheduler) and its training config."""
    return {"dataset": dict(preset.dataset), "taskset": taskset.to_config(),
            "backbone": {"name": "diffusers.UNet2DModel", **spec},
            "scheduler": {"name": "DDPMScheduler", "beta_schedule": "linear", "num_train_timesteps": 1000},
            "trainer": cfg.to_dict()}


def sample_settings(unet: Any, ev: common.Evaluator, preset: Preset, seed: int
                    ) -> tuple[dict[str, float], dict[str, list[float]], dict[str, Any], torch.Tensor]:
    """Every setting at every NFE (nfes) in the preset's draws: metrics ``<metric>_<setting>_nfe<N>`` and their
    draws, the default at the preset's NFE also under the plain names with the FID curve; returns metrics, draws,
    that FID curve and that setting's samples."""
    metrics: dict[str, float] = {}
    draws: dict[str, list[float]] = {}
    curve: dict[str, Any] = {}
    headline = torch.empty(0)
    for setting in SETTINGS:
        for nfe in nfes(preset):
            images = common.drawn(lambda n, s: {"image": diffusers_samples(
                unet, SAMPLERS[setting], nfe, n, s, preset, {})}, preset, seed)["image"]
            print(f"  DPMSolverMultistepScheduler, {setting} settings, NFE {nfe}:")
            dist = common.distribution_metrics(ev, preset, images)
            tag = f"_{setting}_nfe{nfe}"
            metrics.update({f"{k}{tag}": dist.metrics[k] for k in common.DRAWN_KEYS})
            draws.update({f"{k}{tag}": dist.draws[k] for k in common.DRAWN_KEYS})
            if setting == "default" and nfe == preset.nfe:
                metrics.update(dist.metrics)
                draws.update(dist.draws)
                curve, headline = dist.fid_curve, images
    return metrics, draws, curve, headline


def run(preset: Preset, seed: int, out_dir: Path, run_dir: Path) -> common.Outcome:
    """Build the parameter-matched UNet2DModel, train it, sample it with both settings and evaluate it (module
    docstring)."""
    from mtd_core.data.build import load_dataset
    from mtd_core.plugins.registry import get_registry

    data = load_dataset(dict(preset.dataset), get_registry())
    taskset, match, bl, params_ours = build(preset)
    print(f"  ours {params_ours:,} parameters; UNet2DModel {match.params:,} (ratio {match.ratio:.3f}), "
          f"{match.spec.to_dict()}")
    torch.manual_seed(seed)
    unet = bl.build_unet2d(match.spec, common.device_of(preset))
    cfg = train_config(preset, seed)
    train_images = common.split_tensors(data, "train", fields=("image",))["image"]
    wall = common.trained_module(unet, run_dir / "unet_ema.safetensors",
                                 training_key(preset, seed, match.spec.to_dict(), cfg),
                                 lambda: train_unet(unet, train_images, cfg))
    unet.eval()
    ev = common.make_evaluator(data, preset)
    print(f"  feature net: {ev.feature_net}")
    s = ev.sample_seed(seed)
    metrics, draws, curve, images = sample_settings(unet, ev, preset, s)
    metrics.update(common.elbo_bits_per_dim(DiffusersDenoiser(unet, taskset), data, preset, s, ev.split))
    metrics.update({"params_ours": float(params_ours), "params_diffusers": float(match.params),
                    "param_ratio": float(match.ratio)})
    grids = [common.save_grid(out_dir / f"seed{seed}_samples.png", taskset, {"image": images},
                              title=f"diffusers, seed {seed}")]
    return common.Outcome(metrics=metrics, protocol=protocol(preset, match, wall, ev), grids=grids, draws=draws,
                          fid_curve=curve, config=baseline_config(preset, taskset, match.spec.to_dict(), cfg))


def protocol(preset: Preset, match: Any, wall: float, ev: common.Evaluator) -> dict[str, Any]:
    """What the baseline's numbers depend on."""
    import diffusers

    bl = _baseline_module()
    return {"dataset": preset.dataset["name"], "holdout": int(preset.dataset.get("holdout", 0) or 0),
            "steps": preset.steps, "batch_size": preset.batch_size, "lr": preset.lr, "weight_decay": 0.0,
            "unet2d": match.spec.to_dict(), "parameters": match.params,
            "sampler": "diffusers DPMSolverMultistepScheduler at its defaults (DPM-Solver++(2M)) for the plain "
                       "metric names; <metric>_<setting>_nfe<N> for every setting and NFE",
            "samplers": {s: {"scheduler": "DPMSolverMultistepScheduler", **bl.DPM_SETTINGS[s]} for s in SETTINGS},
            "nfe": preset.nfe, "nfes": nfes(preset), **common.draw_protocol(preset), "train_wall_s": wall,
            "weights": "EMA", "diffusers": diffusers.__version__, **ev.protocol()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.diffusers_baseline``."""
    return common.main(NAME, __doc__ or NAME, run, metric_keys, argv)


if __name__ == "__main__":
    sys.exit(main())
