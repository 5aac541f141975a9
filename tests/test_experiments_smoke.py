"""The experiments at the smoke preset (digits, a tiny U-Net, a few steps): every script runs end to end on the test
split and writes a JSON with every metric key of its setting, its draws, FID curve, NFE spent, split and provenance,
and make_results turns the JSONs into the report; the validation split of a dataset with a holdout; the sampler
study; the data check's install instructions. (make_results' own logic: tests/test_make_results.py.)"""

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
from experiments import common, runs
from experiments.make_results import make_results
from experiments.presets import PRESETS, Preset, get_preset
from mtd_core.errors import ConfigError, ModalityDataError, MTDError

pytestmark = pytest.mark.slow
EXPERIMENTS = ("single_task", "diffusers_baseline", "image_label", "masked_image", "image_transition",
               "image_representation", "image_caption")
SPLIT = "test"  # the smoke preset's dataset holds out no validation split
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
                                           root / "results", root / "work", split=SPLIT)
                assert rc == 0
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return root / "results"


def _result(results: Path, name: str, split: str = SPLIT) -> dict[str, Any]:
    return json.loads(common.result_path(results, "smoke", name, 0, split).read_text())


@pytest.mark.parametrize("name", RUNNABLE)
def test_experiment_writes_every_metric_with_its_protocol(smoke_results: Path, name: str) -> None:
    module = importlib.import_module(f"experiments.{name}")
    data = _result(smoke_results, name)
    preset = get_preset("smoke")
    missing = [k for k in module.metric_keys(preset) if k not in data["metrics"]]
    assert not missing, f"{name}: JSON lacks {missing}"
    assert all(isinstance(v, (float, str)) for v in data["metrics"].values())
    assert data["experiment"] == name and data["preset"] == "smoke" and data["seed"] == 0
    assert data["split"] == SPLIT and data["protocol"]["split"] == SPLIT
    assert data["protocol"]["n_samples"] == preset.n_samples and data["protocol"]["n_draws"] == preset.n_draws
    assert data["protocol"]["steps"] == preset.steps
    assert data["metrics"]["n_generated"] == preset.per_draw and data["metrics"]["n_draws"] == preset.n_draws
    assert 0.0 < data["metrics"]["feature_net_test_accuracy"] <= 1.0
    assert data["wall_s"] > 0 and data["hardware"]["device"] == "cpu"
    folder = smoke_results / "smoke" / name / SPLIT
    assert data["grids"] and all((folder / g).is_file() for g in data["grids"])


@pytest.mark.parametrize("name", RUNNABLE)
def test_a_result_carries_its_draws_fid_curve_nfe_and_provenance(smoke_results: Path, name: str) -> None:
    data = _result(smoke_results, name)
    preset = get_preset("smoke")
    for key in common.DRAWN_KEYS:  # the metrics are the mean of the draws
        assert len(data["draws"][key]) == preset.n_draws
        assert data["metrics"][key] == pytest.approx(sum(data["draws"][key]) / preset.n_draws)
    curve = data["fid_curve"]
    assert curve["n"] == [n for n in preset.fid_curve_n if n <= preset.n_samples] and len(curve["fid"]) == 2
    assert curve["fid"][-1] == pytest.approx(data["draws"]["fid"][0])  # all 24 samples: the one draw
    assert curve["fid_inf"] == pytest.approx(common.fid_infinity(curve["n"], curve["fid"]))
    assert data["nfe_spent"] and all(isinstance(v, int) and v > 0 for v in data["nfe_spent"].values())
    prov = data["provenance"]
    assert set(prov) == {"commit", "dirty", "command", "config"}
    assert prov["commit"] == "unknown" or len(prov["commit"]) == 40
    assert prov["dirty"] in (True, False, None)
    assert prov["command"].startswith(f"python -m experiments.{name} --preset smoke --seed 0 --split test")
    assert {"dataset", "taskset", "backbone", "trainer"} <= set(prov["config"])
    assert prov["config"]["trainer"]["seed"] == 0 and prov["config"]["trainer"]["weight_decay"] == 0.0
    if name != "diffusers_baseline":  # an mtd run: the config its run folder holds
        run = smoke_results.parent / "work" / "smoke" / name / "seed0" / "config.json"
        assert prov["config"] == json.loads(run.read_text())


