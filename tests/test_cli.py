"""The mtd command: config show, unknown-key suggestions, train (--quick, --resume) + sample + eval, the example
configs, and demo --quick."""

from __future__ import annotations

import copy
import importlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mtd_core.cli import main

from mtd_core.training import load_checkpoint
from mtd_core.tomlio import dumps_toml
from mtd_core.training.config import read_config, resolve_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.toml"))
TINY: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "taskset": {"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                               {"kind": "label", "num_classes": 10, "hidden": 16}],
                "diffusion": {"kind": "linear", "T": 40}},
    "backbone": {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4},
    "trainer": {"steps": 3, "batch_size": 8, "checkpoint_every": 0, "sample_n": 0, "progress": False,
                "device": "cpu"},
}


@pytest.fixture()
def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(dumps_toml(TINY))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_examples_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= {"image_transition", "masked_image", "image_label", "image_representation",
                                          "image_caption"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_config_show_prints_the_resolved_config_as_toml_that_reads_back(path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if path.stem == "latent_image_label":  # its vae folder: a tiny random AutoencoderKL where the config looks
        pytest.importorskip("diffusers")
        from tests.test_latent_image import make_vae

        make_vae(tmp_path / "runs" / "fashion_vae")
        monkeypatch.chdir(tmp_path)
        path = path.absolute()
    rc, out, err = _run(capsys, "config", "show", str(path))
    assert rc == 0, err
    shown = tomllib.loads(out)
    resolved = resolve_config(read_config(path)).to_dict()
    strip = lambda d: json.loads(json.dumps(d), object_hook=lambda o: {k: v for k, v in o.items() if v is not None})  # noqa: E731
    assert shown == strip(resolved)
    assert shown["trainer"]["grad_clip"] == 1.0  # a default filled in
    rc, out, _ = _run(capsys, "config", "show", str(path), "--json", "--set", "trainer.steps=7")
    assert rc == 0 and json.loads(out)["trainer"]["steps"] == 7


def test_demo_config_is_the_image_label_example(capsys: pytest.CaptureFixture[str]) -> None:
    from mtd_core.cli.demo import demo_config
    from mtd_core.training import RunConfig

    example = resolve_config(read_config(EXAMPLES[0].parent / "image_label.toml")).to_dict()
    demo = resolve_config(RunConfig.from_dict(demo_config())).to_dict()
    for d in (example, demo):
        d["trainer"].pop("sample_n")
    assert demo == example


@pytest.mark.parametrize("toml,setting,pattern", [
    ("[trainer]\nstpes = 3\n", None, r"trainer: unknown key 'stpes' \(did you mean 'steps'\?\)"),
    ("[trainr]\nsteps = 3\n", None, r"unknown table \[trainr\] \(did you mean 'trainer'\?\)"),
    ("[dataset]\nname = \"digits\"\ntest_fracton = 0.1\n", None, r"unknown option 'test_fracton' \(did you mean 'test_fraction'\?\)"),
    ("", "backbone.chanels=8", r"unknown option 'chanels' \(did you mean 'channels'\?\)"),
    ("", "taskset.modalities.1.num_clases=5", r"unknown option 'num_clases' \(did you mean 'num_classes'\?\)"),
    ("", "taskset.diffusion.TT=5", r"unknown key diffusion.TT"),
    ("", "trainr.steps=5", r"--set 'trainr.steps=5': the key must start with a table name .*did you mean 'trainer'"),
    ("", "taskset.modalities.7.x=1", r"needs a list index in 0..1"),
])
def test_unknown_keys_fail_with_the_nearest_valid_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str,
                                                      setting: str | None, pattern: str) -> None:
    import re

    base = copy.deepcopy(TINY)
    text = dumps_toml(base)
    if toml:
        extra = tomllib.loads(toml)
        for table, values in extra.items():
            base.setdefault(table, {}).update(values)
        text = dumps_toml(base)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    argv = ["config", "show", str(path)] + (["--set", setting] if setting else [])
    rc, out, err = _run(capsys, *argv)
    assert rc == 1 and out == ""
    assert err.startswith("mtd config show: error:")
    assert re.search(pattern, err), err


def test_sample_guides_a_told_own_channel_run_by_default_and_says_so(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["taskset"].update(known_input=True, aux_channels=1, aux_eps="heads")
    (tmp_path / "told.toml").write_text(dumps_toml(cfg))
    run = tmp_path / "run"
    assert _run(capsys, "train", str(tmp_path / "told.toml"), "--out", str(run), "--quick")[0] == 0
    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "s"), "--given", "label=3", "--n", "2",
                        "--nfe", "8", "--no-progress")
    assert rc == 0, err
    assert "8 network evaluations, classifier-free guidance 1.5" in out
    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "s1"), "--given", "label=3", "--n", "2",
                        "--nfe", "8", "--cfg-scale", "1", "--no-progress")
    assert rc == 0 and "8 network evaluations, no classifier-free guidance" in out, out


