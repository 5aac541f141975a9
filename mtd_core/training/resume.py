"""What --resume checks before it continues a run: the checkpoint was written by the same model, trainer options
(up to the ones that may change) and dataset; and the metrics a killed run logged after its last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from mtd_core.errors import CheckpointError, ConfigError
from mtd_core.taskset_options import saved_taskset_config
from mtd_core.training.checkpoint import Checkpoint, write_atomic
from mtd_core.training.config import TrainConfig, config_diff
from mtd_core.types import ConfigMapping


def check_resumable(ckpt: Checkpoint, model_config: ConfigMapping, config: TrainConfig,
                    run_config: ConfigMapping) -> None:
    """Raise CheckpointError naming the first differences when ``ckpt`` is not a checkpoint of this run."""
    saved_model = ckpt.config.get("model")
    if isinstance(saved_model, dict):  # the options a config saved before they were written out, made explicit
        saved_model = {**saved_model, "taskset": saved_taskset_config(saved_model.get("taskset"))}
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
    saved_data = (ckpt.config.get("run") or {}).get("dataset")
    if saved_data is not None and run_config.get("dataset") is not None and saved_data != run_config["dataset"]:
        raise CheckpointError(f"{ckpt.path}: the dataset config differs from the checkpoint's at "
                              f"{config_diff(saved_data, run_config['dataset'])[:8]}")


def trim_metrics(path: Path, step: int) -> None:
    """Drop the metrics lines a killed run wrote after its last checkpoint (at ``step``): the resumed run logs
    those steps again, and each step should appear once."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line).get("step", 0)) > step:
                continue
        except (ValueError, TypeError, AttributeError):  # a line cut short by the kill
            continue
        kept.append(line)
    if len(kept) != len(lines):
        write_atomic(path, "".join(line + "\n" for line in kept))
