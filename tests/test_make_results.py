"""make_results on tiny synthetic results (written under tmp_path only): results without provenance or with one
variant name for two designs are refused, the claims are decided from their intervals on the right split, and the
report shows every claim's numbers and every setting's provenance, design, metrics and FID by sample count."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import pytest

from experiments import claim_stats as cs
from experiments.claim_checks import claims
from experiments.make_results import main, make_results
from experiments.report_study import load_study, study_section
from experiments.result_files import defaults, group, load_runs
from mtd_core.errors import MTDError

TASKSET = {"aux_channels": 1, "aux_eps": "heads", "known_input": True,
           "modalities": [{"kind": "image", "name": "image", "role": "base", "loss_weight": 1.0},
                          {"kind": "label", "name": "label", "role": "aggregated", "head_grad": 0.1,
                           "loss_weight": 0.1}]}


def result(experiment: str, seed: int, split: str, draws: dict[str, list[float]], **extra: Any) -> dict[str, Any]:
    """A result under the protocol: ``draws`` per metric (the metrics are their means)."""
    data = {"format": "mtd-experiment-result", "experiment": experiment, "preset": "digits", "seed": seed,
            "split": split, "metrics": {k: sum(v) / len(v) for k, v in draws.items()}, "draws": draws,
            "provenance": {"commit": "abc1234", "dirty": False,
                           "command": f"python -m experiments.{experiment} --preset digits --seed {seed}",
                           "config": {"dataset": {"name": "digits"}, "taskset": TASKSET, "backbone": {},
                                      "trainer": {"seed": seed}}},
            "protocol": {"nfe": 20}, "preset_config": {"dataset": {"name": "digits"}, "image_size": 8,
                                                       "mask_ratios": [0.5]},
            "hardware": {"device": "cpu", "cpu": "x", "cpu_count": 2}, "wall_s": 3.0}
    data.update(extra)
    return data


def write(root: Path, data: dict[str, Any], variant: str = "") -> Path:
    folder = root / data["preset"] / data["experiment"]
    folder = folder / "variants" / variant if variant else folder
    path = folder / data["split"] / f"seed{data['seed']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("drop", ["provenance", "provenance.commit", "provenance.command", "provenance.config",
                                  "provenance.config.taskset", "provenance.config.backbone",
                                  "provenance.config.trainer"])
def test_a_result_without_provenance_is_refused(tmp_path: Path, drop: str) -> None:
    data = result("single_task", 0, "val", {"fid": [1.0]})
    *outer, last = drop.split(".")
    holder = data
    for key in outer:
        holder = holder[key]
    del holder[last]
    path = write(tmp_path, data)
    with pytest.raises(MTDError) as info:
        load_runs(tmp_path)
    assert str(path) in str(info.value) and repr(drop) in str(info.value)


def test_the_command_line_says_why_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = result("single_task", 0, "val", {"fid": [1.0]})
    del data["provenance"]["commit"]
    path = write(tmp_path, data)
    out = tmp_path / "docs" / "results.md"
    assert main(["--results", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("make_results: error: ") and str(path) in err and "'provenance.commit'" in err
    assert not out.exists()


def test_one_variant_name_for_two_designs_is_refused(tmp_path: Path) -> None:
    first = write(tmp_path, result("image_label", 0, "val", {"fid": [1.0]}), variant="hg01")
    other = result("image_label", 1, "val", {"fid": [1.0]})
    other["provenance"]["config"]["taskset"] = {**TASKSET, "aux_channels": 0}
    second = write(tmp_path, other, variant="hg01")
    write(tmp_path, other, variant="shared")  # another name for it: fine
    with pytest.raises(MTDError, match="variant 'hg01'") as info:
        load_runs(tmp_path)
    assert str(first) in str(info.value) and str(second) in str(info.value)


def test_the_archive_is_never_read_and_variants_are_named(tmp_path: Path) -> None:
    (tmp_path / "archive" / "cpu" / "single_task").mkdir(parents=True)
    (tmp_path / "archive" / "cpu" / "single_task" / "seed0.json").write_text('{"format": "old"}')
    write(tmp_path, result("image_label", 0, "test", {"fid": [1.0]}), variant="hg01")
    write(tmp_path, result("image_label", 0, "val", {"fid": [1.0]}))
    runs = load_runs(tmp_path)
    assert sorted((r.split, r.variant) for r in runs) == [("test", "hg01"), ("val", "")]
    bad = write(tmp_path, {**result("single_task", 0, "val", {"fid": [1.0]}), "format": "else"})
    with pytest.raises(MTDError, match="not an experiment result"):
        load_runs(tmp_path)
    bad.unlink()
    write(tmp_path, result("single_task", 0, "train", {"fid": [1.0]}))
    with pytest.raises(MTDError, match="split must be one of"):
        load_runs(tmp_path)


def _claims(tmp_path: Path, study: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    grouped = group(load_runs(tmp_path))["digits"]
    found = claims({s: defaults(by) for s, by in grouped.items()}, [0.5], study)
    return {c.claim: c for c in found}


def test_claims_are_decided_on_test_when_present_and_on_common_seeds(tmp_path: Path) -> None:
    for seed, (single, joint) in enumerate([(10.0, 9.0), (10.4, 9.3), (9.8, 8.9)]):
        write(tmp_path, result("single_task", seed, "test", {"fid": [single, single + 0.2]}))
        write(tmp_path, result("image_label", seed, "test", {"fid": [joint, joint + 0.2], "joint_coherence":
                                                             [0.6, 0.62], "conditional_fidelity": [0.95]}))
        write(tmp_path, result("image_label", seed, "val", {"fid": [99.0], "joint_coherence": [0.99]}))
        write(tmp_path, result("image_caption", seed, "val", {"fid": [single * 1.4, single * 1.5]}))
    write(tmp_path, result("image_label", 7, "test", {"fid": [1.0]}))  # no single-task seed 7: left out
    found = _claims(tmp_path)
    label = found["joint image+label FID / single-task FID at equal NFE"]
    assert label.split == "test" and label.seeds == (0, 1, 2) and label.verdict.status == cs.HELD
    assert label.estimate.mean == pytest.approx((9.1 + 9.4 + 9.0) / (10.1 + 10.5 + 9.9))
    caption = found["joint image+caption FID / single-task FID at equal NFE"]
    assert caption.split is None and caption.verdict.status == "not run under the protocol"  # no val single-task
    coherence = found["joint coherence (image_label)"]
    assert coherence.split == "test" and coherence.verdict.status == cs.MISSED and coherence.estimate.mean == 0.61
    fidelity = found["label-conditioned fidelity"]
    assert fidelity.verdict.status == cs.HELD and fidelity.target == "95% interval >= 90%"
    steer = found["an image generated given a caption is of its source image's class"]
    assert steer.verdict.status == "not run under the protocol"


def test_noise_like_holds_only_in_every_mode(tmp_path: Path) -> None:
    for seed in (0, 1):
        write(tmp_path, result("single_task", seed, "val", {"noise_like": [0.0, 0.001]}))
        write(tmp_path, result("image_label", seed, "val", {"noise_like": [0.0], "conditional_noise_like":
                                                            [0.05 + seed * 0.01]}))
        write(tmp_path, result("diffusers_baseline", seed, "val", {"noise_like": [0.5]}))  # not mtd's
    noise = _claims(tmp_path)["noise-like share <= 2% for every mtd model in every generation mode"]
    assert noise.verdict.status == cs.MISSED and "conditional_noise_like" in noise.verdict.reason
    assert "single_task `noise_like`: held" in noise.detail and "diffusers" not in noise.detail


def test_the_steps_ratio_and_the_diffusers_baseline(tmp_path: Path) -> None:
    for seed in (0, 1):
        curve = [{"step": 100, "fid": 20.0}, {"step": 200, "fid": 10.0}]
        fast = [{"step": 100, "fid": 9.0 + seed}, {"step": 200, "fid": 8.0}]
        write(tmp_path, result("single_task", seed, "val", {"fid": [10.0]}, curve=curve))
        write(tmp_path, result("masked_image", seed, "val", {"fid": [10.0]}, curve=fast))
    row = {"variant": "", "split": "test"}
    study: list[dict[str, Any]] = [{**row, "experiment": "single_task", "seed": s,
                                    "setting": {"nfe": 10, "draw": d}, "fid": 5.0 + d / 10}
                                   for s in (0, 1) for d in (0, 1)]
    study += [{**row, "experiment": "diffusers_baseline", "seed": s, "setting": {"sampler": "diffusers_dpmpp",
               "nfe": 10, **opt}, "fid": f, "split": split}
              for s in (0, 1) for opt, f, split in (({}, 4.0, "test"), ({"karras": True}, 3.0, "test"),
                                                    ({}, 2.0, "val"), ({"karras": True}, 5.0, "val"))]
    found = _claims(tmp_path, study)
    steps = found["masked-image training reaches the single-task final FID in fewer steps (steps ratio)"]
    assert steps.estimate.mean == 0.5 and steps.estimate.per_seed == (0.5, 0.5) and steps.verdict.status == cs.HELD
    base = next(c for name, c in found.items() if name.startswith("single-task FID at 10 NFE"))
    # chosen on val (the plain setting, 2.0 < 5.0), read on test: 5.05 / 4.0, though karras is better on test
    assert base.split == "test" and base.estimate.mean == pytest.approx(5.05 / 4.0) and '{"nfe": 10' in base.detail
    assert base.verdict.status == cs.MISSED


def test_the_report_shows_claims_settings_and_provenance(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for seed in (0, 1):
        write(results, result("single_task", seed, "test", {"fid": [10.0 + seed, 10.2]},
                              fid_curve={"n": [2500, 5000], "fid": [12.0, 11.0 + seed], "fid_inf": 10.0}))
        write(results, result("image_label", seed, "test", {"fid": [9.0, 9.1 + seed]},
                              grids=[f"seed{seed}_joint.png"]))
        write(results, result("image_label", seed, "val", {"fid": [8.0, 8.5]}))
        (results / "digits" / "image_label" / "test" / f"seed{seed}_joint.png").write_bytes(b"png")
    out = make_results(results, tmp_path / "docs" / "results.md")
    text = out.read_text()
    assert "metrics.md#evaluation-protocol" in text and "## Preset `digits`" in text and "## Preset `cpu`" in text
    digits = text.split("## Preset `digits`")[1]
    row = next(line for line in digits.splitlines() if line.startswith("| joint image+label FID"))
    assert "| test |" in row and "| 0: " in row and ", 1: " in row and "| 2 x 2 |" in row and "**held**" in row
    row = next(line for line in digits.splitlines() if line.startswith("| joint image+caption FID"))
    assert "**not run under the protocol**" in row
    assert "### Joint image-label (`image_label`)" in text and "#### Test (split `test`, read once" in text
    assert "#### Validation (split `val`" in text
    assert "- commit: `abc1234`" in text and "`python -m experiments.image_label --preset digits --seed 0`" in text
    assert ("- design: aux_channels 1; aux_eps heads; known_input True; encoding_scale (default); label (kind "
            "label): head_grad 0.1, loss_weight 0.1") in text
    assert "| FID at n = 2500 | 12 | 12 | 12 |" in text and "| FID_inf | 10 | 10 | 10 |" in text
    assert "| `fid` | 10.1 | 10.6 |" in text
    for link in [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
        assert (out.parent / link).is_file(), link
    assert (tmp_path / "docs" / "results" / "digits_image_label_test_seed1_joint.png").is_file()
    assert make_results(results, tmp_path / "docs" / "again.md").read_text() == text  # the same, to the digit


def test_without_results_every_claim_is_not_run_under_the_protocol(tmp_path: Path) -> None:
    text = make_results(tmp_path / "empty", tmp_path / "results.md").read_text()
    assert "| **not run under the protocol** (" in text
    assert "| **missed**" not in text and "| **held**" not in text and "| **inconclusive**" not in text


def test_the_study_table_reads_the_default_and_named_samplers(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"experiment": "single_task", "variant": "", "seed": s, "split": "test",
                                   "setting": {"nfe": n},
             "fid": f + s} for s in (0, 1) for n, f in ((10, 4.0), (20, 3.0))]
    rows += [{"experiment": "single_task", "variant": "", "seed": 0, "split": "val", "setting": {"nfe": 10},
              "fid": 99.0},
             {"experiment": "single_task", "variant": "x", "seed": 0, "split": "test", "setting": {"nfe": 10},
              "fid": 99.0},
             {"experiment": "single_task", "variant": "", "seed": 0, "split": "test",
              "setting": {"sampler": "ddim", "nfe": 10, "draw": 1}, "fid": 7.0, "draws": {"fid": [7.0, 8.0]}}]
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "sampler_study.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    study = load_study(tmp_path, "cpu")
    assert len(study) == 6  # the variant's row is left out
    table = "\n".join(study_section(study, tmp_path / "assets", "assets", "cpu"))
    assert "| single_task: defaults | 2 | - | 4.5 | 3.5 | - |" in table
    assert "| single_task: ddim | 1 | - | 7.5 | - | - |" in table
    assert (tmp_path / "assets" / "cpu_fid_vs_nfe.png").is_file()
