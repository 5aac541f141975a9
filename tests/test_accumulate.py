"""Gradient accumulation (trainer.accumulate): k micro-steps over slices of the global batch give the update of one
k-times larger batch, with clipping, the lr schedule, the EMA and logging once per optimisation step; resume stays
bit-identical; under DDP the gradients are all-reduced on the last micro-step only."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mtd_core.errors import ConfigError
from mtd_core.tomlio import dumps_toml
from mtd_core.training import (
    DistContext,
    RunConfig,
    TrainConfig,
    Trainer,
    build_run,
    load_checkpoint,
)

TINY: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "taskset": {"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                               {"kind": "label", "num_classes": 10, "hidden": 16}],
                "diffusion": {"kind": "linear", "T": 50}},
    "backbone": {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4},
    "trainer": {"steps": 3, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every": 0, "log_every": 1,
                "sample_n": 0, "progress": False, "device": "cpu", "ema_decay": 0.9},
}


def tiny(image_only: bool = False, **trainer: Any) -> RunConfig:
    cfg = copy.deepcopy(TINY)
    if image_only:
        cfg["taskset"]["modalities"] = cfg["taskset"]["modalities"][:1]
    cfg["trainer"].update(trainer)
    return RunConfig.from_dict(cfg)


def _train(cfg: RunConfig, out: Path) -> tuple[Trainer, list[dict[str, torch.Tensor]]]:
    """A finished run and the gradients the optimizer stepped with (after clipping), one dict per step."""
    run = build_run(cfg)
    tr = Trainer(run.model, run.data, cfg.trainer, out, run_config=run.config.to_dict())
    grads: list[dict[str, torch.Tensor]] = []
    step = tr.optimizer.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        grads.append({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    tr.optimizer.step = recording_step  # type: ignore[method-assign]
    tr.fit()
    return tr, grads


def _metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("k", [2, 4])
def test_accumulating_equals_one_batch_without_encoding_statistics(tmp_path: Path, k: int) -> None:
    """An image-only task set (no EncodingScale): the weights, EMA, logged loss and gradient norm after 3 steps equal
    those of accumulate = 1 (measured max |difference| 3e-7). grad_clip is small enough to clip every step, so
    clipping a micro-step's gradient instead of the step's would show, as would a loss summed, not averaged."""
    one, _ = _train(tiny(image_only=True, grad_clip=0.05), tmp_path / "one")
    acc, _ = _train(tiny(image_only=True, grad_clip=0.05, accumulate=k), tmp_path / "acc")
    initial = build_run(tiny(image_only=True)).model.state_dict()
    moved = max(float((v - initial[n]).abs().max()) for n, v in one.model.state_dict().items())
    assert moved > 1e-3
    for name, v in one.model.state_dict().items():
        assert torch.allclose(acc.model.state_dict()[name], v, rtol=0, atol=1e-5), name
    assert one.ema is not None and acc.ema is not None and acc.ema.updates == one.ema.updates == 3
    for name, v in one.ema.state_dict().items():
        assert torch.allclose(acc.ema.state_dict()[name], v, rtol=0, atol=1e-5), name
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "acc")
    assert [m["step"] for m in b] == [1, 2, 3]  # one line per optimisation step
    for ma, mb in zip(a, b):
        assert ma["grad_norm"] > 0.05  # clipped every step
        for key in ("loss", "loss_eps", "grad_norm", "lr"):
            assert mb[key] == pytest.approx(ma[key], rel=1e-5), key
    opt = acc.optimizer.state_dict()["state"]
    assert all(float(s["step"]) == 3 for s in opt.values())  # AdamW stepped once per optimisation step


@pytest.mark.parametrize("scale", ["rms", "spread"])
def test_with_encoding_statistics_accumulating_equals_one_batch(tmp_path: Path, scale: str) -> None:
    """image + label: the whole batch's encoding statistics scale every micro-step and their gradient reaches the
    label encoder after the last one (mtd_core/training/accumulate.py), so every gradient, the running statistics
    and the weights after 3 steps equal accumulate = 1's (measured: gradients within 2e-6 relative, weights 1e-6;
    with each micro-batch's own statistics the label encoder's gradient was 26 % off)."""
    def cfg(**trainer: Any) -> RunConfig:
        table = copy.deepcopy(TINY)
        table["taskset"]["encoding_scale"] = scale
        table["trainer"].update(grad_clip=0, **trainer)
        return RunConfig.from_dict(table)

    (one, g1), (acc, g2) = _train(cfg(), tmp_path / "one"), _train(cfg(accumulate=4), tmp_path / "acc")
    assert any(n.startswith("encoders.label") for n in g1[0])
    for step in range(3):
        for name, g in g1[step].items():
            assert float((g2[step][name] - g).norm()) <= 1e-5 * float(g.norm()) + 1e-9, (step, name)
    for name, v in one.model.state_dict().items():  # the running rms (and mean) buffers included
        assert torch.allclose(acc.model.state_dict()[name], v, rtol=0, atol=1e-5), name
    assert _metrics(tmp_path / "acc")[-1]["loss"] == pytest.approx(_metrics(tmp_path / "one")[-1]["loss"], rel=1e-5)


def test_resume_with_accumulation_is_bit_identical(tmp_path: Path) -> None:
    cfg = tiny(steps=4, accumulate=2, checkpoint_every=2)
    straight, _ = _train(cfg, tmp_path / "a")
    run = build_run(cfg)
    Trainer(run.model, run.data, cfg.trainer, tmp_path / "b", run_config=run.config.to_dict()).fit(until=2)
    torch.manual_seed(4321)  # nothing the process does in between may matter
    run = build_run(cfg)
    second = Trainer(run.model, run.data, cfg.trainer, tmp_path / "b", run_config=run.config.to_dict(), resume=True)
    assert second.step == 2 and second.fit().step == 4
    for name, v in straight.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], v), name
    assert straight.ema is not None and second.ema is not None
    for name, v in straight.ema.state_dict().items():
        assert torch.equal(second.ema.state_dict()[name], v), name
    assert _metrics(tmp_path / "a") == [{**m, "examples_per_s": a["examples_per_s"], "elapsed_s": a["elapsed_s"]}
                                        for m, a in zip(_metrics(tmp_path / "b"), _metrics(tmp_path / "a"))]


@pytest.mark.parametrize("value", [0, -1, 2.0, 2.5, "2", True, None])
def test_a_bad_accumulate_is_a_config_error_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.accumulate must be a positive integer"):
        TrainConfig.from_dict({"accumulate": value})


def test_a_batch_that_does_not_split_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.accumulate = 3: trainer\.batch_size = 8 must divide by 3"):
        TrainConfig.from_dict({"batch_size": 8, "accumulate": 3})
    cfg = tiny(accumulate=4)  # 8 divides by 4, but not by 4 micro-steps on each of 4 processes
    run = build_run(cfg)
    with pytest.raises(ConfigError, match=r"trainer\.accumulate = 4 x 4 processes: .* must divide by 16"):
        Trainer(run.model, run.data, cfg.trainer, tmp_path, dist=DistContext(rank=0, world_size=4))
    assert TrainConfig.from_dict({}).accumulate == 1 and "accumulate" not in TrainConfig.RESUMABLE_CHANGES


TWO_RUNS = """
import sys
from pathlib import Path
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from mtd_core.tomlio import loads_toml
from mtd_core.training import RunConfig, Trainer, build_run, exit_process, init_distributed

