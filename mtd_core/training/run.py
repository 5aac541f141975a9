"""From a run config to the objects of a run (data, task set, model), and from a run folder back to a model.

Used by ``mtd train``, ``mtd sample``, ``mtd eval`` and ``mtd demo``; equally usable from Python:

    run = build_run(read_config("examples/configs/image_label.toml"))
    Trainer(run.model, run.data, run.config.trainer, "runs/x", run_config=run.config.to_dict()).fit()
    loaded = load_run("runs/x")            # the EMA weights of the latest checkpoint
    loaded = load_run("runs/x", ema="long")  # those of the EMA trainer.emas calls "long"; ema="model": raw weights
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch

from mtd_core.data.build import LoadedData, load_dataset
from mtd_core.data.check import check_against_taskset
from mtd_core.data.derive import derive_batch
from mtd_core.data.splits import ArrayDataset
from mtd_core.errors import CheckpointError, MTDError
from mtd_core.training.checkpoint import Checkpoint, find_checkpoint, load_checkpoint, recover_run
from mtd_core.training.config import RunConfig, resolve_config
from mtd_core.training.datapaths import saved_dataset
from mtd_core.training.distributed import DistContext, device_for
from mtd_core.training.ema_bank import choose_ema
from mtd_core.training.memory import check_batch_memory
from mtd_core.types import Batch, ConfigDict

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel
    from mtd_core.plugins.registry import Registry
    from mtd_core.taskset import TaskSet

FIT_EXAMPLES = 4096  # examples shown to Modality.fit (e.g. to train a tokenizer)
FIT_BATCH = 256


@attrs.frozen
class Run:
    """The parts of a run ready to train.

    Attributes:
        config: the resolved run config.
        data: the loaded dataset (renamed fields, transforms).
        model: the freshly initialised MultiTaskModel (seeded with ``trainer.seed``); ``model.taskset`` is the
            task set, with data-dependent modalities (e.g. a text tokenizer) already fitted.
    """

    config: RunConfig
    data: LoadedData
    model: MultiTaskModel

    @property
    def taskset(self) -> TaskSet:
        """The model's task set."""
        return self.model.taskset


def fit_batches(data: LoadedData, limit: int = FIT_EXAMPLES, batch: int = FIT_BATCH) -> Iterator[Batch]:
    """Training batches (transformed, not derived) for ``Modality.fit``: the first ``limit`` examples."""
    n = min(limit, len(data.splits.train))
    for start in range(0, n, batch):
        yield data.batch(data.splits.train, torch.arange(start, min(n, start + batch)))