def test_the_nfe_spent_names_every_generation_mode(smoke_results: Path) -> None:
    preset = get_preset("smoke")
    single, label = _result(smoke_results, "single_task"), _result(smoke_results, "image_label")
    assert single["nfe_spent"]["joint"] == preset.nfe and single["nfe_spent"]["sdedit"] >= 1
    assert {"joint", "conditional[label]", "readout[image]"} <= set(label["nfe_spent"])
    assert label["nfe_spent"]["readout[image]"] < label["nfe_spent"]["joint"]


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


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="the diffusers baseline needs the optional extra 'bench'")
def test_diffusers_baseline_samples_with_the_default_and_the_best_settings(smoke_results: Path) -> None:
    from experiments import diffusers_baseline

    data = _result(smoke_results, "diffusers_baseline")
    preset, m = get_preset("smoke"), data["metrics"]
    assert diffusers_baseline.nfes(preset) == [preset.nfe, 10]
    for setting in ("default", "best"):
        for nfe in (preset.nfe, 10):
            assert len(data["draws"][f"fid_{setting}_nfe{nfe}"]) == preset.n_draws
            assert data["nfe_spent"][f"{diffusers_baseline.SAMPLERS[setting]}_nfe{nfe}"] == nfe
    assert m["fid"] == m[f"fid_default_nfe{preset.nfe}"] and m["fid_best_nfe10"] != m["fid_default_nfe10"]
    assert data["protocol"]["samplers"]["best"] == {
        "scheduler": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True,
        "thresholding": True, "sample_max_value": 1.0}
    # trained as mtd's single-task run: its very trainer config (weight decay 0, not AdamW's default 0.01)
    from mtd_core.training.config import TrainConfig

    single = _result(smoke_results, "single_task")["provenance"]["config"]
    weights = [k for k in single["trainer"] if k not in TrainConfig.RESUMABLE_CHANGES or k == "steps"]
    trainer = data["provenance"]["config"]["trainer"]
    assert {k: trainer[k] for k in weights} == {k: single["trainer"][k] for k in weights}
    assert data["provenance"]["config"]["taskset"] == single["taskset"]
    meta = json.loads((smoke_results.parent / "work" / "smoke" / "diffusers_baseline" / "seed0" /
                       "unet_ema.json").read_text())
    assert meta["key"]["trainer"]["weight_decay"] == 0.0  # the reuse key names the training


def test_make_results_reads_the_smoke_results(smoke_results: Path, tmp_path: Path) -> None:
    out = make_results(smoke_results, tmp_path / "docs" / "results.md")
    text = out.read_text()
    for name in RUNNABLE:
        assert name in text
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
        args = ["--preset", "smoke", "--split", "test", "--reuse", "--results", str(tmp_path), "--work", str(work)]
        assert image_label.main(args) == 0
    finally:
        runs.REUSE["finished_runs"] = False
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
        rc = single_task.main(["--preset", "smoke", "--split", "test", "--results", str(tmp_path / "r"), "--work",
                               str(tmp_path / "w")])
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
    assert runs._run_state(old, config, steps) is not None
    changed = json.loads(json.dumps(config))
    next(m for m in changed["taskset"]["modalities"] if m["kind"] == "label")["hidden"] = label["hidden"] + 1
    assert runs._run_state(old, changed, steps) is None  # a real difference is still one
    assert runs._run_state(old, config, steps + 1) is None  # unfinished, and no checkpoint to resume from


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
    runs.REUSE["finished_runs"] = True
    try:
        trained = runs.train(preset, [runs.image_modality(preset)], 0, killed, curve=True)
    finally:
        runs.REUSE["finished_runs"] = False
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
    assert torch.equal(said, classes) and torch.equal(test_classes, test_caption.ev.real["label"][:7])
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


