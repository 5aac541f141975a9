"""Image transition: a garment and its edge map (Sobel, made on the fly by the dataset's "edges" transform) as two
image modalities of one model, the garment the base and the edge map aggregated.

Both directions from the one model: edges -> image (the image generated given the true edge map of an image of the
evaluation split) and image -> edges (the edge map read out from the edges head given the image), each scored by
PSNR/SSIM against the true partner; plus FID/KID/precision-recall of jointly generated garments and the ELBO. The
edge map lives on a channel of Z of its own, as the masked image's does (experiments/notes/edge-map.md, "A channel
of its own").

    python -m experiments.image_transition --preset cpu --seed 0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import common
from experiments.presets import Preset

NAME = "image_transition"
EDGES = {"kind": "edges", "source": "image", "into": "edges"}


def metric_keys(preset: Preset) -> list[str]:
    """Every metric this experiment reports."""
    return [*common.DISTRIBUTION_KEYS, "edges_to_image_psnr", "edges_to_image_ssim", "edges_to_image_n",
            "image_to_edges_psnr", "image_to_edges_ssim", "image_to_edges_n", *common.ELBO_KEYS]


def edges_modality(preset: Preset) -> dict[str, Any]:
    """The aggregated edge map's minimal config: an image modality; its design (loss weight 0.05 when aggregated, a
    tenth of its head's gradient into the backbone, a channel of its own) is the image kind's."""
    return common.image_modality(preset, name="edges", role="aggregated")


def run(preset: Preset, seed: int, out_dir: Path, run_dir: Path) -> common.Outcome:
    """Train the image + edges model and evaluate both directions (see the module docstring)."""
    modalities = [common.image_modality(preset), edges_modality(preset)]
    trained = common.train(preset, modalities, seed, run_dir, transforms=[EDGES])
    ev = common.make_evaluator(trained.data, preset)
    print(f"  feature net: {ev.feature_net}")
    model, s = trained.model, ev.sample_seed(seed)
    samples = common.joint_samples(model, preset, s)
    dist = common.distribution_metrics(ev, preset, samples["image"])
    metrics = dict(dist.metrics)
    pairs = common.split_tensors(trained.data, ev.split, fields=("image", "edges"), n=preset.n_paired,
                                 what="the transition pairs (n_paired)")
    to_image = common.generate_batched(model, preset, given={"edges": pairs["edges"]}, seed=s)["image"]
    to_edges = common.generate_batched(model, preset, given={"image": pairs["image"]}, seed=s,
                                       read_t=preset.read_t)["edges"]
    metrics.update(common.paired_metrics(to_image, pairs["image"], "edges_to_image"))
    metrics.update(common.paired_metrics(to_edges, pairs["edges"], "image_to_edges"))
    print(f"  edges -> image: PSNR {metrics['edges_to_image_psnr']:.2f} dB, SSIM {metrics['edges_to_image_ssim']:.3f}; "
          f"image -> edges: PSNR {metrics['image_to_edges_psnr']:.2f} dB, SSIM {metrics['image_to_edges_ssim']:.3f} "
          f"(n={len(to_image)})")
    metrics.update(common.elbo_bits_per_dim(model, trained.data, preset, s, ev.split))
    grids = [common.save_grid(out_dir / f"seed{seed}_joint.png", model.taskset, samples,
                              title=f"image+edges, seed {seed}"),
             common.save_rows(out_dir / f"seed{seed}_edges_to_image.png",
                              [pairs["edges"][:16], to_image[:16], pairs["image"][:16]], [],
                              "edges -> image: given | generated | true"),
             common.save_rows(out_dir / f"seed{seed}_image_to_edges.png",
                              [pairs["image"][:16], to_edges[:16], pairs["edges"][:16]], [],
                              "image -> edges: given | read out | true")]
    protocol = common.base_protocol(preset, trained, ev)
    protocol.update({"n_paired": len(to_image), "edges": "Sobel magnitude scaled per image to [-1, 1]",
                     "image_to_edges": f"read-out of the edges head at t = {preset.read_t} T",
                     "edges_to_image": "conditional generation given the edge map"})
    return common.Outcome(metrics=metrics, protocol=protocol, grids=grids, draws=dist.draws,
                          fid_curve=dist.fid_curve, config=trained.config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.image_transition``."""
    return common.main(NAME, __doc__ or NAME, run, metric_keys, argv)


if __name__ == "__main__":
    sys.exit(main())