def _world_size() -> int:
    """The number of data-parallel processes sharing the global batch (1 outside torchrun)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def build_run(config: RunConfig, registry: Registry | None = None, *, check_data: bool = True,
              assets: dict[str, dict[str, bytes]] | None = None) -> Run:
    """Resolve ``config``, load its data, fit data-dependent modalities, and build the model.

    Args:
        config: the run config (from :func:`mtd_core.training.config.read_config`).
        registry: the plugin registry (default: ``get_registry()``).
        check_data: check every stored field against its modality's DataSpec, and derive a first batch, so bad
            data fails before training with a message naming the file and example. (Whatever it is, a batch whose
            estimated memory exceeds the device's is refused before the model is built: training/memory.py.)
        assets: modality name -> saved assets (from a checkpoint, when resuming): those modalities load them
            instead of being fitted again, so a resumed model has exactly the checkpoint's tokenizer.
    """
    from mtd_core.model import MultiTaskModel
    from mtd_core.taskset import TaskSet

    if registry is None:
        from mtd_core.plugins.registry import get_registry

        registry = get_registry()
    resolved = resolve_config(config, registry)
    data = load_dataset(resolved.dataset, registry)
    taskset = TaskSet.from_config(resolved.taskset, registry)
    if check_data:
        for split in (data.splits.train, data.splits.test):
            if isinstance(split, ArrayDataset):
                check_against_taskset(taskset, split.fields, split.source, split.where)
            elif callable(check := getattr(split, "check_taskset", None)):  # data not in memory (packed): no read
                check(taskset)
    batches: list[Batch] | None = None
    for name, m in taskset.modalities.items():
        if assets and name in assets:
            m.load_assets(assets[name])
            continue
        if batches is None:
            batches = list(fit_batches(data))
        m.fit(batches)
    if check_data:
        first = data.batch(data.splits.train, torch.arange(min(2, len(data.splits.train))))
        derive_batch(taskset, first, torch.Generator().manual_seed(0))
    device = device_for(DistContext(), resolved.trainer.device)
    check_batch_memory(resolved, device, taskset=taskset, world_size=_world_size())
    torch.manual_seed(resolved.trainer.seed)
    backbone = dict(resolved.backbone)
    model = MultiTaskModel(taskset, backbone.pop("name"), backbone, registry)
    return Run(config=resolved, data=data, model=model)


@attrs.frozen
class LoadedRun:
    """A trained model restored from a run folder.

    Attributes:
        model: the MultiTaskModel with the checkpoint's weights (EMA weights unless asked otherwise), in eval mode.
        checkpoint: the checkpoint it came from (its ``config`` holds the model, run and dataset info).
        run_config: the resolved run config, or None for a run trained without one (Python API).
        weights: "model" (the raw weights), or the name of the EMA it holds: "ema" (the default) or one of
            ``trainer.emas``.
    """

    model: MultiTaskModel
    checkpoint: Checkpoint
    run_config: RunConfig | None
    weights: str

    @property
    def step(self) -> int:
        """Training steps of the checkpoint."""
        return self.checkpoint.step

    @property
    def dataset_info(self) -> ConfigDict:
        """The training dataset's info (class names, sizes, ...)."""
        return dict(self.checkpoint.config.get("dataset_info") or {})


def load_run(path: str | Path, *, ema: bool | str = True, device: str | torch.device = "cpu",
             registry: Registry | None = None) -> LoadedRun:
    """Rebuild the model of a run folder (or of one checkpoint folder) with its trained weights.

    The leftovers of a killed save are recovered first, as every command does when it opens a run folder
    (:func:`~mtd_core.training.checkpoint.recover_run`, one line on stderr when it did anything); relative dataset
    paths of the stored run config are resolved against the run folder (mtd_core/training/datapaths.py).

    Args:
        path: a run folder (its latest checkpoint is used), its checkpoints folder, or one checkpoint folder.
        ema: True: the default EMA's weights when the checkpoint has them (what samples should be drawn with);
            False or "model": the raw weights; a name: that EMA ("ema", the default, or one of ``trainer.emas``),
            a ConfigError listing the checkpoint's EMAs when it has none of that name.
        device: where to put the model.
        registry: the plugin registry (default: ``get_registry()``).
    """
    from mtd_core.model import MultiTaskModel

    recover_run(path)
    ckpt_dir = find_checkpoint(path)
    ckpt = load_checkpoint(ckpt_dir, parts=("model", "ema", "assets"))
    weights, averaged = choose_ema(ckpt.ema, ckpt.emas, ema, ckpt_dir)
    model_config = ckpt.config.get("model")
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{ckpt_dir}/config.json: has no 'model' config; it was not written by mtd's trainer")
    try:
        model = MultiTaskModel.from_config(model_config, registry, assets=ckpt.assets, saved=True)
    except MTDError as e:
        raise type(e)(f"{ckpt_dir}: cannot rebuild the model: {e}") from e
    try:
        model.load_state_dict(ckpt.model)
        if averaged is not None:
            state = model.state_dict()
            with torch.no_grad():
                for k, v in averaged.items():
                    state[k].copy_(v)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{ckpt_dir}: the weights do not fit the model rebuilt from its config: {e}") from None
    model.to(device).eval()
    return LoadedRun(model=model, checkpoint=ckpt, run_config=_saved_run_config(ckpt), weights=weights)


def _saved_run_config(ckpt: Checkpoint) -> RunConfig | None:
    """The run config a checkpoint stores, its dataset paths absolute; None when it stores none."""
    run = ckpt.config.get("run")
    if not (isinstance(run, dict) and {"dataset", "taskset", "backbone", "trainer"} <= set(run)):
        return None
    assert ckpt.path is not None
    try:
        return RunConfig.from_dict({**run, "dataset": saved_dataset(ckpt.config, ckpt.path)})
    except MTDError as e:
        raise CheckpointError(f"{ckpt.path}/config.json: the key 'run' is not a valid run config: {e}") from None


def load_run_data(loaded: LoadedRun, registry: Registry | None = None) -> LoadedData:
    """The dataset a run was trained on (from its stored run config)."""
    if loaded.run_config is None:
        raise CheckpointError(f"{loaded.checkpoint.path}: stores no run config (dataset), so its data cannot be "
                              "reloaded; it was trained through the Python API without run_config")
    if registry is None:
        from mtd_core.plugins.registry import get_registry

        registry = get_registry()
    return load_dataset(loaded.run_config.dataset, registry)


def dumps_json(obj: object) -> str:
    """Indented JSON for reports and ``--json`` outputs."""
    return json.dumps(obj, indent=2, sort_keys=False, default=str)
