"""The experiments at the smoke preset (digits, a tiny U-Net, a few steps): every script runs end to end and writes
a JSON with every metric key of its setting, and make_results turns the JSON into the report. Also the report's
claim logic on hand-made results, and the data check's install instructions."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

# experiments/ is a top-level folder of the repository (on sys.path through pytest's `pythonpath = ["."]`)
from experiments import common
from experiments.make_results import EXPERIMENTS, Run, claims, load_runs, make_results, steps_ratio
from experiments.presets import PRESETS, Preset, get_preset
from mtd_core.errors import ConfigError, ModalityDataError, MTDError

pytestmark = pytest.mark.slow
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
RUNNABLE = [e for e in EXPERIMENTS if HAS_DIFFUSERS or e != "diffusers_baseline"]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the smoke preset of every experiment once (one shared feature-net cache) and return the results folder."""
    root = tmp_path_factory.mktemp("experiments")
    mp = pytest.MonkeyPatch()
    mp.setenv("MTD_CACHE_DIR", str(root / "cache"))
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FID at n=24 < 64 feature dims warns, as it should
            for name in RUNNABLE:
                module = importlib.import_module(f"experiments.{name}")
                rc = common.run_experiment(name, module.run, module.metric_keys, get_preset("smoke"), 0,
                                           root / "results", root / "work")
                assert rc == 0
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return root / "results"


def _result(results: Path, name: str) -> dict[str, Any]:
    return json.loads(common.result_path(results, "smoke", name, 0).read_text())


@pytest.mark.parametrize("name", RUNNABLE)
def test_experiment_writes_every_metric_with_its_protocol(smoke_results: Path, name: str) -> None:
    module = importlib.import_module(f"experiments.{name}")
    data = _result(smoke_results, name)
    preset = get_preset("smoke")
    missing = [k for k in module.metric_keys(preset) if k not in data["metrics"]]
    assert not missing, f"{name}: JSON lacks {missing}"
    assert all(isinstance(v, (float, str)) for v in data["metrics"].values())
    assert data["experiment"] == name and data["preset"] == "smoke" and data["seed"] == 0
    assert data["protocol"]["n_samples"] == preset.n_samples
    assert data["protocol"]["steps"] == preset.steps
    assert data["metrics"]["n_generated"] == preset.n_samples
    assert 0.0 < data["metrics"]["feature_net_test_accuracy"] <= 1.0
    assert data["wall_s"] > 0 and data["hardware"]["device"] == "cpu"
    assert data["grids"] and all((smoke_results / "smoke" / name / g).is_file() for g in data["grids"])


def test_learning_curves_have_one_point_per_checkpoint(smoke_results: Path) -> None:
    preset = get_preset("smoke")
    expected = list(range(preset.curve_every, preset.steps + 1, preset.curve_every))
    for name in ("single_task", "masked_image"):
        curve = _result(smoke_results, name)["curve"]
        assert [p["step"] for p in curve] == expected
        assert all(p["n_generated"] == preset.n_curve and p["fid"] >= 0 for p in curve)


def test_restoration_inputs_are_shared_and_scored_consistently(smoke_results: Path) -> None:
    """The masked input's PSNR is the same in both experiments (same masks), and more hidden means lower."""
    single, masked = _result(smoke_results, "single_task"), _result(smoke_results, "masked_image")
    tags = [common.ratio_tag(r) for r in get_preset("smoke").mask_ratios]
    for tag in tags:
        assert single["metrics"][f"masked_input_psnr_{tag}"] == masked["metrics"][f"masked_input_psnr_{tag}"]
    psnrs = [masked["metrics"][f"masked_input_psnr_{tag}"] for tag in tags]
    assert psnrs == sorted(psnrs, reverse=True)
    # pasting the observed pixels back can only lower the error: the hidden pixels are all that differ
    for data, name in ((single, "sdedit"), (masked, "restored")):
        assert data["protocol"]["restoration_psnr"].startswith("pooled")
        for tag in tags:
            assert math.isfinite(data["metrics"][f"{name}_kept_psnr_{tag}"])
            assert data["metrics"][f"{name}_kept_psnr_{tag}"] >= data["metrics"][f"{name}_psnr_{tag}"]


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="the diffusers baseline needs the optional extra 'bench'")
def test_diffusers_baseline_matches_parameters_within_ten_percent(smoke_results: Path) -> None:
    m = _result(smoke_results, "diffusers_baseline")["metrics"]
    assert abs(m["params_diffusers"] / m["params_ours"] - 1) <= 0.10
    assert m["param_ratio"] == pytest.approx(m["params_diffusers"] / m["params_ours"])


