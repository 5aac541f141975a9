"""Single-task DDPM (N = 1: the image alone, through mtd's own model and trainer): the baseline of every claim.

Measures sample quality (classifier-FID/KID/precision-recall), the ELBO in bits/dim, the learning curve (FID of
every checkpoint, for the masked-image convergence ratio) and the SDEdit-style restoration baseline: the masked
test image is noised to t0 = sdedit_t * T and denoised by DDIM with this unconditional model (scored as
generated and with the observed pixels pasted back).

    python -m experiments.single_task --preset cpu --seed 0
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from experiments import common
from experiments.presets import Preset

NAME = "single_task"


def metric_keys(preset: Preset) -> list[str]:
    """Every metric this experiment reports."""
    return [*common.DISTRIBUTION_KEYS, *common.ELBO_KEYS, *common.CURVE_KEYS,
            *common.restoration_keys(preset, "sdedit")]


@torch.no_grad()
def sdedit(model: torch.nn.Module, x_masked: torch.Tensor, preset: Preset, seed: int) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise the masked image to t0 with q(z_t0 | x) (eq. 4 of DDPM), then run the preset's
    sampler (generate's defaults, updated by ``preset.sampling``) from t0 to 0 with the unconditional model, with
    round(nfe * sdedit_t) network evaluations."""
    from mtd_core.diffusion.noise import respaced_timesteps
    from mtd_core.plugins.registry import get_registry
    from mtd_core.sampling.estimate import BaseEstimate
    from mtd_core.sampling.denoiser import ModelDenoiser

    opts = {**common.sampler_protocol(preset)["sampler"]}
    spec = get_registry().sampler(opts.pop("sampler"))
    full = model.forward_process
    t0 = max(1, round(preset.sdedit_t * full.T))
    steps = min(t0, max(spec.min_steps, spec.steps_for(max(1, round(preset.nfe * preset.sdedit_t)))))
    fp = full.respace(respaced_timesteps(t0, steps, opts.pop("spacing"), full.abar[: t0 + 1]))
    estimate = BaseEstimate(opts.pop("clip"), opts.pop("clip_eps"))
    abar = float(fp.abar[fp.T])
    g = torch.Generator(model.device).manual_seed(seed)
    model.eval()
    out = []
    for start in range(0, len(x_masked), preset.eval_batch):
        x = x_masked[start:start + preset.eval_batch].to(model.device)
        eps = torch.randn(x.shape, generator=g, device=x.device)
        z = math.sqrt(abar) * x + math.sqrt(1 - abar) * eps
        res = spec(ModelDenoiser(model, fp, {}, estimate=estimate), z, fp, generator=g, **opts)
        out.append(res.z0.clamp(-1, 1).cpu())
    common.record_nfe("sdedit", spec.nfe(steps))
    return torch.cat(out)


def restoration(model: torch.nn.Module, ev: common.Evaluator, preset: Preset, out_dir: Path, seed: int
                ) -> tuple[dict[str, float], list[str]]:
    """The SDEdit baseline at every mask ratio (common.restoration)."""
    return common.restoration(lambda masked: sdedit(model, masked, preset, ev.sample_seed(seed)), "sdedit", ev,
                              preset, out_dir, seed)


def run(preset: Preset, seed: int, out_dir: Path, run_dir: Path) -> common.Outcome:
    """Train the single-task model and evaluate it (see the module docstring)."""
    trained = common.train(preset, [common.image_modality(preset)], seed, run_dir, curve=True)
    ev = common.make_evaluator(trained.data, preset)
    print(f"  feature net: {ev.feature_net}")
    s = ev.sample_seed(seed)
    samples = common.joint_samples(trained.model, preset, s)
    dist = common.distribution_metrics(ev, preset, samples["image"])
    metrics = dict(dist.metrics)
    metrics.update(common.elbo_bits_per_dim(trained.model, trained.data, preset, s, ev.split))
    curve = common.learning_curve(run_dir, preset, ev, s)
    metrics.update(common.curve_metrics(curve))
    grids = [common.save_grid(out_dir / f"seed{seed}_samples.png", trained.model.taskset, samples,
                              title=f"single-task, seed {seed}")]
    restored, restored_grids = restoration(trained.model, ev, preset, out_dir, seed)
    metrics.update(restored)
    grids += restored_grids
    protocol = {**common.base_protocol(preset, trained, ev), **common.RESTORATION_PROTOCOL}
    protocol.update({"sdedit_t0": round(preset.sdedit_t * 1000), "sdedit_nfe": max(1, round(preset.nfe *
                     preset.sdedit_t)), "n_paired": preset.n_paired, "mask": f"patch {preset.patch}x{preset.patch}",
                     "n_curve": preset.n_curve, "curve_every": preset.curve_every})
    return common.Outcome(metrics=metrics, protocol=protocol, grids=grids, curve=curve, draws=dist.draws,
                          fid_curve=dist.fid_curve, config=trained.config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.single_task``."""
    return common.main(NAME, __doc__ or NAME, run, metric_keys, argv)


if __name__ == "__main__":
    sys.exit(main())
