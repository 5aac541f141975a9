"""Shared parts of the experiments: data check, run configs, training, sampling, metrics, JSON results, the CLI.

Every experiment script is ``python -m experiments.<name> --preset P --seed S`` and writes
``<results>/<preset>/<name>/seed<S>.json`` (metrics, protocol, hardware, wall time) plus its sample grids beside it.
Training run folders (checkpoints) go under ``<work>/<preset>/<name>/seed<S>/``. ``experiments/make_results.py``
turns the JSON files into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from experiments.presets import PRESETS, Preset, get_preset
from mtd_core.errors import ConfigError, ModalityDataError, MTDError
from mtd_core.taskset import AUX_EPS as AUX_EPS_CHOICES, ENCODING_SCALES, EncodingScaleKind
from mtd_core.training.config import GRAD_CLIP_SCOPES

DEFAULT_RESULTS = Path("experiments/results")
DEFAULT_WORK = Path("runs/experiments")
RESULT_FORMAT = "mtd-experiment-result"
WINDOWED = {"kind": "windowed", "peak": 1.0, "start": 0.05, "center": 0.4, "end": 0.9}
"""The aggregated modalities' weight schedule w_t (eq. 4 of the paper): the example configs' windowed schedule."""

DESIGN: dict[str, Any] = {"variant": "", "aux_channels": None, "weights": WINDOWED, "aggregated": {},
                          "known_input": None, "known_dropout": None, "aux_eps": None, "encoding_scale": None,
                          "grad_clip_scope": None}
"""The design every multi-modal experiment trains with: where the encodings live in Z (the task set's
``aux_channels``; None: the experiment's own default), the aggregated modalities' weight schedule and any further
option of theirs (e.g. ``loss_weight``, ``head_grad``) and whether the backbone reads the known aggregated part
(``known_input``; None: the experiment's own default; ``known_dropout``: None for the task set's default) and
where the auxiliary channels' noise estimate comes from (``aux_eps``; None: the task set's default) and how the
encodings are scaled (``encoding_scale``; None: the experiment's own default) and how the trainer clips the gradient
(``grad_clip_scope``; None: the trainer's default).
``--variant NAME --aux-channels A --weights kind=...,... --aggregated key=value,... --known-input true|false
--known-dropout P --aux-eps network|heads --encoding-scale rms|spread --grad-clip-scope model|part`` change it for a design study; such runs and
results go to ``<experiment>/variants/<NAME>/`` so that they never mix with the defaults' (docs/results.md is built
from those)."""


OWN_CHANNELS = 1
AUX_EPS = "heads"
HEAD_GRAD = 0.1
"""The heads' share of their loss gradient into the shared backbone (``head_grad``) in the built-in image + label,
image + masked image and image + edge map task sets (the caption and representation modules set their own
``HEAD_GRAD``: 0.01 since session 31, and 0 with the head on the feature map), and the channels of Z of their own
(``aux_channels``) that every aggregated modality gives its encodings (the label's since session 25), whose noise
estimate the heads imply (``aux_eps``). Validation FID at 20 NFE, seeds 0 / 1: caption 1.66 / 1.45,
representation 2.00 / 2.15; with the backbone's own estimate of that channel 2.46 / 2.33 and 3.86 / 3.47; 9.50 (seed 0) and 5.08 / 5.27 with shared
channels and the whole gradient; masked image 2.17 / 1.30 against 7.04 (seed 0) with shared channels and the whole
gradient; edge map 1.26 / 1.41 against 4.97 (seed 0) likewise; image + label (shared channels, ``known_input``) 1.03 /
1.10 against 1.37 / 1.22 with the whole gradient. The heads' read-outs are unchanged or better, except the edge
map's: 2.3 dB lower (docs/sampling.md, "Telling the network the known part", "Captions and representations", "The
masked image" and "The edge map")."""


def aggregated(config: Mapping[str, Any]) -> dict[str, Any]:
    """An aggregated modality's config with this run's weight schedule and design options (DESIGN)."""
    return {**config, "weights": dict(DESIGN["weights"]), **DESIGN["aggregated"]}


# -- data ------------------------------------------------------------------------------------------------
def check_data(preset: Preset) -> None:
    """Fail early, with install instructions, when the preset's dataset is not on this machine."""
    if preset.dataset.get("name") != "fashion_mnist":
        return
    from mtd_core.data.idx import find_fashion_mnist

    try:
        find_fashion_mnist(preset.dataset.get("folder"))
    except ModalityDataError as e:
        raise ModalityDataError(
            f"preset {preset.name!r} needs Fashion-MNIST, which is not installed.\n{e}\n"
            "On Debian/Ubuntu: `apt-get install -y dataset-fashion-mnist`, then check the files with "
            "`dpkg -L dataset-fashion-mnist` (four *-idx*-ubyte.gz files)."
        ) from None


def image_modality(preset: Preset, name: str | None = None, role: str = "base", **options: Any) -> dict[str, Any]:
    """The config of a grey image modality of the preset's size, with further modality ``options`` (an aggregated
    one's are the experiment's defaults: a design study's ``--aggregated`` overrides them)."""
    d: dict[str, Any] = {"kind": "image", "role": role, "channels": 1, "size": preset.image_size, **options}
    if name is not None:
        d["name"] = name
    if role != "base":
        d = aggregated(d)
    return d


def run_config(preset: Preset, modalities: Sequence[Mapping[str, Any]], seed: int,
               transforms: Sequence[Mapping[str, Any]] = (), *, checkpoint_every: int = 0, keep_last: int = 1,
               known_input: bool = False, aux_channels: int = 0, encoding_scale: EncodingScaleKind = "rms",
               design: bool = True) -> Any:
    """The RunConfig of one training run of ``preset`` (same backbone, budget and schedule for every setting);
    ``known_input``, ``aux_channels`` and ``encoding_scale`` are the experiment's defaults of the task set's options
    (a design study may override them, unless ``design`` is False: a baseline whose design is fixed)."""
    from mtd_core.training.config import RunConfig, TrainConfig

    dataset = dict(preset.dataset)
    if transforms:
        dataset["transforms"] = [dict(t) for t in transforms]
    study = DESIGN if design else dict.fromkeys(DESIGN)
    trainer = TrainConfig(steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr,
                          warmup_steps=preset.warmup_steps, lr_schedule="cosine", final_lr_fraction=0.1,
                          ema_decay=preset.ema_decay, seed=seed, threads=preset.threads, device=preset.device,
                          log_every=max(1, min(50, preset.steps)), sample_every=0, sample_n=0,
                          checkpoint_every=checkpoint_every, keep_last=keep_last, progress=False,
                          **({"grad_clip_scope": study["grad_clip_scope"]} if study["grad_clip_scope"] else {}))
    taskset: dict[str, Any] = {"modalities": [dict(m) for m in modalities], "diffusion": {"kind": "linear", "T": 1000}}
    multi = any(m.get("role", "aggregated") != "base" for m in modalities)  # the options need an aggregated one
    aux = aux_channels if study["aux_channels"] is None else study["aux_channels"]
    if aux and multi:
        taskset["aux_channels"] = aux
        aux_eps = AUX_EPS if study["aux_eps"] is None else study["aux_eps"]
        if aux_eps != "network":  # the task set's default, left out as its to_config leaves it out
            taskset["aux_eps"] = aux_eps
    known = known_input if study["known_input"] is None else study["known_input"]
    if known and multi:
        taskset["known_input"] = True
    if study["known_dropout"] is not None:  # the task set rejects it without known_input
        taskset["known_dropout"] = study["known_dropout"]
    scale = encoding_scale if study["encoding_scale"] is None else study["encoding_scale"]
    if scale != "rms" and multi:  # "rms", the task set's default, is left out
        taskset["encoding_scale"] = scale
    return RunConfig(dataset=dataset, taskset=taskset,
                     backbone={"name": "unet", **preset.backbone}, trainer=trainer)


@attrs.frozen
class Trained:
    """A finished training run.

    Attributes:
        model: the MultiTaskModel with its EMA weights, in eval mode.
        data: the loaded dataset (LoadedData).
        run_dir: the run folder (config, metrics.jsonl, checkpoints).
        steps: optimisation steps taken.
        train_wall_s: wall time of training in seconds.
        final_loss: the last logged training loss.
    """

    model: Any
    data: Any
    run_dir: Path
    steps: int
    train_wall_s: float
    final_loss: float


REUSE = {"finished_runs": False, "train_only": False}
"""Set by ``--reuse`` (:func:`train` loads a finished run with the identical config instead of training again, and
resumes an unfinished one) and ``--train-only`` (every training step of an experiment runs, or is reused, and the
evaluation is skipped)."""


class TrainedOnly(Exception):
    """Raised after training under ``--train-only``: the experiment stops before its evaluation."""


class TrainingInterrupted(Exception):
    """Raised when SIGINT or SIGTERM stopped a training (the trainer saved a checkpoint): the experiment stops
    instead of evaluating, or training its next model after, a model trained part-way."""


def train(preset: Preset, modalities: Sequence[Mapping[str, Any]], seed: int, run_dir: Path,
          transforms: Sequence[Mapping[str, Any]] = (), *, curve: bool = False, known_input: bool = False,
          aux_channels: int = 0, encoding_scale: EncodingScaleKind = "rms", baseline: bool = False) -> Trained:
    """Train one setting from scratch in ``run_dir`` (emptied first) and return its EMA model.

    A checkpoint is written every ``preset.curve_every`` steps; ``curve`` keeps them all for :func:`learning_curve`,
    else only the last. ``known_input``, ``aux_channels`` and ``encoding_scale`` are the experiment's defaults of the
    task set's options (:func:`run_config`). With ``--reuse`` (``REUSE``), a run folder holding a finished run of
    this config (:func:`_run_state`) is evaluated as it is (its recorded training time and final loss are reported),
    and one stopped part-way is resumed from its last checkpoint. A ``baseline`` (a fixed design: no design study's
    options) is reused or resumed so with or without ``--reuse``, as :func:`trained_module` reuses its baselines.
    """
    import shutil

    from mtd_core.training import Trainer, build_run, load_run

    config = run_config(preset, modalities, seed, transforms, checkpoint_every=preset.curve_every,
                        keep_last=0 if curve else 1, known_input=known_input, aux_channels=aux_channels,
                        encoding_scale=encoding_scale, design=not baseline)
    run = build_run(config)
    reuse = REUSE["finished_runs"] or baseline
    state = _run_state(run_dir, run.config.to_dict(), preset.steps) if reuse else None
    if state is not None and state[0] == preset.steps:
        print(f"  reusing the finished run {run_dir} (step {preset.steps})")
        loss = float(state[1].get("loss", float("nan")))
    else:
        if state is not None:
            print(f"  resuming the run {run_dir} from its checkpoint at step {state[0]}")
        elif run_dir.exists():
            shutil.rmtree(run_dir)
        result = Trainer(run.model, run.data, run.config.trainer, run_dir, run_config=run.config.to_dict(),
                         resume=state is not None).fit()
        if result.status == "interrupted":
            raise TrainingInterrupted(f"{run_dir} at step {result.step}")
        loss = float(result.metrics.get("loss", float("nan")))
    loaded = load_run(run_dir, device=device_of(preset))
    wall = float(loaded.checkpoint.trainer.get("elapsed_s", float("nan")))  # the trainer's own clock, over resumes
    return Trained(model=loaded.model, data=run.data, run_dir=run_dir, steps=loaded.step, train_wall_s=wall,
                   final_loss=loss)


def _run_state(run_dir: Path, config: Mapping[str, Any], steps: int) -> tuple[int, dict[str, Any]] | None:
    """(step, last metrics line) of the run in ``run_dir`` if it is a run of ``config`` (up to the trainer options
    a resume may change) that was trained to ``steps`` or holds a checkpoint to resume from; else None."""
    from mtd_core.training.checkpoint import checkpoint_step, list_checkpoints

    try:
        stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        last = json.loads(lines[-1]) if lines else {}
        same = _normal(stored) == _normal(json.loads(json.dumps(config)))
    except (OSError, ValueError, KeyError, TypeError, MTDError):
        return None
    if not same:
        return None
    if last.get("step") == steps:
        return steps, last
    ckpts = list_checkpoints(run_dir / "checkpoints")
    return (checkpoint_step(ckpts[-1]) or 0, last) if ckpts else None


def _normal(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config as it decides the trained weights: its task set rebuilt and written back (an option added to a
    modality since the run was saved appears at its default, as the run loads it) and without the trainer options
    a resume may change (threads, checkpoint interval, ...)."""
    from mtd_core.taskset import TaskSet
    from mtd_core.training.config import TrainConfig

    written = TrainConfig.from_dict(config["trainer"]).to_dict()  # an option added since, at its default
    trainer = {k: v for k, v in written.items() if k not in TrainConfig.RESUMABLE_CHANGES}
    return {**config, "taskset": TaskSet.from_config(config["taskset"]).to_config(), "trainer": trainer}


def trained_module(module: torch.nn.Module, path: Path, key: Mapping[str, Any], fit: Callable[[], float]) -> float:
    """Train ``module`` with ``fit`` (returns its wall time) and save its weights to ``path`` (safetensors, with
    ``key`` and the wall time in a JSON beside it), or load them when the JSON's key equals ``key`` (the same
    training, already done). For a baseline trained outside the Trainer (the diffusers U-Net), so that
    re-evaluating never retrains it. Returns the (original) training wall time."""
    from safetensors.torch import load_file, save_file

    from mtd_core.training import write_atomic

    meta_path = path.with_suffix(".json")
    key = json.loads(json.dumps(key))
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if _training_part(meta.get("key")) == _training_part(key):
            module.load_state_dict(load_file(str(path), device=str(next(module.parameters()).device)))
            print(f"  reusing the trained weights {path}")
            return float(meta["train_wall_s"])
    wall = fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    tmp.replace(path)
    write_atomic(meta_path, json.dumps({"key": key, "train_wall_s": wall}, indent=1))
    return wall


EVALUATION_ONLY = ("n_samples", "n_reference", "n_curve", "n_paired", "nfe", "sampling", "sampler", "sampler_steps",
                   "cond_eta", "sdedit_t", "read_t", "mask_ratios", "elbo_n", "elbo_timesteps", "elbo_batch",
                   "feature_epochs", "eval_batch")
"""Preset fields (present or past) that only change how a trained module is evaluated, never its weights."""


def _training_part(key: Any) -> Any:
    """``key`` without the preset's evaluation-only fields: a change of sampler or sample count reuses the weights."""
    if not isinstance(key, Mapping) or not isinstance(key.get("preset"), Mapping):
        return key
    return {**key, "preset": {k: v for k, v in key["preset"].items() if k not in EVALUATION_ONLY}}


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ema: Any, cfg: Any, step: int,
                   loss: torch.Tensor) -> None:
    """One step of the recipe every run shares, with the Trainer's own pieces (the scheduled lr, backward, gradient
    clipping at ``cfg.grad_clip``), then the optimiser step and the EMA update. For the baselines that train outside
    the Trainer."""
    from mtd_core.training import backward_and_clip, lr_at

    opt.zero_grad(set_to_none=True)
    backward_and_clip(model, opt, loss, lr_at(cfg, step), cfg.grad_clip)
    opt.step()
    ema.update(model)


def device_of(preset: Preset) -> torch.device:
    """The torch device of the preset ("auto": CUDA when available)."""
    if preset.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preset.device)


