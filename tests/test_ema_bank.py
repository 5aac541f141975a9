"""EMAs by half-life (EDM's definition), several EMA lengths side by side chosen by name at sampling time, and the
TensorBoard writer beside metrics.jsonl."""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtd_core.cli import main
from mtd_core.errors import CheckpointError, ConfigError
from mtd_core.tomlio import dumps_toml, loads_toml
from mtd_core.training import RunConfig, TrainConfig, Trainer, build_run, load_checkpoint, load_run
from mtd_core.training.checkpoint import save_checkpoint
from mtd_core.training.ema import EMA, halflife_decay

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
TWO = [{"name": "short", "halflife": 8}, {"name": "long", "halflife": 64}]


def tiny(**trainer: Any) -> RunConfig:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(trainer)
    return RunConfig.from_dict(cfg)


def train(cfg: RunConfig, out: Path, *, until: int | None = None, resume: bool = False) -> Trainer:
    run = build_run(cfg)
    tr = Trainer(run.model, run.data, cfg.trainer, out, run_config=run.config.to_dict(), resume=resume)
    tr.fit(until=until)
    return tr


def state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    for name, ema in tr.emas.members.items():
        out.update({f"{name}.{k}": v for k, v in ema.state_dict().items()})
    for pid, st in tr.optimizer.state_dict()["state"].items():
        out.update({f"opt.{pid}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


@pytest.fixture(scope="module")
def two_ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two_ema")
    train(tiny(steps=4, checkpoint_every=0, ema_rampup=1.0, emas=TWO), root)
    return root


def test_halflife_gives_edm_decay_and_halves_the_weight_every_halflife() -> None:
    assert halflife_decay(1000, 10, seen=10**6, rampup=0.05) == 0.5 ** (10 / 1000)
    assert halflife_decay(1000, 10, seen=2000, rampup=0.05) == 0.5 ** (10 / 100)  # capped at 0.05 x 2000 examples
    assert halflife_decay(1000, 10, seen=0, rampup=0.05) == 0.0  # the first update copies the weights
    assert halflife_decay(1000, 10, seen=0, rampup=0.0) == 0.5 ** (10 / 1000)  # no ramp-up
    # what a half-life means: the weight on old weights halves over `halflife` examples, whatever the batch
    for batch in (10, 50):
        assert math.prod(halflife_decay(1000, batch, 0) for _ in range(1000 // batch)) == pytest.approx(0.5)
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, 0.999, halflife=1000, rampup=0.05, batch_size=10)
    ema.updates = 300  # 3000 examples seen: capped at 150
    assert ema.current_decay() == 0.5 ** (10 / 150)
    assert EMA(net, 0.9, warmup=False).current_decay() == 0.9  # decay-based EMAs unchanged


def test_two_emas_differ_and_each_matches_a_recomputation(tmp_path: Path) -> None:
    cfg = tiny(steps=4, checkpoint_every=0, ema_rampup=1.0, emas=TWO)
    run = build_run(cfg)
    tr = Trainer(run.model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict())
    assert tr.emas.names == ["ema", "short", "long"] and tr.ema is tr.emas.members["ema"]
    keys = list(tr.emas.members["short"].shadow)
    weights = [{k: tr.model.state_dict()[k].detach().double().clone() for k in keys}]  # the initial weights
    update = tr.emas.update

    def spy(model: torch.nn.Module) -> None:  # the weights each update sees
        weights.append({k: model.state_dict()[k].detach().double().clone() for k in keys})
        update(model)

    tr.emas.update = spy  # type: ignore[method-assign]
    tr.fit()
    assert len(weights) == 5
    def edm(halflife: float) -> Any:  # batch 8, ramp-up ratio 1: half-life capped at the examples seen before
        return lambda n: 0.5 ** (8 / max(min(halflife, 1.0 * 8 * n), 1e-8))

    decays = {"ema": lambda n: min(0.9, (1 + n) / (10 + n)), "short": edm(8), "long": edm(64)}  # ema: as before
    for name, decay in decays.items():
        expect = dict(weights[0])
        for n in range(4):
            d = decay(n)
            expect = {k: d * expect[k] + (1 - d) * weights[n + 1][k] for k in keys}
        got = tr.emas.members[name].shadow
        for k in keys:
            assert torch.allclose(got[k].double(), expect[k], rtol=0, atol=1e-6), (name, k)
    short, long = tr.emas.members["short"].shadow, tr.emas.members["long"].shadow
    assert any(not torch.allclose(short[k], long[k], atol=1e-5) for k in keys)  # different lengths, different weights


def test_two_emas_round_trip_through_checkpoints_and_resume_bit_identically(tmp_path: Path) -> None:
    cfg = tiny(ema_halflife=24, ema_rampup=0.5, emas=TWO)
    straight = train(cfg, tmp_path / "a")
    first = train(cfg, tmp_path / "b", until=4)
    torch.manual_seed(12345)
    second = train(cfg, tmp_path / "b", resume=True)
    assert first.step == 4 and second.step == 6
    a, b = state(straight), state(second)
    assert a.keys() == b.keys() and any(k.startswith("long.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = load_checkpoint(tmp_path / "b")
    manifest = json.loads((ckpt.path / "manifest.json").read_text())["files"]  # type: ignore[operator]
    assert {"ema.safetensors", "ema_short.safetensors", "ema_long.safetensors"} <= set(manifest)
    assert ckpt.ema is not None and set(ckpt.emas) == {"short", "long"}
    for name, ema in second.emas.members.items():
        saved = ckpt.ema if name == "ema" else ckpt.emas[name]
        assert all(torch.equal(saved[k], v) for k, v in ema.state_dict().items()), name
    changed = tiny(ema_halflife=24, ema_rampup=0.5, emas=TWO[:1], steps=8)
    run = build_run(changed)
    with pytest.raises(CheckpointError, match=r"trainer options \['emas'\] differ"):
        Trainer(run.model, run.data, changed.trainer, tmp_path / "b", run_config=run.config.to_dict(), resume=True)


def test_an_old_single_ema_checkpoint_loads_and_resumes_bit_identically(tmp_path: Path) -> None:
    cfg = tiny(checkpoint_every=0)
    straight = train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b", until=4)
    # the checkpoint as an mtd without several EMAs wrote it: no trainer option it did not know, one ema.safetensors
    ckpt = load_checkpoint(tmp_path / "b")
    trainer_cfg = ckpt.config["run"]["trainer"]  # type: ignore[index]
    for key in ("ema_halflife", "ema_rampup", "emas", "tensorboard"):
        del trainer_cfg[key]
    assert not ckpt.emas
    save_checkpoint(tmp_path / "b" / "checkpoints", ckpt)
    assert "emas" not in json.loads((ckpt.path / "config.json").read_text())["run"]["trainer"]  # type: ignore[operator]
    loaded = load_run(tmp_path / "b")
    assert loaded.weights == "ema" and load_run(tmp_path / "b", ema="ema").weights == "ema"
    assert load_run(tmp_path / "b", ema=False).weights == "model" == load_run(tmp_path / "b", ema="model").weights
    ema_w = ckpt.ema["heads.label.0.weight"]  # type: ignore[index]
    assert torch.equal(loaded.model.state_dict()["heads.label.0.weight"], ema_w)
    with pytest.raises(ConfigError, match=r"EMA 'short': .* has the EMAs \['ema'\]; choose one of \['ema', 'model'\]"):
        load_run(tmp_path / "b", ema="short")
    second = train(cfg, tmp_path / "b", resume=True)
    a, b = state(straight), state(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ema_name_chooses_the_weights_in_load_run_sample_and_eval(two_ema_run: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from mtd_core.sampling.generate import generate

    ckpt = load_checkpoint(two_ema_run)
    for name in ("short", "long"):
        loaded = load_run(two_ema_run, ema=name)
        assert loaded.weights == name
        for k, v in ckpt.emas[name].items():
            assert torch.equal(loaded.model.state_dict()[k], v), (name, k)
    assert torch.equal(load_run(two_ema_run).model.state_dict()["heads.label.0.weight"],
                       ckpt.ema["heads.label.0.weight"])  # type: ignore[index]
    assert torch.equal(load_run(two_ema_run, ema="model").model.state_dict()["heads.label.0.weight"],
                       ckpt.model["heads.label.0.weight"])
    drawn = {}
    for name in ("short", "long"):
        out = tmp_path / name
        assert main(["sample", str(two_ema_run), "--out", str(out), "--ema", name, "--n", "3", "--steps", "3",
                     "--no-progress"]) == 0
        assert f"EMA '{name}' weights of step 4" in capsys.readouterr().out
        with np.load(out / "samples.npz") as f:
            drawn[name] = {k: f[k] for k in f.files}
    assert not np.array_equal(drawn["short"]["image"], drawn["long"]["image"])
    by_hand = generate(load_run(two_ema_run, ema="short").model, n=3, steps=3, progress=False,
                       generator=torch.Generator("cpu").manual_seed(0))
    assert np.array_equal(drawn["short"]["image"], by_hand.samples["image"].numpy())
    assert main(["eval", str(two_ema_run), "--ema", "long", "--n", "4", "--timesteps", "2", "--readout-n", "4",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "long"


def test_an_unknown_ema_name_is_an_error_listing_the_names(two_ema_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"EMA 'medium': .* has the EMAs \['ema', 'long', 'short'\]; choose one of "
                       r"\['ema', 'long', 'short', 'model'\]"):
        load_run(two_ema_run, ema="medium")
    for command in (["sample", str(two_ema_run), "--out", str(tmp_path / "s")], ["eval", str(two_ema_run)]):
        assert main([*command, "--ema", "medium"]) == 1
        err = capsys.readouterr().err
        assert f"mtd {command[0]}: error: EMA 'medium'" in err and "'short'" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_writes_the_scalars_of_metrics_jsonl_also_across_a_resume(tmp_path: Path) -> None:
    cfg = tiny(steps=5, log_every=1, checkpoint_every=2, keep_last=0, tensorboard=True)
    train(cfg, tmp_path, until=4)
    # a run stopped after step 4 but before its checkpoint: it continues from step 2, logging 3 and 4 again
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000004")
    train(cfg, tmp_path, resume=True)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]
    scalars = _scalars(tmp_path / "tensorboard")
    assert set(scalars) == set(lines[0]) - {"step"}
    for tag, events in scalars.items():  # each step once, the value metrics.jsonl holds (as float32)
        assert events == [(m["step"], float(np.float32(m[tag]))) for m in lines], tag


def test_tensorboard_without_the_package_is_a_config_error_before_training(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    cfg = tiny(steps=2, tensorboard=True)
    run = build_run(cfg)
    with pytest.raises(ConfigError, match=r"trainer.tensorboard = true needs the tensorboard package.*"
                       r"pip install 'mtd\[tensorboard\]'"):
        Trainer(run.model, run.data, cfg.trainer, tmp_path, run_config=run.config.to_dict())
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


def test_ema_options_are_validated_and_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = TrainConfig(ema_halflife=5e5, ema_rampup=0.1, emas=TWO, tensorboard=True)
    d = c.to_dict()
    assert d["emas"] == [{"name": "short", "halflife": 8.0}, {"name": "long", "halflife": 64.0}]
    assert json.loads(json.dumps(d)) == d and TrainConfig.from_dict(d) == c
    assert TrainConfig.from_dict(loads_toml(dumps_toml({"trainer": d}))["trainer"]) == c
    for kwargs, message in [
        ({"ema_halflife": -1}, r"trainer.ema_halflife must be a finite number in \[0, inf\), got -1"),
        ({"ema_rampup": float("nan")}, r"trainer.ema_rampup must be a finite number in \[0, inf\), got nan"),
        ({"emas": "short"}, r"trainer.emas must be a list of \{name = \"...\", halflife = N\} tables"),
        ({"emas": [5]}, r"trainer.emas.0 must be a table"),
        ({"emas": [{"name": "a", "halflif": 3}]},
         r"trainer.emas.0 must have exactly the keys 'name' and 'halflife'.*did you mean 'halflife'"),
        ({"emas": [{"name": "model", "halflife": 3}]}, r"trainer.emas.0.name must be .*\(reserved\), got 'model'"),
        ({"emas": [{"name": "a b", "halflife": 3}]}, r"trainer.emas.0.name must be a letter"),
        ({"emas": [{"name": "a", "halflife": 0}]}, r"trainer.emas.0.halflife must be a finite number in \(0, inf\)"),
        ({"emas": TWO + [{"name": "short", "halflife": 3}]}, r"trainer.emas.2.name: 'short' is used twice"),
        ({"emas": TWO, "ema_decay": 0}, r"trainer.emas lists \['short', 'long'\] but trainer.ema_decay = 0"),
        ({"ema_halflife": 100, "ema_decay": 0}, r"trainer.ema_halflife = 100 but trainer.ema_decay = 0"),
        ({"tensorboard": "yes"}, r"trainer.tensorboard must be true or false, got 'yes'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**kwargs)
    config = tmp_path / "c.toml"
    config.write_text(dumps_toml(copy.deepcopy(TINY)))
    assert main(["config", "show", str(config), "--set", 'trainer.emas=[{name = "short", halflife = 5000}]',
                 "--set", "trainer.ema_halflife=50000", "--set", "trainer.tensorboard=true"]) == 0
    shown = loads_toml(capsys.readouterr().out)["trainer"]
    assert shown["emas"] == [{"name": "short", "halflife": 5000.0}] and shown["ema_halflife"] == 50000.0
    assert shown["ema_rampup"] == 0.05 and shown["tensorboard"] is True
