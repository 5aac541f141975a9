"""Image + representation: the garment and a 16-dimensional feature vector of it from a frozen extractor (mtd's
seeded random conv net, "random_conv": nothing downloaded).

Representation consistency: the cosine between each jointly generated representation and the same frozen extractor
applied to the generated image (1 = the two modalities agree). For scale, the same cosine for the representation
read out from real images of the evaluation split. Conditional fidelity: how often a garment generated given such an
image's representation is of that image's class (feature net). Plus FID/KID/precision-recall of the generated
garments and the ELBO.

    python -m experiments.image_representation --preset cpu --seed 0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments import common
from experiments.presets import Preset

NAME = "image_representation"
DIM = 16


def metric_keys(preset: Preset) -> list[str]:
    """Every metric this experiment reports."""
    return [*common.DISTRIBUTION_KEYS, "representation_cosine_mean", "representation_cosine_std",
            "readout_cosine_mean", "readout_cosine_std", *common.CONDITIONAL_KEYS,
            *common.ELBO_KEYS]


def representation_modality() -> dict[str, Any]:
    """The aggregated representation modality's minimal config (the built-in frozen random conv extractor): its
    design (the head on the feature map, none of its gradient into the backbone, loss weight 0.1, a fixed code scaled
    by its spread, joint samples committed to a kept training vector) is the kind's."""
    return common.aggregated({"kind": "representation", "dim": DIM, "source": "image",
                              "builtin_extractor": "random_conv", "seed": 0})


def run(preset: Preset, seed: int, out_dir: Path, run_dir: Path) -> common.Outcome:
    """Train the image + representation model and evaluate it (see the module docstring)."""
    from mtd_core.metrics import cosine_consistency

    trained = common.train(preset, [common.image_modality(preset), representation_modality()], seed, run_dir)
    ev = common.make_evaluator(trained.data, preset)
    print(f"  feature net: {ev.feature_net}")
    model, s = trained.model, ev.sample_seed(seed)
    extractor = model.taskset["representation"].extractor
    samples = common.joint_samples(model, preset, s)
    dist = common.distribution_metrics(ev, preset, samples["image"])
    metrics = dict(dist.metrics)
    with torch.no_grad():
        target = extractor(samples["image"]).float()
    joint = cosine_consistency(samples["representation"], target)
    real = ev.take(min(preset.per_draw, len(ev.real["image"])), "the representations given")
    read = common.generate_batched(model, preset, given={"image": real["image"]}, seed=s, read_t=preset.read_t)
    with torch.no_grad():
        reps = extractor(real["image"]).float()
    readout = cosine_consistency(read["representation"], reps)
    print(f"  representation consistency (joint samples): cosine {joint.mean:.4f} +- {joint.std:.4f} "
          f"(n={len(target)}); read-out on real {ev.split} images: {readout.mean:.4f} +- {readout.std:.4f} "
          f"(n={len(reps)})")
    metrics.update({"representation_cosine_mean": joint.mean, "representation_cosine_std": joint.std,
                    "readout_cosine_mean": readout.mean, "readout_cosine_std": readout.std})
    conditional, _ = common.conditional_measures(ev, preset, model, {"representation": reps}, real["label"], s + 1)
    metrics.update(conditional)
    metrics.update(common.elbo_bits_per_dim(model, trained.data, preset, s, ev.split))
    grids = [common.save_grid(out_dir / f"seed{seed}_joint.png", model.taskset, {"image": samples["image"]},
                              title=f"image+repr., seed {seed}")]
    protocol = common.base_protocol(preset, trained, ev)
    protocol.update({"extractor": f"random_conv (dim {DIM}, seed 0, frozen)", "n_readout": len(reps),
                     "readout_t": preset.read_t})
    return common.Outcome(metrics=metrics, protocol=protocol, grids=grids, draws=dist.draws,
                          fid_curve=dist.fid_curve, config=trained.config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.image_representation``."""
    return common.main(NAME, __doc__ or NAME, run, metric_keys, argv)


if __name__ == "__main__":
    sys.exit(main())
