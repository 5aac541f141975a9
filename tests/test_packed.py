"""Packed datasets (``mtd data pack``, ``[dataset] name = "packed"``): the round trip field by field, training on them
bit-identical to in-memory data and across a resume, the loader's worker processes, and every refusal."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtd_core.cli import main
from mtd_core.data import load_dataset, packed_write
from mtd_core.data.build import resolve_dataset_config
from mtd_core.data.packed_write import pack_dataset
from mtd_core.errors import CheckpointError, ConfigError, ModalityDataError
from mtd_core.plugins.registry import get_registry
from mtd_core.tomlio import dumps_toml
from mtd_core.training import RunConfig, Trainer, build_run

CAPTIONS = ["a zero", "é accentué", "日本語", "", "emoji 🙂", "x" * 40]


def _npz(path: Path, n: int = 60, big_label_at: int | None = None) -> Path:
    g = np.random.default_rng(0)
    labels = g.integers(0, 10, n)
    if big_label_at is not None:
        labels[big_label_at] = 300  # fits no uint8: the label field must be re-planned as int16
    np.savez(path, image=g.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), label=labels,
             caption=np.array([CAPTIONS[i % len(CAPTIONS)] + str(i) for i in range(n)]),
             tokens=g.integers(0, 50, (n, 4)), rep=g.standard_normal((n, 5)).astype(np.float32))
    return path


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        same_bits = a.dtype == b.dtype and a.shape == b.shape
        return same_bits and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    return list(a) == list(b)


def test_pack_then_load_equals_the_source_field_by_field(tmp_path: Path) -> None:
    reg = get_registry()
    config = {"name": "npz", "path": str(_npz(tmp_path / "d.npz")), "holdout": 5}
    manifest = pack_dataset(config, reg, tmp_path / "p", shard_examples=7, progress=False)
    src = load_dataset(config, reg).splits
    packed = load_dataset({"name": "packed", "path": str(tmp_path / "p")}, reg).splits
    for split in ("train", "test", "val"):
        a, b = getattr(src, split), getattr(packed, split)
        assert len(a) == len(b) > 0
        idx = torch.randperm(len(a), generator=torch.Generator().manual_seed(1))  # across shards, any order
        batch_a, batch_b = a.get_batch(idx), b.get_batch(idx)
        assert sorted(batch_a) == sorted(batch_b) == ["caption", "image", "label", "rep", "tokens"]
        for field in batch_a:
            assert _equal(batch_a[field], batch_b[field]), (split, field)
        assert _equal(a[3]["caption"], b[3]["caption"]) if isinstance(a[3]["caption"], list) else \
            a[3]["caption"] == b[3]["caption"]
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["format"] == "mtd-packed" and m["split_names"] == ["train", "test", "val"]
    assert m["examples"] == 60 and m["splits"]["val"]["count"] == 5 and m["source"]["holdout"] == 5
    assert m["fields"]["image"]["stored"] == "uint8" and m["fields"]["image"]["scale"] == 255
    assert m["fields"]["label"]["stored"] == "uint8" and m["fields"]["rep"]["stored"] == "float32"
    assert len(manifest.splits["train"]) == -(-len(src.train) // 7) > 1  # 7 examples a shard
    file = m["splits"]["train"]["shards"][0]["files"]["caption"][1]
    assert len(file["sha256"]) == 64 and file["bytes"] == (tmp_path / "p" / file["path"]).stat().st_size
    assert packed.info["train_size"] == len(src.train) == 49


class _Items:
    """A plugin's dataset that is not held in memory: items one at a time."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        return {"mask": torch.rand(3, 3, generator=g) > 0.5, "score": torch.randn(2, generator=g).double(),
                "label": i % 7, "caption": CAPTIONS[i % len(CAPTIONS)]}


class _Registry:
    """The registry with one more dataset, as a plugin would add it."""

    def __init__(self) -> None:
        self.base = get_registry()

    def dataset(self, name: str) -> Any:
        from mtd_core.data import DatasetSplits

        return (lambda: DatasetSplits(train=_Items(23), test=_Items(5), info={"name": "items"})) \
            if name == "items" else self.base.dataset(name)

    def table(self, kind: str) -> Any:
        return self.base.table(kind)


def test_a_plugins_dataset_of_single_items_packs_with_bools_doubles_and_text(tmp_path: Path) -> None:
    pack_dataset({"name": "items"}, _Registry(), tmp_path / "p", shard_examples=4, progress=False)  # type: ignore[arg-type]
    packed = _load(tmp_path / "p")
    assert packed.info == {"name": "items", "reading_options": ["verify", "workers", "prefetch"]}
    for split, n in (("train", 23), ("test", 5)):
        got = getattr(packed.splits, split)
        for i in range(n):
            want, have = _Items(n)[i], got[i]
            assert torch.equal(have["mask"], want["mask"]) and have["mask"].dtype == torch.bool
            assert torch.equal(have["score"], want["score"]) and have["score"].dtype == torch.float64
            assert int(have["label"]) == want["label"] and have["label"].dtype == torch.int64
            assert have["caption"] == want["caption"]