def test_train_quick_then_sample_then_eval(tiny_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    rc, out, err = _run(capsys, "train", str(tiny_toml), "--out", str(run), "--quick")
    assert rc == 0, err
    assert "finished at step 4" in out
    assert load_checkpoint(run).step == 4
    assert (run / "samples" / "step_00000004.png").is_file() and (run / "config.json").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4

    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "s"), "--given", "label=0,3,nine", "--n",
                        "2", "--steps", "3", "--seed", "1")
    assert rc == 0, err
    raw = np.load(tmp_path / "s" / "samples.npz")
    assert raw["label"].tolist() == [0, 0, 3, 3, 9, 9]
    assert raw["image"].shape == (6, 1, 8, 8) and np.abs(raw["image"]).max() <= 1
    with Image.open(tmp_path / "s" / "samples.png") as im:
        assert im.width > 2 * 8 * 4
    rc, _, _ = _run(capsys, "sample", str(run), "--out", str(tmp_path / "s2"), "--given", "label=0,3,nine", "--n",
                    "2", "--steps", "3", "--seed", "1")
    assert np.array_equal(np.load(tmp_path / "s2" / "samples.npz")["image"], raw["image"])  # seeded
    seen: list[dict] = []
    sampling_generate = importlib.import_module("mtd_core.sampling.generate")
    real = sampling_generate.generate
    monkeypatch.setattr(sampling_generate, "generate", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "s3"), "--given", "label=0", "--n", "2",
                        "--sampler", "dpmpp_2m", "--nfe", "4", "--clip", "dynamic", "--conditioning", "exact",
                        "--option", "lower_order_final=false", "--no-progress", "--spacing", "logsnr")
    assert rc == 0, err
    assert "dpmpp_2m, 4 network evaluations" in out and err == ""
    assert {k: seen[-1][k] for k in ("sampler", "nfe", "clip", "conditioning", "sampler_options", "spacing",
                                     "keep_observed")} == {
        "sampler": "dpmpp_2m", "nfe": 4, "clip": "dynamic", "conditioning": "exact",
        "sampler_options": {"lower_order_final": False}, "spacing": "logsnr", "keep_observed": True}
    rc, _, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "s4"), "--sampler", "ddmp", "--n", "2")
    assert rc == 1 and "unknown sampler 'ddmp' (did you mean 'ddpm'?)" in err
    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "s5"), "--given", "label=1", "--n", "2",
                        "--cfg-scale", "2", "--no-keep-observed", "--nfe", "4", "--no-progress")
    assert rc == 0, err  # the label kind's design tells the network the label: guidance has its untold pass
    assert "classifier-free guidance 2" in out and seen[-1]["cfg_scale"] == 2
    assert seen[-1]["keep_observed"] is False

    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "j"), "--n", "3", "--steps", "2")
    assert rc == 0 and "3 samples (joint" in out
    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "jt"), "--n", "3", "--steps", "2",
                        "--encoding-temperature", "label=0.125", "--spacing", "leading", "--joint", "flow")
    assert rc == 0 and "3 samples (joint" in out, err
    rc, _, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "x"), "--encoding-temperature", "image=0.5")
    assert rc == 1 and "names 'image', which is not a generated aggregated modality" in err  # reaches generate
    rc, _, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "x"), "--encoding-temperature", "label")
    assert rc == 1 and "--encoding-temperature 'label': expected NAME=TAU" in err
    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "g"), "--given", "label=3", "--n", "2",
                        "--steps", "2", "--guidance", "2")
    assert rc == 0, err
    assert np.load(tmp_path / "g" / "samples.npz")["label"].tolist() == [3, 3]
    rc, _, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "g"), "--guidance", "2")
    assert rc == 1 and "--guidance needs exactly one given aggregated modality" in err
    rc, _, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "x"), "--given", "labl=3")
    assert rc == 1 and "no modality 'labl' (did you mean 'label'?)" in err
    rc, _, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "x"), "--given", "label=eleven")
    assert rc == 1 and "not a class index or name" in err

    rc, out, err = _run(capsys, "eval", str(run), "--n", "20", "--timesteps", "4", "--accuracy-n", "30", "--json")
    assert rc == 0, err
    result = json.loads(out)
    elbo = result["elbo"]
    assert elbo["n_examples"] == 20 and elbo["timesteps_per_example"] == 4 and elbo["T"] == 40
    assert np.isfinite(elbo["bits_per_dim"]) and elbo["bits_per_dim"] > 0
    assert result["readout"]["label"]["n_examples"] == 30 and 0 <= result["readout"]["label"]["accuracy"] <= 1
    rc, out, _ = _run(capsys, "eval", str(run), "--n", "10", "--timesteps", "39", "--accuracy-n", "10")
    assert rc == 0 and "on 10 of 359 test examples, all denoising terms" in out
    assert re.search(r"label read-out from the test images: accuracy (0\.\d{1,4}|0|1) on 10 test examples", out) \
        and "%" not in out, out  # fractions as fractions, as --json has them


