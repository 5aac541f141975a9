"""The GPU check: one command for a lent GPU, at most 8 minutes, one JSON that docs/performance.md is regenerated
from (``python benchmarks/gpu_report.py JSON``). Run through ``scripts/gpu_check.sh``.

Stages, in this order (each gets what is left of the budget; a stage past it is stopped and reported as such):

    env       torch, CUDA, the GPUs
    matmul    the bf16 matmul peak: an n x n x n bf16 product timed (the denominator of every "% of peak")
    smoke     scripts/cuda_smoke.py (train a few steps under bf16, sample with every sampler)
    speed     benchmarks/speed.py in fp32, bf16 and bf16 + torch.compile, ours against diffusers' UNet2DModel at a
              matched parameter count (training; fp32 and bf16 also sampling)
    preset    300 steps of examples/configs/imagenet64_gpu.toml at 64x64 on synthetic data (an .npz written to a
              temporary folder), bf16 + channels-last; examples/s and the share of the matmul peak
    ddp       a 2-process NCCL DDP run (torchrun) when 2+ GPUs exist; skipped with a note otherwise

``--dry-run`` runs on the CPU in about a minute with tiny sizes: every stage builds its command and resolves its
config; the stages that need CUDA for their meaning are reported as skipped (with the command they would run), the
others run at tiny sizes, and the JSON has the same structure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PRESET = ROOT / "examples" / "configs" / "imagenet64_gpu.toml"
DDP_CONFIG = ROOT / "examples" / "configs" / "image_label.toml"
FORMAT, VERSION = "mtd-gpu-check", 1
BUDGET_S = 480.0
"""The whole check's wall-clock budget (8 minutes)."""

# the sizes of a real run and of --dry-run
FULL: dict[str, Any] = {
    "matmul_n": 8192, "matmul_reps": 20, "smoke": ["--steps", "50"],
    "speed": ["--device", "cuda", "--size", "32", "--batch", "128", "--channels", "64", "--repeats", "3"],
    "preset_steps": 300, "preset_batch": 128, "preset_log": 50, "preset_n": 4096, "preset_size": 64,
    "preset_set": [], "ddp_steps": 20,
}
DRY: dict[str, Any] = {
    "matmul_n": 256, "matmul_reps": 3, "smoke": ["--steps", "1"], "speed": ["--quick"],
    "preset_steps": 4, "preset_batch": 4, "preset_log": 2, "preset_n": 64, "preset_size": 8,
    "preset_set": ["taskset.modalities.0.size=8", "backbone.channels=16", "backbone.channel_mult=[1, 2]",
                   "backbone.num_res_blocks=1", "backbone.attention_resolutions=[4]", "backbone.groups=8",
                   "backbone.num_heads=2", "trainer.device=\"cpu\"", "trainer.threads=1"],
    "ddp_steps": 2,
}
STAGE_CAP_S = {"smoke": 90.0, "speed_fp32": 75.0, "speed_bf16": 75.0, "preset": 150.0, "ddp": 60.0}
"""Each stage's share of the budget at most (the compiled speed stage, last, gets the rest)."""
SPEED_FORMS = {"fp32": [], "bf16": ["--bf16"], "compiled": ["--bf16", "--compile", "default", "--no-sample"]}


class Skip(Exception):
    """A stage that cannot run here; its message says why (the stage is reported as skipped)."""


class Check:
    """The state of one run of the check: the plan's sizes, the deadline, the scratch folder and the results."""

    def __init__(self, dry_run: bool, scratch: Path, budget_s: float) -> None:
        self.dry_run, self.scratch = dry_run, scratch
        self.plan = DRY if dry_run else FULL
        self.cuda = torch.cuda.is_available() and not dry_run
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s
        self.stages: list[dict[str, Any]] = []

    def left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def stage(self, name: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Run one stage; every outcome (ok, skipped, failed, out of time) is recorded with its seconds."""
        record: dict[str, Any] = {"name": name, "status": "ok", "note": "", "seconds": 0.0, "command": None,
                                  "result": {}}
        start = time.perf_counter()
        print(f"gpu_check: {name} ({self.left():.0f} s of the budget left)", file=sys.stderr, flush=True)
        try:
            if self.left() < 5:
                raise Skip("the 8-minute budget is spent")
            record["result"] = fn(record)
        except Skip as e:
            record["status"], record["note"] = "skipped", str(e)
        except subprocess.TimeoutExpired:
            record["status"], record["note"] = "timeout", "stopped at the end of the budget"
        except Exception as e:  # noqa: BLE001 - a failed stage is reported, the others still run
            record["status"], record["note"] = "failed", f"{type(e).__name__}: {e}"[-2000:]
        record["seconds"] = round(time.perf_counter() - start, 2)
        self.stages.append(record)
        return record

    def shown(self, cmd: list[str]) -> str:
        """``cmd`` as a reader would type it: ``python`` for this interpreter, ``$TMP`` for the scratch folder."""
        return " ".join(cmd).replace(sys.executable, "python").replace(str(self.scratch), "$TMP")

    def run(self, cmd: list[str], record: dict[str, Any], timeout: float | None = None) -> str:
        """Run ``cmd`` from the repository root (mtd importable), within what is left of the budget; its output,
        or a RuntimeError with the output's end when it fails."""
        record["command"] = self.shown(cmd)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        limit = min(self.left(), timeout) if timeout else self.left()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit, check=False)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {out[-1500:]}")
        return out