def split_tensors(data: Any, split: str, fields: Sequence[str] = ("image", "label"), limit: int = 0
                  ) -> dict[str, torch.Tensor]:
    """The (transformed) fields of the train or test split as whole tensors; ``limit`` > 0 keeps the first n."""
    ds = data.splits.train if split == "train" else data.splits.test
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    batch = data.batch(ds, torch.arange(n))
    missing = [f for f in fields if f not in batch]
    if missing:
        raise ModalityDataError(f"the {split} split has no fields {missing}; it has {sorted(batch)}")
    return {f: batch[f] for f in fields}


# -- evaluation building blocks ------------------------------------------------------------------------------
@attrs.frozen
class Evaluator:
    """The fixed parts of an evaluation: the feature network (FID classifier) and the real reference set.

    Attributes:
        feature_net: the FeatureNetResult trained on the training split (test accuracy measured on the test split).
        reference: ReferenceFeatures of the real test images.
        test: the test split's images and labels (the first ``n_reference``, or all).
    """

    feature_net: Any
    reference: Any
    test: dict[str, torch.Tensor]

    def protocol(self) -> dict[str, Any]:
        """What every distribution metric of this evaluator depends on."""
        info = self.feature_net.info
        return {"feature_net": info.name, "feature_net_test_accuracy": float(self.feature_net.test_accuracy),
                "feature_net_n_train": int(info.n_train), "feature_net_n_test": int(info.n_test),
                "n_reference": int(len(self.test["image"]))}


