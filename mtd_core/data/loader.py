"""The trainer's loader for training data that is not held in memory (a packed dataset, mtd_core/data/packed.py).

A torch DataLoader reads batches ahead of the training step in worker processes, as stored (uint8 pixels: a
quarter of the bytes of float32 images through each worker's pipe); the training process decodes them, into pinned
memory when it trains on CUDA. Its
batch sampler replays the trainer's :class:`ResumableSampler` from the sampler's state: the same global batches in
the same order, each cut to this rank's positions (``micro_positions``), so every rank reads only its share. The
loader keeps no position of its own: the sampler's state, saved in every checkpoint, is where it restarts, so a
resumed run reads exactly the batches an uninterrupted one would.

The trainer still draws each step's indices from its sampler; :meth:`StreamLoader.batch` hands over the batch read
ahead for them. Whenever the indices are not the ones read ahead (the first step after a start or resume, a probe
batch, a sampler moved from outside), the batch is read in the training process instead and the workers restart
from the sampler's current state: the data is always that of the indices asked for, whichever path reads it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from mtd_core.data.build import LoadedData
from mtd_core.data.sampler import ResumableSampler
from mtd_core.data.splits import Examples
from mtd_core.data.transforms import apply_transforms
from mtd_core.errors import ModalityDataError
from mtd_core.types import Batch, ConfigDict

if TYPE_CHECKING:
    from mtd_core.taskset import TaskSet

Read = tuple[torch.Tensor, dict[str, object] | None, str]


class _Replay:
    """The batch sampler: this rank's positions of each global batch, from a sampler state onwards (endless)."""

    def __init__(self, sampler: ResumableSampler, positions: torch.Tensor) -> None:
        self.state: ConfigDict = sampler.state_dict()
        self.positions = positions

    def __iter__(self) -> Iterator[list[int]]:
        s = self.state
        replay = ResumableSampler(int(str(s["size"])), int(str(s["batch_size"])), seed=int(str(s["seed"])),
                                  shuffle=bool(s["shuffle"]))
        replay.load_state_dict(s)
        while True:
            yield replay.next_global()[self.positions].tolist()


class _Reader:
    """The DataLoader's dataset: a whole batch per call (``__getitems__``), as stored when the dataset can say
    (``read``: compact numpy arrays, pickled through the worker's pipe, decoded in the training process); an error
    travels back as its message."""

    def __init__(self, dataset: Examples, offset: int = 0) -> None:
        self.dataset, self.offset = dataset, offset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> object:
        raise TypeError("read whole batches through __getitems__")

    def __getitems__(self, indices: list[int]) -> Read:
        idx = torch.tensor(indices, dtype=torch.long)
        try:
            read = getattr(self.dataset, "read", None) or self.dataset.get_batch  # type: ignore[attr-defined]
            return idx, read(idx + self.offset), ""
        except Exception as e:  # noqa: BLE001 - raised again in the training process, message and all
            return idx, None, str(e)


def _as_is(read: object) -> object:
    return read


def _ignore_sigint(worker_id: int) -> None:
    """In each worker: leave Ctrl-C to the training process (it reaches the whole process group), which stops
    after the current step with a checkpoint; a worker killed by it would fail that step instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _batched(dataset: Examples) -> tuple[Examples, int] | None:
    """The dataset that reads whole batches (``get_batch``) behind ``dataset`` and the offset of its examples
    (a split carved out by ``holdout`` is a window on one), or None when there is none."""
    if hasattr(dataset, "get_batch") and hasattr(dataset, "loader_workers"):
        return dataset, 0
    inner, start = getattr(dataset, "dataset", None), getattr(dataset, "start", None)
    if inner is not None and isinstance(start, int) and hasattr(inner, "get_batch") and hasattr(inner, "loader_workers"):
        return inner, start
    return None


class StreamLoader:
    """Training batches of ``data``'s training split for the indices the trainer's ``sampler`` draws (see the
    module docstring); ``positions``: this rank's positions in a global batch."""

    def __init__(self, data: LoadedData, dataset: Examples, offset: int, sampler: ResumableSampler,
                 positions: torch.Tensor, device: torch.device) -> None:
        self.data, self.reader = data, _Reader(dataset, offset)
        self.sampler, self.positions, self.device = sampler, positions, device
        self.workers = int(getattr(dataset, "loader_workers", 0))
        self.prefetch = int(getattr(dataset, "loader_prefetch", 2))
        self._it: Iterator[Read] | None = None
        self.read_ahead = 0  # batches handed over from the workers (the rest were read in this process)

    def _start(self) -> None:
        """Read ahead from the sampler's current state."""
        self.close()
        loader: DataLoader[Read] = DataLoader(
            self.reader, batch_sampler=_Replay(self.sampler, self.positions),  # type: ignore[arg-type]
            num_workers=self.workers, collate_fn=_as_is, prefetch_factor=self.prefetch if self.workers else None,
            worker_init_fn=_ignore_sigint if self.workers else None,
            generator=torch.Generator().manual_seed(0))  # its seed draw must not move the global RNG
        self._it = iter(loader)

    def _read_ahead(self, indices: torch.Tensor) -> dict[str, object] | None:
        """The batch read ahead when it is the one for ``indices``, else None."""
        if self._it is None:
            return None
        idx, got, error = next(self._it)
        if error:
            raise ModalityDataError(f"{getattr(self.reader.dataset, 'source', 'the training split')}: reading a "
                                    f"batch failed: {error}")
        if got is None or not torch.equal(idx, indices.long().cpu()):
            return None
        self.read_ahead += 1
        return got

    def batch(self, indices: torch.Tensor) -> Batch:
        """The transformed batch of the training examples at ``indices`` (in pinned memory when training on CUDA,
        so that the copy to the device can overlap)."""
        dataset = self.reader.dataset
        got = self._read_ahead(indices)
        if got is None:  # not read ahead: read here, and read ahead from the sampler's state from now on
            batch = dataset.get_batch(indices.long() + self.reader.offset)  # type: ignore[attr-defined]
            self._start()
        else:
            decode = getattr(dataset, "decode", None)
            batch = decode(got) if decode is not None else got
        if self.device.type == "cuda":
            batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return apply_transforms(self.data.transforms, batch)

    def close(self) -> None:
        """Stop the worker processes (the next :meth:`batch` starts them again)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def stream_loader(data: LoadedData, sampler: ResumableSampler, positions: Sequence[torch.Tensor],
                  device: torch.device, taskset: TaskSet | None = None) -> StreamLoader | None:
    """A StreamLoader for ``data``'s training split when it reads whole batches from disk (a packed dataset), else
    None: in-memory data (ArrayDataset) and other datasets are read by ``LoadedData.batch`` as before.
    ``positions``: this rank's positions of each micro-step (``micro_positions``). With ``taskset``, the split's
    fields are checked against it first (the dataset's ``check_taskset``: shapes, dtypes, ranges; no data read)."""
    found = _batched(data.splits.train)
    if found is None:
        return None
    check = getattr(found[0], "check_taskset", None)
    if taskset is not None and check is not None:
        check(taskset)
    return StreamLoader(data, found[0], found[1], sampler, torch.cat(list(positions)), device)
