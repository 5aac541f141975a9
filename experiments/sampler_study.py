"""The sampler study: FID, noise-like share and joint measures of finished runs under many sampler settings.

Defaults are chosen on the validation protocol and reported on the test protocol (docs/sampling.md, "Defaults"),
the experiments' own (``--split``, experiments/evaluation.py):

    val    reference: the validation split the run's dataset holds out (``holdout``), as the experiments' --split val
           reads it; sampling seeds 1000 + seed. A run whose dataset holds nothing out (smoke, digits, runs from
           before the holdout) falls back to 10 000 of its training images (seeded): the row's ``reference`` says
           which. No test image is read but the feature net's accuracy.
    test   reference: the whole test split; sampling seed = seed (the experiments' own).

Every row carries the split, its reference, the network evaluations it spent (``nfe_spent``) and the provenance of
the results (commit, command, the run's config).

Every setting is a dict of ``generate`` options (sampler, nfe, spacing, clip, clip_eps, eta, conditioning;
``given=label``: the labels 0-9 in turn; ``given=text`` or ``given=representation``: the captions or representations
of the split's first examples (val: of the reference's training images), each scored by conditional fidelity against
its class; ``guide=S``: with given=label, the label head's guidance at scale S towards it; ``cguide=S``: instead the
guidance of image_label's standalone classifier, a noise-aware classifier of the image alone saved with the run, or
with ``classifier_seed=K`` with seed K's run; ``encoding_temperature=text:0.5``; ``given=masked_image,mask_ratio=R``:
restoration of the split's first examples with patch masks hiding R of each, scored by PSNR pooled over the pairs and
SSIM against the true images as generated and with the observed pixels pasted back, beside the masked input's; the
masks are common.restoration_set's, the val masks seeded apart from the test ones; ``inpaint=R``: the same
restoration by any model, generating the image around the masked image's unhidden pixels, generate's ``inpaint``;
``draw=K``: the
K-th other draw of the same setting, its sampling seed DRAW_SEED_OFFSET * K apart, to measure how much a score moves
between two draws of the same model), written as ``key=value,key=value``;
the diffusers baseline takes ``sampler=diffusers_ddim``, ``sampler=diffusers_dpmpp`` (diffusers' DDIMScheduler and
DPMSolverMultistepScheduler at their defaults) or ``sampler=diffusers_best`` (DPMSolverMultistepScheduler at its best
settings, experiments/diffusers_baseline.py), on the baseline's saved U-Net. Rows are appended to ``--out`` (JSON
lines), so a study can be extended and plotted later.

    python -m experiments.sampler_study --preset cpu --experiment single_task --seed 0 --split val \\
        --setting sampler=ddim,nfe=20,clip=none --setting sampler=ddim,nfe=20,clip=static
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from experiments import common
from experiments.cli import parse_setting
from experiments.evaluation import DRAW_SEED_OFFSET, VAL_SEED_OFFSET, check_count, split_examples
from experiments.presets import Preset, get_preset
from mtd_core.errors import ConfigError, MTDError

__all__ = ["DRAW_SEED_OFFSET", "Study", "main", "parse_setting"]
VAL_REFERENCE = 10_000
CLASSES = 10


class Study:
    """A finished run with its evaluation protocol (reference set, seeds) for one split."""

    def __init__(self, preset: Preset, experiment: str, seed: int, split: str, work: Path, variant: str = "",
                 command: str | None = None) -> None:
        from mtd_core.data.build import load_dataset
        from mtd_core.plugins.registry import get_registry

        if split not in common.SPLITS:
            raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
        self.preset, self.experiment, self.seed, self.split = preset, experiment, seed, split
        self.variant, self.command = variant, command
        self.run_dir = work / preset.name / experiment / (f"variants/{variant}" if variant else "") / f"seed{seed}"
        path = self.run_dir / "config.json"  # the run's dataset: its transforms write the captions
        self.config: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.data = load_dataset(self.config.get("dataset", dict(preset.dataset)), get_registry())
        held_out = split == "val" and self.data.splits.val is not None
        self.ev = common.make_evaluator(self.data, preset, split="val" if held_out else "test")
        self.sample_seed = VAL_SEED_OFFSET + seed if split == "val" else seed
        self.val_index: torch.Tensor | None = None
        if split == "val" and not held_out:
            self._training_reference()
        else:
            self.reference_images, self.reference = self.ev.real["image"], self.ev.reference
            self.reference_source = {"split": self.ev.split, "n": len(self.reference_images)}
        self.model: Any = None
        self.unet: Any = None
        if experiment == "diffusers_baseline":
            self.unet, self.config = _load_unet(preset, seed, self.run_dir)
        else:
            from mtd_core.training import load_run

            self.model = load_run(self.run_dir, device=common.device_of(preset)).model

    def _training_reference(self) -> None:
        """The validation reference of a dataset without a holdout: VAL_REFERENCE training images (seeded)."""
        from mtd_core.metrics import reference_features

        train = common.split_tensors(self.data, "train", fields=("image",))["image"]
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345))[:VAL_REFERENCE]
        self.val_index = pick.sort().values
        self.reference_images = train[self.val_index]
        self.reference = reference_features(self.ev.feature_net, self.reference_images)
        self.reference_source = {"split": "train", "n": len(self.reference_images),
                                 "note": "the dataset holds out no validation split: seeded training images"}

    def generate(self, setting: Mapping[str, Any], n: int) -> dict[str, Any]:
        """``n`` samples of ``setting`` from the split's seed (images in [-1, 1] and any generated modality)."""
        options = dict(setting)
        seed = self.sample_seed + DRAW_SEED_OFFSET * int(options.pop("draw", 0))
        if str(options.get("sampler", "")).startswith("diffusers_"):
            from experiments.diffusers_baseline import diffusers_samples

            return {"image": diffusers_samples(self.unet, options.pop("sampler"), int(options.pop("nfe")), n,
                                               seed, self.preset, options)}
        if self.model is None:
            raise ConfigError(f"{self.experiment}: only the diffusers_* samplers apply to the diffusers baseline")
        name = options.pop("given", None)
        ratio, inpaint_ratio = options.pop("mask_ratio", None), options.pop("inpaint", None)
        if (name == "masked_image") != (ratio is not None):
            raise ConfigError(f"setting {dict(setting)}: given=masked_image and mask_ratio=R go together")
        if name == "masked_image" and "masked_image" not in self.model.taskset:
            raise ConfigError(f"{self.experiment}: given=masked_image needs a model with a masked_image modality "
                              "(inpaint=R restores with any model)")
        given = ({"masked_image": self.restoration_inputs(n, ratio)["masked"]} if name == "masked_image"
                 else self.conditions(name, n)[0] if name is not None else {})
        inpaint = None
        if inpaint_ratio is not None:
            rs = self.restoration_inputs(n, inpaint_ratio)
            inpaint = (rs["masked"], rs["mask"])
        guide, cguide = float(options.pop("guide", 0.0)), float(options.pop("cguide", 0.0))
        if (guide or cguide) and name != "label":
            raise ConfigError(f"setting {dict(setting)}: guide and cguide (guidance towards the given label) need "
                              "given=label")
        if guide and cguide:
            raise ConfigError(f"setting {dict(setting)}: guide (the label head) or cguide (the standalone "
                              "classifier), not both")
        classifier_seed = int(options.pop("classifier_seed", self.seed))
        classifier = self._classifier(classifier_seed) if cguide else None
        return _generate(self.model, self.preset, n, seed, given, options, guide or cguide, classifier, inpaint)

    def conditions(self, name: str, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """What ``given=name`` conditions on and the class each image generated from it should have: the labels 0-9
        in turn, or the tokenised captions or the representations of the split's first ``n`` examples (val: of the
        reference's training images) with those examples' labels."""
        if name == "label":
            return {"label": torch.arange(n) % CLASSES}, torch.arange(n) % CLASSES
        if name not in ("text", "representation") or name not in self.model.taskset:
            have = [g for g in ("label", "text", "representation") if g in self.model.taskset]
            raise ConfigError(f"{self.experiment}: given must be one of {have}, got {name!r}")
        if self.val_index is not None:
            ds, index = self.data.splits.train, self.val_index[:n]
        else:
            ds = split_examples(self.data, self.ev.split)
            check_count(self.ev.split, n, len(ds), f"given={name}")
            index = torch.arange(n)
        batch = self.data.batch(ds, index)
        modality = self.model.taskset[name]
        with torch.no_grad():
            values = (modality.tokenize(batch["text"]) if name == "text"
                      else modality.extractor(batch["image"]).float())
        return {name: values}, batch["label"]

    def restoration_inputs(self, n: int, ratio: float) -> dict[str, torch.Tensor]:
        """The restoration benchmark at one mask ratio on this split (common.restoration_set, as the experiments
        restore): the first ``n`` images of the reference, their patch masks and the masked images; the val masks
        are seeded VAL_SEED_OFFSET apart from the test ones."""
        if self.val_index is not None:
            return common.restoration_set(self.ev, self.preset, float(ratio), n, images=self.reference_images,
                                          seed_offset=VAL_SEED_OFFSET)
        return common.restoration_set(self.ev, self.preset, float(ratio), n)

    def _classifier(self, seed: int) -> Any:
        """image_label's standalone classifier of ``seed``'s run as a guidance classifier (x_t, t) -> logits (a
        design study's variants share the default run's, as image_label trains it)."""
        from experiments.image_label import load_standalone_classifier
        from mtd_core.sampling import head_classifier

        run_dir = self.run_dir.parents[2] if self.variant else self.run_dir.parent
        return head_classifier(load_standalone_classifier(self.preset, run_dir / f"seed{seed}"), "label", self.model)

    def score(self, setting: Mapping[str, Any], n: int) -> dict[str, Any]:
        """FID, noise-like share, and where they apply joint coherence, conditional fidelity, caption agreement (and
        unparsed share) or the representation's cosine with the extractor applied to its image."""
        from mtd_core.metrics import conditional_fidelity, features, fid, joint_coherence, noise_like_share

        common.NFE_SPENT.clear()
        start = time.perf_counter()
        samples = self.generate(setting, n)
        wall = time.perf_counter() - start
        images = samples["image"]
        row: dict[str, Any] = {"experiment": self.experiment, "variant": self.variant, "seed": self.seed,
                               "split": self.split, "reference": dict(self.reference_source),
                               "setting": dict(setting), "n": n, "sample_wall_s": round(wall, 1),
                               "nfe_spent": dict(common.NFE_SPENT),
                               "provenance": common.provenance(self.config, self.command)}
        row["fid"] = fid(features(self.ev.feature_net, images), self.reference, feature_net=self.ev.feature_net).value
        row["noise_like"] = noise_like_share(images, self.reference_images).share
        given = setting.get("given")
        if given == "masked_image" or "inpaint" in setting:
            rs = self.restoration_inputs(n, setting["mask_ratio"] if given == "masked_image" else setting["inpaint"])
            row.update(common.restoration_scores(images, rs))
        elif given is not None:
            classes = self.conditions(given, n)[1]
            row["conditional_fidelity"] = conditional_fidelity(self.ev.feature_net, images, classes).accuracy
        elif "label" in samples:
            row["joint_coherence"] = joint_coherence(self.ev.feature_net, images, samples["label"]).accuracy
        if "text" in samples and given != "text":  # as experiments/image_caption.py measures it
            from experiments.image_caption import joint_measures

            row.update(joint_measures(self.ev, self.preset, self.model, samples))
        if "representation" in samples:  # as experiments/image_representation.py measures it
            from mtd_core.metrics import cosine_consistency

            with torch.no_grad():
                target = self.model.taskset["representation"].extractor(images).float()
            row["representation_cosine"] = cosine_consistency(samples["representation"], target).mean
        return row


def _generate(model: Any, preset: Preset, n: int, seed: int, given: dict[str, torch.Tensor],
              options: dict[str, Any], guide: float = 0.0, classifier: Any = None,
              inpaint: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """``generate`` (its defaults where ``options`` are silent) in chunks of ``preset.eval_batch`` with one seeded
    generator; samples concatenated on CPU. ``guide``: the guidance scale towards the given labels, by the label
    head or by ``classifier`` (GuidanceConfig.classifier); ``inpaint``: generate's (images, mask), chunked alike."""
    from mtd_core.sampling import GuidanceConfig, generate

    g = torch.Generator(model.device).manual_seed(seed)
    parts = []
    for start in range(0, n, preset.eval_batch):
        stop = min(n, start + preset.eval_batch)
        chunk = {k: v[start:stop].to(model.device) for k, v in given.items()}
        guidance = GuidanceConfig("label", chunk["label"], guide, classifier=classifier) if guide else None
        part = None if inpaint is None else (inpaint[0][start:stop].to(model.device), inpaint[1][start:stop])
        out = generate(model, n=None if chunk else stop - start, given=chunk or None, guidance=guidance,
                       inpaint=part, generator=g, progress=False, **options)
        common.record_nfe(f"{out.mode}[{','.join(given)}]" if given else out.mode, out.nfe)
        parts.append({k: v.detach().cpu() for k, v in out.samples.items() if isinstance(v, torch.Tensor)})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _load_unet(preset: Preset, seed: int, run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The diffusers baseline's saved EMA U-Net (experiments/diffusers_baseline.py), in eval mode, and its config."""
    from safetensors.torch import load_file

    from experiments import diffusers_baseline as db

    taskset, match, bl, _ = db.build(preset)
    unet = bl.build_unet2d(match.spec, common.device_of(preset))
    path = run_dir / "unet_ema.safetensors"
    if not path.exists():
        raise ConfigError(f"{path} does not exist: train the baseline with experiments.diffusers_baseline first")
    unet.load_state_dict(load_file(str(path)))
    return unet.eval(), db.baseline_config(preset, taskset, match.spec.to_dict(), db.train_config(preset, seed))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.sampler_study``."""
    p = argparse.ArgumentParser(prog="python -m experiments.sampler_study", description=__doc__)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--experiment", required=True, help="single_task, image_label, ... or diffusers_baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="", help="a design study's run (experiments' --variant)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--n", type=int, default=None,
                   help="samples per setting (default: the preset's samples per draw, n_samples / n_draws)")
    p.add_argument("--setting", action="append", default=[], help="key=value,... (repeatable)")
    p.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file the rows are appended to")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    try:
        preset = get_preset(args.preset)
        torch.set_num_threads(args.threads or preset.threads or torch.get_num_threads())
        study = Study(preset, args.experiment, args.seed, args.split, args.work, args.variant,
                      command=common.command_line("sampler_study", argv))
        n = args.n or preset.per_draw
        for text in args.setting:
            row = study.score(parse_setting(text), n)
            row["threads"] = torch.get_num_threads()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            extra = {k: round(row[k], 4) for k in ("joint_coherence", "conditional_fidelity", "masked_input_psnr",
                                                   "restored_psnr", "restored_kept_psnr") if k in row}
            name = f"{args.experiment}{'/' + args.variant if args.variant else ''}"
            print(f"{name} seed {args.seed} {args.split} {text}: FID {row['fid']:.3f}, noise-like "
                  f"{row['noise_like']:.2%} {extra} ({row['sample_wall_s']} s)", flush=True)
    except (MTDError, ConfigError) as e:
        print(f"experiments.sampler_study: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
