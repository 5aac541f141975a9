"""A checkpoint that says something wrong is refused by name, never loaded into a wrong answer: a step that disagrees
with its folder, non-finite weights, missing or wrongly typed keys of its JSON files, symbolic links."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from mtd_core.errors import CheckpointError
from mtd_core.training import RunConfig, Trainer, build_run, load_checkpoint, load_run
from mtd_core.training.checkpoint import Checkpoint, save_checkpoint
from mtd_core.training.recovery import folder_lock, tidy_checkpoints
from mtd_core.training.state import capture_rng_state

TINY: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "taskset": {"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                               {"kind": "label", "num_classes": 10, "hidden": 16}],
                "diffusion": {"kind": "linear", "T": 40}},
    "backbone": {"name": "unet", "channels": 8, "channel_mult": [1], "num_res_blocks": 1, "groups": 4},
    "trainer": {"steps": 2, "batch_size": 4, "checkpoint_every": 0, "log_every": 1, "sample_n": 0,
                "progress": False, "device": "cpu", "ema_decay": 0.9},
}


def _config(**trainer: Any) -> RunConfig:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(trainer)
    return RunConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained for 2 steps (one checkpoint), copied by each test that changes it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = _config()
    run = build_run(cfg)
    Trainer(run.model, run.data, cfg.trainer, out, run_config=run.config.to_dict()).fit()
    return out


@pytest.fixture()
def run_dir(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _resume(run_dir: Path) -> Trainer:
    cfg = _config(steps=4)
    run = build_run(cfg)
    return Trainer(run.model, run.data, cfg.trainer, run_dir, run_config=run.config.to_dict(), resume=True)


def _rewrite(ckpt: Path, rel: str, data: bytes) -> None:
    """Replace a file of a checkpoint and its manifest entry (a hand edit that keeps the manifest consistent)."""
    (ckpt / rel).write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _edit_json(ckpt: Path, rel: str, edit: Callable[[dict[str, Any]], object]) -> None:
    obj = json.loads((ckpt / rel).read_text())
    edit(obj)
    _rewrite(ckpt, rel, json.dumps(obj).encode())


def _net_ckpt(step: int, **kw: Any) -> Checkpoint:
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    return Checkpoint(step=step, model=net.state_dict(), config={"model": {}}, **kw)


# -- 1. the step a checkpoint holds ------------------------------------------------------------------
def test_a_state_step_that_disagrees_with_the_folder_name_is_refused(tmp_path: Path) -> None:
    final = save_checkpoint(tmp_path, _net_ckpt(30))
    _edit_json(final, "state.json", lambda s: s.update(step=5))
    with pytest.raises(CheckpointError, match=r"step_00000030: the folder is named for step 30 but its state.json "
                                              r"says step 5"):
        load_checkpoint(tmp_path)


def test_a_manifest_step_that_disagrees_with_the_state_is_refused(tmp_path: Path) -> None:
    final = save_checkpoint(tmp_path, _net_ckpt(3))
    manifest = json.loads((final / "manifest.json").read_text())
    manifest["step"] = 7
    (final / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"manifest.json says step 7 but its state.json says step 3"):
        load_checkpoint(final)


def test_resuming_a_checkpoint_whose_state_claims_another_step_is_an_error(run_dir: Path) -> None:
    ckpt = run_dir / "checkpoints" / "step_00000002"
    _edit_json(ckpt, "state.json", lambda s: s.update(step=1))
    with pytest.raises(CheckpointError, match=r"named for step 2 but its state.json says step 1"):
        _resume(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002"]


# -- 2. non-finite weights ----------------------------------------------------------------------------
@pytest.mark.parametrize("rel, value", [("model.safetensors", float("nan")), ("ema.safetensors", float("inf"))])
def test_non_finite_weights_are_refused_naming_the_file_and_the_tensor(run_dir: Path, rel: str, value: float) -> None:
    ckpt = run_dir / "checkpoints" / "step_00000002"
    tensors = st_load((ckpt / rel).read_bytes())
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[3]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    _rewrite(ckpt, rel, st_save(tensors))
    with pytest.raises(CheckpointError, match=rf"{rel}: tensor '{name}' holds 1 non-finite value"):
        load_run(run_dir, ema=True)


def test_mtd_eval_of_nan_weights_exits_1_naming_the_tensor(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mtd_core.cli import main

    ckpt = run_dir / "checkpoints" / "step_00000002"
    tensors = st_load((ckpt / "ema.safetensors").read_bytes())
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    _rewrite(ckpt, "ema.safetensors", st_save(tensors))
    assert main(["eval", str(run_dir), "--n", "4"]) == 1
    out, err = capsys.readouterr()
    assert "bits/dim" not in out and f"ema.safetensors: tensor '{name}'" in err and "Traceback" not in err


# -- 4. the keys of state.json and config.json -------------------------------------------------------
def _pop(*keys: str) -> Callable[[dict[str, Any]], object]:
    def edit(obj: dict[str, Any]) -> object:
        for k in keys[:-1]:
            obj = obj[k]
        return obj.pop(keys[-1])
    return edit


def _put(value: object, *keys: str) -> Callable[[dict[str, Any]], object]:
    def edit(obj: dict[str, Any]) -> object:
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
        return None
    return edit


@pytest.mark.parametrize("rel, edit, message", [
    ("state.json", _pop("optimizer"), r"state.json: the key 'optimizer' is missing; expected a JSON object"),
    ("state.json", _put("x", "optimizer", "param_groups"), r"the key 'optimizer.param_groups' must be a non-empty"),
    ("state.json", _pop("rng"), r"state.json: the key 'rng' is missing"),
    ("state.json", _put(5, "rng", "python"), r"state.json: the key 'rng.python' must be null or \[version"),
    ("state.json", _put({"a": 1}, "rng", "numpy"), r"the key 'rng.numpy' must be null or numpy's"),
    ("state.json", _put([], "trainer"), r"state.json: the key 'trainer' must be a JSON object"),
    ("state.json", _put("abc", "trainer", "elapsed_s"), r"the key 'trainer.elapsed_s' must be a finite number"),
    ("state.json", _put(-1, "trainer", "ema_updates"), r"the key 'trainer.ema_updates' must be an integer >= 0"),
    ("state.json", _put("1", "trainer", "sampler", "epoch"), r"the key 'trainer.sampler.epoch' must be an integer"),
    ("config.json", _put([1], "run"), r"config.json: the key 'run' must be a JSON object"),
    ("config.json", _put("x", "dataset_info"), r"config.json: the key 'dataset_info' must be a JSON object or null"),
    ("config.json", _put(0, "world_size"), r"config.json: the key 'world_size' must be an integer >= 1"),
])
def test_a_missing_or_mistyped_key_is_named_at_load(run_dir: Path, rel: str, edit: Any, message: str) -> None:
    ckpt = run_dir / "checkpoints" / "step_00000002"
    _edit_json(ckpt, rel, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(run_dir)


@pytest.mark.parametrize("edit, message", [
    (_pop("trainer", "sampler"), r"state.json: the key 'trainer.sampler' is missing; expected a JSON object"),
    (_pop("trainer", "sampler", "position"), r"state.json: the key 'trainer.sampler.position' is missing"),
    (_pop("optimizer", "param_groups", "0", "lr"), r"the key 'optimizer.param_groups.0.lr' must be a number, got "
                                                   r"'nothing \(missing\)'"),
    (_put("fast", "optimizer", "param_groups", "0", "lr"), r"the key 'optimizer.param_groups.0.lr' must be a number"),
    (_put([0.9], "optimizer", "param_groups", "0", "betas"), r"'optimizer.param_groups.0.betas' must be a list of 2"),
    (_put("yes", "optimizer", "param_groups", "0", "amsgrad"), r"'optimizer.param_groups.0.amsgrad' must be true or"),
])
def test_a_missing_or_mistyped_key_is_named_on_resume(run_dir: Path, edit: Any, message: str) -> None:
    ckpt = run_dir / "checkpoints" / "step_00000002"

    def indexed(obj: dict[str, Any]) -> object:  # "0" addresses the first param group
        groups = obj["optimizer"]["param_groups"]
        obj["optimizer"]["param_groups"] = {"0": groups[0]}
        edit(obj)
        obj["optimizer"]["param_groups"] = [obj["optimizer"]["param_groups"]["0"]] + groups[1:]
        return None

    _edit_json(ckpt, "state.json", indexed)
    with pytest.raises(CheckpointError, match=message):
        _resume(run_dir)


def test_an_optimizer_tensor_of_the_wrong_name_or_shape_is_named(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 3)).sum().backward()
    opt.step()
    final = save_checkpoint(tmp_path, Checkpoint(step=1, model=net.state_dict(), optimizer=opt.state_dict(),
                                                 rng=capture_rng_state()))
    tensors = st_load((final / "optimizer.safetensors").read_bytes())
    tensors["bogus"] = torch.zeros(1)
    _rewrite(final, "optimizer.safetensors", st_save(tensors))
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors: tensor 'bogus' is not named state.<parameter"):
        load_checkpoint(final)


# -- 5. symbolic links -----------------------------------------------------------------------------------
def test_a_file_linked_outside_the_checkpoint_is_refused_not_read(tmp_path: Path) -> None:
    final = save_checkpoint(tmp_path / "ckpts", _net_ckpt(1))
    outside = tmp_path / "outside.bin"
    outside.write_bytes((final / "model.safetensors").read_bytes())  # the very bytes: only the link is wrong
    (final / "model.safetensors").unlink()
    os.symlink(outside, final / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: is a symbolic link \(to .*outside.bin\)"):
        load_checkpoint(final)


@pytest.mark.parametrize("what", ["folder", "manifest", "assets"])
def test_linked_checkpoint_folders_and_manifests_are_refused(tmp_path: Path, what: str) -> None:
    final = save_checkpoint(tmp_path / "ckpts", _net_ckpt(1, assets={"text": {"tok.model": b"abc"}}))
    if what == "folder":
        elsewhere = tmp_path / "elsewhere"
        final.rename(elsewhere)
        os.symlink(elsewhere, final)
        target = final
    elif what == "manifest":
        (tmp_path / "m.json").write_bytes((final / "manifest.json").read_bytes())
        (final / "manifest.json").unlink()
        os.symlink(tmp_path / "m.json", final / "manifest.json")
        target = final / "manifest.json"
    else:
        shutil.move(str(final / "assets" / "text"), str(tmp_path / "text"))
        os.symlink(tmp_path / "text", final / "assets" / "text")
        target = final / "assets" / "text"
    with pytest.raises(CheckpointError, match=rf"{target}: is a symbolic link"):
        load_checkpoint(final)


def test_a_linked_leftover_is_unlinked_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "ckpts"
    save_checkpoint(root, _net_ckpt(1))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    os.symlink(victim, root / ".tmp-step_00000002-0123abcd")
    report = tidy_checkpoints(root)
    assert report.removed == (".tmp-step_00000002-0123abcd",) and not report.restored
    assert (victim / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]


def test_tidying_leaves_a_save_in_progress_alone(tmp_path: Path) -> None:
    """Another process saving (it holds the folder's lock): ``mtd sample`` meanwhile must not remove its folder."""
    root = tmp_path / "ckpts"
    save_checkpoint(root, _net_ckpt(1))
    writing = root / ".tmp-step_00000002-0123abcd"
    writing.mkdir()
    with folder_lock(root, wait=True):
        report = tidy_checkpoints(root)
    assert report.busy and writing.is_dir()
    assert "another process is writing a checkpoint" in (report.summary() or "")
    assert tidy_checkpoints(root).removed == (writing.name,) and not writing.exists()
