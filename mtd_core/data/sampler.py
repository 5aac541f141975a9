"""A seeded, resumable, distributed batch sampler.

The data order is a stream of epochs, each a permutation of the dataset drawn from ``seed + epoch``; a global
batch is the next ``batch_size`` indices of that stream (crossing epoch boundaries, so every example is used
once per epoch and any dataset size works). Rank r of W processes takes the r-th contiguous slice of each global
batch, so W processes see exactly the examples one process would, in the same positions: data-parallel runs
match single-process runs, and the order does not depend on the world size.

The state (epoch, position) goes into every checkpoint; restoring it continues the exact same order.
"""

from __future__ import annotations

import torch

from mtd_core.errors import CheckpointError, ConfigError
from mtd_core.types import ConfigDict, ConfigMapping


class ResumableSampler:
    """Produces the index batches of one rank, deterministically, with a saveable position.

    Args:
        size: number of examples in the dataset.
        batch_size: the global batch size (over all ranks); must be divisible by ``world_size``.
        seed: seeds every epoch's permutation.
        shuffle: permute each epoch (False: 0, 1, 2, ... every epoch).
        rank: this process's rank.
        world_size: number of data-parallel processes.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        if size < 1:
            raise ConfigError("the training set is empty")
        if batch_size < 1 or batch_size % world_size:
            raise ConfigError(f"trainer.batch_size = {batch_size} must be a positive multiple of the number of "
                              f"processes ({world_size})")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside 0..{world_size - 1}")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._perm: torch.Tensor | None = None

    @property
    def local_batch_size(self) -> int:
        """Examples per batch on this rank."""
        return self.batch_size // self.world_size

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                self._perm = torch.randperm(self.size, generator=g)
            else:
                self._perm = torch.arange(self.size)
        return self._perm

    def next_global(self) -> torch.Tensor:
        """The next global batch of indices (all ranks), advancing the position."""
        out = []
        need = self.batch_size
        while need:
            perm = self._permutation()
            take = perm[self.position:self.position + need]
            out.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position == self.size:
                self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        return torch.cat(out)

    def next(self) -> torch.Tensor:
        """This rank's slice of the next global batch."""
        b = self.local_batch_size
        return self.next_global()[self.rank * b:(self.rank + 1) * b]

    def state_dict(self) -> ConfigDict:
        """JSON-representable position in the data stream."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": self.size,
                "batch_size": self.batch_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: ConfigMapping) -> None:
        """Continue from a saved position; the dataset size, batch size, seed and shuffling must match."""
        for key in ("seed", "size", "batch_size", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise CheckpointError(
                    f"cannot resume the data order: the checkpoint's sampler has {key} = {state.get(key)!r}, this run "
                    f"has {getattr(self, key)!r} (the dataset or trainer config changed since the checkpoint)"
                )
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None
