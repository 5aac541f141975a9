"""What --resume checks before it continues a run: the checkpoint was written by the same model, trainer options
(up to the ones that may change) and dataset, and its trainer, optimizer and RNG states are whole; the restore of a
trainer from it; and the metrics a run stopped before its next checkpoint logged, which are dropped."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtd_core.errors import CheckpointError, ConfigError
from mtd_core.taskset_options import saved_taskset_config
from mtd_core.training.checkpoint import Checkpoint, list_checkpoints, load_checkpoint, write_atomic
from mtd_core.training.checkpoint_schema import check_trainer_state
from mtd_core.training.config import TrainConfig, config_diff
from mtd_core.training.datapaths import from_run_folder, saved_dataset
from mtd_core.training.state import restore_rng_state
from mtd_core.types import ConfigMapping

if TYPE_CHECKING:
    from mtd_core.training.trainer import Trainer


def check_resumable(ckpt: Checkpoint, model_config: ConfigMapping, config: TrainConfig,
                    run_config: ConfigMapping, reading_options: Sequence[str] = ()) -> None:
    """Raise CheckpointError naming the first differences when ``ckpt`` is not a checkpoint of this run.
    ``reading_options``: dataset options that change how the data is read, not what it is (the dataset's info
    lists them as "reading_options", e.g. a packed dataset's workers): they may change."""
    saved_model = ckpt.config.get("model")
    if isinstance(saved_model, dict):  # the options a config saved before they were written out, made explicit
        from mtd_core.plugins.registry import get_registry

        saved_model = {**saved_model, "taskset": saved_taskset_config(saved_model.get("taskset"), get_registry())}
    now_model = json.loads(json.dumps(model_config))
    if saved_model != now_model:
        raise CheckpointError(f"{ckpt.path}: the checkpoint's model differs from this run's at "
                              f"{config_diff(saved_model, now_model)[:8]}; resume with the config the run was started "
                              "with")
    saved_trainer = (ckpt.config.get("run") or {}).get("trainer", {})
    try:  # an option added since the checkpoint was written, at its default
        saved_trainer = TrainConfig.from_dict(saved_trainer).to_dict()
    except ConfigError:  # compared as written: the differences name what changed
        pass
    changed = [k for k in config_diff(saved_trainer, config.to_dict()) if k not in TrainConfig.RESUMABLE_CHANGES]
    if changed:
        raise CheckpointError(f"{ckpt.path}: trainer options {changed} differ from the checkpoint's; only "
                              f"{list(TrainConfig.RESUMABLE_CHANGES)} may change on --resume")
    # dataset paths compared as absolute paths: the checkpoint's against its run folder (or, written by an older
    # mtd, the current directory), this run's (stored relative to the run folder too) likewise
    saved_data = saved_dataset(ckpt.config, ckpt.path) if ckpt.path is not None else None
    now_data = run_config.get("dataset")
    if saved_data is not None and isinstance(now_data, dict) and ckpt.path is not None:
        now_data = from_run_folder(now_data, ckpt.path.parent.parent)
        saved_data, now_data = ({k: v for k, v in d.items() if k not in reading_options} for d in (saved_data, now_data))
        if saved_data != now_data:
            raise CheckpointError(f"{ckpt.path}: the dataset config differs from the checkpoint's at "
                                  f"{config_diff(saved_data, now_data)[:8]}")


def trim_metrics(path: Path, step: int, *, announce: bool = True) -> int:
    """Drop the lines of ``path`` (metrics.jsonl) past ``step``, the step training continues from (0 when the run
    holds no checkpoint), and lines cut short by a kill: a run stopped before its next checkpoint logged them, the
    continued run logs those steps again, and each step should appear once. The file is replaced atomically; with
    ``announce`` one line on stderr says how many lines were dropped. Returns that number."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line).get("step", 0)) > step:
                continue
        except (ValueError, TypeError, AttributeError):  # a line cut short by the kill
            continue
        kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        write_atomic(path, "".join(line + "\n" for line in kept))
        if announce:
            since = f"after step {step}, its last checkpoint" if step else "before its first checkpoint"
            print(f"mtd: {path}: dropped {dropped} line(s) logged {since} by a run that was stopped there (those "
                  "steps are trained and logged again)", file=sys.stderr, flush=True)
    return dropped


def _check_optimizer(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """The checkpoint's param groups have every option of this optimizer's, of the same type, and each parameter's
    state tensors the parameter's shape (torch checks neither; a step would fail or train wrongly later)."""
    assert ckpt.optimizer is not None
    where = f"{ckpt.path}/state.json"
    saved_groups, groups = ckpt.optimizer["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise CheckpointError(f"{where}: 'optimizer.param_groups' has {len(saved_groups)} groups, the optimizer "
                              f"{len(groups)}")
    for i, (saved, group) in enumerate(zip(saved_groups, groups)):
        for key, value in group.items():
            if key == "params" or (key not in saved and key not in _REQUIRED_OPTIONS):  # torch fills in the rest
                continue
            if not _same_kind(saved.get(key, ...), value):
                raise CheckpointError(f"{where}: the key 'optimizer.param_groups.{i}.{key}' must be "
                                      f"{_kind(value)}, got {saved.get(key, 'nothing (missing)')!r:.60}")
    params = [p for g in groups for p in g["params"]]
    names = {name for st in ckpt.optimizer["state"].values() for name in st}
    for pid, st in ckpt.optimizer["state"].items():
        if set(st) != names:
            raise CheckpointError(f"{ckpt.path}/optimizer.safetensors: parameter {pid} has the state "
                                  f"{sorted(st)}, expected {sorted(names)} as every other parameter")
        for name, v in st.items():
            if pid >= len(params) or (isinstance(v, torch.Tensor) and v.dim() and v.shape != params[pid].shape):
                raise CheckpointError(f"{ckpt.path}/optimizer.safetensors: 'state.{pid}.{name}' does not fit parameter "
                                      f"{pid} of the model ({len(params)} parameters)")


_REQUIRED_OPTIONS = ("lr", "betas", "eps", "weight_decay")  # the options torch does not default


def _kind(value: object) -> str:
    return ("true or false" if isinstance(value, bool) else "a number" if isinstance(value, (int, float))
            else f"a list of {len(value)} numbers" if isinstance(value, (list, tuple))
            else "null or true or false" if value is None else f"a {type(value).__name__}")


def _same_kind(saved: object, value: object) -> bool:
    if isinstance(value, bool) or value is None:
        return isinstance(saved, bool) or (value is None and saved is None)
    if isinstance(value, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(value, (list, tuple)):
        return (isinstance(saved, (list, tuple)) and len(saved) == len(value)
                and all(_same_kind(a, b) for a, b in zip(saved, value)))
    return type(saved) is type(value)


def resume_trainer(trainer: Trainer) -> None:
    """Restore ``trainer`` from the newest checkpoint in its run folder (weights, EMA, optimizer, data order, RNG,
    step, elapsed time), after checking that it belongs to this run and that its state files are whole."""
    if not list_checkpoints(trainer.checkpoint_dir):
        raise CheckpointError(f"nothing to resume: {trainer.out_dir} holds no complete checkpoint (looked in "
                              f"{trainer.checkpoint_dir}); start the run without --resume")
    ckpt = load_checkpoint(trainer.checkpoint_dir)
    reading = trainer.data.info.get("reading_options")
    check_resumable(ckpt, trainer.model.config(), trainer.config, trainer.run_config,
                    [str(k) for k in reading] if isinstance(reading, list) else ())
    check_trainer_state(Path(f"{ckpt.path}/state.json"), ckpt.trainer, resuming=True)
    try:
        trainer.model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.path}/model.safetensors does not fit the model: {e}") from None
    trainer.emas.restore(ckpt.ema, ckpt.emas, ckpt.trainer.get("ema_updates", 0), ckpt.path, trainer.device)
    if ckpt.optimizer is None:
        raise CheckpointError(f"{ckpt.path}: has no optimizer state; it cannot be resumed (only sampled from)")
    _check_optimizer(ckpt, trainer.optimizer)
    try:
        trainer.optimizer.load_state_dict(ckpt.optimizer)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{ckpt.path}: the optimizer state does not fit the model: {e}") from None
    trainer.sampler.load_state_dict(ckpt.trainer["sampler"])
    if ckpt.rng is not None:
        restore_rng_state(ckpt.rng, ckpt.path)
    trainer.step = trainer._saved_step = ckpt.step
    trainer.elapsed_s = float(ckpt.trainer.get("elapsed_s", 0.0))
    trainer.examples_seen = int(ckpt.trainer.get("examples_seen", 0))
    trainer.metrics = dict(ckpt.trainer.get("metrics", {}))
    trainer.last_checkpoint = ckpt.path
    if trainer.step >= trainer.config.steps and trainer.dist.is_main:
        print(f"mtd: the checkpoint is at step {trainer.step}, which already reaches trainer.steps = "
              f"{trainer.config.steps}; raise it (e.g. --set trainer.steps={2 * trainer.config.steps}) to train "
              "longer")
