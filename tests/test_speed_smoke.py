"""Smoke test of the speed benchmark against diffusers (benchmarks/speed.py): it runs end to end and reports every
candidate. The numbers themselves are not asserted (they belong to docs/performance.md, not to a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

pytest.importorskip("diffusers", reason="the speed benchmark needs the optional extra 'bench' (diffusers)")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed.py"
TRAIN = {"ours image (train)", "ours image+label (train)", "ours image+masked (train)", "diffusers UNet2DModel"}
SAMPLE = {"ours image (ddim)", "ours image+label (ddim)", "diffusers DDIMPipeline"}


@pytest.fixture(scope="module")
def baseline():
    """benchmarks/_diffusers_baseline.py, imported from its folder (benchmarks/ is not a package)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import _diffusers_baseline
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return _diffusers_baseline


def test_quick_run_writes_every_candidate(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    results = {r["name"]: r for r in data["results"]}
    assert set(results) == TRAIN | SAMPLE
    for name, r in results.items():
        assert r["phase"] == ("train" if name in TRAIN else "sample")
        assert len(r["seconds"]) == data["setup"]["repeats"] == 2
        assert all(s > 0 for s in r["seconds"])
        assert r["images_per_s"] > 0 and r["images"] == data["setup"]["batch"]
    # the diffusers baseline was matched to our single-task model's size
    match = data["param_match"]
    assert match["ours"] == results["ours image (train)"]["params"]
    assert match["diffusers"] == results["diffusers UNet2DModel"]["params"]
    assert abs(match["ratio"] - 1) <= 0.10
    # every target ratio is reported, consistent with the throughputs it compares
    ratios = {r["name"]: r for r in data["ratios"]}
    assert len(ratios) == 6
    key = "train: ours image+label / diffusers (images/s)"
    expected = results["ours image+label (train)"]["images_per_s"] / results["diffusers UNet2DModel"]["images_per_s"]
    assert ratios[key]["value"] == pytest.approx(expected)
    assert ratios[key]["met"] == (expected >= 1.0)
    assert data["machine"]["torch_threads"] == 1 and data["machine"]["cores"] >= 1
    assert "ours image+label / diffusers" in proc.stdout and "load average" in proc.stdout


def test_mirror_has_our_structure(baseline) -> None:
    from mtd_core.backbones.unet import UNetConfig

    ours = UNetConfig(channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(7,), groups=8)
    spec = baseline.mirror_spec(ours, 28, 1)
    assert spec.block_out_channels == (16, 32, 32)
    assert spec.attention_levels == (False, False, True)  # heights 28, 14, 7
    kw = spec.kwargs()
    assert kw["down_block_types"] == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    assert kw["up_block_types"] == ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    assert kw["resnet_time_scale_shift"] == "scale_shift"


def test_mirror_rejects_sizes_unet2d_cannot_restore(baseline) -> None:
    from mtd_core.backbones.unet import UNetConfig

    with pytest.raises(ValueError, match=r"size 28 is not divisible by 2\*\*3"):
        baseline.mirror_spec(UNetConfig(channels=16, channel_mult=(1, 2, 2, 2), groups=8), 28, 1)


def test_parameter_match_finds_the_closest_and_refuses_a_far_one(baseline) -> None:
    from mtd_core.backbones.unet import UNetConfig

    spec = baseline.mirror_spec(UNetConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, groups=8), 8, 1)
    n16 = baseline._count_spec(spec)
    m = baseline.match_parameters(spec, n16, widths=[8, 16, 24], layers=[1])
    assert m.spec.base_channels == 16 and m.ratio == 1.0 and m.tried == 3
    # a target between the widths' counts picks the nearer width
    n24 = baseline._count_spec(attrs.evolve(spec, base_channels=24))
    m = baseline.match_parameters(spec, int(0.9 * n24 + 0.1 * n16), widths=[16, 24], layers=[1])
    assert m.spec.base_channels == 24
    with pytest.raises(ValueError, match="no UNet2DModel within 10%"):
        baseline.match_parameters(spec, 50 * n16, widths=[8, 16], layers=[1])
