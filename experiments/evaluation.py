"""The fixed parts of an evaluation: the split it reads, the feature network and the reference set (Evaluator),
and sampling in batches and in seeded draws, with every network evaluation counted (NFE_SPENT).

The evaluation split is ``val`` (the dataset's held-out validation split, ``holdout`` in the preset's dataset: never
trained on; designs and sampler settings are chosen on it) or ``test`` (read for the claims). The FID reference
set, the inputs of conditional generation, restoration and transition, and the read-out accuracy come from it; the
feature network (the FID classifier) is trained on the training split alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from experiments.presets import Preset
from experiments.runs import REUSE, Trained, TrainedOnly, count_parameters
from mtd_core.errors import ConfigError, ModalityDataError, MTDError

SPLITS = ("val", "test")
EVALUATION = {"split": "val"}
"""The evaluation split of this process: set by ``--split`` (experiments/cli.py); :func:`make_evaluator` reads it."""
VAL_SEED_OFFSET = 1000
"""Sampling seeds on the validation split are ``1000 + seed``: a setting chosen there never saw the noise the test
split's numbers are drawn with (``seed``)."""
DRAW_SEED_OFFSET = 10_000
"""Draw k of a set of samples is drawn from seed ``seed + 10 000 k``."""
NFE_SPENT: dict[str, int] = {}
"""Network evaluations per sample of every generation mode of the current experiment (``joint``,
``conditional[label]``, ``readout[image]``, ``sdedit``, ...), from ``GenerationOutput.nfe``: the result's
``nfe_spent``. Cleared by experiments.cli.run_experiment."""


def record_nfe(mode: str, nfe: int) -> None:
    """Count ``nfe`` network evaluations per sample for ``mode`` (the largest, if a mode is used at several)."""
    NFE_SPENT[mode] = max(int(nfe), NFE_SPENT.get(mode, 0))


def has_val(preset: Preset) -> bool:
    """Whether the preset's dataset holds out a validation split."""
    return int(preset.dataset.get("holdout", 0) or 0) > 0


def check_split(preset: Preset, split: str) -> None:
    """A ConfigError unless ``split`` can be evaluated with ``preset`` (val needs the dataset's holdout)."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {list(SPLITS)}, got {split!r}")
    if split == "val" and not has_val(preset):
        raise ConfigError(f"preset {preset.name!r} has no validation split (its dataset holds nothing out: no "
                          "'holdout'); evaluate it with --split test")


def split_examples(data: Any, split: str) -> Any:
    """The examples of the train, val or test split of ``data`` (a LoadedData)."""
    if split == "val":
        if data.splits.val is None:
            raise ConfigError("the dataset has no validation split (no 'holdout' in its config); use the test split")
        return data.splits.val
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; expected train, val or test")
    return data.splits.train if split == "train" else data.splits.test


def split_view(data: Any, split: str) -> Any:
    """``data`` with ``split`` in the place of its test split: for mtd's evaluations that read the test split (the
    ELBO)."""
    if split == "test":
        return data
    return attrs.evolve(data, splits=attrs.evolve(data.splits, test=split_examples(data, split)))


def check_count(split: str, n: int, held: int, what: str) -> None:
    """An MTDError when ``n`` examples of ``split`` are asked for (``what``) and it holds only ``held``."""
    if n > held:
        raise MTDError(f"{what}: {n} examples of the {split} split were asked for, but it holds {held}")


def split_tensors(data: Any, split: str, fields: Sequence[str] = ("image", "label"), n: int = 0,
                  what: str = "the evaluation") -> dict[str, torch.Tensor]:
    """The (transformed) fields of the train, val or test split as whole tensors; ``n`` > 0 keeps the first n (an
    MTDError naming ``what`` when the split holds fewer)."""
    ds = split_examples(data, split)
    check_count(split, n, len(ds), what)
    batch = data.batch(ds, torch.arange(len(ds) if n <= 0 else n))
    missing = [f for f in fields if f not in batch]
    if missing:
        raise ModalityDataError(f"the {split} split has no fields {missing}; it has {sorted(batch)}")
    return {f: batch[f] for f in fields}


@attrs.frozen
class Evaluator:
    """The fixed parts of an evaluation: the feature network (FID classifier) and the real reference set.

    Attributes:
        feature_net: the FeatureNetResult trained on the training split (its accuracy measured on the test split).
        reference: ReferenceFeatures of the real images of the evaluation split.
        real: the evaluation split's images and labels (the first ``n_reference``, or all).
        split: the evaluation split, "val" or "test".
    """

    feature_net: Any
    reference: Any
    real: dict[str, torch.Tensor]
    split: str = "test"

    @property
    def seed_offset(self) -> int:
        """What :meth:`sample_seed` adds: VAL_SEED_OFFSET on the validation split, else 0."""
        return VAL_SEED_OFFSET if self.split == "val" else 0

    def sample_seed(self, seed: int) -> int:
        """The sampling seed of run seed ``seed`` on this split."""
        return seed + self.seed_offset

    def take(self, n: int, what: str) -> dict[str, torch.Tensor]:
        """The first ``n`` real examples (an MTDError naming ``what`` when the set holds fewer)."""
        check_count(self.split, n, len(self.real["image"]), what)
        return {k: v[:n] for k, v in self.real.items()}

    def protocol(self) -> dict[str, Any]:
        """What every distribution metric of this evaluator depends on."""
        info = self.feature_net.info
        return {"split": self.split, "feature_net": info.name,
                "feature_net_test_accuracy": float(self.feature_net.test_accuracy),
                "feature_net_n_train": int(info.n_train), "feature_net_n_test": int(info.n_test),
                "n_reference": int(len(self.real["image"])), "sampling_seed_offset": self.seed_offset}


def make_evaluator(data: Any, preset: Preset, cache_dir: Path | None = None, split: str | None = None) -> Evaluator:
    """Train (or load from the cache) the feature network on the training split and compute the reference features
    of the evaluation split (``split``, default ``EVALUATION["split"]``).

    Every experiment calls it once its training is done; under ``--train-only`` it stops the experiment there."""
    if REUSE["train_only"]:
        raise TrainedOnly(preset.name)
    from mtd_core.metrics import FeatureRecipe, reference_features, train_feature_net

    split = split or EVALUATION["split"]
    train_split = split_tensors(data, "train")
    full_test = split_tensors(data, "test")
    net = train_feature_net(train_split["image"], train_split["label"], test=(full_test["image"], full_test["label"]),
                            recipe=FeatureRecipe(epochs=preset.feature_epochs), num_classes=10, cache_dir=cache_dir)
    real = split_tensors(data, split, n=preset.n_reference, what="the FID reference set (n_reference)")
    ref = reference_features(net, real["image"], cache_dir=cache_dir)
    return Evaluator(feature_net=net, reference=ref, real=real, split=split)


def generate_batched(model: Any, preset: Preset, n: int | None = None, given: Mapping[str, Any] | None = None,
                     seed: int = 0, **options: Any) -> dict[str, Any]:
    """``generate`` in chunks of ``preset.eval_batch`` with one seeded generator; samples concatenated (on CPU).
    Every generation uses ``preset.nfe`` network evaluations and ``generate``'s defaults, updated by
    ``preset.sampling`` and then ``options``; what it spends is counted in NFE_SPENT."""
    from mtd_core.sampling.generate import generate

    given = dict(given or {})
    options = {"nfe": preset.nfe, **preset.sampling, **options}
    if "steps" in options:
        options.pop("nfe")
    total = n if n is not None else len(next(iter(given.values())))
    g = torch.Generator(model.device).manual_seed(seed)
    parts: list[dict[str, Any]] = []
    for start in range(0, total, preset.eval_batch):
        stop = min(total, start + preset.eval_batch)
        chunk = {k: (v[start:stop].to(model.device) if isinstance(v, torch.Tensor) else v[start:stop])
                 for k, v in given.items()}
        out = generate(model, n=None if chunk else stop - start, given=chunk or None, generator=g, progress=False,
                       **options)
        record_nfe(f"{out.mode}[{','.join(given)}]" if given else out.mode, out.nfe)
        parts.append(out.samples)
    return concat(parts)


def concat(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sample dicts joined along the batch (tensors on CPU; lists of strings chained)."""
    merged: dict[str, Any] = {}
    for name in parts[0]:
        vals = [p[name] for p in parts]
        merged[name] = (torch.cat([v.detach().cpu() for v in vals]) if isinstance(vals[0], torch.Tensor)
                        else [x for v in vals for x in v])
    return merged


