"""Experiment presets: the data, the shared backbone, the training budget and the evaluation protocol of a run.

Every experiment of one preset uses the same backbone, steps, batch size and learning-rate schedule, so that the
settings differ only in their modalities. Four presets:

    smoke    scikit-learn digits (8x8), a tiny U-Net, a few steps; seconds. Exercises the code, measures nothing.
    digits   scikit-learn digits (8x8), the example configs' U-Net, 1200 steps; minutes per run on 2 CPU cores.
    cpu      Fashion-MNIST 28x28 (55k train, 5k validation, 10k test), a small U-Net, 2000 steps; about an hour per
             run on 2 free cores.
    gpu      Fashion-MNIST 28x28 (the same splits), a larger U-Net, 30k steps.

The evaluation protocol (experiments/README.md): every number is measured on one split, ``--split val`` (the
held-out validation split, where designs and sampler settings are chosen) or ``--split test`` (read for the
claims); the distribution metrics are the mean of ``n_draws`` draws of ``n_samples / n_draws`` samples each, plus
the FID of the pooled samples at each of ``fid_curve_n`` and its extrapolation to infinitely many samples.

Presets are plain attrs classes that round-trip through dicts (they are stored in every result JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from mtd_core.errors import ConfigError, closest

FASHION_CLASS_WORDS = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
"""One-word class nouns of Fashion-MNIST used in synthesised captions (so a caption's class is its last word)."""

DIGIT_CLASS_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@attrs.frozen
class Preset:
    """Everything that is fixed across the experiments of one scale.

    Args:
        name: the preset's name (results are grouped by it).
        dataset: the ``[dataset]`` table of the run config (name and factory options).
        image_size: image height and width.
        patch: the masked-image modality's patch size (masks hide whole patches).
        backbone: the U-Net options (the ``[backbone]`` table without ``name``), identical for every setting.
        steps: optimisation steps of every training run (and of the standalone classifier).
        batch_size: examples per step.
        lr: AdamW learning rate after warm-up (cosine decay to 10% of it).
        warmup_steps: linear warm-up steps.
        ema_decay: decay of the EMA whose weights are evaluated.
        curve_every: checkpoint interval of the learning-curve runs (single-task and masked image).
        n_samples: generated samples in all (FID/KID/precision-recall, coherence, agreement), drawn in ``n_draws``
            draws of ``n_samples / n_draws`` (:attr:`per_draw`) whose seeds lie apart; each draw is scored alone
            (the result's ``draws``) and the metrics are their mean.
        n_reference: real images of the evaluation split in the FID reference set (0: the whole split).
        n_curve: generated samples per learning-curve point (FID at that n only compares along the curve).
        n_paired: images of the evaluation split for restoration and transition PSNR/SSIM.
        nfe: network evaluations of every generation (joint, conditional, restoration, SDEdit), with
            ``generate``'s default sampler and options (docs/sampling.md, "Defaults").
        sampling: further ``generate`` options for every generation ({}: the defaults; a design study may set
            e.g. {"sampler": "ddim", "eta": 1.0}).
        sdedit_t: the SDEdit baseline's noise level t0 as a fraction of T.
        read_t: the label head's read-out timestep as a fraction of T (generate's read-out mode).
        mask_ratios: the fractions hidden in the restoration evaluation.
        elbo_n: test examples of the ELBO estimate (a seeded subsample).
        elbo_timesteps: denoising terms evaluated per example (stratified over 2..T; unbiased for their sum).
        elbo_batch: examples per ELBO forward pass (memory only: every example draws its own timesteps).
        feature_epochs: epochs of the feature network (the FID classifier) trained on the training split.
        eval_batch: examples per forward pass when sampling and evaluating.
        threads: torch CPU threads (0: torch's default).
        device: "cpu", "cuda" or "auto".
        class_words: one-word class nouns (captions; the caption agreement parses the last word).
        n_draws: draws the ``n_samples`` are split into (it must divide ``n_samples``).
        fid_curve_n: sample counts N of the FID curve: FID of the first N pooled samples (those N <= n_samples),
            extrapolated to N = infinity (Chong & Forsyth 2020: FID_N is linear in 1/N).
    """

    name: str
    dataset: dict[str, Any]
    image_size: int
    patch: int
    backbone: dict[str, Any]
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    ema_decay: float
    curve_every: int
    n_samples: int
    n_reference: int
    n_curve: int
    n_paired: int
    nfe: int = 20
    sampling: dict[str, Any] = attrs.field(factory=dict)
    sdedit_t: float = 0.5
    read_t: float = 0.02
    mask_ratios: tuple[float, ...] = attrs.field(default=(0.1, 0.25, 0.5, 0.75), converter=tuple)
    elbo_n: int = 256
    elbo_timesteps: int = 50
    elbo_batch: int = 16
    feature_epochs: int = 20
    eval_batch: int = 256
    threads: int = 0
    device: str = "cpu"
    class_words: tuple[str, ...] = attrs.field(default=FASHION_CLASS_WORDS, converter=tuple)
    n_draws: int = 1
    fid_curve_n: tuple[int, ...] = attrs.field(default=(2500, 5000, 10000), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if self.n_draws < 1 or self.n_samples % self.n_draws:
            raise ConfigError(f"preset {self.name!r}: n_draws = {self.n_draws} must be >= 1 and divide n_samples = "
                              f"{self.n_samples}")

    @property
    def per_draw(self) -> int:
        """Generated samples per draw (n_samples / n_draws)."""
        return self.n_samples // self.n_draws

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists for tuples); :meth:`from_dict` inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preset:
        """From :meth:`to_dict`'s output; unknown keys are a ConfigError naming the nearest valid key."""
        names = [f.name for f in attrs.fields(cls)]
        for key in d:
            if key not in names:
                raise ConfigError(f"preset: unknown key {key!r}{closest(str(key), names)}; valid keys: {names}")
        return cls(**d)

    def with_overrides(self, **changes: Any) -> Preset:
        """A copy with some fields changed (e.g. a shorter run for a test)."""
        return Preset.from_dict({**self.to_dict(), **changes})


_DIGITS = {"name": "digits"}
_FASHION = {"name": "fashion_mnist", "holdout": 5000}
"""Fashion-MNIST with its last 5 000 training examples held out as the validation split (never trained on)."""

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", dataset=_DIGITS, image_size=8, patch=2,
        backbone={"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
                  "mid_attention": False, "groups": 4, "num_heads": 1},
        steps=4, batch_size=16, lr=1e-3, warmup_steps=1, ema_decay=0.9, curve_every=2,
        n_samples=24, n_reference=0, n_curve=12, n_paired=8, nfe=4, elbo_n=8, elbo_timesteps=2,
        feature_epochs=1, eval_batch=64, threads=1, class_words=DIGIT_CLASS_WORDS,
        mask_ratios=(0.25, 0.75), n_draws=1, fid_curve_n=(12, 24),
    ),
    "digits": Preset(
        name="digits", dataset=_DIGITS, image_size=8, patch=2,
        backbone={"channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
                  "mid_attention": True, "groups": 8, "num_heads": 4},
        steps=1200, batch_size=64, lr=1e-3, warmup_steps=100, ema_decay=0.995, curve_every=200,
        n_samples=360, n_reference=0, n_curve=360, n_paired=360, nfe=20, elbo_n=360, elbo_timesteps=50,
        feature_epochs=20, eval_batch=360, threads=1, class_words=DIGIT_CLASS_WORDS, n_draws=1,
        fid_curve_n=(90, 180, 360),
    ),
    "cpu": Preset(
        name="cpu", dataset=_FASHION, image_size=28, patch=4,
        backbone={"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [],
                  "mid_attention": True, "groups": 8, "num_heads": 4},
        steps=2000, batch_size=64, lr=1e-3, warmup_steps=100, ema_decay=0.995, curve_every=250,
        n_samples=10000, n_reference=0, n_curve=500, n_paired=500, nfe=20, elbo_n=256, elbo_timesteps=25,
        feature_epochs=5, eval_batch=250, threads=2, n_draws=2,
    ),
    "gpu": Preset(
        name="gpu", dataset=_FASHION, image_size=28, patch=4,
        backbone={"channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [7],
                  "mid_attention": True, "groups": 16, "num_heads": 4},
        steps=30000, batch_size=128, lr=2e-4, warmup_steps=500, ema_decay=0.9995, curve_every=2500,
        n_samples=10000, n_reference=0, n_curve=2000, n_paired=2000, nfe=50, elbo_n=1000,
        elbo_timesteps=100, elbo_batch=50, feature_epochs=20, eval_batch=1000, threads=0, device="cuda", n_draws=2,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ConfigError listing the presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{closest(name, list(PRESETS))}; presets: {list(PRESETS)}")
    return PRESETS[name]