# -- the stages -----------------------------------------------------------------------------------------------------
def stage_env(check: Check, _: dict[str, Any]) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
            "gpu_names": [torch.cuda.get_device_name(i) for i in range(gpus)], "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()), "commit": _commit()}


def stage_matmul(check: Check, record: dict[str, Any]) -> dict[str, Any]:
    """TFLOP/s of an n x n x n bf16 matrix product (the median of ``reps`` timed products after 3 warm-ups)."""
    n, reps = check.plan["matmul_n"], check.plan["matmul_reps"]
    dev = torch.device("cuda" if check.cuda else "cpu")
    record["command"] = f"torch.matmul of two {n}x{n} bf16 matrices on {dev}, {reps} timed"
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(reps + 3):
        _sync(dev)
        start = time.perf_counter()
        torch.matmul(a, b)
        _sync(dev)
        if i >= 3:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"n": n, "device": str(dev), "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}


def stage_smoke(check: Check, record: dict[str, Any]) -> dict[str, Any]:
    out = check.run([sys.executable, "scripts/cuda_smoke.py", *check.plan["smoke"]], record, STAGE_CAP_S["smoke"])
    if not check.cuda:
        record["status"], record["note"] = "skipped", "no CUDA device: cuda_smoke.py ran and said so (exit 0)"
    return {"ok": "cuda_smoke: ok" in out, "output": out[-3000:]}


def stage_speed(check: Check, record: dict[str, Any], form: str) -> dict[str, Any]:
    """benchmarks/speed.py in one form; the table rows, the ratios and each training candidate's share of the
    matmul peak (the backbone's FLOPs counted, mtd_core/training/flops.py)."""
    path = check.scratch / f"speed_{form}.json"
    cmd = [sys.executable, "benchmarks/speed.py", *check.plan["speed"], *SPEED_FORMS[form], "--json", str(path)]
    if check.dry_run and form != "fp32":
        record["command"] = check.shown(cmd)
        raise Skip("dry run: needs CUDA (the fp32 form ran on the CPU at tiny sizes to exercise this stage)")
    if check.dry_run:
        cmd.append("--no-sample")
    with contextlib.suppress(ImportError):
        import diffusers  # noqa: F401
    if "diffusers" not in sys.modules:
        raise Skip("diffusers is not installed (pip install -e '.[bench]', or carry its wheel)")
    check.run(cmd, record, STAGE_CAP_S.get(f"speed_{form}"))
    data = json.loads(path.read_text(encoding="utf-8"))
    flops = _speed_flops(data)
    rows = [{"name": r["name"], "phase": r["phase"], "params": r["params"], "median_ms": 1000 * r["median_s"],
             "images_per_s": r["images_per_s"],
             "tflops": (r["images_per_s"] * flops / 1e12 if r["phase"] == "train" else None)} for r in data["results"]]
    return {"setup": data["setup"], "rows": rows, "ratios": data["ratios"], "flops_per_example": flops,
            "param_match": data["param_match"]["ratio"]}


def stage_preset(check: Check, record: dict[str, Any]) -> dict[str, Any]:
    """The gpu preset for ``preset_steps`` steps on a synthetic .npz; examples/s from metrics.jsonl (the windows
    after the first, which holds the warm-up) and the FLOPs of its backbone."""
    from mtd_core.training.config import read_config, resolve_config
    from mtd_core.training.flops import step_flops_per_example

    p = check.plan
    data = _synthetic_npz(check.scratch / "imagenet64_synthetic.npz", p["preset_n"], p["preset_size"])
    out = check.scratch / "preset_run"
    overrides = [f"dataset.path=\"{data}\"", "dataset.holdout=0", "dataset.test_fraction=0.1",
                 f"trainer.steps={p['preset_steps']}", f"trainer.batch_size={p['preset_batch']}",
                 "trainer.accumulate=1", "trainer.warmup_steps=10", f"trainer.log_every={p['preset_log']}",
                 "trainer.sample_n=0", "trainer.checkpoint_every=0", "trainer.keep_last=1", *p["preset_set"]]
    config = resolve_config(read_config(PRESET, overrides))
    flops = step_flops_per_example(config)
    cmd = [sys.executable, "-m", "mtd_core.cli", "train", str(PRESET), "--out", str(out), "--no-progress"]
    cmd += [a for o in overrides for a in ("--set", o)]
    if not check.cuda and not check.dry_run:
        record["command"] = check.shown(cmd)
        raise Skip("no CUDA device")
    printed = check.run(cmd, record, STAGE_CAP_S["preset"])
    params = re.search(r"([\d.]+)M parameters", printed)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    rates = [x["examples_per_s"] for x in lines[1:]] or [lines[-1]["examples_per_s"]]
    rate = statistics.median(rates)
    return {"steps": lines[-1]["step"], "batch_size": p["preset_batch"], "image_size": p["preset_size"],
            "parameters_m": float(params.group(1)) if params else None, "examples_per_s": rate,
            "step_s": p["preset_batch"] / rate,
            "flops_per_example": flops, "tflops": rate * flops / 1e12, "loss": lines[-1]["loss"],
            "bf16": config.trainer.bf16, "channels_last": config.trainer.channels_last}


