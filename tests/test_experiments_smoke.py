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
from experiments.make_results import EXPERIMENTS, Run, claims, load_runs, make_results, mean_curve, steps_ratio
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
        assert all(p["n_generated"] == preset.n_curve and p["fid"] >= 0 and p["eta1_fid"] >= 0 for p in curve)
        assert [p["fid"] for p in curve] != [p["eta1_fid"] for p in curve]  # two samplers, two sets of samples


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
@pytest.mark.parametrize(("experiment", "what", "key"), [
    ("image_label", "elbo", "elbo_bpd"), ("image_label", "eta1", "eta1_joint_coherence"),
    ("image_caption", "eta1", "eta1_caption_agreement"), ("single_task", "eta1", "eta1_final_curve_fid"),
    ("masked_image", "curve", "eta1_final_curve_fid"),
    ("single_task", "restoration", "sdedit_kept_psnr_r25"), ("masked_image", "restoration", "restored_psnr_r75")])
def test_rescoring_with_the_same_protocol_reproduces_the_result(smoke_results: Path, experiment: str, what: str,
                                                                key: str) -> None:
    from experiments.rescore import rescore

    path = common.result_path(smoke_results, "smoke", experiment, 0)
    before = json.loads(path.read_text())
    run_dir = smoke_results.parent / "work" / "smoke" / experiment / "seed0"
    new = rescore(path, run_dir, get_preset("smoke"), what)
    after = json.loads(path.read_text())
    assert new is not None and new[key] == pytest.approx(before["metrics"][key], rel=1e-5)
    assert after["metrics"][key] == new[key] and f"{what}_rescored_utc" in after["protocol"]
    if what == "eta1":  # the stochastic samples differ from the deterministic ones
        assert new["eta1_fid"] != before["metrics"]["fid"]
    if "curve" in before:
        assert len(after["curve"]) == len(before["curve"])
        assert all(a == pytest.approx(b, rel=1e-5) for a, b in zip(after["curve"], before["curve"]))


def test_rescore_skips_an_experiment_without_the_measure(smoke_results: Path) -> None:
    from experiments.rescore import rescore

    path = common.result_path(smoke_results, "smoke", "image_label", 0)
    text = path.read_text()
    run_dir = smoke_results.parent / "work" / "smoke" / "image_label" / "seed0"
    for what in ("curve", "restoration"):
        assert rescore(path, run_dir, get_preset("smoke"), what) is None
    assert path.read_text() == text


@pytest.mark.filterwarnings("ignore:FID.*rank-deficient")  # FID at n=24 < 64 feature dims warns, as it should
def test_rescoring_eta1_refuses_a_curve_of_other_checkpoints(smoke_results: Path, tmp_path: Path) -> None:
    from experiments.rescore import rescore

    data = _result(smoke_results, "single_task")
    data["curve"] = data["curve"][:1]
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MTDError, match=r"seed0.json: its learning curve has the steps \[2.0\] but the checkpoints"):
        rescore(path, smoke_results.parent / "work" / "smoke" / "single_task" / "seed0", get_preset("smoke"), "eta1")
    assert json.loads(path.read_text()) == data