def test_an_experiment_states_no_design_and_a_design_study_overrides_the_kinds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The experiments train the kinds' designs (tests/test_defaults.py checks them against minimal configs); a
    design study's options (DESIGN) are written into the task set and the aggregated modalities."""
    from experiments import image_caption, image_representation, image_transition, masked_image

    preset = get_preset("smoke")
    caption = [common.image_modality(preset), image_caption.text_modality(preset)]
    assert set(common.run_config(preset, caption, 0).taskset) == {"modalities", "diffusion"}
    for builder in (lambda: image_caption.text_modality(preset), image_representation.representation_modality,
                    lambda: masked_image.masked_modality(preset), lambda: image_transition.edges_modality(preset)):
        assert not {"head_grad", "loss_weight", "weights", "train_encoder"} & set(builder())
    monkeypatch.setitem(common.DESIGN, "aux_channels", 0)  # --aux-channels 0: the paper's shared channels
    monkeypatch.setitem(common.DESIGN, "encoding_scale", "rms")  # --encoding-scale rms
    shared = common.run_config(preset, caption, 0).taskset
    assert shared["aux_channels"] == 0 and shared["encoding_scale"] == "rms"
    assert "aux_channels" not in common.run_config(preset, caption[:1], 0).taskset  # nothing aggregated
    assert "aux_channels" not in common.run_config(preset, caption, 0, design=False).taskset  # a baseline
    monkeypatch.setitem(common.DESIGN, "aggregated", {"head_grad": 1.0})  # --aggregated head_grad=1
    assert image_transition.edges_modality(preset)["head_grad"] == 1.0
    assert masked_image.masked_modality(preset)["head_grad"] == 1.0
    monkeypatch.setitem(common.DESIGN, "weights", {"kind": "windowed", "peak": 2.0})  # --weights kind=windowed,...
    assert image_representation.representation_modality()["weights"] == {"kind": "windowed", "peak": 2.0}
    assert common.main("image_representation", "", lambda *a: None, lambda p: [],  # type: ignore[arg-type,return-value]
                       ["--encoding-scale", "spread"]) == 2  # a design option needs --variant


def test_the_caption_experiments_default_is_a_fixed_code_scaled_by_its_spread(smoke_results: Path) -> None:
    import tomllib

    trained = json.loads((smoke_results.parent / "work" / "smoke" / "image_caption" / "seed0" / "config.json")
                         .read_text())["taskset"]  # what the experiment's run trained
    example = tomllib.loads((Path(__file__).parent.parent / "examples" / "configs" / "image_caption.toml")
                            .read_text())["taskset"]
    from mtd_core.taskset import TaskSet

    for taskset in (trained, example):  # as resolved: an option left out comes from the kinds' designs
        resolved = TaskSet.from_config(taskset).to_config()
        text = next(m for m in resolved["modalities"] if m["kind"] == "text")
        assert resolved["encoding_scale"] == "spread" and text["train_encoder"] is False


def test_a_split_the_preset_cannot_evaluate_is_refused_before_training(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import single_task

    args = ["--preset", "smoke", "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")]
    assert single_task.main(args) == 2  # --split val is the default: the smoke preset holds nothing out
    err = capsys.readouterr().err
    assert "preset 'smoke' has no validation split" in err and "--split test" in err
    assert not (tmp_path / "w").exists()  # refused before any training
    with pytest.raises(ConfigError, match="--split must be one of"):
        common.check_split(get_preset("cpu"), "train")
    common.check_split(get_preset("cpu"), "val")  # Fashion-MNIST's last 5000 training examples


