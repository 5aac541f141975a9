"""Joint image-label (the paper's headline setting): one model generates garments with their class, garments of a
requested class, and the class of a given garment.

Measures FID/KID/precision-recall of joint samples, joint coherence (generated label vs the feature net's class of
the generated image), conditional fidelity (images generated for requested labels, balanced over classes), the label
head's accuracy on the evaluation split at the read-out t against a standalone classifier (the same U-Net and the
same label head, trained with cross-entropy alone for the same steps, batch and learning-rate schedule, read out at
the same t), and the ELBO in bits/dim.

    python -m experiments.image_label --preset cpu --seed 0
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from experiments import common
from experiments.presets import Preset
from mtd_core.errors import ConfigError

NAME = "image_label"
CLASSIFIER_DIR = "classifier"


def metric_keys(preset: Preset) -> list[str]:
    """Every metric this experiment reports."""
    return [*common.DISTRIBUTION_KEYS, "joint_coherence", *common.CONDITIONAL_KEYS,
            "label_head_accuracy", "standalone_classifier_accuracy", "accuracy_n", *common.ELBO_KEYS]


def label_modality() -> dict[str, Any]:
    """The aggregated label modality's minimal config (10 classes): its design is the label kind's."""
    return common.aggregated({"kind": "label", "num_classes": 10})


def joint_measures(ev: common.Evaluator, preset: Preset, model: Any, samples: Mapping[str, Any]) -> dict[str, float]:
    """Joint coherence: each generated label against the feature net's class of its generated image."""
    from mtd_core.metrics import joint_coherence

    jc = joint_coherence(ev.feature_net, samples["image"], samples["label"])
    print(f"  {jc}")
    return {"joint_coherence": jc.accuracy}


@torch.no_grad()
def head_accuracy(model: Any, images: torch.Tensor, labels: torch.Tensor, preset: Preset, seed: int) -> float:
    """Accuracy of the model's label head read out from the given real images at t = read_t * T."""
    out = common.generate_batched(model, preset, given={"image": images}, seed=seed, read_t=preset.read_t)
    return float((out["label"] == labels).double().mean())


def classifier_modalities(preset: Preset) -> list[dict[str, Any]]:
    """The standalone classifier's task set (examples/configs/label_classifier.toml's): the same U-Net and label head,
    the label aggregated with weight zero, so that z_t is the image's DDPM state sqrt(abar_t) x_0 + sqrt(1 - abar_t)
    eps, and the image's loss weight 0, so that the label head's cross-entropy at uniform t alone trains it. The
    label's design options do not enter it: every design study shares one classifier per seed."""
    return [{**common.image_modality(preset), "loss_weight": 0.0},
            {"kind": "label", "num_classes": 10, "weights": {"kind": "zero"}, "loss_weight": 1.0, "head_grad": 1.0}]


def train_standalone_classifier(preset: Preset, seed: int, run_dir: Path) -> common.Trained:
    """The standalone classifier trained by mtd's Trainer with the preset's optimiser, steps, batch, schedule and EMA
    into ``run_dir / CLASSIFIER_DIR`` (a finished one of the same config is reused, a stopped one resumed)."""
    return common.train(preset, classifier_modalities(preset), seed, run_dir / CLASSIFIER_DIR, baseline=True)


def load_standalone_classifier(preset: Preset, run_dir: Path) -> Any:
    """The trained standalone classifier of ``run_dir`` (EMA weights, eval mode); a ConfigError when it is not
    there."""
    from mtd_core.training import load_run

    path = run_dir / CLASSIFIER_DIR
    if not (path / "checkpoints").is_dir():
        raise ConfigError(f"{path}: no standalone classifier; train it with `python -m experiments.image_label "
                          f"--preset {preset.name} --seed S --train-only`")
    return load_run(path, device=common.device_of(preset)).model


def run(preset: Preset, seed: int, out_dir: Path, run_dir: Path) -> common.Outcome:
    """Train the image-label model and evaluate it (see the module docstring)."""
    trained = common.train(preset, [common.image_modality(preset), label_modality()], seed, run_dir)
    # the classifier does not depend on the design: a design study's variants share the default run's
    shared = run_dir.parents[2] / run_dir.name if common.DESIGN["variant"] else run_dir
    clf = train_standalone_classifier(preset, seed, shared)
    ev = common.make_evaluator(trained.data, preset)
    print(f"  feature net: {ev.feature_net}")
    model, s = trained.model, ev.sample_seed(seed)
    samples = common.joint_samples(model, preset, s)
    dist = common.distribution_metrics(ev, preset, samples["image"])
    metrics = dict(dist.metrics)
    metrics.update(joint_measures(ev, preset, model, samples))
    requested = torch.arange(preset.per_draw) % 10
    conditional, cond = common.conditional_measures(ev, preset, model, {"label": requested}, requested, s + 1)
    metrics.update(conditional)
    real = ev.real  # the whole reference set of the split: a read-out costs one network evaluation
    metrics["label_head_accuracy"] = head_accuracy(model, real["image"], real["label"], preset, s)
    metrics["standalone_classifier_accuracy"] = head_accuracy(clf.model, real["image"], real["label"], preset, s)
    metrics["accuracy_n"] = float(len(real["label"]))
    print(f"  label head accuracy {metrics['label_head_accuracy']:.4f}, standalone classifier "
          f"{metrics['standalone_classifier_accuracy']:.4f} (n={len(real['label'])} of the {ev.split} split, "
          f"read-out t = {preset.read_t} T)")
    metrics.update(common.elbo_bits_per_dim(model, trained.data, preset, s, ev.split))
    names = list(preset.class_words)
    grids = [common.save_grid(out_dir / f"seed{seed}_joint.png", model.taskset, samples, class_names=names,
                              title=f"image+label, seed {seed}"),
             common.save_grid(out_dir / f"seed{seed}_conditional.png", model.taskset,
                              {"image": cond["image"][:20], "label": requested[:20]}, n=20, class_names=names,
                              title="requested class")]
    protocol = common.base_protocol(preset, trained, ev)
    protocol.update({"read_t": preset.read_t, "conditional_requests": "labels 0..9 cycled",
                     "n_conditional": preset.per_draw, "standalone_classifier_wall_s": clf.train_wall_s,
                     "standalone_classifier": "same U-Net + label head, cross-entropy on the noised image z_t at "
                                              "uniform t (label at weight zero, image loss weight 0), mtd's Trainer "
                                              "with the same steps/batch/lr schedule/EMA"})
    return common.Outcome(metrics=metrics, protocol=protocol, grids=grids, draws=dist.draws,
                          fid_curve=dist.fid_curve, config=trained.config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.image_label``."""
    return common.main(NAME, __doc__ or NAME, run, metric_keys, argv)


if __name__ == "__main__":
    sys.exit(main())