@pytest.mark.filterwarnings("ignore:FID.*rank-deficient")  # FID at n=24 < 64 feature dims warns, as it should
def test_rescore_cli_picks_experiments_and_seeds(smoke_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.rescore import main

    work = smoke_results.parent / "work"
    originals = {p: p.read_text() for p in (smoke_results / "smoke").glob("*/seed*.json")}
    base = ["--preset", "smoke", "--results", str(smoke_results), "--work", str(work), "--what", "elbo"]
    threads = torch.get_num_threads()
    try:
        # An earlier rescore in the same second would leave the text unchanged, so mark what a rescore must restore.
        for p, text in originals.items():
            data = json.loads(text)
            data["protocol"].pop("elbo_rescored_utc", None)
            p.write_text(json.dumps(data))
        unstamped = {p: p.read_text() for p in originals}
        assert main([*base, "--experiment", "image_label", "--seed", "1"]) == 0  # no such seed: nothing to do
        assert {p: p.read_text() for p in originals} == unstamped
        assert main([*base, "--experiment", "image_label", "--seed", "0"]) == 0
        stamped = [p for p in originals if "elbo_rescored_utc" in json.loads(p.read_text())["protocol"]]
    finally:
        torch.set_num_threads(threads)
        for p, text in originals.items():
            p.write_text(text)
    assert stamped == [common.result_path(smoke_results, "smoke", "image_label", 0)]
    assert "image_label/seed0.json: elbo" in capsys.readouterr().out


def test_rescore_refuses_an_unknown_measure(smoke_results: Path) -> None:
    from experiments.rescore import rescore

    path = common.result_path(smoke_results, "smoke", "image_label", 0)
    with pytest.raises(MTDError, match=r"unknown measure 'fid'; expected one of \['elbo', 'eta1', 'curve', "
                                       r"'restoration'\]"):
        rescore(path, smoke_results.parent / "work" / "smoke" / "image_label" / "seed0", get_preset("smoke"), "fid")


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


def test_make_results_without_runs_says_not_run(tmp_path: Path) -> None:
    text = make_results(tmp_path / "empty", tmp_path / "results.md").read_text()
    assert "not run" in text


def _run(experiment: str, seed: int, metrics: dict[str, float], curve: list[tuple[int, float, float]] = ()) -> Run:
    data = {"metrics": metrics,
            "curve": [{"step": s, "fid": f, "eta1_fid": f1, "n_generated": 10} for s, f, f1 in curve]}
    return Run(path=Path(f"{experiment}/seed{seed}.json"), experiment=experiment, preset="digits", seed=seed, data=data)


def test_claims_follow_the_paper_targets() -> None:
    restoration = {"sdedit_psnr_r50": 12.0, "sdedit_kept_psnr_r50": 14.0}
    by_exp = {
        "single_task": [_run("single_task", 0, {"fid": 10.0, "eta1_fid": 20.0, **restoration},
                             [(100, 20.0, 30.0), (200, 10.0, 20.0)]),
                        _run("single_task", 1, {"fid": 12.0, "eta1_fid": 22.0, **restoration},
                             [(100, 22.0, 32.0), (200, 12.0, 22.0)])],
        "image_label": [_run("image_label", 0, {"fid": 12.0, "joint_coherence": 0.95, "label_head_accuracy": 0.80,
                                                "standalone_classifier_accuracy": 0.85, "eta1_fid": 23.5,
                                                "eta1_joint_coherence": 0.5, "feature_net_test_accuracy": 0.89})],
        "masked_image": [_run("masked_image", 0, {"restored_psnr_r50": 15.0, "restored_kept_psnr_r50": 13.0,
                                                  "masked_input_psnr_r50": 9.0},
                              [(100, 10.5, 25.0), (200, 9.0, 22.0)])],
    }
    # joint FID 12 <= 1.1 * mean(10, 12) = 12.1 with eta 0, 23.5 > 1.1 * 21 = 23.1 with eta 1; coherence 0.95 with
    # eta 0, 0.5 with eta 1; head 5 points below; masked reaches 11 at step 100 with eta 0, never 21 with eta 1;
    # restored 15 dB > input 9 and SDEdit 12 as generated, but 13 < SDEdit 14 with the observed pixels kept
    found = claims(by_exp, [0.5])
    assert [c.status for c in found] == ["held", "did not hold", "held", "did not hold", "did not hold", "held",
                                         "did not hold", "held", "did not hold"]
    assert "(both sampled with DDIM eta 1)" in found[1].claim and "ratio 1.119" in found[1].evidence
    assert "real test pairs score 89.0%" in found[2].evidence
    assert "curves sampled with DDIM eta 1" in found[6].claim and "never reached" in found[6].evidence
    assert "pasted back" in found[8].claim and "13.00 vs input 9.00, SDEdit 14.00" in found[8].evidence
    by_exp["image_label"][0].data["metrics"]["fid"] = 13.5
    assert claims(by_exp, [0.5])[0].status == "did not hold"
    ratio = steps_ratio(by_exp["single_task"], by_exp["masked_image"])
    assert ratio is not None and ratio.target_fid == 11.0 and ratio.ratio == 0.5
    assert [c.status for c in claims({}, [0.5])] == ["not run"] * 9


def test_curves_without_eta1_points_are_not_run() -> None:
    """Results written before the curves carried eta 1 give no eta-1 curve rather than a partial one."""
    old = Run(path=Path("single_task/seed0.json"), experiment="single_task", preset="digits", seed=0,
              data={"metrics": {}, "curve": [{"step": 100, "fid": 5.0, "n_generated": 10}]})
    assert mean_curve([old]) == [(100, 5.0)] and mean_curve([old], "eta1_fid") == []
    assert steps_ratio([old], [old], "eta1_fid") is None


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