def test_make_results_generates_the_report(smoke_results: Path, tmp_path: Path) -> None:
    out = make_results(smoke_results, tmp_path / "docs" / "results.md")
    text = out.read_text()
    assert "## Preset `smoke`" in text and "no claim is evaluated" in text
    for name in RUNNABLE:
        assert f"(`{name}`)" in text
    assert text.count("| `fid` |") == len(RUNNABLE)
    pngs = sorted(p.name for p in (tmp_path / "docs" / "results").glob("*.png"))
    assert "smoke_learning_curve.png" in pngs
    for link in [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
        assert (out.parent / link).is_file(), link


@pytest.mark.filterwarnings("ignore:FID.*rank-deficient")  # FID at n=24 < 64 feature dims warns, as it should
def test_reuse_evaluates_the_finished_run_without_training(smoke_results: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import image_label

    work = smoke_results.parent / "work"
    before = _result(smoke_results, "image_label")
    ckpt = work / "smoke" / "image_label" / "seed0" / "checkpoints"
    mtimes = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")}
    threads = torch.get_num_threads()
    try:
        args = ["--preset", "smoke", "--reuse", "--results", str(tmp_path), "--work", str(work)]
        assert image_label.main(args) == 0
    finally:
        common.REUSE["finished_runs"] = False
        torch.set_num_threads(threads)
    assert "reusing the finished run" in capsys.readouterr().out
    again = _result(tmp_path, "image_label")
    assert again["protocol"]["train_wall_s"] == before["protocol"]["train_wall_s"]
    assert again["metrics"]["label_head_accuracy"] == before["metrics"]["label_head_accuracy"]  # same weights, seed
    assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == mtimes  # nothing retrained or rewritten


def test_an_interrupted_training_stops_the_experiment_before_any_evaluation(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import single_task
    from mtd_core.training import Trainer

    real = Trainer.fit

    def stopped(self, *args, **kwargs):  # as a SIGTERM before the first step does
        self.request_stop("SIGTERM")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", stopped)
    threads = torch.get_num_threads()
    try:
        rc = single_task.main(["--preset", "smoke", "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted: the training of" in err and "with --reuse to resume it" in err
    assert not list((tmp_path / "r").rglob("*.json"))  # no result of a model trained part-way
    assert list((tmp_path / "w").rglob("step_00000000"))  # the checkpoint to resume from


def test_a_run_saved_before_an_option_existed_is_still_the_same_run(smoke_results: Path, tmp_path: Path) -> None:
    import shutil

    run = smoke_results.parent / "work" / "smoke" / "image_label" / "seed0"
    config = json.loads((run / "config.json").read_text())
    steps = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    old = tmp_path / "run"
    old.mkdir()
    shutil.copy(run / "metrics.jsonl", old)
    label = next(m for m in config["taskset"]["modalities"] if m["kind"] == "label")
    saved = json.loads(json.dumps(config))
    next(m for m in saved["taskset"]["modalities"] if m["kind"] == "label").pop("hidden")  # as if added since
    saved["trainer"]["threads"] = 1  # trained at one thread: weights-neutral, as a resume may change it
    (old / "config.json").write_text(json.dumps(saved))
    assert common._run_state(old, config, steps) is not None
    changed = json.loads(json.dumps(config))
    next(m for m in changed["taskset"]["modalities"] if m["kind"] == "label")["hidden"] = label["hidden"] + 1
    assert common._run_state(old, changed, steps) is None  # a real difference is still one
    assert common._run_state(old, config, steps + 1) is None  # unfinished, and no checkpoint to resume from


def test_reuse_resumes_a_killed_run_from_its_checkpoint(smoke_results: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from mtd_core.training import load_run
    from mtd_core.training.checkpoint import checkpoint_step, list_checkpoints
    from mtd_core.training.resume import trim_metrics

    preset = get_preset("smoke")
    done = smoke_results.parent / "work" / "smoke" / "single_task" / "seed0"  # a curve run: every checkpoint kept
    killed = tmp_path / "run"
    shutil.copytree(done, killed)
    ckpts = list_checkpoints(killed / "checkpoints")
    steps = [checkpoint_step(c) for c in ckpts]
    assert steps == list(range(preset.curve_every, preset.steps + 1, preset.curve_every))
    shutil.rmtree(ckpts[-1])  # killed after the one before the last checkpoint
    trim_metrics(killed / "metrics.jsonl", steps[-2])
    threads = torch.get_num_threads()
    common.REUSE["finished_runs"] = True
    try:
        trained = common.train(preset, [common.image_modality(preset)], 0, killed, curve=True)
    finally:
        common.REUSE["finished_runs"] = False
        torch.set_num_threads(threads)
    assert f"resuming the run {killed} from its checkpoint at step {steps[-2]}" in capsys.readouterr().out
    assert trained.steps == preset.steps
    want = load_run(done).model.state_dict()
    got = trained.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)  # as if it had never stopped


def test_the_study_guides_with_the_runs_standalone_classifier(smoke_results: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.sampler_study import Study

    monkeypatch.setenv("MTD_CACHE_DIR", str(smoke_results.parent / "cache"))
    threads = torch.get_num_threads()
    try:
        study = Study(get_preset("smoke"), "image_label", 0, "val", smoke_results.parent / "work")
        plain = study.generate({"nfe": 4, "given": "label"}, 6)["image"]
        guided = study.generate({"nfe": 4, "given": "label", "cguide": 30, "classifier_seed": 0}, 6)["image"]
        draws = [study.generate({"nfe": 4, "given": "label", "draw": k}, 6)["image"] for k in (0, 1)]
        with pytest.raises(ConfigError, match="need given=label"):
            study.generate({"nfe": 2, "cguide": 1}, 6)
    finally:
        torch.set_num_threads(threads)
    assert guided.shape == plain.shape == (6, 1, 8, 8) and not torch.allclose(guided, plain)
    assert torch.equal(draws[0], plain) and not torch.allclose(draws[1], plain)  # draw=K: another sampling seed
    # the classifier is an mtd run of examples/configs/label_classifier.toml's design
    clf = json.loads((smoke_results.parent / "work" / "smoke" / "image_label" / "seed0" / "classifier" /
                      "config.json").read_text())
    by_kind = {m["kind"]: m for m in clf["taskset"]["modalities"]}
    assert by_kind["image"]["loss_weight"] == 0 and by_kind["label"]["weights"]["kind"] == "zero"
    assert clf["taskset"].get("aux_channels", 0) == 0 and not clf["taskset"].get("known_input", False)


@pytest.mark.filterwarnings("ignore:FID.*rank-deficient")
def test_the_study_scores_captions_and_representations_as_their_experiments_do(
        smoke_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.sampler_study import Study

    monkeypatch.setenv("MTD_CACHE_DIR", str(smoke_results.parent / "cache"))
    threads = torch.get_num_threads()
    try:
        preset = get_preset("smoke")
        caption = Study(preset, "image_caption", 0, "test", smoke_results.parent / "work").score(
            {"nfe": preset.nfe}, preset.n_samples)
        representation = Study(preset, "image_representation", 0, "test",
                               smoke_results.parent / "work").score({"nfe": preset.nfe}, preset.n_samples)
    finally:
        torch.set_num_threads(threads)
    # at the experiments' own seed, NFE and sample count the study reproduces their joint measures (up to float
    # rounding: the experiments may have run at another thread count)
    cap, rep = (_result(smoke_results, name)["metrics"] for name in ("image_caption", "image_representation"))
    assert (caption["caption_agreement"], caption["caption_unparsed"]) == (cap["caption_agreement"],
                                                                          cap["caption_unparsed"])
    assert representation["representation_cosine"] == pytest.approx(rep["representation_cosine_mean"], rel=1e-5)
    assert caption["fid"] == pytest.approx(cap["fid"], rel=1e-5) and representation["fid"] == pytest.approx(
        rep["fid"], rel=1e-5)
    assert "caption_agreement" not in representation


@pytest.mark.filterwarnings("ignore:FID.*rank-deficient")
def test_the_study_conditions_on_the_splits_own_captions_and_representations(
        smoke_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.image_caption import caption_classes
    from experiments.sampler_study import Study

    monkeypatch.setenv("MTD_CACHE_DIR", str(smoke_results.parent / "cache"))
    threads = torch.get_num_threads()
    work, preset = smoke_results.parent / "work", get_preset("smoke")
    try:
        caption = Study(preset, "image_caption", 0, "val", work)
        given, classes = caption.conditions("text", 7)
        row = caption.score({"nfe": 2, "given": "text"}, 7)
        test_caption = Study(preset, "image_caption", 0, "test", work)
        test_classes = test_caption.conditions("text", 7)[1]
        representation = Study(preset, "image_representation", 0, "val", work)
        reps, _ = representation.conditions("representation", 7)
        with torch.no_grad():
            want = representation.model.taskset["representation"].extractor(representation.reference_images[:7])
        with pytest.raises(ConfigError, match=r"given must be one of \['representation'\], got 'text'"):
            representation.conditions("text", 7)
    finally:
        torch.set_num_threads(threads)
    # each caption names the class it is scored against; val draws them from the reference's training images, test
    # from the test split
    said = caption_classes(caption.model.taskset["text"].detokenize(given["text"]), preset.class_words)
    assert torch.equal(said, classes) and torch.equal(test_classes, test_caption.ev.test["label"][:7])
    assert torch.allclose(reps["representation"], want.float())
    assert 0 <= row["conditional_fidelity"] <= 1 and "caption_agreement" not in row


@pytest.mark.filterwarnings("ignore:FID.*rank-deficient")
def test_the_study_scores_restorations_as_the_experiment_does(smoke_results: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.sampler_study import Study

    monkeypatch.setenv("MTD_CACHE_DIR", str(smoke_results.parent / "cache"))
    threads = torch.get_num_threads()
    work, preset = smoke_results.parent / "work", get_preset("smoke")
    try:
        test = Study(preset, "masked_image", 0, "test", work)
        kept = test.score({"nfe": preset.nfe, "given": "masked_image", "mask_ratio": 0.75}, preset.n_paired)
        free = test.score({"nfe": preset.nfe, "given": "masked_image", "mask_ratio": 0.75, "keep_observed": False},
                          preset.n_paired)
        val = Study(preset, "masked_image", 0, "val", work)
        inputs = val.restoration_inputs(5, 0.5)
        with pytest.raises(ConfigError, match="given=masked_image and mask_ratio=R go together"):
            test.generate({"nfe": 2, "given": "masked_image"}, 4)
        single = Study(preset, "single_task", 0, "test", work)
        with pytest.raises(ConfigError, match="needs a model with a masked_image modality"):
            single.generate({"nfe": 2, "given": "masked_image", "mask_ratio": 0.5}, 4)
        inpainted = single.score({"nfe": preset.nfe, "inpaint": 0.75}, preset.n_paired)
    finally:
        torch.set_num_threads(threads)
    # the test inputs are the experiment's: the masked input scores what it scored there
    metrics = _result(smoke_results, "masked_image")["metrics"]
    assert kept["masked_input_psnr"] == pytest.approx(metrics["masked_input_psnr_r75"])
    # keeping the observed pixels: as generated is about what pasting them back gives (not exactly: a digit's pixel
    # of value 8/16 is 0, the fill, and counts as hidden); without, the model redraws them
    assert abs(kept["restored_psnr"] - kept["restored_kept_psnr"]) < 0.05
    assert free["restored_kept_psnr"] - free["restored_psnr"] > 0.5
    # any model inpaints the same inputs around the same observed pixels
    assert inpainted["masked_input_psnr"] == kept["masked_input_psnr"]
    assert abs(inpainted["restored_psnr"] - inpainted["restored_kept_psnr"]) < 0.05
    # val restores the reference's training images under masks seeded apart from the test ones
    assert torch.equal(inputs["image"], val.reference_images[:5])
    assert not torch.equal(inputs["mask"], common.restoration_set(val.ev, preset, 0.5, 5)["mask"])


def test_make_results_without_runs_says_not_run(tmp_path: Path) -> None:
    text = make_results(tmp_path / "empty", tmp_path / "results.md").read_text()
    assert "not run" in text


def _run(experiment: str, seed: int, metrics: dict[str, float], curve: list[tuple[int, float]] = ()) -> Run:
    data = {"metrics": metrics, "curve": [{"step": s, "fid": f, "n_generated": 10} for s, f in curve]}
    return Run(path=Path(f"{experiment}/seed{seed}.json"), experiment=experiment, preset="digits", seed=seed, data=data)


def test_claims_follow_the_targets() -> None:
    restoration = {"sdedit_psnr_r50": 12.0, "sdedit_kept_psnr_r50": 14.0}
    by_exp = {
        "single_task": [_run("single_task", 0, {"fid": 10.0, "noise_like": 0.01, **restoration},
                             [(100, 20.0), (200, 10.0)]),
                        _run("single_task", 1, {"fid": 12.0, "noise_like": 0.0, **restoration},
                             [(100, 22.0), (200, 12.0)]),
                        _run("single_task", 4, {"fid": 1.0}, [(100, 1.0), (200, 1.0)])],
        "image_label": [_run("image_label", 0, {"fid": 11.5, "joint_coherence": 0.86, "label_head_accuracy": 0.80,
                                                "standalone_classifier_accuracy": 0.85, "conditional_fidelity": 0.88,
                                                "noise_like": 0.015, "conditional_noise_like": 0.03,
                                                "feature_net_test_accuracy": 0.89}),
                        _run("image_label", 1, {"fid": 11.4}), _run("image_label", 3, {"fid": 100.0})],
        "image_caption": [_run("image_caption", 0, {"fid": 11.6, "conditional_fidelity": 0.09})],
        "image_representation": [_run("image_representation", 0, {"fid": 10.0, "conditional_fidelity": 0.85})],
        "masked_image": [_run("masked_image", 0, {"restored_psnr_r50": 15.0, "restored_kept_psnr_r50": 13.0,
                                                  "masked_input_psnr_r50": 9.0}, [(100, 9.5), (200, 9.0)])],
    }
    study = [{"experiment": "single_task", "seed": 0, "setting": {"nfe": 10}, "fid": 4.0},
             {"experiment": "diffusers_baseline", "seed": 0, "setting": {"sampler": "diffusers_dpmpp", "nfe": 10},
              "fid": 3.5},
             {"experiment": "single_task", "seed": 0, "setting": {"nfe": 10, "clip": "none"}, "fid": 1.0},
             *({"experiment": "image_label", "seed": s, "conditional_fidelity": f,
                "setting": {"nfe": 20, "given": "label", "cguide": 1, "classifier_seed": 0}}
               for s, f in ((0, 0.92), (1, 0.9))),
             {"experiment": "image_label", "seed": 2, "setting": {"nfe": 20, "given": "label"},
              "conditional_fidelity": 0.1}]
    # label 11.45 <= 1.05 * 11 = 11.55 on the seeds both ran (not its seed 3 nor single-task's seed 4), caption
    # 11.6 > 1.05 * 10 on seed 0 alone, representation 10.0 is not above; 4.0 <= 1.1 * 3.5 = 3.85 is not
    # (the row that changes the clip is not the defaults'); coherence 0.86 >= 0.85; fidelity 0.88 < 0.9; guided
    # fidelity 0.91 on the two guided rows (the unguided one of seed 2 is not theirs); given a caption 9% < 80% (the
    # representation's 85% does not save it); conditional noise-like 3% > 2%; head 5 points below; masked reaches
    # seed 0's final 10.0 at step 100 (with seed 4's curve the target would be 7.67, never reached); restored 15 dB
    # beats input and SDEdit as generated, 13 < 14 kept
    found = claims(by_exp, [0.5], study)
    assert [c.status for c in found] == ["held", "did not hold", "held", "did not hold", "held", "did not hold",
                                         "held", "did not hold", "did not hold", "did not hold", "held", "held",
                                         "did not hold"]
    assert "ratio 1.041 (per seed 0, 1: 1.15, 0.95)" in found[0].evidence and "ratio 1.143" in found[3].evidence
    assert "joint 11.6 (1 seed) vs single-task 10 (1 seed): ratio 1.160 (per seed 0: 1.16)" == found[1].evidence
    assert "real test pairs score 89.0%" in found[4].evidence
    assert "conditional fidelity 0.91 +- 0.01414 (2 seeds)" == found[6].evidence
    assert "image_caption 0.09 (1 seed); image_representation 0.85 (1 seed)" in found[7].evidence
    assert "(worst: image_label (conditional))" in found[8].evidence
    assert "FID <= 10.000 at step 100 of 200: ratio 0.50" in found[10].evidence
    assert "pasted back" in found[12].claim and "13.00 vs input 9.00, SDEdit 14.00" in found[12].evidence
    ratio = steps_ratio(by_exp["single_task"][:2], by_exp["masked_image"])
    assert ratio is not None and ratio.target_fid == 11.0 and ratio.ratio == 0.5
    assert [c.status for c in claims({}, [0.5])] == ["not run"] * 13


def test_the_study_table_reads_the_default_and_named_samplers(tmp_path: Path) -> None:
    from experiments.make_results import load_study, study_section

    rows = [{"experiment": "single_task", "variant": "", "seed": s, "split": "test", "setting": {"nfe": n},
             "fid": f + s} for s in (0, 1) for n, f in ((10, 4.0), (20, 3.0))]
    rows += [{"experiment": "single_task", "variant": "", "seed": 0, "split": "val", "setting": {"nfe": 10},
              "fid": 99.0},
             {"experiment": "single_task", "variant": "", "seed": 0, "split": "test",
              "setting": {"sampler": "ddim", "nfe": 10}, "fid": 7.0}]
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "sampler_study.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    study = load_study(tmp_path, "cpu")
    assert len(study) == 5  # the validation row is left out
    lines = study_section(study, tmp_path / "assets", "assets", "cpu")
    table = "\n".join(lines)
    assert "| single_task: defaults | 2 | - | 4.5 | 3.5 | - |" in table
    assert "| single_task: ddim | 1 | - | 7 | - | - |" in table
    assert (tmp_path / "assets" / "cpu_fid_vs_nfe.png").is_file()


def test_a_study_setting_reads_numbers_and_encoding_temperatures() -> None:
    from experiments.sampler_study import parse_setting

    assert parse_setting("sampler=ddim,nfe=20,given=label,guide=3") == {
        "sampler": "ddim", "nfe": 20, "given": "label", "guide": 3}
    assert parse_setting("nfe=20,encoding_temperature=text:0.5;label:1") == {
        "nfe": 20, "encoding_temperature": {"text": 0.5, "label": 1}}
    for bad in ("nfe", "encoding_temperature=0.5", "encoding_temperature=text:0.5;:1"):
        with pytest.raises(ConfigError, match="setting"):
            parse_setting(bad)


def test_results_json_must_be_complete(tmp_path: Path) -> None:
    preset = get_preset("smoke")
    outcome = common.Outcome(metrics={"fid": 1.0}, protocol={})
    with pytest.raises(MTDError, match="lacks the metrics"):
        common.write_result(tmp_path / "r.json", "x", preset, 0, outcome, 1.0, ["fid", "kid_mean"])
    bad = tmp_path / "smoke" / "x" / "seed0.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"format": "something else"}')
    with pytest.raises(MTDError, match="not an experiment result"):
        load_runs(tmp_path)


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    preset = get_preset("cpu").with_overrides(dataset={"name": "fashion_mnist", "folder": str(tmp_path)})
    with pytest.raises(ModalityDataError) as info:
        common.check_data(preset)
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)
    assert "dpkg -L dataset-fashion-mnist" in str(info.value)


def test_presets_round_trip_and_reject_unknown_keys() -> None:
    for preset in PRESETS.values():
        assert Preset.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset
    with pytest.raises(ConfigError, match="steps"):
        Preset.from_dict({**get_preset("smoke").to_dict(), "stepz": 3})
    with pytest.raises(ConfigError, match="presets"):
        get_preset("cpuu")


def test_a_trained_module_is_reused_when_only_evaluation_settings_changed(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    fits: list[int] = []

    def fit() -> float:
        fits.append(1)
        return 1.5

    key = {"preset": {"steps": 10, "nfe": 20, "sampling": {}}, "seed": 0}
    path = tmp_path / "net.safetensors"
    assert common.trained_module(net, path, key, fit) == 1.5 and len(fits) == 1
    evaluation = {"preset": {"steps": 10, "nfe": 10, "sampling": {"sampler": "ddim"}, "sampler_steps": 25}, "seed": 0}
    assert common.trained_module(net, path, evaluation, fit) == 1.5 and len(fits) == 1  # reused
    common.trained_module(net, path, {"preset": {"steps": 20, "nfe": 20, "sampling": {}}, "seed": 0}, fit)
    assert len(fits) == 2  # trained again: the training changed


def test_an_experiments_own_channels_are_its_default_and_a_design_study_overrides_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import image_caption, image_representation, image_transition, masked_image

    preset = get_preset("smoke")
    for module, aggregated in [(image_caption, image_caption.text_modality(preset)),
                               (image_representation, image_representation.representation_modality()),
                               (masked_image, masked_image.masked_modality(preset)),
                               (image_transition, image_transition.edges_modality(preset))]:
        modalities = [common.image_modality(preset), aggregated]
        config = common.run_config(preset, modalities, 0, aux_channels=common.OWN_CHANNELS)
        assert config.taskset["aux_channels"] == 1 and config.taskset["aux_eps"] == "heads", module.NAME
        own = getattr(module, "HEAD_GRAD", common.HEAD_GRAD)  # the representation's: 0, its head on the map
        assert config.taskset["modalities"][1]["head_grad"] == own, module.NAME
    assert image_representation.representation_modality()["head"] == "map"
    single = common.run_config(preset, [common.image_modality(preset)], 0, aux_channels=1)
    assert "aux_channels" not in single.taskset  # no aggregated modality: nothing to give channels to
    monkeypatch.setitem(common.DESIGN, "aux_channels", 0)  # --aux-channels 0: the paper's shared channels
    shared = common.run_config(preset, [common.image_modality(preset), image_caption.text_modality(preset)], 0,
                               aux_channels=common.OWN_CHANNELS)
    assert "aux_channels" not in shared.taskset and "aux_eps" not in shared.taskset
    monkeypatch.setitem(common.DESIGN, "aggregated", {"head_grad": 1.0})  # --aggregated head_grad=1
    assert image_transition.edges_modality(preset)["head_grad"] == 1.0
    assert masked_image.masked_modality(preset)["head_grad"] == 1.0
    assert image_representation.representation_modality()["head_grad"] == 1.0
    monkeypatch.setitem(common.DESIGN, "aux_channels", None)
    monkeypatch.setitem(common.DESIGN, "aux_eps", "network")  # --aux-eps network: the backbone's own estimate
    network = common.run_config(preset, [common.image_modality(preset), image_caption.text_modality(preset)], 0,
                                aux_channels=common.OWN_CHANNELS)
    assert network.taskset["aux_channels"] == 1 and "aux_eps" not in network.taskset


def test_a_design_studys_encoding_scale_is_written_unless_rms(monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import image_representation

    preset = get_preset("smoke")
    modalities = [common.image_modality(preset), image_representation.representation_modality()]
    assert "encoding_scale" not in common.run_config(preset, modalities, 0).taskset  # "rms", the task set's default
    monkeypatch.setitem(common.DESIGN, "encoding_scale", "spread")  # --encoding-scale spread
    assert common.run_config(preset, modalities, 0).taskset["encoding_scale"] == "spread"
    assert "encoding_scale" not in common.run_config(preset, modalities[:1], 0).taskset  # nothing to scale
    assert "encoding_scale" not in common.run_config(preset, modalities, 0, design=False).taskset  # a baseline
    monkeypatch.setitem(common.DESIGN, "encoding_scale", "rms")
    assert "encoding_scale" not in common.run_config(preset, modalities, 0).taskset
    assert common.main("image_representation", "", lambda *a: None, lambda p: [],  # type: ignore[arg-type,return-value]
                       ["--encoding-scale", "spread"]) == 2  # a design option needs --variant


def test_the_caption_experiments_default_is_a_fixed_code_scaled_by_its_spread(
        smoke_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from experiments import image_caption

    trained = json.loads((smoke_results.parent / "work" / "smoke" / "image_caption" / "seed0" / "config.json")
                         .read_text())["taskset"]  # what the experiment's run trained
    example = tomllib.loads((Path(__file__).parent.parent / "examples" / "configs" / "image_caption.toml")
                            .read_text())["taskset"]
    for taskset in (trained, example):
        text = next(m for m in taskset["modalities"] if m["kind"] == "text")
        assert taskset["encoding_scale"] == "spread" and text["train_encoder"] is False
    preset = get_preset("smoke")
    monkeypatch.setitem(common.DESIGN, "encoding_scale", "rms")  # --encoding-scale rms: the task set's default
    monkeypatch.setitem(common.DESIGN, "aggregated", {"train_encoder": True})  # --aggregated train_encoder=true
    learned = common.run_config(preset, [common.image_modality(preset), image_caption.text_modality(preset)], 0,
                                encoding_scale=image_caption.ENCODING_SCALE).taskset
    assert "encoding_scale" not in learned and learned["modalities"][1]["train_encoder"] is True
