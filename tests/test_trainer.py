"""The trainer: exact resume, NaN stops, SIGTERM, the config round trip, LR schedule, EMA, grids and logs."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mtd_core.types import DenoiserOutput
from mtd_core.errors import CheckpointError, ConfigError
from mtd_core.training import (
    EMA,
    GridCell,
    NonFiniteLossError,
    RunConfig,
    TrainConfig,
    Trainer,
    build_run,
    list_checkpoints,
    load_checkpoint,
    load_run,
    lr_at,
    render_grid,
)

TINY: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "taskset": {"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                               {"kind": "label", "num_classes": 10, "hidden": 16}],
                "diffusion": {"kind": "linear", "T": 50}},
    "backbone": {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4,
                 "dropout": 0.1},
    "trainer": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every": 3, "log_every": 2,
                "sample_n": 0, "progress": False, "device": "cpu", "ema_decay": 0.9},
}


def tiny(**trainer: Any) -> RunConfig:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(trainer)
    return RunConfig.from_dict(cfg)


def _state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.state_dict().items()})  # type: ignore[union-attr]
    for pid, st in tr.optimizer.state_dict()["state"].items():
        out.update({f"opt.{pid}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = tiny()
    run = build_run(cfg)
    straight = Trainer(run.model, run.data, cfg.trainer, tmp_path / "a", run_config=run.config.to_dict())
    assert straight.fit().step == 6

    run = build_run(cfg)
    first = Trainer(run.model, run.data, cfg.trainer, tmp_path / "b", run_config=run.config.to_dict())
    paused = first.fit(until=4)
    assert paused.status == "paused" and paused.step == 4
    torch.manual_seed(12345)  # anything the process does in between must not matter
    run = build_run(cfg)  # a fresh process would rebuild everything from scratch
    second = Trainer(run.model, run.data, cfg.trainer, tmp_path / "b", run_config=run.config.to_dict(), resume=True)
    assert second.step == 4
    done = second.fit()
    assert done.status == "finished" and done.step == 6
    a, b = _state(straight), _state(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert second.sampler.state_dict() == straight.sampler.state_dict()
    # and the run actually trained: weights moved away from the initialisation
    assert not torch.equal(build_run(cfg).model.state_dict()["heads.label.0.weight"], a["model.heads.label.0.weight"])


def test_resume_refuses_a_changed_config_and_fresh_runs_refuse_old_checkpoints(tmp_path: Path) -> None:
    cfg = tiny(steps=2, checkpoint_every=0)
    run = build_run(cfg)
    Trainer(run.model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict()).fit()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(build_run(cfg).model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict())
    changed = tiny(steps=4, checkpoint_every=0, lr=5e-3)
    run2 = build_run(changed)
    with pytest.raises(CheckpointError, match=r"trainer options \['lr'\] differ"):
        Trainer(run2.model, run2.data, changed.trainer, tmp_path, run_config=run2.config.to_dict(), resume=True)
    longer = tiny(steps=4, checkpoint_every=0)  # more steps is allowed
    run3 = build_run(longer)
    tr = Trainer(run3.model, run3.data, longer.trainer, tmp_path, run_config=run3.config.to_dict(), resume=True)
    assert tr.fit().step == 4
    with pytest.raises(CheckpointError, match="nothing to resume: .*empty holds no complete checkpoint"):
        Trainer(run3.model, run3.data, longer.trainer, tmp_path / "empty", resume=True)


def test_a_spread_scaled_fixed_encoder_trains_saves_and_loads(tmp_path: Path) -> None:
    """encoding_scale = "spread" with train_encoder = false through the Trainer: the encoder leaves training as it
    was initialised, the running mean is saved (safetensors) and load_run rebuilds the same scaling."""
    cfg = copy.deepcopy(TINY)
    cfg["taskset"]["encoding_scale"] = "spread"
    cfg["taskset"]["modalities"][1]["train_encoder"] = False
    cfg["trainer"].update(steps=3, checkpoint_every=0)
    config = RunConfig.from_dict(cfg)
    run = build_run(config)
    initial = run.model.encoders["label"].embed.weight.detach().clone()
    Trainer(run.model, run.data, config.trainer, tmp_path, run_config=run.config.to_dict()).fit()
    for ema in (True, False):
        loaded = load_run(tmp_path, ema=ema).model
        assert loaded.taskset.encoding_scales == {"label": "spread"} and not loaded.taskset["label"].train_encoder
        assert torch.equal(loaded.encoders["label"].embed.weight, initial)
        scale = loaded.scales["label"]
        assert scale.mean is not None and scale.mean.abs().sum() > 0  # tracked in training, saved, restored
    assert torch.equal(load_run(tmp_path, ema=False).model.scales["label"].mean, run.model.scales["label"].mean)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = tiny(steps=10, checkpoint_every=2)
    run = build_run(cfg)
    tr = Trainer(run.model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict())
    calls = {"n": 0}

    def poison(module: Any, inputs: Any, output: DenoiserOutput) -> DenoiserOutput:
        calls["n"] += 1
        return DenoiserOutput(eps=output.eps * float("nan"), preds=output.preds) if calls["n"] == 5 else output

    run.model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError) as e:
        tr.fit()
    msg = str(e.value)
    assert "training stopped at step 5: the loss is nan" in msg
    assert "step_00000004" in msg and "--resume" in msg and "trainer.lr" in msg
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002", "step_00000004"]
    assert tr.step == 4
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert load_checkpoint(tmp_path).step == 4


def test_a_non_finite_modality_loss_names_the_modality_its_plugin_and_distribution(tmp_path: Path) -> None:
    cfg = tiny(steps=3, checkpoint_every=0)
    run = build_run(cfg)
    label = run.model.taskset.modalities["label"]
    loss = label.loss
    label.loss = lambda pred, x: loss(pred, x) * float("nan")  # type: ignore[method-assign]
    with pytest.raises(NonFiniteLossError) as e:
        Trainer(run.model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict()).fit()
    assert ("The loss of modality 'label' (kind 'label', from plugin 'mtd-label' (distribution mtd "
            in str(e.value)), str(e.value)
    assert "modality 'image'" not in str(e.value)


def test_a_non_finite_base_term_names_the_base_modality(tmp_path: Path) -> None:
    """Only the base's denoising term ('eps') is NaN: the message names the base modality, its kind and plugin."""
    cfg = tiny(steps=3, checkpoint_every=0)
    run = build_run(cfg)

    def poison(module: Any, inputs: Any, output: DenoiserOutput) -> DenoiserOutput:
        return DenoiserOutput(eps=output.eps * float("nan"), preds=output.preds)

    run.model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError) as e:
        Trainer(run.model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict()).fit()
    msg = str(e.value)
    assert ("The denoising loss of the base modality 'image' (term 'eps', kind 'image', from plugin 'mtd-image' "
            "(distribution mtd") in msg, msg
    assert "modality 'label'" not in msg


