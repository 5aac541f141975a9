"""DistributedDataParallel around the model's loss (the trainer's _LossModule) in one process: DDP must find the
loss tensor in what the forward returns, or with find_unused_parameters it counts every parameter unused and the
first gradient of the backward is "marked ready twice" (an image-only task set leaves parameters unused)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_accumulate import TINY
from torch.nn.parallel import DistributedDataParallel

from mtd_core.data.derive import derive_batch, model_inputs
from mtd_core.training import RunConfig, build_run
from mtd_core.training.trainer import _LossModule


@pytest.fixture
def one_process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_with_unused_parameters_sees_the_loss_of_an_image_only_task_set(one_process_group: None) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["taskset"]["modalities"] = cfg["taskset"]["modalities"][:1]
    run = build_run(RunConfig.from_dict(cfg))
    model, gen = run.model, torch.Generator().manual_seed(0)
    batch = model_inputs(model.taskset, derive_batch(
        model.taskset, run.data.batch(run.data.splits.train, torch.arange(4)), gen))
    t = torch.randint(1, 50, (4,), generator=gen)
    eps = torch.randn(4, *model.taskset.latent.shape, generator=gen)
    loss_module = _LossModule(model, "simple")

    loss_module(batch, t, eps).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert unused, "the image-only model no longer leaves a parameter unused: this test needs another case"
    model.zero_grad(set_to_none=True)

    ddp = DistributedDataParallel(loss_module, find_unused_parameters=True)
    ddp(batch, t, eps).loss.backward()  # raised "marked as ready twice" while the output was opaque to DDP
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in plain.items():  # one process: the all-reduced mean is the process's own gradient
        wrapped = grads[name]
        assert wrapped is not None and torch.allclose(wrapped, grad, rtol=1e-5, atol=1e-7), name
    assert all(g is None or not g.any() for g in (grads[n] for n in unused))