def test_asking_a_split_for_more_examples_than_it_holds_names_both_counts(smoke_results: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mtd_core.data.build import load_dataset
    from mtd_core.plugins.registry import get_registry

    monkeypatch.setenv("MTD_CACHE_DIR", str(smoke_results.parent / "cache"))
    data = load_dataset({"name": "digits", "holdout": 100}, get_registry())
    held = len(data.splits.test)
    with pytest.raises(MTDError, match=rf"the FID reference set \(n_reference\): 5000 examples of the test split "
                                       rf"were asked for, but it holds {held}"):
        common.make_evaluator(data, get_preset("smoke").with_overrides(n_reference=5000), split="test")
    with pytest.raises(MTDError, match="500 examples of the val split were asked for, but it holds 100"):
        common.split_tensors(data, "val", n=500, what="the transition pairs (n_paired)")
    ev = common.make_evaluator(data, get_preset("smoke"), split="val")
    with pytest.raises(MTDError, match=r"the restoration inputs \(n_paired\): 101 examples of the val split"):
        common.restoration_set(ev, get_preset("smoke"), 0.5, 101)
    assert len(ev.real["image"]) == 100 and ev.sample_seed(3) == 1003  # the whole held-out split; seeds apart
    assert ev.feature_net.info.n_train == len(data.splits.train)  # the feature net never sees the val split


@pytest.mark.filterwarnings("ignore:FID.*rank-deficient")
def test_the_validation_split_of_a_dataset_with_a_holdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import single_task

    monkeypatch.setenv("MTD_CACHE_DIR", str(tmp_path / "cache"))
    preset = get_preset("smoke").with_overrides(dataset={"name": "digits", "holdout": 120})
    threads = torch.get_num_threads()
    try:
        rc = common.run_experiment("single_task", single_task.run, single_task.metric_keys, preset, 0,
                                   tmp_path / "results", tmp_path / "work", split="val")
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    data = json.loads((tmp_path / "results" / "smoke" / "single_task" / "val" / "seed0.json").read_text())
    assert data["split"] == "val" and data["protocol"]["n_reference"] == 120
    assert data["protocol"]["sampling_seed_offset"] == common.VAL_SEED_OFFSET
    assert data["provenance"]["config"]["dataset"]["holdout"] == 120  # trained without the held-out examples
    assert data["metrics"]["elbo_n"] == preset.elbo_n
    # the sampler study's validation protocol is the experiment's: the held-out split, sampling seeds 1000 + seed
    from experiments.sampler_study import Study

    try:
        study = Study(preset, "single_task", 0, "val", tmp_path / "work")
        row = study.score({"nfe": preset.nfe}, preset.per_draw)
    finally:
        torch.set_num_threads(threads)
    assert row["reference"] == {"split": "val", "n": 120} and row["split"] == "val"
    assert row["fid"] == pytest.approx(data["metrics"]["fid"], rel=1e-5)
    assert row["provenance"]["config"] == data["provenance"]["config"]


def test_provenance_names_the_commit_the_command_and_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import results

    prov = common.provenance({"trainer": {"seed": 1}}, "python -m experiments.x --seed 1")
    assert prov["command"] == "python -m experiments.x --seed 1" and prov["config"] == {"trainer": {"seed": 1}}
    assert prov["commit"] == "unknown" or len(prov["commit"]) == 40
    monkeypatch.setattr(results, "_git", lambda *args: None)  # outside git
    assert common.provenance({})["commit"] == "unknown" and common.provenance({})["dirty"] is None
    monkeypatch.setattr("sys.argv", [str(Path(results.__file__).parent / "sampler_study.py"), "--seed", "2"])
    assert common.command_line() == "python -m experiments.sampler_study --seed 2"
    assert common.command_line("image_label", ["--preset", "cpu"]) == "python -m experiments.image_label --preset cpu"


@pytest.mark.filterwarnings("ignore:FID.*rank-deficient")
def test_the_study_writes_rows_with_split_reference_nfe_and_provenance(smoke_results: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import sampler_study

    monkeypatch.setenv("MTD_CACHE_DIR", str(smoke_results.parent / "cache"))
    out = tmp_path / "study.jsonl"
    args = ["--preset", "smoke", "--seed", "0", "--split", "test", "--work", str(smoke_results.parent / "work"),
            "--out", str(out)]
    settings = [("single_task", ["--setting", "nfe=4", "--setting", "nfe=2,sampler=ddim"])]
    if HAS_DIFFUSERS:
        settings.append(("diffusers_baseline", ["--setting", "sampler=diffusers_best,nfe=3"]))
    threads = torch.get_num_threads()
    try:
        for experiment, extra in settings:
            assert sampler_study.main(["--experiment", experiment, *args, *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["split"] for r in rows] == ["test"] * len(rows)
    assert rows[0]["reference"]["split"] == "test" and rows[0]["nfe_spent"] == {"joint": 4}
    assert rows[1]["nfe_spent"] == {"joint": 2}
    single = _result(smoke_results, "single_task")
    assert rows[0]["fid"] == pytest.approx(single["metrics"]["fid"], rel=1e-5)  # the experiment's own samples
    for row in rows:
        prov = row["provenance"]
        assert prov["command"].startswith(f"python -m experiments.sampler_study --experiment {row['experiment']}")
        assert {"taskset", "backbone", "trainer"} <= set(prov["config"]) and "commit" in prov and "dirty" in prov
    assert rows[0]["provenance"]["config"] == single["provenance"]["config"]
    if HAS_DIFFUSERS:
        assert rows[2]["nfe_spent"] == {"diffusers_best_nfe3": 3}
        assert rows[2]["provenance"]["config"] == _result(smoke_results, "diffusers_baseline")["provenance"]["config"]