def test_every_non_finite_term_is_named_vlb_and_unknown_terms_included() -> None:
    from mtd_core.diffusion.loss import LossOutput
    from mtd_core.training.guard import culprits

    taskset = build_run(tiny()).model.taskset
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    text = culprits(taskset, LossOutput(loss=nan, parts={"vlb": nan, "label": torch.tensor(float("inf")),
                                                         "extra": nan, "fine": one}))
    assert "base modality 'image' (term 'vlb'" in text and "The loss of modality 'label' (kind 'label'" in text
    assert "The loss term 'extra' (of no modality) is nan" in text and "'fine'" not in text
    assert len(text.strip().splitlines()) == 3


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(steps=100000, checkpoint_every=0, log_every=1)
    from mtd_core.tomlio import dumps_toml

    (tmp_path / "c.toml").write_text(dumps_toml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mtd_core.cli", "train", str(tmp_path / "c.toml"), "--out",
                             str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in out and "--resume" in out
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.step >= 2
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] <= ckpt.step


def test_train_config_round_trip_and_errors() -> None:
    c = TrainConfig(steps=10, betas=[0.5, 0.6], lr_schedule="cosine")
    d = c.to_dict()
    assert d["betas"] == [0.5, 0.6] and json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'stpes' \(did you mean 'steps'\?\)"):
        TrainConfig.from_dict({"stpes": 1})
    with pytest.raises(ConfigError, match=r"trainer.lr_schedule must be one of \['constant', 'cosine'\]"):
        TrainConfig(lr_schedule="linear")
    for kwargs, message in [
        ({"steps": 0}, r"trainer.steps must be a positive integer, got 0"),
        ({"steps": 2.5}, r"trainer.steps must be a positive integer, got 2.5"),
        ({"steps": "abc"}, r"trainer.steps must be a positive integer, got 'abc'"),
        ({"seed": "abc"}, r"trainer.seed must be an integer >= 0, got 'abc'"),
        ({"threads": 1.5}, r"trainer.threads must be an integer >= 0, got 1.5"),
        ({"lr": "abc"}, r"trainer.lr must be a finite number in \(0, inf\), got 'abc'"),
        ({"lr": float("inf")}, r"trainer.lr must be a finite number in \(0, inf\), got inf"),
        ({"lr": float("nan")}, r"trainer.lr must be a finite number"),
        ({"grad_clip": float("nan")}, r"trainer.grad_clip must be a finite number in \[0, inf\), got nan"),
        ({"ema_decay": 1.0}, r"trainer.ema_decay must be a finite number in \[0, 1\), got 1.0"),
        ({"betas": [0.9, 1.0]}, r"trainer.betas must be a finite number in \[0, 1\), got 1.0"),
        ({"betas": 0.9}, r"trainer.betas must be two numbers in \[0, 1\), got 0.9"),
        ({"bf16": "false"}, r"trainer.bf16 must be true or false, got 'false'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown table \[trainr\] \(did you mean '\[trainer\]'\?\)|trainr"):
        RunConfig.from_dict({"taskset": {}, "trainr": {}})


def test_lr_schedule() -> None:
    c = TrainConfig(steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine", final_lr_fraction=0.1)
    assert [lr_at(c, s) for s in range(3)] == [0.1, 0.2, pytest.approx(0.3)]
    assert lr_at(c, 9) == 1.0 and lr_at(c, 10) == 1.0
    assert lr_at(c, 60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(c, 110) == pytest.approx(0.1)
    assert lr_at(TrainConfig(lr=0.5, warmup_steps=0), 1000) == 0.5


def test_ema_follows_the_formula_and_applied_restores() -> None:
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.9, warmup=False)
    w0 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.shadow["weight"], 0.9 * w0 + 0.1 * net.weight)
    with ema.applied(net):
        assert torch.allclose(net.weight, ema.shadow["weight"])
    assert torch.equal(net.weight, w0 + 1.0)
    warm = EMA(net, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)


def test_bf16_autocast_trains_on_cpu_and_logs_metrics(tmp_path: Path) -> None:
    cfg = tiny(steps=2, bf16=True, checkpoint_every=0, log_every=1)
    run = build_run(cfg)
    res = Trainer(run.model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict()).fit()
    assert math.isfinite(res.metrics["loss"])
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert {"loss", "loss_eps", "loss_label", "lr", "grad_norm", "examples_per_s"} <= set(lines[0])
    assert json.loads((tmp_path / "config.json").read_text())["trainer"]["bf16"] is True


def test_sample_grid_and_load_run(tmp_path: Path) -> None:
    cfg = tiny(steps=2, checkpoint_every=0, sample_n=4, sample_steps=3)
    run = build_run(cfg)
    res = Trainer(run.model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict()).fit()
    assert res.grid == tmp_path / "samples" / "step_00000002.png"
    with Image.open(res.grid) as im:
        assert im.width > 2 * 8 * 4 and im.height > 2 * 8 * 4
    loaded = load_run(tmp_path)
    assert loaded.step == 2 and loaded.weights == "ema" and loaded.run_config == run.config
    ema_w = load_checkpoint(tmp_path).ema["heads.label.0.weight"]  # type: ignore[index]
    assert torch.equal(loaded.model.state_dict()["heads.label.0.weight"], ema_w)
    raw = load_run(tmp_path, ema=False)
    assert torch.equal(raw.model.state_dict()["heads.label.0.weight"], run.model.state_dict()["heads.label.0.weight"])


def test_render_grid_draws_captions_and_row_labels() -> None:
    cells = [GridCell(images=[torch.ones(1, 8, 8), -torch.ones(1, 8, 8)], caption="seven") for _ in range(4)]
    plain = render_grid([GridCell(images=c.images) for c in cells], ncols=2, scale=3)
    captioned = render_grid(cells, ncols=2, scale=3, row_labels=["a", "b"], title="t")
    assert captioned.height > plain.height and captioned.width > plain.width
    # the caption strip under the first cell contains dark text pixels
    strip = captioned.crop((captioned.width // 3, captioned.height // 2 - 16, captioned.width, captioned.height // 2))
    assert np.asarray(strip.convert("L")).min() < 100
    with pytest.raises(ValueError):
        render_grid([], ncols=1)


def test_docs_cover_every_trainer_key_and_dataset_option() -> None:
    import attrs

    from mtd_core.data.build import factory_defaults
    from mtd_core.plugins.registry import get_registry

    docs = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    for f in attrs.fields(TrainConfig):
        assert f"| `{f.name}` |" in docs, f"trainer.{f.name} is not documented in docs/training.md"
    for name in ("digits", "fashion_mnist", "npz", "png_folder"):
        assert f"**{name}**" in docs
        for option in factory_defaults(get_registry().dataset(name)):
            assert f"| `{option}` |" in docs, f"dataset {name!r} option {option!r} is not documented"


def test_a_checkpoint_from_before_aux_channels_loads_with_the_encodings_on_the_base_channels() -> None:
    from mtd_core.taskset_options import saved_taskset_config

    image = {"kind": "image", "role": "base", "size": 8}
    label = {"kind": "label", "role": "aggregated", "num_classes": 10}
    old = {"modalities": [image, label]}
    assert saved_taskset_config(old)["aux_channels"] == 0 and "aux_channels" not in old
    new = {"modalities": [image, {**label, "head_grad": 0.1, "train_encoder": True}], "aux_channels": 1,
           "aux_eps": "heads", "known_input": True, "encoding_scale": "rms"}
    assert saved_taskset_config(new) == new  # written by this version: explicit, kept
    single = {"modalities": [image]}
    assert saved_taskset_config(single) == single  # nothing aggregated: no auxiliary channels either way


def test_grid_sampler_and_steps_are_checked_against_the_registry_and_T() -> None:
    from mtd_core.training.config import resolve_config

    with pytest.raises(ConfigError, match=r"trainer.sample_sampler: unknown sampler 'ddmi'.*known samplers: \['ddim'"):
        resolve_config(tiny(sample_sampler="ddmi", sample_n=4))
    with pytest.raises(ConfigError, match=r"trainer.sample_steps must lie in 2..50 \(sampler 'dpmpp_2m_sde', T = 50\), "
                       r"got 51"):
        resolve_config(tiny(sample_steps=51, sample_n=4))
    with pytest.raises(ConfigError, match=r"trainer.sample_steps must lie in 1..50 \(sampler 'ddim', T = 50\), got 51"):
        resolve_config(tiny(sample_sampler="ddim", sample_steps=51, sample_n=4))
    with pytest.raises(ConfigError, match=r"trainer.sample_steps must lie in 2..50 \(sampler 'heun', T = 50\), got 1"):
        resolve_config(tiny(sample_sampler="heun", sample_steps=1, sample_n=4))
    assert resolve_config(tiny(sample_steps=51, sample_n=0)).trainer.sample_steps == 51  # no grid is drawn


def test_grids_are_drawn_as_generate_draws_by_default() -> None:
    """A training grid shows what ``mtd sample`` gives the run: generate()'s sampler and steps, not a fixed one."""
    from mtd_core.sampling.options import DEFAULT_SAMPLER, DEFAULT_STEPS
    from mtd_core.training.config import TrainConfig

    cfg = TrainConfig()
    assert (cfg.sample_sampler, cfg.sample_steps) == (DEFAULT_SAMPLER, DEFAULT_STEPS)
    assert TrainConfig.from_dict({"sample_sampler": "ddim", "sample_steps": 50}).sample_sampler == "ddim"
