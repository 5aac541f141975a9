"""Fault injection: a crash between any two filesystem operations of a save, a full disk, corrupted artifacts, a
finished run resumed, a step that makes the weights non-finite, and SIGKILL at random moments of a real run. After
each, a complete checkpoint survives and training resumes to the end bit-identically."""

from __future__ import annotations

import copy
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mtd_core.errors import CheckpointError
from mtd_core.tomlio import dumps_toml
from mtd_core.training import RunConfig, Trainer, build_run, list_checkpoints, load_checkpoint, recover_checkpoints
from mtd_core.training import checkpoint as ckpt_mod
from mtd_core.training.checkpoint import Checkpoint, save_checkpoint
from mtd_core.errors import NonFiniteLossError

TINY: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "taskset": {"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                               {"kind": "label", "num_classes": 10, "hidden": 16}],
                "diffusion": {"kind": "linear", "T": 50}},
    "backbone": {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4},
    "trainer": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every": 1, "keep_last": 1,
                "log_every": 2, "sample_n": 0, "progress": False, "device": "cpu", "ema_decay": 0.9},
}


def _config(**trainer: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(trainer)
    return cfg


def _ckpt(step: int, value: float) -> Checkpoint:
    return Checkpoint(step=step, model={"w": torch.full((3,), value)}, config={"model": {}})


class Crash(Exception):
    """Raised in place of the n-th filesystem operation of a save."""


def _crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Make the n-th os.replace / shutil.rmtree / file write inside checkpoint.py raise Crash; returns the log."""
    calls: list[str] = []

    def wrap(name: str, fn: Any) -> Any:
        def op(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            if len(calls) == n:
                raise Crash(name)
            return fn(*args, **kwargs)
        return op

    monkeypatch.setattr(ckpt_mod.os, "replace", wrap("replace", os.replace))
    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", wrap("rmtree", shutil.rmtree))
    monkeypatch.setattr(ckpt_mod, "_write_file", wrap("write", ckpt_mod._write_file))
    return calls


@pytest.mark.parametrize("same_step", [True, False])
def test_a_crash_between_any_two_operations_of_a_save_loses_no_checkpoint(tmp_path: Path, same_step: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    n_ops = None
    n = 1
    while n_ops is None or n <= n_ops:
        root = tmp_path / f"crash{n}"
        save_checkpoint(root, _ckpt(1, 1.0))
        with monkeypatch.context() as mp:
            calls = _crash_at(mp, n)
            try:
                save_checkpoint(root, _ckpt(1 if same_step else 2, 2.0), keep_last=1)
                n_ops = len(calls)  # no crash: every operation counted
            except Crash:
                pass
        recover_checkpoints(root)
        found = list_checkpoints(root)
        assert found, f"crash at operation {n}: no checkpoint left"
        latest = load_checkpoint(found[-1])  # complete and verified
        assert float(latest.model["w"][0]) in (1.0, 2.0)
        assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # tidied
        n += 1
    assert n_ops is not None and n_ops >= 5  # writes, renames and removals of one save, each crashed at once


def test_the_old_checkpoint_moved_aside_is_put_back_not_deleted(tmp_path: Path) -> None:
    """The data loss of issue 14: a crash between the two renames of a same-step replacement, then a new save."""
    root = tmp_path / "checkpoints"
    final = save_checkpoint(root, _ckpt(5, 1.0))
    old = root / ".tmp-old-step_00000005-0123abcd"
    os.replace(final, old)  # the state the crash left: the only copy is moved aside
    save_checkpoint(root, _ckpt(6, 2.0), keep_last=1)  # the next save used to delete it
    assert [p.name for p in list_checkpoints(root)] == ["step_00000006"]
    root2 = tmp_path / "again"
    final = save_checkpoint(root2, _ckpt(5, 1.0))
    os.replace(final, root2 / ".tmp-old-step_00000005-0123abcd")
    assert recover_checkpoints(root2) == [root2 / "step_00000005"]
    assert float(load_checkpoint(root2).model["w"][0]) == 1.0


def test_a_kill_while_the_manifest_is_written_restores_no_half_checkpoint(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill half-way through the manifest's bytes (CI caught one: the half manifest was put back as a checkpoint
    that could not be read) leaves the new checkpoint incomplete and the earlier one the latest."""
    root = tmp_path / "checkpoints"
    save_checkpoint(root, _ckpt(1, 1.0))
    write = ckpt_mod._write_file

    def killed_in_the_manifest(path: Path, data: bytes) -> None:
        if data.startswith(b'{') and b'"files"' in data:  # the manifest, under whatever name it is written
            path.write_bytes(data[: len(data) // 2])  # what the kill leaves on disk: no cleanup runs
            raise Crash("killed")
        write(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_file", killed_in_the_manifest)
    monkeypatch.setattr(ckpt_mod.Path, "unlink", lambda self, missing_ok=False: None)  # a kill runs no finally
    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(Crash):
        save_checkpoint(root, _ckpt(2, 2.0))
    monkeypatch.undo()
    assert recover_checkpoints(root) == []
    assert [p.name for p in list_checkpoints(root)] == ["step_00000001"]
    assert float(load_checkpoint(root).model["w"][0]) == 1.0


def test_a_leftover_whose_manifest_does_not_read_is_not_put_back(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    save_checkpoint(root, _ckpt(1, 1.0))
    half = root / ".tmp-step_00000002-0123abcd"
    half.mkdir()
    (half / "manifest.json").write_text('{"format": ')
    assert recover_checkpoints(root) == []
    assert [p.name for p in root.iterdir()] == ["step_00000001"]


def test_a_full_disk_is_a_checkpoint_error_and_leaves_the_earlier_checkpoint(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "checkpoints"
    save_checkpoint(root, _ckpt(1, 1.0))

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt_mod, "_write_file", full)
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint of step 2 .*No space left on device.*"
                                              r"earlier checkpoints are untouched"):
        save_checkpoint(root, _ckpt(2, 2.0))
    assert [p.name for p in root.iterdir()] == ["step_00000001"]


@pytest.mark.parametrize("change, message", [
    (lambda m: m["files"].update({"assets/../../../etc/hostname": m["files"]["state.json"]}),
     r"the entry 'assets/../../../etc/hostname' is not a plain relative path"),
    (lambda m: m["files"].update({"/etc/hostname": m["files"]["state.json"]}), r"entry '/etc/hostname' is not"),
    (lambda m: m.update(version="1"), r"'version' must be an integer, got '1'"),
    (lambda m: m["files"].update({"state.json": "abc"}), r"the entry 'state.json' must be a table"),
])
def test_a_malformed_manifest_is_refused_before_anything_is_read(tmp_path: Path, change: Any, message: str) -> None:
    final = save_checkpoint(tmp_path, _ckpt(3, 1.0))
    manifest = json.loads((final / "manifest.json").read_text())
    change(manifest)
    (final / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(final)


def test_a_state_without_a_step_is_named(tmp_path: Path) -> None:
    final = save_checkpoint(tmp_path, _ckpt(3, 1.0))
    manifest = json.loads((final / "manifest.json").read_text())
    data = json.dumps({"format": "mtd-checkpoint", "version": 1, "trainer": {}}).encode()
    (final / "state.json").write_bytes(data)
    import hashlib
    manifest["files"]["state.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (final / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"state.json: 'step' must be a non-negative integer, got None"):
        load_checkpoint(final)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    c = load_checkpoint(path)
    return {**{f"m.{k}": v for k, v in c.model.items()}, **{f"e.{k}": v for k, v in (c.ema or {}).items()}}


def _train(out: Path, resume: bool = False, **trainer: Any) -> Any:
    cfg = RunConfig.from_dict(_config(**trainer))
    run = build_run(cfg)
    return Trainer(run.model, run.data, cfg.trainer, out, run_config=run.config.to_dict(), resume=resume).fit()


def test_resuming_a_finished_run_rewrites_nothing(tmp_path: Path) -> None:
    _train(tmp_path / "run", steps=3, checkpoint_every=0)
    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    before = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")}
    result = _train(tmp_path / "run", resume=True, steps=3, checkpoint_every=0)
    assert result.step == 3 and result.checkpoint == ckpt
    assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == before


def test_an_update_that_makes_the_weights_non_finite_stops_before_it_is_saved(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RunConfig.from_dict(_config(steps=4, checkpoint_every=1))
    run = build_run(cfg)
    trainer = Trainer(run.model, run.data, cfg.trainer, tmp_path / "run", run_config=run.config.to_dict())
    trainer.fit(until=1)
    # what an infinite learning rate does: the loss and gradient of step 2 are finite, the update is not
    monkeypatch.setattr("mtd_core.training.trainer.lr_at", lambda config, step: float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"(?s)step 2: the update made the weights non-finite .*last good "
                                                 r"checkpoint is .*step_00000001"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000001"]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "run").values())


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(tmp_path: Path) -> None:
    """A run that checkpoints every step (keep_last 1) is killed at random moments of its work (a minute's worth),
    each time resumed; its end equals an uninterrupted run's, and no kill ever left it without a complete
    checkpoint. Each kill waits for the run to log a new step (start-up takes seconds, a step a fraction of one), so
    the kills land in steps and checkpoint writes whatever the speed of the machine."""
    steps = 40
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(dumps_toml(_config(steps=steps, log_every=1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the reference and the killed run reduce in the same order

    def train(out: Path, resume: bool) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "mtd_core.cli", "train", str(cfg_path), "--out", str(out), "--no-progress"]
        return subprocess.Popen(cmd + ["--resume"] * resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def logged(out: Path) -> int:
        metrics = out / "metrics.jsonl"
        return metrics.read_text().count("\n") if metrics.exists() else 0

    reference, out = tmp_path / "reference", tmp_path / "run"
    _, err = train(reference, resume=False).communicate(timeout=300)
    assert load_checkpoint(reference).step == steps, err.decode()[-2000:]
    rng = random.Random(0)
    deadline, kills = time.monotonic() + 60, 0
    done = False
    while not done:
        before = logged(out)
        proc = train(out, resume=bool(list_checkpoints(out / "checkpoints"))
                     or any((out / "checkpoints").glob(".tmp-*")))
        if time.monotonic() < deadline:
            while proc.poll() is None and logged(out) <= before:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            done = True
        else:
            assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
            recover_checkpoints(out / "checkpoints")
    assert load_checkpoint(out).step == steps
    want, got = _weights(reference), _weights(out)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert kills >= 3, kills


@pytest.mark.slow
def test_two_ctrl_c_in_quick_succession_exit_0_or_130_never_by_the_signal(tmp_path: Path) -> None:
    """The first Ctrl-C asks for a checkpoint after the step, the second aborts at once: the exit status is 0 (the
    checkpoint was written) or 130 (aborted), never death by SIGINT, and no traceback."""
    cfg = _config(steps=100000, checkpoint_every=0, log_every=1)
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(dumps_toml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for gap in (0.05, 0.3):
        out = tmp_path / f"run{gap}"
        proc = subprocess.Popen([sys.executable, "-m", "mtd_core.cli", "train", str(cfg_path), "--out", str(out),
                                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 130), (proc.returncode, err[-2000:])
        assert "Traceback" not in err, err[-2000:]
