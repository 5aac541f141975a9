"""Gradient accumulation (trainer.accumulate): k micro-steps over slices of the global batch give the update of one
k-times larger batch, with clipping, the lr schedule, the EMA and logging once per optimisation step; resume stays
bit-identical; under DDP the gradients are all-reduced on the last micro-step only."""

from __future__ import annotations

import copy
import json
import os
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


def test_with_rms_encoding_statistics_the_backbone_gradient_matches_to_a_tolerance(tmp_path: Path) -> None:
    """image + label with encoding_scale "rms": each micro-batch's encodings are scaled by its own RMS, not the
    global batch's, so equality is not exact (docs/training.md, "Gradient accumulation"). The backbone's and the
    heads' first gradient match to 1e-3 and 1e-2 relative (measured 3e-4 and 2e-3); the running RMS moves once per
    step's worth (measured 1.5 % of its move apart, where one update per micro-step would move it twice as far)."""
    (one, g1), (acc, g2) = (_train(tiny(grad_clip=0), tmp_path / "one"),
                            _train(tiny(grad_clip=0, accumulate=2), tmp_path / "acc"))
    for part, tol in (("backbone", 1e-3), ("heads", 1e-2)):
        names = [n for n in g1[0] if n.startswith(part)]
        a = torch.cat([g1[0][n].flatten() for n in names])
        b = torch.cat([g2[0][n].flatten() for n in names])
        assert float((a - b).norm() / a.norm()) < tol, part
    r1, r2 = float(one.model.scales["label"].rms), float(acc.model.scales["label"].rms)
    assert abs(r2 - r1) < 0.1 * abs(1.0 - r1)
    loss1, loss2 = _metrics(tmp_path / "one")[-1]["loss"], _metrics(tmp_path / "acc")[-1]["loss"]
    assert loss2 == pytest.approx(loss1, rel=1e-2)


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
calls = {}
for k in (1, 2):
    table = loads_toml(open(sys.argv[1]).read())
    table["trainer"]["accumulate"] = k
    cfg = RunConfig.from_dict(table)
    run = build_run(cfg)
    tr = Trainer(run.model, run.data, cfg.trainer, Path(sys.argv[2]) / f"k{k}", run_config=run.config.to_dict(),
                 dist=ctx)
    calls[k] = 0

    def counting(state, bucket, k=k):
        calls[k] += 1
        return allreduce_hook(state, bucket)

    tr.loss_module.register_comm_hook(None, counting)
    tr.fit()
print(f"rank {ctx.rank}: gradient all-reduces {calls[1]} {calls[2]}", flush=True)
exit_process(0)
"""


def test_two_processes_sync_once_per_step_and_match_one_process(tmp_path: Path) -> None:
    """torchrun, 2 gloo processes, accumulate = 2: as many gradient all-reduces as with accumulate = 1 (the first
    micro-step runs under no_sync), and the weights of one process with the same global batch and accumulate = 2
    (each micro-step's encoding statistics are summed over the ranks, so even image + label matches)."""
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(steps=2, log_every=2)
    cfg_path, script = tmp_path / "c.toml", tmp_path / "two_runs.py"
    cfg_path.write_text(dumps_toml(cfg))
    script.write_text(TWO_RUNS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(cfg_path), str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=170, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = [line.split()[-2:] for line in proc.stdout.splitlines() if "gradient all-reduces" in line]
    assert len(counts) == 2 and all(c[0] == c[1] and int(c[0]) > 0 for c in counts), proc.stdout

    cfg["trainer"]["accumulate"] = 2
    single = RunConfig.from_dict(cfg)
    one, _ = _train(single, tmp_path / "one")
    ddp = load_checkpoint(tmp_path / "ddp" / "k2")
    assert ddp.step == 2 and ddp.config["world_size"] == 2
    for name, v in one.model.state_dict().items():
        assert torch.allclose(ddp.model[name], v, rtol=1e-4, atol=1e-5), name
