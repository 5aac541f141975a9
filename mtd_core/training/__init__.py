"""Training: the Trainer, safe checkpoints, the EMA, data-parallel helpers, run configs and sample grids."""

from mtd_core.errors import NonFiniteLossError
from mtd_core.training.checkpoint import (
    Checkpoint,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    recover_checkpoints,
    save_checkpoint,
    write_atomic,
)
from mtd_core.training.config import (
    RunConfig,
    TrainConfig,
    apply_override,
    read_config,
    resolve_config,
)
from mtd_core.training.distributed import (
    DistContext,
    exit_process,
    init_distributed,
    shutdown_distributed,
)
from mtd_core.training.ema import EMA
from mtd_core.training.grids import GridCell, render_grid, sample_cells, save_png
from mtd_core.training.run import LoadedRun, Run, build_run, load_run, load_run_data
from mtd_core.training.state import capture_rng_state, restore_rng_state
from mtd_core.training.step import backward_and_clip, lr_at
from mtd_core.training.trainer import Trainer, TrainResult

__all__ = [
    "EMA",
    "Checkpoint",
    "DistContext",
    "GridCell",
    "LoadedRun",
    "NonFiniteLossError",
    "Run",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_override",
    "backward_and_clip",
    "build_run",
    "capture_rng_state",
    "exit_process",
    "find_checkpoint",
    "init_distributed",
    "list_checkpoints",
    "load_checkpoint",
    "load_run",
    "load_run_data",
    "recover_checkpoints",
    "lr_at",
    "read_config",
    "render_grid",
    "resolve_config",
    "restore_rng_state",
    "sample_cells",
    "save_checkpoint",
    "save_png",
    "shutdown_distributed",
    "write_atomic",
]
