"""Where a run's dataset files are: relative paths in a saved run config are relative to the run folder.

A run config read for ``mtd train`` names its dataset files (``[dataset]`` options such as ``path``, ``test_path``,
``folder``) relative to the current directory, as every command line does. The trainer stores that config in the
run folder's config.json and in every checkpoint with each relative path rewritten relative to the run folder (the
folder holding config.json and checkpoints/), and marks the checkpoint's config with ``"dataset_paths": "run
folder"``; ``load_run`` (``mtd sample``, ``mtd eval``) resolves them against the run folder again, so the run loads
the same files from any current directory, and a run folder moved together with its data still finds them.
Absolute paths are kept as they are. A checkpoint without the mark (written by an older mtd) meant the current
directory of its training, which is what its paths keep meaning.

A dataset option is a path when its name is ``path``, ``folder``, ``dir`` or ``file``, or ends in ``_path``,
``_folder``, ``_dir`` or ``_file``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from mtd_core.types import ConfigDict, ConfigValue

MARK_KEY = "dataset_paths"
MARK = "run folder"
_PATH_OPTION = re.compile(r"^(?:.*_)?(?:path|folder|dir|file)$")


def _relative(value: ConfigValue) -> bool:
    return isinstance(value, str) and bool(value) and not os.path.isabs(value) and not value.startswith("~")


def _mapped(dataset: Mapping[str, ConfigValue], fn: Callable[[str], str]) -> ConfigDict:
    return {k: fn(v) if _PATH_OPTION.match(k) and _relative(v) else v
            for k, v in dataset.items()}


def to_run_folder(dataset: Mapping[str, ConfigValue], run_dir: str | Path) -> ConfigDict:
    """``dataset`` (options relative to the current directory) with each relative path option rewritten relative
    to ``run_dir`` (kept absolute where no relative path leads there, e.g. another drive)."""
    base = os.path.abspath(run_dir)

    def rebase(value: str) -> str:
        try:
            return os.path.relpath(os.path.abspath(value), base)
        except ValueError:
            return os.path.abspath(value)
    return _mapped(dataset, rebase)


def from_run_folder(dataset: Mapping[str, ConfigValue], run_dir: str | Path) -> ConfigDict:
    """``dataset`` (options relative to ``run_dir``, as stored) with each relative path option made absolute."""
    base = os.path.abspath(run_dir)
    return _mapped(dataset, lambda value: os.path.normpath(os.path.join(base, value)))


def absolute_here(dataset: Mapping[str, ConfigValue]) -> ConfigDict:
    """``dataset`` with each relative path option made absolute against the current directory."""
    return _mapped(dataset, os.path.abspath)


def run_folder_of(ckpt_dir: Path) -> Path:
    """The run folder of a checkpoint folder ``RUN/checkpoints/step_<n>``."""
    return ckpt_dir.parent.parent


def stored_run_config(run_config: Mapping[str, ConfigValue], run_dir: str | Path) -> ConfigDict:
    """The run config as the trainer stores it in ``run_dir``: dataset paths relative to the run folder."""
    out = dict(run_config)
    if isinstance(out.get("dataset"), Mapping):
        out["dataset"] = to_run_folder(out["dataset"], run_dir)
    return out


def saved_dataset(config: Mapping[str, ConfigValue], ckpt_dir: Path) -> ConfigDict | None:
    """A checkpoint's dataset config (``config``: its config.json) with its paths made absolute: against its run
    folder when the checkpoint is marked so, against the current directory otherwise (an older checkpoint)."""
    run = config.get("run")
    dataset = run.get("dataset") if isinstance(run, Mapping) else None
    if not isinstance(dataset, Mapping):
        return None
    if config.get(MARK_KEY) == MARK:
        return from_run_folder(dataset, run_folder_of(ckpt_dir))
    return absolute_here(dataset)
