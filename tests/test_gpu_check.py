"""The GPU check and the gpu preset, on the CPU: ``scripts/gpu_check.sh --dry-run`` writes its JSON with every stage,
``benchmarks/gpu_report.py`` renders the marked section of docs/performance.md from it, and the ImageNet-64 preset
(examples/configs/imagenet64_gpu.toml) resolves to an ADM-size model that ``mtd train --dry-run`` sizes, without
its data, and refuses on a device too small for it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtd_core.cli import main
from mtd_core.training import read_config
from mtd_core.training.config import resolve_config

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "examples" / "configs" / "imagenet64_gpu.toml"
STAGES = ["env", "matmul", "smoke", "speed_fp32", "speed_bf16", "preset", "ddp", "speed_compiled"]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_report


@pytest.fixture(scope="module")
def dry_run_json(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("diffusers")
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text(encoding="utf-8"))


def test_the_dry_run_reports_every_stage(dry_run_json: dict) -> None:
    data = dry_run_json
    assert data["format"] == "mtd-gpu-check" and data["dry_run"] is True
    assert [s["name"] for s in data["stages"]] == STAGES
    status = {s["name"]: s["status"] for s in data["stages"]}
    assert {status[n] for n in ("env", "matmul", "speed_fp32", "preset")} == {"ok"}  # ran on the CPU, tiny
    assert {status[n] for n in ("smoke", "speed_bf16", "ddp", "speed_compiled")} == {"skipped"}  # need CUDA
    for s in data["stages"]:
        assert set(s) == {"name", "status", "note", "seconds", "command", "result"}
        assert s["status"] == "ok" or s["note"]  # a skip says why
        assert s["name"] in ("env",) or s["command"]  # every other stage planned its command
    speed = next(s for s in data["stages"] if s["name"] == "speed_compiled")
    assert "--compile default" in speed["command"] and "--bf16" in speed["command"]
    ddp = next(s for s in data["stages"] if s["name"] == "ddp")
    assert "--nproc_per_node 2" in ddp["command"] and "cuda" in ddp["command"]
    preset = next(s for s in data["stages"] if s["name"] == "preset")["result"]
    assert preset["steps"] == 4 and preset["flops_per_example"] > 0 and preset["examples_per_s"] > 0
    assert preset["bf16"] is True and preset["channels_last"] is True
    assert data["summary"]["matmul_peak_tflops"] > 0 and data["summary"]["share_of_peak"]["preset"] > 0


def test_the_renderer_rewrites_only_the_marked_section(dry_run_json: dict, tmp_path: Path) -> None:
    js = tmp_path / "g.json"
    js.write_text(json.dumps(dry_run_json), encoding="utf-8")
    doc = tmp_path / "perf.md"
    doc.write_text(f"# before\n\n{gpu_report.BEGIN}\nold text\n{gpu_report.END}\n\n## after\n", encoding="utf-8")
    assert gpu_report.main([str(js), "--doc", str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# before\n\n" + gpu_report.BEGIN) and text.endswith(gpu_report.END + "\n\n## after\n")
    assert "old text" not in text and "Dry run on the CPU" in text
    assert all(f"| {name} |" in text for name in STAGES)
    assert "share of the matmul peak" in text and "ours image+label (train)" in text
    assert gpu_report.main([str(js), "--doc", str(doc)]) == 0 and doc.read_text(encoding="utf-8") == text  # stable
    # the real document holds the markers, so the renderer can regenerate it
    real = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert gpu_report.BEGIN in gpu_report.replace_section(real, gpu_report.render(dry_run_json))


def test_the_renderer_refuses_what_is_not_a_gpu_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js = tmp_path / "x.json"
    js.write_text('{"format": "other"}', encoding="utf-8")
    assert gpu_report.main([str(js), "--print"]) == 1
    assert "not a gpu_check JSON" in capsys.readouterr().err


def test_the_gpu_preset_resolves_to_an_adm_size_model() -> None:
    config = resolve_config(read_config(PRESET))
    t = config.trainer
    assert (t.batch_size, t.lr, t.ema_decay, t.bf16, t.channels_last) == (2048, 3e-4, 0.9999, True, True)
    assert config.backbone["channels"] == 192 and config.backbone["channel_mult"] == [1, 2, 3, 4]
    assert config.backbone["num_res_blocks"] == 3 and config.backbone["attention_resolutions"] == [32, 16, 8]
    assert config.taskset["diffusion"]["kind"] == "cosine"
    assert [m["kind"] for m in config.taskset["modalities"]] == ["image", "label"]


def _dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["train", str(PRESET), "--dry-run", "--device", "cuda", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_dry_run_sizes_the_preset_without_its_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert not (ROOT / "data" / "imagenet64_train.npz").exists()  # the dataset path does not exist here
    rc, out, err = _dry_run(capsys, "--device-memory", "80")
    assert rc == 0, err
    params = int(re.search(r"parameters +([\d,]+) ", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert 250e6 < params < 320e6  # ADM's ImageNet-64 model: 296M (ours: no learned variance, no BigGAN resampling)
    assert re.search(r"per example: [\d.]+ MiB \(activations [\d.]+ MiB", out)
    step = re.search(r"step time +not measured \(no such device here\); about ([\d.]+) PFLOP per step of 2048.*"
                     r"about ([\d.]+) s per step at ([\d.]+) TFLOP/s", out)
    assert step is not None and float(step.group(2)) > 0, out
    rc, out, _ = _dry_run(capsys, "--device-memory", "80", "--device-tflops", "100")
    slower = re.search(r"about ([\d.]+) s per step at 100 TFLOP/s sustained \(given by --device-tflops\)", out)
    assert rc == 0 and slower is not None and float(slower.group(1)) > float(step.group(2))


def test_the_dry_run_refuses_the_preset_on_a_small_device(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _dry_run(capsys, "--device-memory", "16")
    assert rc == 1 and "Traceback" not in err
    assert err.startswith("mtd train: error: trainer.batch_size = 2048 needs about ")
    assert "per micro-step of trainer.accumulate = 16" in err and "above the 16 GiB given by --device-memory" in err
    assert "does NOT fit cuda" in out


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_a_bad_device_tflops_is_an_error_naming_the_option(capsys: pytest.CaptureFixture[str], value: str) -> None:
    rc, _, err = _dry_run(capsys, "--device-memory", "80", "--device-tflops", value)
    assert rc == 1 and "--device-tflops" in err and "Traceback" not in err
    rc = main(["train", str(PRESET), "--out", "x", "--device-tflops", "100"])  # not without --dry-run
    assert rc != 0 and "--device-tflops goes with --dry-run only" in capsys.readouterr().err
