"""Image + masked image: the paper's restoration setting and its convergence claim.

The masked_image modality hides half of each training image's patches (a fresh random mask per example and step).
Measures FID/KID/precision-recall of joint samples, the learning curve (FID of every checkpoint, compared with the
single-task run's curve by make_results), restoration PSNR/SSIM at every mask ratio of the preset (the image
generated given the masked image of the evaluation split, against the true image, as generated and with the observed
pixels pasted back; the masked input itself is the floor, the single-task run's SDEdit the baseline; the inputs are
identical across experiments and seeds), and the ELBO.

    python -m experiments.masked_image --preset cpu --seed 0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import common
from experiments.presets import Preset

NAME = "masked_image"
TRAIN_RATIO = 0.5


def metric_keys(preset: Preset) -> list[str]:
    """Every metric this experiment reports."""
    return [*common.DISTRIBUTION_KEYS, *common.ELBO_KEYS, *common.CURVE_KEYS,
            *common.restoration_keys(preset, "restored")]


def masked_modality(preset: Preset) -> dict[str, Any]:
    """The aggregated masked-image modality's minimal config: patch masks hiding TRAIN_RATIO of the image; its design
    (loss weight 0.05, a tenth of its head's gradient into the backbone, a channel of its own) is the kind's."""
    return common.aggregated({"kind": "masked_image", "channels": 1, "size": preset.image_size, "ratio": TRAIN_RATIO,
                              "mask": "patch", "patch": preset.patch, "source": "image"})


def restoration(model: Any, ev: common.Evaluator, preset: Preset, out_dir: Path, seed: int
                ) -> tuple[dict[str, float], list[str]]:
    """Restoration at every mask ratio: the image generated given the masked image of the evaluation split
    (common.restoration)."""
    return common.restoration(
        lambda masked: common.generate_batched(model, preset, given={"masked_image": masked},
                                               seed=ev.sample_seed(seed))["image"],
        "restored", ev, preset, out_dir, seed)


def run(preset: Preset, seed: int, out_dir: Path, run_dir: Path) -> common.Outcome:
    """Train the image + masked-image model and evaluate it (see the module docstring)."""
    trained = common.train(preset, [common.image_modality(preset), masked_modality(preset)], seed, run_dir, curve=True)
    ev = common.make_evaluator(trained.data, preset)
    print(f"  feature net: {ev.feature_net}")
    model, s = trained.model, ev.sample_seed(seed)
    samples = common.joint_samples(model, preset, s)
    dist = common.distribution_metrics(ev, preset, samples["image"])
    metrics = dict(dist.metrics)
    metrics.update(common.elbo_bits_per_dim(model, trained.data, preset, s, ev.split))
    curve = common.learning_curve(run_dir, preset, ev, s)
    metrics.update(common.curve_metrics(curve))
    grids = [common.save_grid(out_dir / f"seed{seed}_joint.png", model.taskset, samples,
                              title=f"image+masked, seed {seed}")]
    restored, restored_grids = restoration(model, ev, preset, out_dir, seed)
    metrics.update(restored)
    grids += restored_grids
    protocol = {**common.base_protocol(preset, trained, ev), **common.RESTORATION_PROTOCOL}
    protocol.update({"train_mask_ratio": TRAIN_RATIO,
                     "masked_image_loss_weight": model.taskset["masked_image"].loss_weight,
                     "mask": f"patch {preset.patch}x{preset.patch}",
                     "n_paired": preset.n_paired, "n_curve": preset.n_curve, "curve_every": preset.curve_every,
                     "restoration": "conditional generation given the masked image, its unhidden pixels kept in "
                                    "every step's base estimate (generate's keep_observed)"})
    return common.Outcome(metrics=metrics, protocol=protocol, grids=grids, curve=curve, draws=dist.draws,
                          fid_curve=dist.fid_curve, config=trained.config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.masked_image``."""
    return common.main(NAME, __doc__ or NAME, run, metric_keys, argv)


if __name__ == "__main__":
    sys.exit(main())