def test_a_late_value_that_does_not_fit_the_first_plan_is_stored_as_it_is(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_write, "CHUNK", 4)  # the plan is decided on the first 4 examples
    reg = get_registry()
    config = {"name": "npz", "path": str(_npz(tmp_path / "d.npz", n=30, big_label_at=20)), "test_fraction": 0.2}
    pack_dataset(config, reg, tmp_path / "p", progress=False)
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["fields"]["label"]["stored"] == "int64"
    src: Any = load_dataset(config, reg).splits
    packed: Any = _load(tmp_path / "p").splits
    labels = []
    for split in ("train", "test"):
        idx = torch.arange(len(getattr(src, split)))
        labels += getattr(packed, split).get_batch(idx)["label"].tolist()
        assert torch.equal(getattr(src, split).get_batch(idx)["label"], getattr(packed, split).get_batch(idx)["label"])
    assert 300 in labels


def test_a_failed_pack_leaves_no_folder_and_a_full_folder_is_refused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reg = get_registry()

    def boom(*args: Any) -> None:
        raise ModalityDataError("boom")
    monkeypatch.setattr(packed_write, "encode", boom)
    with pytest.raises(ModalityDataError, match="boom"):
        pack_dataset({"name": "digits"}, reg, tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists()
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        pack_dataset({"name": "digits"}, reg, tmp_path / "q", progress=False)
    assert (tmp_path / "q" / "x").read_text() == "keep me"
    with pytest.raises(ConfigError, match="shard_examples"):
        pack_dataset({"name": "digits"}, reg, tmp_path / "r", shard_examples=0)


TINY: dict[str, Any] = {
    "taskset": {"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                               {"kind": "label", "num_classes": 10, "hidden": 16}],
                "diffusion": {"kind": "linear", "T": 50}},
    "backbone": {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4,
                 "dropout": 0.1},
    "trainer": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every": 3, "log_every": 2,
                "sample_n": 0, "progress": False, "device": "cpu", "ema_decay": 0.9},
}


def _config(dataset: dict[str, Any]) -> RunConfig:
    return RunConfig.from_dict({**copy.deepcopy(TINY), "dataset": dataset})


def _weights(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.state_dict().items()})  # type: ignore[union-attr]
    return out


def _train(cfg: RunConfig, out: Path, until: int | None = None, resume: bool = False) -> Trainer:
    run = build_run(cfg)
    tr = Trainer(run.model, run.data, cfg.trainer, out, run_config=run.config.to_dict(), resume=resume)
    tr.fit(until=until)
    return tr


@pytest.fixture(scope="module")
def packed_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "digits"
    pack_dataset({"name": "digits"}, get_registry(), out, shard_examples=500, progress=False)
    return out


