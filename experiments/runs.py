"""Run configs and training: the design every experiment trains with, the run config of a setting, training (or
reusing, or resuming) a run, and the baselines trained outside the Trainer.

Training run folders (checkpoints) go under ``<work>/<preset>/<experiment>/seed<S>/``. Nothing here evaluates a
model (experiments/evaluation.py) or writes a result (experiments/results.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from experiments.presets import Preset
from mtd_core.errors import ModalityDataError, MTDError

DEFAULT_WORK = Path("runs/experiments")
DESIGN: dict[str, Any] = {"variant": "", "aux_channels": None, "weights": None, "aggregated": {},
                          "known_input": None, "known_dropout": None, "aux_eps": None, "encoding_scale": None,
                          "grad_clip_scope": None}
"""A design study's departures from the measured design. Every experiment's task set is its minimal config: the
modalities' data options only, the design coming from their kinds (``Modality.design``, docs/models.md, "Defaults
and why"), exactly as a user's minimal config gets it. None leaves an option to the kinds; ``--variant NAME
--aux-channels A --weights kind=...,... --aggregated key=value,... --known-input true|false --known-dropout P
--aux-eps network|heads --encoding-scale rms|spread --grad-clip-scope model|part`` set it; such runs and results go
to ``<experiment>/variants/<NAME>/`` so that they never mix with the defaults' (docs/results.md is built from those)."""


def aggregated(config: Mapping[str, Any]) -> dict[str, Any]:
    """An aggregated modality's config with a design study's weight schedule and options (DESIGN), if any."""
    weights = {"weights": dict(DESIGN["weights"])} if DESIGN["weights"] else {}
    return {**config, **weights, **DESIGN["aggregated"]}


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


TASKSET_STUDY = ("aux_channels", "aux_eps", "known_input", "known_dropout", "encoding_scale")
"""The task-set options a design study may set (DESIGN)."""


def run_config(preset: Preset, modalities: Sequence[Mapping[str, Any]], seed: int,
               transforms: Sequence[Mapping[str, Any]] = (), *, checkpoint_every: int = 0, keep_last: int = 1,
               design: bool = True) -> Any:
    """The RunConfig of one training run of ``preset`` (same backbone, budget and schedule for every setting). The
    task set is the minimal config of ``modalities`` (the design comes from their kinds) and a design study's
    departures (DESIGN), unless ``design`` is False (a baseline)."""
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
    if any(m.get("role", "aggregated") != "base" for m in modalities):  # the options need an aggregated one
        taskset.update({key: study[key] for key in TASKSET_STUDY if study[key] is not None})
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
        config: the resolved run config (RunConfig.to_dict(), as the run folder's config.json holds it).
    """

    model: Any
    data: Any
    run_dir: Path
    steps: int
    train_wall_s: float
    final_loss: float
    config: dict[str, Any] = attrs.field(factory=dict)


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
          transforms: Sequence[Mapping[str, Any]] = (), *, curve: bool = False, baseline: bool = False) -> Trained:
    """Train one setting from scratch in ``run_dir`` (emptied first) and return its EMA model.

    A checkpoint is written every ``preset.curve_every`` steps; ``curve`` keeps them all for :func:`learning_curve`,
    else only the last. With ``--reuse`` (``REUSE``), a run folder holding a finished run of this config (:func:`_run_state`) is evaluated as it is (its recorded training time and final loss are reported),
    and one stopped part-way is resumed from its last checkpoint. A ``baseline`` (a fixed design: no design study's
    options) is reused or resumed so with or without ``--reuse``, as :func:`trained_module` reuses its baselines.
    """
    import shutil

    from mtd_core.training import Trainer, build_run, load_run

    config = run_config(preset, modalities, seed, transforms, checkpoint_every=preset.curve_every,
                        keep_last=0 if curve else 1, design=not baseline)
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
                   final_loss=loss, config=run.config.to_dict())


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
    return {**config, "taskset": TaskSet.from_config(config["taskset"], saved=True).to_config(), "trainer": trainer}


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


EVALUATION_ONLY = ("n_samples", "n_draws", "fid_curve_n", "n_reference", "n_curve", "n_paired", "nfe", "sampling",
                   "sampler", "sampler_steps", "cond_eta", "sdedit_t", "read_t", "mask_ratios", "elbo_n",
                   "elbo_timesteps", "elbo_batch", "feature_epochs", "eval_batch", "threads")
"""Preset fields (present or past) that only change how a trained module is evaluated, never its weights (and the
thread count, which the Trainer's runs ignore as well)."""


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



def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
