"""Checkpoints: round trips without pickle, atomic writes under a crash, keep-last-k, and errors for truncated or
corrupt files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mtd_core.errors import CheckpointError
from mtd_core.training import checkpoint as ckpt_mod
from mtd_core.training.checkpoint import (
    Checkpoint,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from mtd_core.training.ema import EMA
from mtd_core.training.state import capture_rng_state, restore_rng_state


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _trained_optimizer(net: nn.Module, steps: int = 3) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    for _ in range(steps):
        net(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return opt


def _ckpt(step: int, net: nn.Module | None = None, **kw: object) -> Checkpoint:
    net = net or _net()
    return Checkpoint(step=step, model=net.state_dict(), config={"model": {"step": step}}, **kw)  # type: ignore[arg-type]


def test_round_trip_of_every_part(tmp_path: Path) -> None:
    net = _net()
    opt = _trained_optimizer(net)
    ema = EMA(net, 0.9)
    ema.update(net)
    rng = capture_rng_state()
    c = Checkpoint(step=7, model=net.state_dict(), config={"model": {"a": [1, 2]}, "run": None},
                   ema=ema.state_dict(), optimizer=opt.state_dict(), rng=rng,
                   trainer={"sampler": {"epoch": 2, "position": 5}, "elapsed_s": 1.5},
                   assets={"text": {"tokenizer.model": b"\x00\x01binary"}})
    path = save_checkpoint(tmp_path, c)
    assert path == tmp_path / "step_00000007"
    back = load_checkpoint(tmp_path)
    assert back.step == 7 and back.path == path
    assert back.config == {"model": {"a": [1, 2]}, "run": None}
    assert back.trainer["sampler"] == {"epoch": 2, "position": 5}
    assert back.assets == {"text": {"tokenizer.model": b"\x00\x01binary"}}
    for k, v in net.state_dict().items():
        assert torch.equal(back.model[k], v)
    for k, v in ema.state_dict().items():
        assert torch.equal(back.ema[k], v)  # type: ignore[index]
    # the optimizer state restores into a fresh optimizer and continues identically
    net2 = _net()
    net2.load_state_dict(back.model)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    opt2.load_state_dict(back.optimizer)  # type: ignore[arg-type]
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["weight_decay"] == 0.1
    x = torch.randn(5, 3)
    for n, o in ((net, opt), (net2, opt2)):
        n(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_rng_state_round_trip_reproduces_every_generator(tmp_path: Path) -> None:
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    state = capture_rng_state()
    save_checkpoint(tmp_path, Checkpoint(step=1, model={"w": torch.zeros(1)}, rng=state))
    expected = (torch.rand(4), random.random(), np.random.normal(size=3))
    restore_rng_state(load_checkpoint(tmp_path).rng)  # type: ignore[arg-type]
    got = (torch.rand(4), random.random(), np.random.normal(size=3))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, _ckpt(1, optimizer=_trained_optimizer(_net()).state_dict(), rng=capture_rng_state()))
    import pickle

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    assert load_checkpoint(tmp_path).optimizer is not None
    files = {p.name for p in (tmp_path / "step_00000001").iterdir()}
    assert files == {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "config.json",
                     "manifest.json"}


def test_crash_mid_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, _ckpt(1))
    real = ckpt_mod._write_file
    calls = {"n": 0}

    def dying_write(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second file of the new checkpoint: half written, then the "crash"
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
            raise OSError("simulated crash")
        real(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_file", dying_write)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint of step 2 .simulated crash."):
        save_checkpoint(tmp_path, _ckpt(2, ema=_net().state_dict()))
    monkeypatch.setattr(ckpt_mod, "_write_file", real)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert not (tmp_path / "step_00000002").exists()
    assert load_checkpoint(tmp_path).step == 1


def test_hard_kill_mid_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """A process that dies without any cleanup (os._exit) in the middle of a save."""
    save_checkpoint(tmp_path, _ckpt(1))
    script = textwrap.dedent(f"""
        import os, torch
        from mtd_core.training import checkpoint as c
        real = c._write_file
        n = [0]
        def write(path, data):
            n[0] += 1
            if n[0] == 3:
                with open(path, "wb") as fh:
                    fh.write(data[:10])
                os._exit(9)
            real(path, data)
        c._write_file = write
        c.save_checkpoint({str(tmp_path)!r}, c.Checkpoint(step=2, model={{"w": torch.ones(1000)}},
                          ema={{"w": torch.ones(1000)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the killed write should have left its temporary folder"
    assert load_checkpoint(tmp_path).step == 1
    save_checkpoint(tmp_path, _ckpt(3))  # the next save clears the debris
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000003"]


def test_keep_last_k(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, _ckpt(step), keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000005"]
    save_checkpoint(tmp_path, _ckpt(6), keep_last=0)
    assert len(list_checkpoints(tmp_path)) == 3
    save_checkpoint(tmp_path, _ckpt(6, net=nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))))
    assert len(list_checkpoints(tmp_path)) == 3  # the same step is replaced, not duplicated


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _ckpt(1))
    model = path / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated or altered: \d+ bytes, the manifest says"):
        load_checkpoint(tmp_path)


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _ckpt(1))
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt: its SHA-256"):
        load_checkpoint(path)


def test_corrupt_manifest_and_missing_files(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _ckpt(1))
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json: missing"):
        load_checkpoint(path)
    (path / "manifest.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"manifest.json: unreadable manifest"):
        load_checkpoint(path)
    (path / "manifest.json").write_text(json.dumps({"format": "something-else", "files": {}}))
    with pytest.raises(CheckpointError, match="not an mtd checkpoint"):
        load_checkpoint(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_00000001: incomplete checkpoint \(no manifest.json"):
        find_checkpoint(path)
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such run directory"):
        load_checkpoint(tmp_path / "nope")


def test_a_valid_manifest_over_garbage_safetensors(tmp_path: Path) -> None:
    """Bytes that match the manifest but are not safetensors (a hand-edited checkpoint) still give a clear error."""
    path = save_checkpoint(tmp_path, _ckpt(1))
    garbage = b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"
    (path / "model.safetensors").write_bytes(garbage)
    manifest = json.loads((path / "manifest.json").read_text())
    import hashlib

    manifest["files"]["model.safetensors"] = {"bytes": len(garbage), "sha256": hashlib.sha256(garbage).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a valid safetensors file"):
        load_checkpoint(path)


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f.json"]