def test_training_on_packed_data_with_workers_equals_training_in_memory(tmp_path: Path, packed_digits: Path) -> None:
    memory = _train(_config({"name": "digits"}), tmp_path / "memory")
    packed = _train(_config({"name": "packed", "path": str(packed_digits), "workers": 2, "prefetch": 2}),
                    tmp_path / "packed")
    assert packed.loader is not None and packed.loader.workers == 2 and memory.loader is None
    assert packed.loader.read_ahead == 5  # every step after the first came from the worker processes
    a, b = _weights(memory), _weights(packed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert memory.sampler.state_dict() == packed.sampler.state_dict()


def test_resume_on_the_packed_loader_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path,
                                                                              packed_digits: Path) -> None:
    cfg = _config({"name": "packed", "path": str(packed_digits), "workers": 0, "verify": "sizes"})
    straight = _train(cfg, tmp_path / "a")
    _train(cfg, tmp_path / "b", until=4)
    torch.manual_seed(12345)  # nothing between the runs may matter
    # how the data is read may change on --resume (the info's reading_options), what it is may not
    more_workers = _config({"name": "packed", "path": str(packed_digits), "workers": 1, "verify": "checksums"})
    other_data = _config({"name": "packed", "path": str(packed_digits), "workers": 0, "verify": "sizes",
                          "holdout": 10})
    with pytest.raises(CheckpointError, match="dataset config differs"):
        _train(other_data, tmp_path / "b", resume=True)
    second = _train(more_workers, tmp_path / "b", resume=True)
    assert second.step == 6
    a, b = _weights(straight), _weights(second)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert second.sampler.state_dict() == straight.sampler.state_dict()
    saved = json.loads((tmp_path / "b" / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert saved["trainer"]["sampler"] == straight.sampler.state_dict()  # the loader's position is the sampler's


def test_the_loader_gives_the_batch_of_any_indices_asked_for(packed_digits: Path) -> None:
    from mtd_core.data.loader import stream_loader
    from mtd_core.data.sampler import ResumableSampler

    data = _load(packed_digits, workers=1)
    sampler = ResumableSampler(len(data.splits.train), 12, seed=3, rank=1, world_size=2)
    positions = [torch.arange(6, 12)]  # rank 1 of 2: the second half of each global batch
    loader = stream_loader(data, sampler, positions, torch.device("cpu"))
    assert loader is not None
    for step in range(6):
        idx = torch.tensor([5, 1, 1400]) if step == 3 else sampler.next()  # step 3: indices from elsewhere
        got, want = loader.batch(idx), data.splits.train.get_batch(idx)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert loader.read_ahead == 4  # steps 1, 2, 4, 5 came from the worker; 0 and the foreign 3 were read here
    loader.close()


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _load(path: Path, **options: Any) -> Any:
    return load_dataset({"name": "packed", "path": str(path), **options}, get_registry())


def test_a_missing_or_truncated_shard_is_named_with_its_field(tmp_path: Path, packed_digits: Path) -> None:
    missing = _copy(packed_digits, tmp_path / "missing")
    (missing / "train" / "label-00001.npy").unlink()
    with pytest.raises(ModalityDataError, match=r"label-00001\.npy \(split 'train', field 'label'.*missing"):
        _load(missing)
    cut = _copy(packed_digits, tmp_path / "cut")
    path = cut / "test" / "image-00000.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModalityDataError, match=r"image-00000\.npy \(split 'test', field 'image'.*truncated"):
        _load(cut, verify="sizes")
    (packed_digits / "manifest.json").read_text()  # the original is untouched
    with pytest.raises(ModalityDataError, match="manifest.json: not found"):
        _load(tmp_path / "missing" / "train")


def test_a_checksum_mismatch_is_named_unless_only_sizes_are_verified(tmp_path: Path, packed_digits: Path) -> None:
    bad = _copy(packed_digits, tmp_path / "bad")
    path = bad / "train" / "image-00000.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one pixel changed
    path.write_bytes(bytes(data))
    with pytest.raises(ModalityDataError, match=r"image-00000\.npy \(split 'train', field 'image'.*SHA-256"):
        _load(bad)
    assert len(_load(bad, verify="sizes").splits.train) == 1438  # sizes and headers only: it opens


def test_a_shard_that_disagrees_with_the_manifest_is_named_with_its_field(tmp_path: Path, packed_digits: Path) -> None:
    bad = _copy(packed_digits, tmp_path / "bad")
    path = bad / "train" / "label-00000.npy"
    n = len(np.load(path))
    np.save(path, np.zeros((n, 2), dtype=np.uint8))  # a field of another shape, size and checksum made to match
    m = json.loads((bad / "manifest.json").read_text())
    entry = m["splits"]["train"]["shards"][0]["files"]["label"][0]
    from mtd_core.data.packed_format import file_sha256

    entry["bytes"], entry["sha256"] = path.stat().st_size, file_sha256(path)
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModalityDataError, match=r"label-00000\.npy \(split 'train', field 'label'.*shape \(500, 2\)"):
        _load(bad)
    m["fields"]["label"]["kind"] = "picture"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModalityDataError, match="field 'label'.*'tensor' or 'text'"):
        _load(bad)


def test_packed_options_are_validated_and_resolved(packed_digits: Path) -> None:
    reg = get_registry()
    resolved = resolve_dataset_config({"name": "packed", "path": str(packed_digits)}, reg).to_dict()
    assert {k: resolved[k] for k in ("verify", "workers", "prefetch")} == {"verify": "checksums", "workers": 2,
                                                                           "prefetch": 4}
    for key, value, message in (("verify", "md5", "dataset.verify"), ("workers", -1, "dataset.workers"),
                                ("prefetch", 0, "dataset.prefetch"), ("workers", 1.5, "dataset.workers")):
        with pytest.raises(ConfigError, match=message):
            _load(packed_digits, **{key: value})
    with pytest.raises(ConfigError, match="dataset.path is required"):
        resolve_dataset_config({"name": "packed"}, reg)


def test_a_packed_dataset_that_disagrees_with_the_task_set_fails_before_training(tmp_path: Path,
                                                                                packed_digits: Path) -> None:
    for index, option, value, message in ((0, "size", 16, r"shape \(1, 16, 16\) and dtype float32, the packed field has"),
                                          (1, "num_classes", 5, r"values in \[0, 9\], outside the allowed range")):
        cfg = copy.deepcopy(TINY)
        cfg["taskset"]["modalities"][index][option] = value
        config = RunConfig.from_dict({**cfg, "dataset": {"name": "packed", "path": str(packed_digits)}})
        field = "image" if index == 0 else "label"
        match = rf"{field}-00000\.npy \(split 'train', field '{field}'\): modality '{field}'.*{message}"
        with pytest.raises(ModalityDataError, match=match):  # before the model is built (build_run)
            build_run(config)
        run = build_run(config, check_data=False)  # and again where the Trainer opens the loader
        with pytest.raises(ModalityDataError, match=match):
            Trainer(run.model, run.data, run.config.trainer, tmp_path / str(index))
        assert not (tmp_path / str(index) / "checkpoints").exists()


def test_mtd_data_pack_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**copy.deepcopy(TINY), "dataset": {"name": "digits", "transforms": [{"kind": "edges", "into": "edges"}]}}
    (tmp_path / "run.toml").write_text(dumps_toml(config))
    out = tmp_path / "packed"
    argv = ["data", "pack", str(tmp_path / "run.toml"), str(out), "--set", "dataset.holdout=30", "--shard-mb", "1",
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "train 1408, test 359, val 30" in printed and 'name = "packed"' in printed and "edges" in printed
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["holdout"] == 30 and m["source"]["transforms"][0]["kind"] == "edges"
    assert "edges" not in m["fields"]  # transforms are left to training
    assert main(argv) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["data", "pack", str(tmp_path / "run.toml"), str(tmp_path / "x"), "--shard-mb", "0"]) == 1
    assert "--shard-mb must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_packed_options_and_the_pack_command_are_documented() -> None:
    import argparse

    from mtd_core.cli import build_parser
    from mtd_core.data.build import factory_defaults

    docs = Path(__file__).parent.parent / "docs"
    data, cli = (docs / "data.md").read_text(), (docs / "cli.md").read_text()
    for option in factory_defaults(get_registry().dataset("packed")):
        assert f"| `{option}` |" in data, f"dataset 'packed' option {option!r} is not documented in docs/data.md"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    pack = next(a for a in sub.choices["data"]._actions if isinstance(a, argparse._SubParsersAction)).choices["pack"]
    assert "## `mtd data pack`" in cli
    for action in pack._actions:
        for opt in action.option_strings:
            if opt != "--help" and opt.startswith("--"):
                assert f"`{opt}" in cli, f"mtd data pack {opt} is not documented in docs/cli.md"