def drawn(sample: Callable[[int, int], Mapping[str, Any]], preset: Preset, seed: int) -> dict[str, Any]:
    """``preset.n_draws`` draws of ``preset.per_draw`` samples, draw k from ``sample(n, seed + DRAW_SEED_OFFSET k)``,
    pooled in draw order (draw k is ``[k * per_draw, (k + 1) * per_draw)``)."""
    return concat([sample(preset.per_draw, seed + DRAW_SEED_OFFSET * k) for k in range(preset.n_draws)])


def joint_samples(model: Any, preset: Preset, seed: int, **options: Any) -> dict[str, Any]:
    """The preset's ``n_samples`` joint samples of ``model`` in ``n_draws`` seeded draws (:func:`drawn`)."""
    return drawn(lambda n, s: generate_batched(model, preset, n=n, seed=s, **options), preset, seed)


def sampler_protocol(preset: Preset) -> dict[str, Any]:
    """The protocol entries naming how every sample is drawn: the sampler, its NFE and its options."""
    from mtd_core.sampling.options import DEFAULT_CLIP, DEFAULT_CLIP_EPS, DEFAULT_SAMPLER, DEFAULT_SPACING

    defaults = {"sampler": DEFAULT_SAMPLER, "spacing": DEFAULT_SPACING, "clip": DEFAULT_CLIP,
                "clip_eps": DEFAULT_CLIP_EPS}
    return {"sampler": {**defaults, **preset.sampling}, "nfe": preset.nfe}


def base_protocol(preset: Preset, trained: Trained, ev: Evaluator) -> dict[str, Any]:
    """The protocol entries every experiment shares."""
    return {"dataset": preset.dataset["name"], "holdout": int(preset.dataset.get("holdout", 0) or 0),
            "steps": trained.steps, "batch_size": preset.batch_size,
            "lr": preset.lr, "backbone": dict(preset.backbone), "parameters": count_parameters(trained.model),
            **sampler_protocol(preset), **draw_protocol(preset),
            "train_wall_s": trained.train_wall_s, "final_loss": trained.final_loss,
            "weights": "EMA", **ev.protocol()}


def draw_protocol(preset: Preset) -> dict[str, Any]:
    """How the distribution metrics' samples are drawn."""
    return {"n_samples": preset.n_samples, "n_draws": preset.n_draws, "n_per_draw": preset.per_draw,
            "draw_seed_offset": DRAW_SEED_OFFSET, "fid_curve_n": list(preset.fid_curve_n),
            "draws": "FID, KID, precision/recall and the noise-like share per draw (metrics: their mean); joint "
                     "measures (coherence, agreement, cosine) on the pooled samples; fid_curve on the first N pooled"}
