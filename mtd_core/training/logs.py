"""TensorBoard event files beside metrics.jsonl (``trainer.tensorboard = true``, the optional extra
``pip install 'mtd[tensorboard]'``).

The same scalars as each metrics.jsonl line (loss and its terms, grad_norm, lr, examples_per_s, elapsed_s), under
the same names, at the same steps, written by rank 0 through torch's ``SummaryWriter`` into ``<run>/tensorboard/``.
A resumed run opens its writer with ``purge_step`` = the step it continues from + 1, so TensorBoard hides the
events a stopped run logged past its last checkpoint, as those lines of metrics.jsonl are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtd_core.errors import ConfigError

INSTALL = "pip install 'mtd[tensorboard]'"


def _summary_writer() -> Any:  # Any: torch.utils.tensorboard.SummaryWriter, imported only when asked for
    """torch's SummaryWriter class; a ConfigError naming the option and the install command without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises ImportError when the tensorboard package is missing or too old
        raise ConfigError(f"trainer.tensorboard = true needs the tensorboard package ({e}); install it with "
                          f"{INSTALL} (or pip install tensorboard), or set trainer.tensorboard = false") from None
    return SummaryWriter


class TensorBoardLog:
    """The TensorBoard writer of a run; does nothing unless ``enabled``.

    Args:
        folder: where the event files go (``<run>/tensorboard``).
        enabled: ``trainer.tensorboard``; checked at once (the package must import, on every process).
        main: whether this process writes (rank 0).
    """

    def __init__(self, folder: Path, enabled: bool, main: bool = True) -> None:
        self.folder = folder
        self._cls = _summary_writer() if enabled else None
        self._main = main
        self._writer: Any = None  # Any: the SummaryWriter (optional extra), None until opened

    def open(self, step: int) -> None:
        """Start writing for a run continuing from ``step`` (events past it, from a stopped run, are purged)."""
        if self._cls is not None and self._main and self._writer is None:
            self._writer = self._cls(log_dir=str(self.folder), purge_step=step + 1)

    def write(self, metrics: Mapping[str, float]) -> None:
        """One metrics line: every value but ``step``, at ``metrics["step"]``."""
        if self._writer is None:
            return
        step = int(metrics["step"])
        for name, value in metrics.items():
            if name != "step":
                self._writer.add_scalar(name, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
