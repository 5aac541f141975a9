"""The example third-party plugin (examples/mtd-example-plugin) installs and works like any published plugin.

It is pip-installed (no dependencies, no index, no build isolation) into a temporary target folder — never into
the environment — from a copy of its source (an in-tree build would write build/ and *.egg-info into the repo).
Everything else runs in subprocesses with that folder on PYTHONPATH, exactly as a user's environment would see it:
`mtd plugins list --json` shows it, `mtd plugins validate brightness` passes, a task set and model use it, and its
own test suite (conformance kit + fixtures from mtd's pytest plugin) passes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mtd-example-plugin"

USAGE = textwrap.dedent("""
    import json
    import torch
    from mtd_core.data import derive_batch
    from mtd_core.model import MultiTaskModel
    from mtd_core.taskset import TaskSet

    taskset = TaskSet.from_config({
        "modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                       {"kind": "brightness", "name": "light", "sigma": 0.1}],
        "diffusion": {"kind": "linear", "T": 50},
    })
    model = MultiTaskModel(taskset, backbone_options={"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                                      "groups": 4, "num_heads": 1})
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1
    batch = derive_batch(taskset, {"image": image}, gen)
    out = model.loss(batch, generator=gen)
    out.loss.backward()
    grads = {part: [p.grad for p in getattr(model, part)["light"].parameters()] for part in ("encoders", "heads")}
    rebuilt = MultiTaskModel.from_config(json.loads(json.dumps(model.config())))
    print(json.dumps({
        "derived_ok": bool(torch.allclose(batch["light"], image.flatten(1).mean(1))),
        "kinds": [m["kind"] for m in model.config()["taskset"]["modalities"]],
        "terms": sorted(out.terms),
        "loss_finite": bool(torch.isfinite(out.loss)),
        "grads": {part: all(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in gs)
                  for part, gs in grads.items()},
        "rebuilt": type(rebuilt.taskset["light"]).__module__,
    }))
""")


def _env(target: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MTD_BLOCK_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], target: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=_env(target), cwd=cwd, capture_output=True, text=True, timeout=300)


def _mtd(*args: str) -> list[str]:
    """The `mtd` console script next to this interpreter, else `python -m mtd_core.cli`."""
    script = Path(sys.executable).with_name("mtd")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "mtd_core.cli", *args]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(target folder the plugin is installed into, a copy of its source tree)."""
    root = tmp_path_factory.mktemp("example-plugin")
    source, target = root / "src", root / "target"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install of the example plugin failed:\n{proc.stdout}\n{proc.stderr}"
    return target, source


@pytest.fixture(scope="module")
def runs(installed: tuple[Path, Path]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every subprocess of this module, started together (each spends most of its time importing torch)."""
    target, source = installed
    commands = {
        "list": (_mtd("plugins", "list", "--json"), None),
        "validate": (_mtd("plugins", "validate", "brightness"), None),
        "usage": ([sys.executable, "-c", USAGE], None),
        "own_tests": ([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-profile",
                       "quick", "tests"], source),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(_run, args, target, cwd) for name, (args, cwd) in commands.items()}
        return {name: f.result() for name, f in futures.items()}


def test_the_plugin_is_installed_as_its_own_distribution(installed: tuple[Path, Path]) -> None:
    target, _ = installed
    [info] = target.glob("mtd_example_plugin-*.dist-info")
    assert "[mtd]\nmtd-example-brightness = mtd_example_plugin" in (info / "entry_points.txt").read_text()


def test_plugins_list_shows_it(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    proc = runs["list"]
    assert proc.returncode == 0, proc.stderr
    [rec] = [r for r in json.loads(proc.stdout) if r["name"] == "brightness"]
    assert rec == {"name": "brightness", "what": "modality", "plugin": "mtd-example-brightness",
                   "distribution": "mtd-example-plugin", "version": "0.1.0", "status": "ok", "error": None,
                   "roles": ["aggregated"], "source": "mtd_example_plugin"}


def test_plugins_validate_passes(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    proc = runs["validate"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("brightness: ok (")


def test_usable_in_a_task_set_and_model(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    proc = runs["usage"]
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"derived_ok": True, "kinds": ["image", "brightness"], "terms": ["eps", "light"],
                      "loss_finite": True, "grads": {"encoders": True, "heads": True},
                      "rebuilt": "mtd_example_plugin.brightness"}


def test_its_own_test_suite_passes(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    proc = runs["own_tests"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