def test_train_resume_continues_and_refuses_a_reused_folder(tiny_toml: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert _run(capsys, "train", str(tiny_toml), "--out", str(run))[0] == 0
    rc, _, err = _run(capsys, "train", str(tiny_toml), "--out", str(run))
    assert rc == 1 and "already holds checkpoints" in err and "--resume" in err
    rc, out, err = _run(capsys, "train", str(tiny_toml), "--out", str(run), "--resume", "--set", "trainer.steps=5")
    assert rc == 0, err
    assert "step 3 -> 5" in out and load_checkpoint(run).step == 5
    rc, _, err = _run(capsys, "train", str(tiny_toml), "--out", str(run), "--resume", "--set", "trainer.steps=6",
                      "--set", "trainer.batch_size=4")
    assert rc == 1 and "batch_size" in err


def test_bad_data_fails_before_training_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = np.arange(12) % 10
    labels[7] = 12
    np.savez(tmp_path / "d.npz", image=np.zeros((12, 8, 8), np.uint8), label=labels)
    cfg = copy.deepcopy(TINY)
    cfg["dataset"] = {"name": "npz", "path": str(tmp_path / "d.npz"), "test_fraction": 0.25}
    (tmp_path / "c.toml").write_text(dumps_toml(cfg))
    rc, _, err = _run(capsys, "train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"))
    assert rc == 1
    assert "d.npz, row 7: modality 'label'" in err and "has value 12" in err
    assert not (tmp_path / "run").exists()


