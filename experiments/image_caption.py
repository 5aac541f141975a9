"""Image + caption (beyond the paper): the garment and a short synthesised caption ("a faint thick coat": its
class noun plus ink brightness and thickness, written by the ``captions`` dataset transform), tokenised by the
text modality's SentencePiece model.

Caption agreement: the class word of each jointly generated caption (its last word) against the feature net's class
of the generated image; captions whose last word is no class word count as disagreeing (their share is reported).
For scale, the caption read out from real images of the evaluation split against their true class. Conditional
fidelity: how often a garment generated given such an image's caption is of that image's class (feature net). Plus
FID/KID/precision-recall of the generated garments and the ELBO.

    python -m experiments.image_caption --preset cpu --seed 0
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from experiments import common
from experiments.presets import Preset

NAME = "image_caption"


def metric_keys(preset: Preset) -> list[str]:
    """Every metric this experiment reports."""
    return [*common.DISTRIBUTION_KEYS, "caption_agreement", "caption_unparsed", "caption_readout_accuracy",
            *common.CONDITIONAL_KEYS, *common.ELBO_KEYS]


def text_modality(preset: Preset) -> dict[str, Any]:
    """The aggregated caption modality's minimal config (its captions come from :func:`captions_transform`): its
    design (a fixed random code scaled by its spread, a hundredth of its head's gradient) is the text kind's."""
    return common.aggregated({"kind": "text", "max_len": 12, "vocab_size": 64})


def captions_transform(preset: Preset) -> dict[str, Any]:
    """The dataset transform writing each example's caption from its label and image, with one-word nouns."""
    return {"kind": "captions", "label": "label", "image": "image", "into": "text",
            "nouns": list(preset.class_words)}


def caption_classes(captions: Sequence[str], class_words: Sequence[str]) -> torch.Tensor:
    """The class index of each caption's last word, or -1 when it is no class word."""
    index = {w: i for i, w in enumerate(class_words)}
    return torch.tensor([index.get(c.split()[-1] if c.split() else "", -1) for c in captions], dtype=torch.long)


def joint_measures(ev: common.Evaluator, preset: Preset, model: Any, samples: Mapping[str, Any]) -> dict[str, float]:
    """Caption agreement: each generated caption's class word against the feature net's class of its image (and
    the share of captions with no class word)."""
    from mtd_core.metrics import classify

    said = caption_classes(model.taskset["text"].detokenize(samples["text"]), preset.class_words)
    seen = classify(ev.feature_net, samples["image"])
    out = {"caption_agreement": float((said == seen).double().mean()),
           "caption_unparsed": float((said < 0).double().mean())}
    print(f"  caption agreement {out['caption_agreement']:.4f} (n={len(said)}, unparsed {out['caption_unparsed']:.2%})")
    return out


def run(preset: Preset, seed: int, out_dir: Path, run_dir: Path) -> common.Outcome:
    """Train the image + caption model and evaluate it (see the module docstring)."""
    trained = common.train(preset, [common.image_modality(preset), text_modality(preset)], seed, run_dir,
                           [captions_transform(preset)])
    ev = common.make_evaluator(trained.data, preset)
    print(f"  feature net: {ev.feature_net}")
    model, s = trained.model, ev.sample_seed(seed)
    text = model.taskset["text"]
    samples = common.joint_samples(model, preset, s)
    dist = common.distribution_metrics(ev, preset, samples["image"])
    metrics = dict(dist.metrics)
    metrics.update(joint_measures(ev, preset, model, samples))
    n = min(preset.per_draw, len(ev.real["image"]))
    real = ev.take(n, "the captions given")
    read = common.generate_batched(model, preset, given={"image": real["image"]}, seed=s, read_t=preset.read_t)
    read_said = caption_classes(text.detokenize(read["text"]), preset.class_words)
    metrics["caption_readout_accuracy"] = float((read_said == real["label"]).double().mean())
    print(f"  read-out caption class vs true class {metrics['caption_readout_accuracy']:.4f} (n={len(read_said)})")
    raw = common.split_tensors(trained.data, ev.split, fields=("text",), n=n, what="the captions given")["text"]
    captions = text.tokenize(raw)  # once, for generation and for the encodings' measures
    conditional, _ = common.conditional_measures(ev, preset, model, {"text": captions}, real["label"], s + 1)
    metrics.update(conditional)
    metrics.update(common.elbo_bits_per_dim(model, trained.data, preset, s, ev.split))
    grids = [common.save_grid(out_dir / f"seed{seed}_joint.png", model.taskset, samples,
                              title=f"image+caption, seed {seed}")]
    protocol = common.base_protocol(preset, trained, ev)
    protocol.update({"captions": "synthesised: a [bright|faint] [thick|thin] <class word>",
                     "class_words": list(preset.class_words), "n_readout": len(read_said), "readout_t": preset.read_t,
                     "examples": text.detokenize(samples["text"][:8])})
    return common.Outcome(metrics=metrics, protocol=protocol, grids=grids, draws=dist.draws,
                          fid_curve=dist.fid_curve, config=trained.config)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.image_caption``."""
    return common.main(NAME, __doc__ or NAME, run, metric_keys, argv)


if __name__ == "__main__":
    sys.exit(main())