def test_two_processes_on_packed_data_match_one_in_memory(tmp_path: Path, packed_digits: Path) -> None:
    """Each rank reads its own share of every global batch through its own loader workers (torchrun, gloo)."""
    import os
    import subprocess
    import sys

    from mtd_core.training import load_checkpoint

    config = {**copy.deepcopy(TINY), "dataset": {"name": "packed", "path": str(packed_digits), "workers": 1}}
    config["trainer"].update(steps=4, checkpoint_every=0)
    config["backbone"]["dropout"] = 0.0  # dropout draws per rank: only without it do 2 processes match 1
    (tmp_path / "c.toml").write_text(dumps_toml(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "mtd_core.cli", "train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=170, check=False)
    assert proc.returncode == 0 and "on 2 processes" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    one = _train(RunConfig.from_dict({**config, "dataset": {"name": "digits"}}), tmp_path / "one")
    ddp = load_checkpoint(tmp_path / "ddp")
    for k, v in one.model.state_dict().items():  # float reduction order differs across processes
        assert torch.allclose(ddp.model[k], v, rtol=1e-4, atol=1e-5), k
    assert ddp.trainer["sampler"] == one.sampler.state_dict()


def test_ctrl_c_to_the_process_group_stops_once_with_a_checkpoint(tmp_path: Path, packed_digits: Path) -> None:
    """The loader's workers get the terminal's Ctrl-C too; they leave it to the training process (without that,
    each forked worker ran the trainer's handler and announced the stop again)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = {**copy.deepcopy(TINY), "dataset": {"name": "packed", "path": str(packed_digits), "workers": 2}}
    config["trainer"].update(steps=100000, checkpoint_every=0, log_every=1)
    (tmp_path / "c.toml").write_text(dumps_toml(config))
    proc = subprocess.Popen([sys.executable, "-m", "mtd_core.cli", "train", str(tmp_path / "c.toml"), "--out",
                             str(tmp_path / "run")], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to every process of the group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert out.count("SIGINT received") == 1 and "stopped by SIGINT" in out
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 1