ctx = init_distributed("cpu")
for variant in ("joint", "image"):
    calls = {}
    for k in (1, 2):
        table = loads_toml(open(sys.argv[1]).read())
        table["trainer"]["accumulate"] = k
        if variant == "image":
            table["taskset"]["modalities"] = table["taskset"]["modalities"][:1]
        cfg = RunConfig.from_dict(table)
        run = build_run(cfg)
        tr = Trainer(run.model, run.data, cfg.trainer, Path(sys.argv[2]) / f"{variant}{k}",
                     run_config=run.config.to_dict(), dist=ctx)
        calls[k] = 0

        def counting(state, bucket, k=k):
            calls[k] += 1
            return allreduce_hook(state, bucket)

        tr.loss_module.register_comm_hook(None, counting)
        tr.fit()
    print(f"rank {ctx.rank} {variant}: gradient all-reduces {calls[1]} {calls[2]}", flush=True)
exit_process(0)
"""


def test_two_processes_sync_once_per_step_and_match_one_process(tmp_path: Path) -> None:
    """torchrun, 2 gloo processes, accumulate = 2. An image alone: as many DDP all-reduces as accumulate = 1 (the
    first micro-step runs under no_sync). Image + label: DDP's own all-reduce never runs (every micro-step under
    no_sync; the encoding statistics' gradient completes the encoders' after the last one, then every gradient is
    averaged in one flattened all-reduce), and the weights equal one process's with the same global batch."""
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(steps=2, log_every=2)
    cfg_path, script = tmp_path / "c.toml", tmp_path / "two_runs.py"
    cfg_path.write_text(dumps_toml(cfg))
    script.write_text(TWO_RUNS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(cfg_path), str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the two processes print concurrently, so a line may hold both: read every report wherever it is
    counts = {v: re.findall(rf"rank \d {v}: gradient all-reduces (\d+) (\d+)", proc.stdout) for v in ("joint", "image")}
    assert len(counts["joint"]) == len(counts["image"]) == 2, proc.stdout
    assert all(int(c[0]) > 0 and int(c[1]) == 0 for c in counts["joint"]), proc.stdout
    assert all(c[0] == c[1] and int(c[0]) > 0 for c in counts["image"]), proc.stdout

    cfg["trainer"]["accumulate"] = 2
    single = RunConfig.from_dict(cfg)
    one, _ = _train(single, tmp_path / "one")
    ddp = load_checkpoint(tmp_path / "ddp" / "joint2")
    assert ddp.step == 2 and ddp.config["world_size"] == 2
    for name, v in one.model.state_dict().items():
        assert torch.allclose(ddp.model[name], v, rtol=1e-4, atol=1e-5), name