def stage_ddp(check: Check, record: dict[str, Any]) -> dict[str, Any]:
    """Two NCCL processes (torchrun) training the image + label example for a few steps."""
    from mtd_core.training.config import read_config, resolve_config

    steps = check.plan["ddp_steps"]
    overrides = ["trainer.device=\"cuda\"", f"trainer.steps={steps}", "trainer.sample_n=0",
                 "trainer.checkpoint_every=0", "trainer.log_every=1"]
    resolve_config(read_config(DDP_CONFIG, overrides))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "mtd_core.cli", "train", str(DDP_CONFIG), "--out", str(check.scratch / "ddp_run"), "--no-progress"]
    cmd += [a for o in overrides for a in ("--set", o)]
    gpus = torch.cuda.device_count() if check.cuda else 0
    if gpus < 2:
        record["command"] = check.shown(cmd)
        raise Skip(f"needs 2 GPUs, {gpus} here (the command and its config were checked)")
    out = check.run(cmd, record, STAGE_CAP_S["ddp"])
    lines = (check.scratch / "ddp_run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {"steps": json.loads(lines[-1])["step"], "loss": json.loads(lines[-1])["loss"], "output": out[-1500:]}


# -- helpers --------------------------------------------------------------------------------------------------------
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=False, timeout=10)
        return out.stdout.strip() or None
    return None


def _synthetic_npz(path: Path, n: int, size: int) -> Path:
    """Random uint8 RGB images (n, 3, size, size) and labels 0..999: the preset's fields, no real data."""
    rng = np.random.default_rng(0)
    np.savez(path, image=rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
             label=rng.integers(0, 1000, n, dtype=np.int64))
    return path


def _speed_flops(data: dict[str, Any]) -> float:
    """Forward + backward FLOPs per example of the speed benchmark's single-task backbone (meta device)."""
    from mtd_core.backbones.unet import build_unet
    from mtd_core.modality import LatentSpec
    from mtd_core.training.flops import BACKWARD_FACTOR, backbone_forward_flops

    size = data["setup"]["size"]
    with torch.device("meta"):
        backbone = build_unet(LatentSpec((1, size, size)), **data["backbone_options"])
    return BACKWARD_FACTOR * backbone_forward_flops(backbone, (1, size, size))


def summary(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets from the stages' results: bf16 training step >= 1.2x diffusers', >= 40% of the peak."""
    by = {s["name"]: s for s in stages}
    peak = by.get("matmul", {}).get("result", {}).get("tflops")
    bf16 = by.get("speed_bf16", {}).get("result", {})
    ratio = next((r["value"] for r in bf16.get("ratios", []) if r["name"].startswith("train: ours image+label")), None)
    ours = next((r for r in bf16.get("rows", []) if r["name"] == "ours image+label (train)"), None)
    preset = by.get("preset", {}).get("result", {})
    share = {k: (v / peak if v and peak else None) for k, v in
             (("speed_bf16", ours and ours["tflops"]), ("preset", preset.get("tflops")))}
    return {"matmul_peak_tflops": peak, "bf16_train_vs_diffusers": ratio, "target_vs_diffusers": 1.2,
            "share_of_peak": share, "target_share_of_peak": 0.4}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, about a minute: the code paths only")
    p.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where the JSON goes")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="wall-clock budget in seconds (default 480)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mtd_gpu_check_") as tmp:
        check = Check(a.dry_run, Path(tmp), a.budget)
        check.stage("env", lambda r: stage_env(check, r))
        check.stage("matmul", lambda r: stage_matmul(check, r))
        check.stage("smoke", lambda r: stage_smoke(check, r))
        check.stage("speed_fp32", lambda r: stage_speed(check, r, "fp32"))
        check.stage("speed_bf16", lambda r: stage_speed(check, r, "bf16"))
        check.stage("preset", lambda r: stage_preset(check, r))
        check.stage("ddp", lambda r: stage_ddp(check, r))
        check.stage("speed_compiled", lambda r: stage_speed(check, r, "compiled"))  # last: compiling takes longest
    doc = {"format": FORMAT, "version": VERSION, "dry_run": a.dry_run, "budget_s": a.budget,
           "wall_s": round(time.perf_counter() - check.started, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
           "stages": check.stages, "summary": summary(check.stages)}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    bad = [s["name"] for s in check.stages if s["status"] in ("failed", "timeout")]
    print(f"gpu_check: wrote {a.json} in {doc['wall_s']} s; " + (f"FAILED: {bad}" if bad else "no stage failed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