def make_evaluator(data: Any, preset: Preset, cache_dir: Path | None = None) -> Evaluator:
    """Train (or load from the cache) the feature network and compute the reference features.

    Every experiment calls it once its training is done; under ``--train-only`` it stops the experiment there."""
    if REUSE["train_only"]:
        raise TrainedOnly(preset.name)
    from mtd_core.metrics import FeatureRecipe, reference_features, train_feature_net

    train_split = split_tensors(data, "train")
    test = split_tensors(data, "test", limit=preset.n_reference)
    full_test = split_tensors(data, "test")
    net = train_feature_net(train_split["image"], train_split["label"], test=(full_test["image"], full_test["label"]),
                            recipe=FeatureRecipe(epochs=preset.feature_epochs), num_classes=10, cache_dir=cache_dir)
    ref = reference_features(net, test["image"], cache_dir=cache_dir)
    return Evaluator(feature_net=net, reference=ref, test=test)


def generate_batched(model: Any, preset: Preset, n: int | None = None, given: Mapping[str, Any] | None = None,
                     seed: int = 0, **options: Any) -> dict[str, Any]:
    """``generate`` in chunks of ``preset.eval_batch`` with one seeded generator; samples concatenated (on CPU).
    Every generation uses ``preset.nfe`` network evaluations and ``generate``'s defaults, updated by
    ``preset.sampling`` and then ``options``."""
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
        parts.append(out.samples)
    merged: dict[str, Any] = {}
    for name in parts[0]:
        vals = [p[name] for p in parts]
        merged[name] = (torch.cat([v.detach().cpu() for v in vals]) if isinstance(vals[0], torch.Tensor)
                        else [x for v in vals for x in v])
    return merged