def test_demo_quick_writes_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    rc, stdout, err = _run(capsys, "demo", "--quick", "--out", str(out), "--no-progress")
    assert rc == 0, err
    for name in ("joint.png", "conditional.png", "report.md", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["trained"]["steps"] == 8 and report["trained"]["quick"] is True
    assert 0 <= report["label_head_accuracy"]["value"] <= 1 and report["label_head_accuracy"]["n_test"] == 359
    assert report["joint_coherence"]["n"] == 8 and report["conditional_fidelity"]["n"] == 20
    assert report["conditional_fidelity"]["guidance_scale"] > 0 and 0 <= report["conditional_fidelity_unguided"]["value"] <= 1
    assert report["independent_classifier_test_accuracy"] > 0.9
    md = (out / "report.md").read_text()
    assert "label head accuracy" in md and "joint.png" in md
    assert load_checkpoint(out / "run").step == 8
    assert str(out / "joint.png") in stdout and str(out / "report.md") in stdout
    with Image.open(out / "conditional.png") as im:
        assert im.height > 10 * 8 * 5  # one row per class


def _example_overrides(path: Path, tmp_path: Path) -> list[str]:
    """--set options that bring an example needing more than the digits down to them: the latent example's
    autoencoder (a tiny random one) and its Fashion-MNIST sizes; the gpu preset's ImageNet-64 data (a small
    synthetic .npz) and its size (a tiny U-Net on 8x8 grey images, on the CPU)."""
    if path.stem == "imagenet64_gpu":
        g = np.random.default_rng(0)
        np.savez(tmp_path / "in64.npz", image=g.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8),
                 label=g.integers(0, 1000, 64))
        sets = [f"dataset.path=\"{tmp_path / 'in64.npz'}\"", "dataset.holdout=0", "dataset.test_fraction=0.1",
                "taskset.modalities.0.size=8", "taskset.modalities.0.channels=1", "backbone.channels=16",
                "backbone.channel_mult=[1, 2]", "backbone.num_res_blocks=1", "backbone.attention_resolutions=[4]",
                "backbone.groups=8", "backbone.num_heads=2", "trainer.device=\"cpu\"", "trainer.accumulate=1"]
        return [a for kv in sets for a in ("--set", kv)]
    if path.stem != "latent_image_label":
        return []
    from tests.test_latent_image import make_vae

    vae = make_vae(tmp_path / "vae")
    sets = ["dataset.name=\"digits\"", "dataset.holdout=0", f"taskset.modalities.0.vae=\"{vae}\"",
            "taskset.modalities.0.size=8", "taskset.modalities.0.latent_shape=[4, 4, 4]",
            "backbone.attention_resolutions=[]"]
    return [a for kv in sets for a in ("--set", kv)]


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem != "image_label"], ids=lambda p: p.stem)
def test_every_example_config_trains_and_samples(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each example runs as is on the digits (--quick: 4 steps, then a grid, a checkpoint and a sample)."""
    run = tmp_path / "run"
    extra = _example_overrides(path, tmp_path)
    rc, out, err = _run(capsys, "train", str(path), "--out", str(run), "--quick", "--set", "trainer.batch_size=16",
                        *extra)
    assert rc == 0, err
    ckpt = load_checkpoint(run)
    assert ckpt.step == 4 and (run / "samples" / "step_00000004.png").is_file()
    if path.stem == "image_caption":
        assert "tokenizer.model" in ckpt.assets["text"]  # the fitted tokenizer travels with the weights
        rc, out, err = _run(capsys, "train", str(path), "--out", str(run), "--quick", "--set", "trainer.batch_size=16",
                            "--resume", "--set", "trainer.steps=5")
        assert rc == 0, err
        resumed = load_checkpoint(run)
        assert resumed.step == 5 and resumed.assets == ckpt.assets  # the tokenizer was reused, not refitted
    rc, out, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "s"), "--n", "2", "--steps", "2")
    assert rc == 0, err
    raw = np.load(tmp_path / "s" / "samples.npz")
    names = [m["name"] for m in ckpt.config["model"]["taskset"]["modalities"]]
    assert set(names) <= set(raw.files) and raw["image"].shape == (2, 1, 8, 8)


def test_docs_cover_every_command_option() -> None:
    import argparse

    from mtd_core.cli import build_parser

    docs = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("demo", "train", "sample", "eval", "config"):
        assert f"## `mtd {command}" in docs
        parsers = [sub.choices[command]]
        if command == "config":
            parsers = [next(a for a in parsers[0]._actions if isinstance(a, argparse._SubParsersAction)).choices["show"]]
        for p in parsers:
            for action in p._actions:
                for opt in action.option_strings:
                    if opt.startswith("--") and opt != "--help":
                        assert opt in docs, f"mtd {command} {opt} is not documented in docs/cli.md"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "tiny.toml").write_text(dumps_toml(TINY))
    assert main(["train", str(root / "tiny.toml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root


def test_sample_guided_by_a_classifier_run(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clf_config = copy.deepcopy(TINY)
    image, label = clf_config["taskset"]["modalities"]
    image["loss_weight"], label["weights"] = 0.0, {"kind": "zero"}
    (tmp_path / "clf.toml").write_text(dumps_toml(clf_config))
    rc, _, err = _run(capsys, "train", str(tmp_path / "clf.toml"), "--out", str(tmp_path / "clf"), "--quick")
    assert rc == 0, err
    seen: list[dict] = []
    sampling_generate = importlib.import_module("mtd_core.sampling.generate")
    real = sampling_generate.generate
    monkeypatch.setattr(sampling_generate, "generate", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    run = str(tiny_run / "run")
    rc, _, err = _run(capsys, "sample", run, "--out", str(tmp_path / "g"), "--given", "label=3", "--n", "2",
                      "--steps", "2", "--classifier", str(tmp_path / "clf"))
    assert rc == 0, err
    guidance = seen[-1]["guidance"]
    assert guidance.scale == 1.0 and guidance.classifier is not None and guidance.modality == "label"
    x_t = torch.randn(2, 1, 8, 8)
    assert guidance.classifier(x_t, torch.tensor([5, 30])).shape == (2, 10)  # the classifier run's head, on x_t
    assert np.load(tmp_path / "g" / "samples.npz")["label"].tolist() == [3, 3]
    rc, _, err = _run(capsys, "sample", run, "--out", str(tmp_path / "g2"), "--given", "label=3", "--n", "2",
                      "--steps", "2", "--classifier", str(tmp_path / "clf"), "--guidance", "2.5")
    assert rc == 0 and seen[-1]["guidance"].scale == 2.5, err
    rc, _, err = _run(capsys, "sample", run, "--out", str(tmp_path / "x"), "--given", "label=3", "--classifier", run)
    assert rc == 1 and "the classifier must read the base's state alone" in err and "weights = {kind" in err
    rc, _, err = _run(capsys, "sample", run, "--out", str(tmp_path / "x"), "--classifier", str(tmp_path / "clf"))
    assert rc == 1 and "--classifier needs exactly one given aggregated modality" in err
    clf_config["taskset"]["diffusion"]["T"] = 50
    (tmp_path / "clf50.toml").write_text(dumps_toml(clf_config))
    assert main(["train", str(tmp_path / "clf50.toml"), "--out", str(tmp_path / "clf50"), "--quick"]) == 0
    rc, _, err = _run(capsys, "sample", run, "--out", str(tmp_path / "x"), "--given", "label=3",
                      "--classifier", str(tmp_path / "clf50"))
    assert rc == 1 and "its noise schedule" in err and "at the wrong noise level" in err


def test_sample_inpaints_an_image_and_keeps_its_unmasked_pixels(tiny_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    image = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    np.save(tmp_path / "image.npy", image)
    hide = np.zeros((8, 8), dtype=np.uint8)
    hide[2:6, 3:7] = 255  # white: generated
    Image.fromarray(hide).save(tmp_path / "mask.png")
    run = str(tiny_run / "run")
    rc, out, err = _run(capsys, "sample", run, "--out", str(tmp_path / "p"), "--inpaint", str(tmp_path / "image.npy"),
                        "--mask", str(tmp_path / "mask.png"), "--n", "3", "--steps", "3", "--no-progress")
    assert rc == 0 and "3 samples (joint" in out, err
    got = np.load(tmp_path / "p" / "samples.npz")["image"]
    known = hide == 0
    assert got.shape == (3, 1, 8, 8)
    assert np.array_equal(got[:, 0][:, known], np.broadcast_to(image[0][known], (3, int(known.sum()))))
    assert not np.allclose(got[:, 0][:, ~known], image[0][~known], atol=1e-3)  # the masked part is generated
    np.save(tmp_path / "mask.npy", (hide > 0)[None])  # a bool mask of one channel, the same inpainting
    rc, _, err = _run(capsys, "sample", run, "--out", str(tmp_path / "q"), "--inpaint", str(tmp_path / "image.npy"),
                      "--mask", str(tmp_path / "mask.npy"), "--n", "3", "--steps", "3", "--no-progress")
    assert rc == 0 and np.array_equal(np.load(tmp_path / "q" / "samples.npz")["image"], got), err

    np.save(tmp_path / "half.npy", np.full((8, 8), 0.5))
    np.save(tmp_path / "small.npy", np.ones((4, 4), dtype=bool))
    np.save(tmp_path / "none.npy", np.zeros((8, 8), dtype=np.int64))
    for argv, message in [
        (["--inpaint", str(tmp_path / "image.npy")], "--inpaint IMAGE and --mask MASK go together"),
        (["--mask", str(tmp_path / "mask.png")], "--inpaint IMAGE and --mask MASK go together"),
        (["--inpaint", str(tmp_path / "image.npy"), "--mask", str(tmp_path / "half.npy")],
         "half.npy: expected bools or 0/1 values (1 where generated), got torch.float64"),
        (["--inpaint", str(tmp_path / "image.npy"), "--mask", str(tmp_path / "small.npy")],
         "small.npy: expected a 8x8 mask (shape (8, 8), (1, 8, 8) or (1, 8, 8)) for the base 'image', got shape "
         "(1, 4, 4)"),
        (["--inpaint", str(tmp_path / "image.npy"), "--mask", str(tmp_path / "none.npy")], "marks nothing to generate"),
        (["--inpaint", str(tmp_path / "image.npy"), "--mask", str(tmp_path / "missing.png")],
         "missing.png (--mask): file not found"),
        (["--inpaint", str(tmp_path / "mask.png"), "--mask", str(tmp_path / "mask.png"), "--given", "image=" +
          str(tmp_path / "image.npy")], "inpaint generates the base around known values; the base is given here"),
    ]:
        rc, _, err = _run(capsys, "sample", run, "--out", str(tmp_path / "x"), "--n", "2", *argv)
        assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_resume_drops_the_metrics_lines_a_killed_run_wrote_after_its_checkpoint(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(steps=4, log_every=1)
    (tmp_path / "c.toml").write_text(dumps_toml(cfg))
    run = tmp_path / "run"
    assert _run(capsys, "train", str(tmp_path / "c.toml"), "--out", str(run), "--set", "trainer.steps=2")[0] == 0
    with open(run / "metrics.jsonl", "a") as fh:  # what a run killed after step 3, before any checkpoint, leaves
        fh.write(json.dumps({"step": 3, "loss": 9.0}) + "\n" + '{"step": 4, "lo')
    assert _run(capsys, "train", str(tmp_path / "c.toml"), "--out", str(run), "--resume")[0] == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
