"""`mtd plugins list` and `mtd plugins validate`, run in-process through `mtd_core.cli.main`.

The process-wide registry is reset around every test; tests with fake plugins replace the entry-point listing
(`registry.discover_entry_points`) with fake entry points whose `load()` returns plugin objects defined here.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from mtd_core.cli import main
from mtd_core.modality import DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality
from mtd_core.plugins import hookimpl
from mtd_core.plugins import registry as registry_module
from mtd_core.plugins.registry import reset_registry

BUILTIN_MODALITIES = {"image": ["base", "aggregated"], "label": ["aggregated"], "masked_image": ["aggregated"],
                      "representation": ["aggregated"], "text": ["aggregated"], "latent_image": ["base"]}
NEEDS_OPTIONS = {"latent_image"}  # validated with --option vae=FOLDER in tests/test_latent_image.py


class Level(Modality):
    """A scalar in [-1, 1]: linear encoder into Z, linear head on pooled features, Gaussian loss (sigma 1)."""

    kind = "level"
    head_input = HeadInput.POOLED

    def data_spec(self) -> DataSpec:
        return DataSpec((), "float32", -1.0, 1.0)

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        return nn.Sequential(nn.Unflatten(0, (-1, 1)), nn.Linear(1, latent.numel), nn.Unflatten(1, latent.shape))

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        return nn.Sequential(nn.Linear(features.pooled_dim, 1), nn.Flatten(0))

    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (pred - x) ** 2

    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return pred.detach().clamp(-1, 1)


class BadShapeLevel(Level):
    """Like Level, but its loss is not per example (a scalar): validate must catch it."""

    kind = "bad_level"

    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        return super().loss(pred, x).mean()


def plugin(*classes: type[Modality]) -> types.SimpleNamespace:
    return types.SimpleNamespace(mtd_register_modalities=hookimpl(lambda: list(classes)))


class FakeEntryPoint:
    """An entry point of a fake distribution; ``load`` returns ``obj`` or raises it when it is an exception."""

    def __init__(self, name: str, obj: Any, dist: str, version: str = "1.0") -> None:
        self.name, self.value, self.obj = name, f"{name.replace('-', '_')}_module", obj
        self.dist = types.SimpleNamespace(name=dist, version=version)

    def load(self) -> Any:
        if isinstance(self.obj, BaseException):
            raise self.obj
        return self.obj


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MTD_BLOCK_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


def fake_install(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint) -> None:
    monkeypatch.setattr(registry_module, "discover_entry_points", lambda group="mtd": list(eps))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


# -- the real installation -----------------------------------------------------------------------------------
def test_list_json_shows_the_five_builtin_modalities(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "plugins", "list", "--json")
    assert code == 0
    records = json.loads(out)
    modalities = {r["name"]: r for r in records if r["what"] == "modality"}
    for kind, roles in BUILTIN_MODALITIES.items():
        assert kind in modalities, f"built-in modality {kind!r} missing from {sorted(modalities)}"
        rec = modalities[kind]
        assert (rec["status"], rec["distribution"], rec["roles"], rec["error"]) == ("ok", "mtd", roles, None), rec
        assert rec["plugin"] == "mtd-" + kind.replace("_", "-") and rec["source"] == f"mtd_plugins.{kind}"
    assert [r for r in records if r["status"] != "ok"] == []
    assert all("traceback" not in r for r in records)


def test_validate_all_builtins_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """With no kinds named, a kind whose required options are not given (latent_image's vae) is skipped, not
    failed; named with them it is validated (tests/test_latent_image.py)."""
    code, out = run(capsys, "plugins", "validate")
    assert code == 0, out
    kinds = [k for k in BUILTIN_MODALITIES if k not in NEEDS_OPTIONS]
    for kind in kinds:
        assert f"\n{kind}: ok (" in "\n" + out
    assert "\nlatent_image: skipped (needs --option vae=...; name it to validate it)" in "\n" + out
    assert f"{len(kinds)} of {len(kinds)} modalities passed, 1 skipped" in out
    code, out = run(capsys, "plugins", "validate", "latent_image")
    assert code == 1 and "option 'vae' is required" in out


# -- fake installations --------------------------------------------------------------------------------------
def test_list_table_shows_every_record_and_explains_problems(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    fake_install(monkeypatch, FakeEntryPoint("levels", plugin(Level), "levels-dist", "0.4"),
                 FakeEntryPoint("broken", ImportError("cannot import name 'Foo' from 'bar'"), "broken-dist", "9.9"))
    code, out = run(capsys, "plugins", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "WHAT", "ROLES", "PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "ERROR"]
    assert rows[0].split() == ["level", "modality", "aggregated", "levels", "levels-dist", "0.4", "ok"]
    assert rows[1].split()[:7] == ["broken", "plugin", "broken", "broken-dist", "9.9", "failed", "importing"]
    assert "1 problem:" in out
    assert ("plugin 'broken' (distribution broken-dist 9.9, entry point broken = broken_module) failed:\n"
            "    importing broken_module raised ImportError: cannot import name 'Foo' from 'bar'") in out
    assert "Traceback" not in out
    code, out = run(capsys, "plugins", "list", "--verbose")
    assert "Traceback (most recent call last)" in out


def test_list_json_records(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake_install(monkeypatch, FakeEntryPoint("levels", plugin(Level), "levels-dist", "0.4"),
                 FakeEntryPoint("also-levels", plugin(type("Level2", (Level,), {})), "other-dist", "2.0"))
    code, out = run(capsys, "plugins", "list", "--json")
    assert code == 0
    records = json.loads(out)
    assert sorted((r["name"], r["plugin"], r["distribution"], r["status"]) for r in records) == [
        ("level", "also-levels", "other-dist", "failed"), ("level", "levels", "levels-dist", "failed")]
    assert all("levels-dist 0.4" in r["error"] and "other-dist 2.0" in r["error"] for r in records)


def test_validate_reports_problems_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake_install(monkeypatch, FakeEntryPoint("levels", plugin(Level, BadShapeLevel), "levels-dist"))
    code, out = run(capsys, "plugins", "validate", "level")
    assert code == 0 and re.fullmatch(r"level: ok \(\d+ checks passed\)", out.splitlines()[0]), out
    code, out = run(capsys, "plugins", "validate")
    assert code == 1
    assert "bad_level: FAILED" in out and "level: ok" in out
    assert "loss shape: expected shape (4,), got ()" in out
    assert "1 of 2 modalities passed" in out


def test_validate_unknown_kind_names_the_nearest(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake_install(monkeypatch, FakeEntryPoint("levels", plugin(Level), "levels-dist"))
    code, out = run(capsys, "plugins", "validate", "levle")
    assert code == 1
    assert "levle: FAILED" in out and "unknown modality 'levle' (did you mean 'level'?)" in out


def test_validate_exits_1_when_a_plugin_failed_to_load(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    raising = types.SimpleNamespace(mtd_register_datasets=hookimpl(lambda: 1 / 0))
    fake_install(monkeypatch, FakeEntryPoint("levels", plugin(Level), "levels-dist"),
                 FakeEntryPoint("zero", raising, "zero-dist", "0.0.1"))
    code, out = run(capsys, "plugins", "validate", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and [m["kind"] for m in report["modalities"]] == ["level"]
    assert report["modalities"][0]["ok"] is True
    [fail] = report["load_failures"]
    assert (fail["plugin"], fail["distribution"], fail["version"]) == ("zero", "zero-dist", "0.0.1")
    assert "mtd_register_datasets() raised ZeroDivisionError: division by zero" in fail["error"]


def test_validate_passes_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake_install(monkeypatch, FakeEntryPoint("levels", plugin(Level), "levels-dist"))
    code, out = run(capsys, "plugins", "validate", "level", "--option", "loss_weight=0.5", "--option", "name=lvl")
    assert code == 0, out
    code, out = run(capsys, "plugins", "validate", "level", "--option", "colour=3")
    assert code == 1 and "unknown option 'colour'" in out


def test_blocked_plugins_are_listed_and_not_failures(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake_install(monkeypatch, FakeEntryPoint("levels", plugin(Level), "levels-dist"),
                 FakeEntryPoint("broken", ImportError("never imported"), "broken-dist"))
    monkeypatch.setenv("MTD_BLOCK_PLUGINS", "broken,nonexistent")
    code, out = run(capsys, "plugins", "list")
    assert code == 0
    assert [line.split()[:7] for line in out.splitlines() if line.startswith("broken")] == [
        ["broken", "plugin", "broken", "broken-dist", "1.0", "blocked", "blocked"]]
    assert "problem" not in out
    assert "note: MTD_BLOCK_PLUGINS names 'nonexistent', but no installed plugin or distribution has that name" in out
    reset_registry()
    code, out = run(capsys, "plugins", "validate")
    assert code == 0 and "1 of 1 modalities passed" in out


def test_plugins_without_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "plugins")
    assert code == 2 and "list" in out and "validate" in out


# -- mtd plugins new -----------------------------------------------------------------------------------------
def test_new_writes_a_plugin_that_registers_validates_and_passes_its_kit(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys
    import tomllib

    code, out = run(capsys, "plugins", "new", "mtd-star-count", "--out", str(tmp_path))
    root = tmp_path / "mtd-star-count"
    assert code == 0 and f"wrote {root}" in out
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["mtd"] == {"mtd-star-count": "mtd_star_count"}
    # installed as pip would: the package on the path and a dist-info declaring the entry point
    site = tmp_path / "site"
    info = site / "mtd_star_count-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mtd-star-count\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[mtd]\nmtd-star-count = mtd_star_count\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(root / "src"))
    code, out = run(capsys, "plugins", "validate", "star_count")
    assert code == 0 and out.startswith("star_count: ok"), out
    code, out = run(capsys, "plugins", "list")
    assert re.search(r"star_count\s+modality\s+aggregated\s+mtd-star-count\s+mtd-star-count\s+0\.1\.0\s+ok", out), out
    env = {**__import__("os").environ, "PYTHONPATH": f"{root / 'src'}{__import__('os').pathsep}{site}",
           "OMP_NUM_THREADS": "1"}
    kit = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                         capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert kit.returncode == 0 and " passed" in kit.stdout, kit.stdout[-3000:] + kit.stderr[-2000:]

    code = main(["plugins", "new", "mtd-star-count", "--out", str(tmp_path)])
    assert code == 1 and "already exists" in capsys.readouterr().err
    code = main(["plugins", "new", "Stars!", "--out", str(tmp_path)])
    assert code == 1 and "is not a distribution name" in capsys.readouterr().err


def test_new_plugin_test_fails_when_its_kind_clashes_with_a_builtin(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    code, _ = run(capsys, "plugins", "new", "mtd-my-label", "--kind", "label", "--out", str(tmp_path))
    root = tmp_path / "mtd-my-label"
    info = tmp_path / "site" / "mtd_my_label-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mtd-my-label\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[mtd]\nmtd-my-label = mtd_my_label\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(root / "src"))
    spec = importlib.util.spec_from_file_location("scaffold_kit", root / "tests" / "test_conformance.py")
    assert code == 0 and spec is not None and spec.loader is not None
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    with pytest.raises(AssertionError, match=r"modality 'label' is already provided by the built-in plugin 'mtd-label' "
                                             r"\(distribution mtd "):
        kit.test_the_installed_registry_resolves_label_to_this_class()
