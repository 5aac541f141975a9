"""Opening a run folder: the leftovers of a killed save are recovered the same way by every command (with one line
saying so), metrics.jsonl keeps no line past the step training continues from, and relative dataset paths are
resolved against the run folder, not the current directory."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtd_core.errors import CheckpointError, ConfigError
from mtd_core.training import RunConfig, Trainer, build_run, list_checkpoints, load_checkpoint, load_run, load_run_data
from mtd_core.training.checkpoint import recover_run

from test_checkpoint_integrity import TINY  # the same tiny run


def _cfg(dataset: dict[str, Any] | None = None, **trainer: Any) -> RunConfig:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(trainer)
    if dataset is not None:
        cfg["dataset"] = dataset
    return RunConfig.from_dict(cfg)


def _trainer(out: Path, resume: bool = False, dataset: dict[str, Any] | None = None, **trainer: Any) -> Trainer:
    cfg = _cfg(dataset, **trainer)
    run = build_run(cfg)
    return Trainer(run.model, run.data, run.config.trainer, out, run_config=run.config.to_dict(), resume=resume)


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    _trainer(out).fit()
    return out


@pytest.fixture()
def run_dir(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


# -- 3. metrics.jsonl --------------------------------------------------------------------------------
def test_restarting_a_run_killed_before_its_first_checkpoint_logs_each_step_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n{"step": 3, "lo')
    _trainer(out).fit()
    assert _steps(out) == [1, 2]
    assert all(json.loads(line)["loss"] != 9.0 for line in (out / "metrics.jsonl").read_text().splitlines())
    err = capsys.readouterr().err
    assert err.count("metrics.jsonl: dropped 3 line(s) logged before its first checkpoint") == 1


def test_resuming_drops_the_lines_past_the_checkpoint_and_says_so(run_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with open(run_dir / "metrics.jsonl", "a") as fh:  # a run killed after logging step 3, before checkpointing it
        fh.write(json.dumps({"step": 3, "loss": 9.0}) + "\n")
    capsys.readouterr()
    _trainer(run_dir, resume=True, steps=4).fit()
    assert _steps(run_dir) == [1, 2, 3, 4]
    assert "dropped 1 line(s) logged after step 2, its last checkpoint" in capsys.readouterr().err


def test_nothing_is_said_or_rewritten_when_no_line_is_past_the_checkpoint(run_dir: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    _trainer(run_dir, resume=True)
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == before
    assert "dropped" not in capsys.readouterr().err


# -- 7. the leftovers of a kill, recovered alike by every command ---------------------------------------
def _kill_before_the_rename(run_dir: Path) -> Path:
    """What a kill between the manifest's write and the folder's rename leaves: a complete .tmp folder only."""
    final = run_dir / "checkpoints" / "step_00000002"
    leftover = final.with_name(".tmp-step_00000002-0123abcd")
    os.replace(final, leftover)
    (run_dir / "checkpoints" / ".tmp-step_00000003-89abcdef").mkdir()  # and an incomplete one beside it
    return leftover


def test_load_run_puts_back_a_complete_leftover_and_says_so(run_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _kill_before_the_rename(run_dir)
    capsys.readouterr()
    assert load_run(run_dir).step == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "put back step_00000002" in err[0] and "removed 1 leftover(s)" in err[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002"]


def test_mtd_sample_and_eval_recover_what_a_kill_left(run_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from mtd_core.cli import main

    _kill_before_the_rename(run_dir)
    assert main(["eval", str(run_dir), "--n", "4", "--readout-n", "4", "--timesteps", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["step"] == 2 and "put back step_00000002" in err
    _kill_before_the_rename(run_dir)
    assert main(["sample", str(run_dir), "--n", "2", "--steps", "2", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert "put back step_00000002" in capsys.readouterr().err


def test_train_recovers_the_same_way_then_refuses_without_resume(run_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _kill_before_the_rename(run_dir)
    capsys.readouterr()
    with pytest.raises(ConfigError, match="already holds checkpoints of a run; pass --resume"):
        _trainer(run_dir)
    assert "put back step_00000002" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_00000002"]
    assert _trainer(run_dir, resume=True).step == 2


def test_recover_run_finds_the_checkpoints_folder_from_any_path_it_is_given(run_dir: Path) -> None:
    for given in (run_dir, run_dir / "checkpoints", run_dir / "checkpoints" / "step_00000002"):
        leftover = _kill_before_the_rename(run_dir)
        report = recover_run(given, announce=False)
        assert report.restored == (run_dir / "checkpoints" / "step_00000002",) and not leftover.exists()
    assert recover_run(run_dir, announce=False).summary() is None


# -- 6. dataset paths of a saved run ------------------------------------------------------------------
def _npz(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", image=rng.uniform(-1, 1, (40, 1, 8, 8)).astype(np.float32),
             label=rng.integers(0, 10, 40))


def test_relative_dataset_paths_resolve_against_the_run_folder_from_any_cwd(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _npz(tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path / "work")
    dataset = {"name": "npz", "path": "data/data.npz"}
    _trainer(Path("runs/a"), dataset=dataset).fit()
    stored = json.loads(Path("runs/a/config.json").read_text())["dataset"]
    assert stored["path"] == os.path.join("..", "..", "data", "data.npz")  # relative to the run folder
    ckpt = load_checkpoint("runs/a")
    assert ckpt.config["dataset_paths"] == "run folder" and ckpt.config["run"]["dataset"]["path"] == stored["path"]
    here = load_run_data(load_run("runs/a")).splits.train
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)  # a file of the same name here must not be read instead
    np.savez(elsewhere / "data" / "data.npz", image=np.zeros((40, 1, 8, 8), np.float32), label=np.zeros(40, int))
    monkeypatch.chdir(elsewhere)
    loaded = load_run(tmp_path / "work" / "runs" / "a")
    assert loaded.run_config is not None
    assert loaded.run_config.dataset["path"] == str(tmp_path / "work" / "data" / "data.npz")
    there = load_run_data(loaded).splits.train
    assert torch.equal(here.fields["image"], there.fields["image"])  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path / "work")  # resuming with the same config from where it was started
    assert _trainer(Path("runs/a"), resume=True, dataset=dataset, steps=3).fit().step == 3


def test_resuming_with_a_relative_path_to_another_file_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _npz(tmp_path / "work" / "data")
    _npz(tmp_path / "other" / "data")
    monkeypatch.chdir(tmp_path / "work")
    dataset = {"name": "npz", "path": "data/data.npz"}
    _trainer(tmp_path / "run", dataset=dataset).fit()
    monkeypatch.chdir(tmp_path / "other")  # the same words name another file from here
    with pytest.raises(CheckpointError, match=r"the dataset config differs from the checkpoint's at \['path'\]"):
        _trainer(tmp_path / "run", resume=True, dataset=dataset, steps=3)


def test_a_run_folder_that_cannot_be_tidied_still_loads_and_says_why(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def read_only(root: Path) -> None:
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr("mtd_core.training.recovery.tidy_checkpoints", read_only)
    capsys.readouterr()
    assert load_run(run_dir).step == 2
    assert "could not be tidied ([Errno 13] Permission denied" in capsys.readouterr().err