def conditional_measures(ev: Evaluator, preset: Preset, model: Any, given: Mapping[str, Any],
                         classes: torch.Tensor, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Generate one image for each example of ``given`` and score whether it follows what it was given: the share
    that the feature net puts in ``classes`` (each example's class: the requested label, or the class of the test
    image whose caption or representation was given; ``conditional_fidelity``), the noise-like share
    (``conditional_noise_like``) and, for one given modality, :func:`encoding_measures`. Returns the metrics and the
    samples."""
    from mtd_core.metrics import conditional_fidelity, noise_like_share

    cond = generate_batched(model, preset, given=given, seed=seed)
    cf = conditional_fidelity(ev.feature_net, cond["image"], classes)
    noise = noise_like_share(cond["image"], ev.test["image"])
    print(f"  given {', '.join(given)}: {cf}; {noise}")
    out = {"conditional_fidelity": cf.accuracy, "conditional_noise_like": noise.share}
    if len(given) == 1:
        out.update(encoding_measures(model, given, classes))
    return out, cond


CONDITIONAL_KEYS = ["conditional_fidelity", "conditional_noise_like", "encoding_spread", "encoding_class_share"]
"""What :func:`conditional_measures` reports for one given modality."""


def encoding_measures(model: Any, given: Mapping[str, Any], classes: torch.Tensor) -> dict[str, float]:
    """How far the scaled encodings of one aggregated modality's values ``given`` (a tensor) tell examples apart: their RMS
    spread about their mean (``encoding_spread``; near 0 for an encoder that maps every example to one vector) and
    the share of that spread between the ``classes`` (``encoding_class_share``), as the model encodes them when it
    samples (docs/sampling.md, "Captions and representations")."""
    (name, values), = given.items()
    with torch.no_grad():
        e = model.encode_some({name: values}, [name])[1][name]
    e = e[:, -model.taskset.encoding_latent.shape[0]:].flatten(1).double()  # its own channels (zeros elsewhere)
    y = classes.to(e.device)
    centred = e - e.mean(0)
    total = centred.pow(2).sum(1).mean()
    between = sum(centred[y == c].mean(0).pow(2).sum() * (y == c).sum() for c in y.unique()) / len(y)
    out = {"encoding_spread": float((total / e.shape[1]).sqrt()), "encoding_class_share": float(between / total)}
    print(f"  encodings of the given {name}: spread {out['encoding_spread']:.4f}, "
          f"{out['encoding_class_share']:.1%} of it between classes")
    return out


def distribution_metrics(ev: Evaluator, images: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Classifier-FID, KID and precision/recall of generated images against the real test images, the noise-like
    share (docs/metrics.md) and the feature network's own test accuracy (the protocol every table states)."""
    from mtd_core.metrics import features, fid, kid, noise_like_share, precision_recall

    f = features(ev.feature_net, images)
    r_fid = fid(f, ev.reference, feature_net=ev.feature_net)
    r_kid = kid(f, ev.reference, feature_net=ev.feature_net)
    r_pr = precision_recall(f, ev.reference, feature_net=ev.feature_net)
    r_noise = noise_like_share(images, ev.test["image"])
    for r in (r_fid, r_kid, r_pr, r_noise):
        print(f"  {prefix}{r}")
    return {f"{prefix}fid": r_fid.value, f"{prefix}kid_mean": r_kid.mean, f"{prefix}kid_std": r_kid.std,
            f"{prefix}precision": r_pr.precision, f"{prefix}recall": r_pr.recall,
            f"{prefix}noise_like": r_noise.share, f"{prefix}n_generated": float(len(images)),
            "feature_net_test_accuracy": float(ev.feature_net.test_accuracy)}


DISTRIBUTION_KEYS = ["fid", "kid_mean", "kid_std", "precision", "recall", "noise_like", "n_generated",
                     "feature_net_test_accuracy"]
"""What :func:`distribution_metrics` reports."""

JointMeasures = Callable[[Evaluator, Preset, Any, Mapping[str, Any]], dict[str, float]]
"""An experiment's measures of jointly generated samples (e.g. joint coherence): (evaluator, preset, model,
samples) -> metrics."""


def sampler_protocol(preset: Preset) -> dict[str, Any]:
    """The protocol entries naming how every sample is drawn: the sampler, its NFE and its options."""
    from mtd_core.sampling.options import DEFAULT_CLIP, DEFAULT_CLIP_EPS, DEFAULT_SAMPLER, DEFAULT_SPACING

    defaults = {"sampler": DEFAULT_SAMPLER, "spacing": DEFAULT_SPACING, "clip": DEFAULT_CLIP,
                "clip_eps": DEFAULT_CLIP_EPS}
    return {"sampler": {**defaults, **preset.sampling}, "nfe": preset.nfe}


def elbo_bits_per_dim(model: Any, data: Any, preset: Preset, seed: int) -> dict[str, float]:
    """The bound of the base in bits/dim (prior + denoising + reconstruction) on a seeded test subsample of
    ``preset.elbo_n`` examples, and each aggregated modality's decoder term apart (``elbo_decode_<name>_nats``)."""
    from mtd_core.cli.eval import evaluate_elbo

    with torch.no_grad():
        e = evaluate_elbo(model, data, preset.elbo_n, preset.elbo_timesteps, preset.elbo_batch, seed)
    print(f"  ELBO of the base {e['bits_per_dim']:.4f} bits/dim (+- {e['std_error']:.4f}) on {e['n_examples']} test "
          f"examples, {e['timesteps_per_example']} of {e['T'] - 1} denoising terms per example")
    out = {"elbo_bpd": e["bits_per_dim"], "elbo_bpd_se": e["std_error"], "elbo_n": float(e["n_examples"]),
           "elbo_timesteps": float(e["timesteps_per_example"]), "elbo_batch": float(preset.elbo_batch)}
    out.update({f"elbo_{k}_nats": v for k, v in e["terms_nats"].items() if k.startswith("decode_")})
    return out


ELBO_KEYS = ["elbo_bpd", "elbo_bpd_se", "elbo_n"]


def paired_metrics(generated: torch.Tensor, target: torch.Tensor, name: str, suffix: str = "", *,
                   pooled: bool = False) -> dict[str, float]:
    """PSNR (dB; the mean over pairs, or with ``pooled`` the PSNR of the MSE over all pairs) and mean SSIM of
    generated vs target images in [-1, 1] (data range 2), as ``{name}_psnr{suffix}``, ``{name}_ssim{suffix}`` and the
    pair count ``{name}_n{suffix}``."""
    from mtd_core.metrics import psnr, ssim

    p, s = psnr(generated, target), ssim(generated, target)
    return {f"{name}_psnr{suffix}": float(p.pooled if pooled else p.mean), f"{name}_ssim{suffix}": float(s.mean),
            f"{name}_n{suffix}": float(len(target))}


def learning_curve(run_dir: Path, preset: Preset, ev: Evaluator, seed: int) -> list[dict[str, float]]:
    """FID (at ``preset.n_curve`` samples, EMA weights, the preset's sampler) of every checkpoint of a run, oldest
    first, every point from the same seed."""
    from mtd_core.metrics import features, fid
    from mtd_core.training import list_checkpoints, load_run

    points = []
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        loaded = load_run(ckpt, device=device_of(preset))
        base = loaded.model.taskset.base.name
        samples = generate_batched(loaded.model, preset, n=preset.n_curve, seed=seed)
        value = fid(features(ev.feature_net, samples[base]), ev.reference, feature_net=ev.feature_net).value
        print(f"  curve: step {loaded.step}: FID {value:.3f} (n_generated={preset.n_curve})")
        points.append({"step": float(loaded.step), "n_generated": float(preset.n_curve), "fid": float(value)})
    return points


CURVE_KEYS = ["final_curve_fid"]


def curve_metrics(curve: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The last learning-curve point's FID, as ``final_curve_fid``."""
    return {"final_curve_fid": curve[-1]["fid"]}


def save_grid(path: Path, taskset: Any, samples: Mapping[str, Any], n: int = 16,
              class_names: Sequence[str] | None = None, title: str | None = None) -> str:
    """A captioned PNG grid of the first ``n`` samples (every image modality side by side); returns the file name."""
    from mtd_core.training.grids import render_grid, sample_cells, save_png

    k = min(n, len(next(iter(samples.values()))))
    cut = {name: v[:k] for name, v in samples.items()}
    cells = sample_cells(taskset, cut, class_names)
    save_png(path, render_grid(cells, max(1, math.ceil(math.sqrt(k))), title=title))
    return path.name


def save_rows(path: Path, rows: Sequence[Sequence[torch.Tensor]], captions: Sequence[str], title: str) -> str:
    """A PNG grid whose cell i shows the images ``rows[j][i]`` side by side (e.g. masked | restored | true)."""
    from mtd_core.training.grids import GridCell, render_grid, save_png

    cells = [GridCell(images=[r[i] for r in rows], caption=captions[i] if i < len(captions) else "")
             for i in range(len(rows[0]))]
    save_png(path, render_grid(cells, max(1, math.ceil(math.sqrt(len(cells)))), title=title))
    return path.name


def ratio_tag(ratio: float) -> str:
    """A metric-name suffix for a mask ratio: 0.25 -> "r25"."""
    return f"r{round(ratio * 100):02d}"


def restoration_set(ev: Evaluator, preset: Preset, ratio: float, n: int | None = None, *,
                    images: torch.Tensor | None = None, seed_offset: int = 0) -> dict[str, torch.Tensor]:
    """The restoration benchmark at one mask ratio: the first ``n`` (default ``n_paired``) test images, or of
    ``images``, patch masks seeded by the ratio alone (plus ``seed_offset``; so every experiment and seed restores
    exactly the same inputs), and the masked images."""
    from mtd_plugins.masked_image import apply_mask, make_mask

    x = (ev.test["image"] if images is None else images)[: preset.n_paired if n is None else n]
    g = torch.Generator().manual_seed(round(ratio * 1000) + seed_offset)
    mask = make_mask(x.shape, ratio, g, kind="patch", patch=preset.patch)
    return {"image": x, "mask": mask, "masked": apply_mask(x, mask, fill=0.0)}


def restoration_scores(restored: torch.Tensor, rs: Mapping[str, torch.Tensor], name: str = "restored", suffix: str = ""
                       ) -> dict[str, float]:
    """PSNR (pooled, RESTORATION_PROTOCOL) and SSIM against the true images of ``rs`` (a :func:`restoration_set`):
    the masked input's (``masked_input_*``), the restoration's as generated (``{name}_*``) and with the observed pixels
    pasted back (``{name}_kept_*``)."""
    from mtd_plugins.masked_image import keep_observed

    kept = keep_observed(restored, rs["masked"], rs["mask"])
    metrics: dict[str, float] = {}
    for images, key in ((rs["masked"], "masked_input"), (restored, name), (kept, f"{name}_kept")):
        metrics.update(paired_metrics(images, rs["image"], key, suffix, pooled=True))
    return metrics


RESTORATION_PROTOCOL = {
    "restoration_psnr": "pooled over the image pairs: 10 log10(L^2 / MSE over every pixel of every pair), L = 2; "
                        "with the observed pixels kept, a mask that hides only background can be restored exactly, "
                        "and a mean of per-image PSNR would be infinite",
    "restoration_ssim": "mean over the image pairs",
    "restoration_scores": "<name>_*: as generated; <name>_kept_*: with the observed pixels pasted back "
                          "(mtd_plugins.masked_image.keep_observed)"}
"""How :func:`restoration` scores (stored in the protocol of every result that reports restoration)."""

RestoreFn = Callable[[torch.Tensor], torch.Tensor]
"""A restoration method: masked images in [-1, 1] -> restored images."""


def restoration(restore: RestoreFn, name: str, ev: Evaluator, preset: Preset, out_dir: Path, seed: int
                ) -> tuple[dict[str, float], list[str]]:
    """PSNR (pooled over the pairs, RESTORATION_PROTOCOL) and SSIM of ``restore`` at every mask ratio of the preset,
    against the true test images: as generated (``{name}_psnr_<ratio>``) and with the observed pixels pasted back
    (``{name}_kept_psnr_<ratio>``), with the masked input itself as the floor (``masked_input_psnr_<ratio>``). Grids
    of ratio 0.5 and the largest ratio are written to ``out_dir``; returns the metrics and the grid file names."""
    metrics: dict[str, float] = {}
    grids = []
    for r in preset.mask_ratios:
        tag = ratio_tag(r)
        rs = restoration_set(ev, preset, r)
        restored = restore(rs["masked"])
        metrics.update(restoration_scores(restored, rs, name, f"_{tag}"))
        print(f"  ratio {r:.2f}: {name} PSNR {metrics[f'{name}_psnr_{tag}']:.2f} dB (observed pixels kept "
              f"{metrics[f'{name}_kept_psnr_{tag}']:.2f}); masked input {metrics[f'masked_input_psnr_{tag}']:.2f} dB "
              f"(n={len(restored)})")
        if r == 0.5 or r == preset.mask_ratios[-1]:
            grids.append(save_rows(out_dir / f"seed{seed}_{name}_{tag}.png",
                                   [rs["masked"][:16], restored[:16], rs["image"][:16]], [],
                                   f"{name} at ratio {r}: masked | generated | true"))
    return metrics, grids


def restoration_keys(preset: Preset, name: str) -> list[str]:
    """The metric names :func:`restoration` reports."""
    return [f"{n}_{m}_{ratio_tag(r)}" for r in preset.mask_ratios for n in ("masked_input", name, f"{name}_kept")
            for m in ("psnr", "ssim")]


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def base_protocol(preset: Preset, trained: Trained, ev: Evaluator) -> dict[str, Any]:
    """The protocol entries every experiment shares."""
    return {"dataset": preset.dataset["name"], "steps": trained.steps, "batch_size": preset.batch_size,
            "lr": preset.lr, "backbone": dict(preset.backbone), "parameters": count_parameters(trained.model),
            **sampler_protocol(preset), "n_samples": preset.n_samples,
            "train_wall_s": trained.train_wall_s, "final_loss": trained.final_loss,
            "weights": "EMA", **ev.protocol()}


# -- results -----------------------------------------------------------------------------------------------
def hardware(preset: Preset) -> dict[str, Any]:
    """The machine a result was measured on."""
    dev = device_of(preset)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)  # other jobs on the machine slow a run down: recorded with its wall time
    except OSError:
        load = None
    return {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average_1m": load,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


@attrs.frozen
class Outcome:
    """What an experiment's ``run`` returns: its numbers and how they were obtained.

    Attributes:
        metrics: metric name -> value (every key of the experiment's METRIC_KEYS).
        protocol: sample counts, sampler, steps, t values, model sizes: what the numbers depend on.
        grids: file names of the PNG grids written into the result folder.
        curve: learning-curve points (step, fid, n_generated), if the experiment records one.
    """

    metrics: dict[str, float]
    protocol: dict[str, Any]
    grids: list[str] = attrs.field(factory=list)
    curve: list[dict[str, float]] = attrs.field(factory=list)


def result_path(results: Path, preset: str, experiment: str, seed: int) -> Path:
    """Where one run's JSON goes."""
    return results / preset / experiment / f"seed{seed}.json"


def _finite(v: Any) -> Any:
    """JSON without NaN/inf tokens (strict parsers reject them): non-finite floats become strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Mapping):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def write_result(path: Path, experiment: str, preset: Preset, seed: int, outcome: Outcome, wall_s: float,
                 metric_keys: Sequence[str]) -> dict[str, Any]:
    """Write one run's JSON (atomically) after checking it has every metric key; returns the payload."""
    from mtd_core.training import write_atomic

    missing = [k for k in metric_keys if k not in outcome.metrics]
    if missing:
        raise MTDError(f"experiment {experiment!r}: its result lacks the metrics {missing}")
    payload = {"format": RESULT_FORMAT, "experiment": experiment, "preset": preset.name, "seed": seed,
               "metrics": {k: float(v) for k, v in outcome.metrics.items()}, "protocol": outcome.protocol,
               "preset_config": preset.to_dict(), "grids": list(outcome.grids), "curve": list(outcome.curve),
               "hardware": hardware(preset), "wall_s": wall_s,
               "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(path, json.dumps(_finite(payload), indent=1))
    return payload


RunFn = Callable[[Preset, int, Path, Path], Outcome]
KeysFn = Callable[[Preset], Sequence[str]]


def main(experiment: str, description: str, run: RunFn, metric_keys: KeysFn,
         argv: Sequence[str] | None = None) -> int:
    """The command line shared by every experiment script."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{experiment}", description=description)
    p.add_argument("--preset", default="cpu", help=f"one of {list(PRESETS)} (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, data order, noise and sampling (default 0)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"results folder (default {DEFAULT_RESULTS})")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"run folders (default {DEFAULT_WORK})")
    p.add_argument("--steps", type=int, default=None, help="override the preset's training steps (recorded)")
    p.add_argument("--threads", type=int, default=None,
                   help="override the preset's torch CPU threads, e.g. 1 to run two experiments side by side")
    p.add_argument("--reuse", action="store_true",
                   help="evaluate a finished run of the identical config found in --work instead of retraining "
                        "(resume one stopped part-way)")
    p.add_argument("--train-only", action="store_true",
                   help="train (into --work) and stop before the evaluation; evaluate later with --reuse")
    p.add_argument("--variant", default="", help="name a design study (needs at least one of the design options below)")
    p.add_argument("--aux-channels", type=int, default=None, help="the task set's aux_channels (design study)")
    p.add_argument("--weights", default=None, help="the aggregated weight schedule as kind=...,key=value,...")
    p.add_argument("--aggregated", default=None, help="further aggregated-modality options as key=value,...")
    p.add_argument("--known-input", choices=("true", "false"), default=None,
                   help="the task set's known_input (design study)")
    p.add_argument("--known-dropout", type=float, default=None,
                   help="the task set's known_dropout (design study; with known_input)")
    p.add_argument("--aux-eps", choices=AUX_EPS_CHOICES, default=None,
                   help="the task set's aux_eps (design study; with auxiliary channels)")
    p.add_argument("--encoding-scale", choices=ENCODING_SCALES, default=None,
                   help="the task set's encoding_scale (design study)")
    p.add_argument("--grad-clip-scope", choices=GRAD_CLIP_SCOPES, default=None,
                   help="the trainer's grad_clip_scope (design study)")
    args = p.parse_args(argv)
    REUSE["finished_runs"] = args.reuse
    REUSE["train_only"] = args.train_only
    designed = (args.aux_channels is not None or bool(args.weights) or bool(args.aggregated)
                or args.known_input is not None or args.known_dropout is not None or args.aux_eps is not None
                or args.encoding_scale is not None or args.grad_clip_scope is not None)
    if designed != bool(args.variant):
        print(f"experiments.{experiment}: error: --variant goes with --aux-channels, --weights, --aggregated, "
              "--known-input, --known-dropout, --aux-eps, --encoding-scale or --grad-clip-scope",
              file=sys.stderr)
        return 2
    from experiments.sampler_study import parse_setting

    DESIGN.update(variant=args.variant, aux_channels=args.aux_channels,
                  weights=parse_setting(args.weights) if args.weights else WINDOWED,
                  aggregated=parse_setting(args.aggregated) if args.aggregated else {},
                  known_input=None if args.known_input is None else args.known_input == "true",
                  known_dropout=args.known_dropout, aux_eps=args.aux_eps, encoding_scale=args.encoding_scale,
                  grad_clip_scope=args.grad_clip_scope)
    try:
        preset = get_preset(args.preset)
        if args.steps is not None:
            preset = preset.with_overrides(steps=args.steps, curve_every=max(1, min(preset.curve_every, args.steps)))
        if args.threads is not None:
            preset = preset.with_overrides(threads=args.threads)
        return run_experiment(experiment, run, metric_keys, preset, args.seed, args.results, args.work)
    except TrainedOnly as done:
        print(f"experiments.{experiment}: trained {done}; evaluate it with --reuse", flush=True)
        return 0
    except TrainingInterrupted as stop:
        print(f"experiments.{experiment}: interrupted: the training of {stop} stopped with a checkpoint; nothing "
              "was evaluated or written; run the same command with --reuse to resume it", file=sys.stderr)
        return 130
    except (MTDError, ConfigError) as e:
        print(f"experiments.{experiment}: error: {e}", file=sys.stderr)
        return 2


def run_experiment(experiment: str, run: RunFn, metric_keys: KeysFn, preset: Preset, seed: int,
                   results: Path, work: Path) -> int:
    """Check the data, run ``run``, time it and write its JSON (checked against ``metric_keys(preset)``)."""
    check_data(preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    variant = f"variants/{DESIGN['variant']}" if DESIGN["variant"] else ""
    out = result_path(results, preset.name, f"{experiment}/{variant}" if variant else experiment, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"experiments.{experiment}: preset {preset.name}, seed {seed}{', variant ' + variant if variant else ''}",
          flush=True)
    start = time.perf_counter()
    outcome = run(preset, seed, out.parent, work / preset.name / experiment / variant / f"seed{seed}")
    wall = time.perf_counter() - start
    write_result(out, experiment, preset, seed, outcome, wall, metric_keys(preset))
    print(f"experiments.{experiment}: wrote {out} ({wall:.0f} s)", flush=True)
    return 0
