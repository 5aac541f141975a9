"""The trainer's opt-in speed paths (mtd_core/training/speed.py): ``trainer.compile`` and ``trainer.channels_last``
are validated, train to the same losses and weights as the default eager float32 path (to float tolerance), and
leave the checkpoint's parameter names alone, so compiled and eager runs resume from each other's checkpoints.

torch.compile here runs with the "eager" and "aot_eager" backends (speed.COMPILE_BACKEND): the graph capture of the
whole backbone (and AOTAutograd's backward graph) without inductor's code generation, which takes minutes on this
CPU; the inductor path is exercised by scripts/gpu_check.sh on a GPU."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from mtd_core.errors import ConfigError
from mtd_core.training import (
    RunConfig,
    TrainConfig,
    Trainer,
    build_run,
    load_checkpoint,
    read_config,
    speed,
)
from mtd_core.training.config_checks import compile_modes

TINY: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "taskset": {"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                               {"kind": "label", "num_classes": 10, "hidden": 16}],
                "diffusion": {"kind": "linear", "T": 50}},
    "backbone": {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4,
                 "attention_resolutions": [4]},
    "trainer": {"steps": 3, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 0, "log_every": 1,
                "sample_n": 0, "progress": False, "device": "cpu", "ema_decay": 0.9, "threads": 1},
}


def tiny(**trainer: Any) -> RunConfig:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(trainer)
    return RunConfig.from_dict(cfg)


def _trainer(cfg: RunConfig, out: Path, resume: bool = False) -> Trainer:
    run = build_run(cfg)
    return Trainer(run.model, run.data, cfg.trainer, out, run_config=run.config.to_dict(), resume=resume)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    assert list(a) == list(b)
    for k, value in a.items():
        try:
            torch.testing.assert_close(value, b[k], rtol=tol, atol=tol)
        except AssertionError as e:
            raise AssertionError(f"{k}: {e}") from None


# -- validation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["fast", "", "Default", True, 1, None, ["default"]])
def test_a_compile_mode_torch_does_not_know_is_a_config_error_naming_the_key_and_the_modes(value: object) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"compile": value})
    message = str(e.value)
    assert "trainer.compile" in message and '"off"' in message
    assert all(repr(mode) in message for mode in compile_modes())  # the modes the installed torch knows


def test_the_modes_torch_knows_are_accepted_and_round_trip() -> None:
    modes = compile_modes()
    assert "default" in modes and "max-autotune" in modes
    for mode in ("off", *modes):
        cfg = TrainConfig.from_dict({"compile": mode, "channels_last": True})
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.compile == mode
    assert TrainConfig().compile == "off" and TrainConfig().channels_last is False


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_channels_last_must_be_a_switch(value: object) -> None:
    with pytest.raises(ConfigError, match="trainer.channels_last must be true or false"):
        TrainConfig.from_dict({"channels_last": value})


def test_the_options_are_set_from_toml_and_may_change_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[taskset]\nmodalities = [{kind = "image", role = "base", size = 8}]\n', encoding="utf-8")
    cfg = read_config(path, ["trainer.compile=max-autotune", "trainer.channels_last=true"]).trainer
    assert (cfg.compile, cfg.channels_last) == ("max-autotune", True)
    assert {"compile", "channels_last"} <= set(TrainConfig.RESUMABLE_CHANGES)
    with pytest.raises(ConfigError, match="trainer.compile"):
        read_config(path, ["trainer.compile=fastest"])


def test_the_options_round_trip_through_config_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mtd_core.cli import main

    path = tmp_path / "c.toml"
    path.write_text('[taskset]\nmodalities = [{kind = "image", role = "base", size = 8}]\n', encoding="utf-8")
    assert main(["config", "show", str(path), "--set", "trainer.compile=reduce-overhead",
                 "--set", "trainer.channels_last=true"]) == 0
    shown = tmp_path / "shown.toml"
    shown.write_text(capsys.readouterr().out, encoding="utf-8")
    cfg = read_config(shown).trainer
    assert (cfg.compile, cfg.channels_last) == ("reduce-overhead", True)


# -- channels last ------------------------------------------------------------------------------------------------
def test_channels_last_trains_like_the_default(tmp_path: Path) -> None:
    base = _trainer(tiny(), tmp_path / "a")
    base.fit()
    fast = _trainer(tiny(channels_last=True), tmp_path / "b")
    convs = [m.weight for m in fast.model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs
                         if w.shape[-1] > 1 and w.shape[1] > 1)
    seen: list[bool] = []
    fast.model.backbone.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    fast.fit()
    assert seen and all(seen)  # every backbone input arrived in channels-last layout
    assert fast.metrics["loss"] == pytest.approx(base.metrics["loss"], rel=1e-5)
    _close(fast.model.state_dict(), base.model.state_dict())
    assert fast.ema is not None and base.ema is not None
    _close(fast.ema.state_dict(), base.ema.state_dict())


# -- compile --------------------------------------------------------------------------------------------------------
@pytest.fixture
def eager_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile's graph capture without inductor's code generation (the documented test hook)."""
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()


@pytest.mark.usefixtures("eager_backend")
def test_compile_trains_like_eager_and_keeps_the_checkpoint_keys(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With "aot_eager": the graph capture plus AOTAutograd's joint forward/backward graph, which inductor compiles
    (only its code generation is left out)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")

    eager = _trainer(tiny(), tmp_path / "eager")
    eager.fit()
    counters.clear()
    compiled = _trainer(tiny(compile="default", channels_last=True), tmp_path / "compiled")
    assert getattr(compiled.model.backbone, "_compiled_call_impl", None) is not None
    compiled.fit()
    assert counters["stats"]["unique_graphs"] >= 1  # the backbone was captured, not run eagerly
    assert compiled.metrics["loss"] == pytest.approx(eager.metrics["loss"], rel=1e-5)
    a = load_checkpoint(compiled.last_checkpoint)  # type: ignore[arg-type]
    b = load_checkpoint(eager.last_checkpoint)  # type: ignore[arg-type]
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    assert sorted(a.model) == sorted(b.model) and not any("_orig_mod" in k for k in a.model)
    _close(dict(sorted(a.model.items())), dict(sorted(b.model.items())))


@pytest.mark.usefixtures("eager_backend")
@pytest.mark.parametrize("first, second", [("default", "off"), ("off", "default")])
def test_compiled_and_eager_runs_resume_from_each_other(tmp_path: Path, first: str, second: str) -> None:
    straight = _trainer(tiny(), tmp_path / "straight")
    straight.fit()
    out = tmp_path / "switched"
    _trainer(tiny(compile=first), out).fit(until=2)
    resumed = _trainer(tiny(compile=second), out, resume=True)
    assert resumed.step == 2
    resumed.fit()
    assert resumed.step == 3
    _close(resumed.model.state_dict(), straight.model.state_dict())
