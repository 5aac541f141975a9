"""Multi-process data-parallel training with torch.distributed: process-group setup, rank-0-only I/O helpers,
config agreement across ranks, and averaging of logged values.

Launch with ``torchrun --nproc_per_node N -m mtd_core.cli train CONFIG.toml --out DIR`` (or the ``mtd`` script):
torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and :func:`init_distributed` joins the
group with gloo on CPU and nccl on CUDA. Without those variables everything runs as a single process.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from typing import NoReturn, TypeVar

import attrs
import torch
import torch.distributed as dist

from mtd_core.errors import ConfigError

_J = TypeVar("_J")  # a JSON-representable value
_joined = False  # whether this process joined a process group (see exit_process)


@attrs.frozen
class DistContext:
    """This process's place in the data-parallel group.

    Args:
        rank: the global rank (0 does every file write and prints).
        world_size: the number of processes.
        local_rank: the rank on this machine (selects the CUDA device).
        backend: "gloo", "nccl", or "" when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.enabled:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average a dict of floats over all ranks (the same keys on every rank)."""
        if not self.enabled or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of ``t`` over all ranks, in place; no host-device synchronisation."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (e.g. a stop signal that only one rank received)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_json(self, obj: _J) -> _J:
        """Rank 0's ``obj`` (JSON-representable) on every rank."""
        if not self.enabled:
            return obj
        # JSON bytes in a uint8 tensor (not broadcast_object_list, which pickles)
        data = json.dumps(obj, sort_keys=True).encode("utf-8") if self.is_main else b""
        dev = self._device()
        size = torch.tensor([len(data)], dtype=torch.long, device=dev)
        dist.broadcast(size, src=0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if self.is_main
               else torch.empty(int(size.item()), dtype=torch.uint8, device=dev))
        dist.broadcast(buf, src=0)
        return json.loads(bytes(buf.cpu().tolist()).decode("utf-8"))

    def _device(self) -> torch.device:
        """Where collective buffers live: the local GPU under nccl, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def check_same(self, what: str, obj: object) -> None:
        """Raise a ConfigError on every rank whose ``obj`` differs from rank 0's (e.g. the resolved config)."""
        if not self.enabled:
            return
        ref = self.broadcast_json(obj)
        same = json.dumps(obj, sort_keys=True) == json.dumps(ref, sort_keys=True)
        flags = torch.tensor([0.0 if same else 1.0], device=self._device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags.item() > 0:
            raise ConfigError(f"the {what} differs between ranks (rank {self.rank} {'agrees' if same else 'differs'}); "
                              "every process must read the same config and options")


def init_distributed(device: str = "auto", init_method: str | None = None, rank: int | None = None,
                     world_size: int | None = None) -> DistContext:
    """Join the process group if this process was launched as one of several; else a single-process context.

    Args:
        device: "auto", "cpu" or "cuda[:i]": CUDA selects nccl and the device of LOCAL_RANK, CPU selects gloo.
        init_method: a rendezvous URL (default: the ``env://`` variables torchrun sets).
        rank, world_size: explicit values (tests spawning processes themselves); default: from the environment.
    """
    global _joined
    world = int(world_size if world_size is not None else os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    r = int(rank if rank is not None else os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(r)))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method or "env://", rank=r, world_size=world)
        # a script that ends without shutdown_distributed (e.g. after catching an error) still leaves the group,
        # before the interpreter's teardown (exit_process runs this hook, then skips the teardown)
        atexit.register(_leave)
        _joined = True
    return DistContext(rank=r, world_size=world, local_rank=local, backend=backend)


def _leave() -> None:
    """Destroy the process group if this process is still in one (idempotent: also registered with atexit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.enabled:
        _leave()


def exit_process(code: int) -> NoReturn:
    """End this process with ``code``; one that joined a process group skips the interpreter's teardown.

    torch 2.13's DistributedDataParallel keeps its process group alive in C++ after destroy_process_group (the
    gloo worker threads survive ``del`` of the wrapper and garbage collection), and an interpreter that finalises
    with those threads alive can abort ("terminate called without an active exception": a finished rank reported
    as failed by torchrun). So such a process runs its exit handlers (leaving the group among them), flushes its
    output and ends with ``os._exit``. A process that never joined a group exits normally (``sys.exit``). The
    ``mtd`` command ends this way; a script launched with torchrun should end with it too.
    """
    if not _joined:
        sys.exit(code)
    atexit._run_exitfuncs()  # noqa: SLF001 - the handlers a normal exit would run, while the interpreter is whole
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken (e.g. the reader of a pipe went away)
            pass
    os._exit(code)


def device_for(ctx: DistContext, device: str = "auto") -> torch.device:
    """The device this rank trains on: "auto" picks CUDA (the local rank's GPU) when available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device = {device!r}, but no CUDA device is available (use \"cpu\" or \"auto\")")
        return torch.device("cuda", ctx.local_rank if ctx.enabled or device == "cuda" else int(device.split(":")[1]))
    if device != "cpu":
        raise ConfigError(f"trainer.device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got {device!r}")
    return torch.device("cpu")
