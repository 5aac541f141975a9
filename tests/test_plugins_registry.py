"""The plugin registry: discovery, failure isolation, clashes, blocking, explicit registration, documentation.

Broken plugins come from fake installed distributions: a ``*.dist-info`` folder (METADATA + entry_points.txt)
and a module in a temporary folder put on ``sys.path``, declared in a test-only entry-point group so the real
plugins of the environment stay out of the way. Module names are unique per test because ``sys.modules``
outlives a test.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtd_core.errors import ConfigError, PluginError
from mtd_core.modality import DataSpec, Modality, Role
from mtd_core.plugins import hookimpl, hookspecs
from mtd_core.plugins import registry as registry_module
from mtd_core.plugins.registry import HOOKS, Registry, discover_entry_points, get_registry, reset_registry

ROOT = Path(__file__).resolve().parents[1]

GOOD_PLUGIN = """
from mtd_core.modality import DataSpec, Modality
from mtd_core.plugins import hookimpl

class Toy(Modality):
    kind = "toy"
    def data_spec(self):
        return DataSpec((), "float32", -1.0, 1.0)
    def loss(self, pred, x):
        return (pred - x) ** 2
    def sample(self, pred, *, greedy=False, generator=None):
        return pred

@hookimpl
def mtd_register_modalities():
    return [Toy]

@hookimpl
def mtd_register_datasets():
    return {"toyset": lambda **options: options}
"""


class FakeDists:
    """Writes fake installed distributions into one folder on sys.path, all in a private entry-point group."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.group = f"mtd-test-{uuid.uuid4().hex[:8]}"
        self.tag = uuid.uuid4().hex[:8]
        monkeypatch.syspath_prepend(str(root))

    def module(self, stem: str) -> str:
        """A module name unique to this test."""
        return f"fake_{stem}_{self.tag}"

    def add(self, dist: str, version: str, plugins: dict[str, str]) -> dict[str, str]:
        """Install ``dist`` with one entry point per plugin name, each a module with the given source.

        Returns plugin name -> module name.
        """
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        modules = {name: self.module(f"{dist}_{name}".replace("-", "_")) for name in plugins}
        lines = [f"[{self.group}]"] + [f"{name} = {modules[name]}" for name in plugins]
        info.joinpath("entry_points.txt").write_text("\n".join(lines) + "\n")
        for name, source in plugins.items():
            self.root.joinpath(modules[name] + ".py").write_text(textwrap.dedent(source))
        return modules

    def registry(self, blocked: tuple[str, ...] | None = ()) -> Registry:
        """A Registry over exactly these fake distributions."""
        importlib.invalidate_caches()  # the modules were written after the folder went on sys.path
        return Registry(entry_points=discover_entry_points(self.group), blocked=blocked)


@pytest.fixture
def dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDists:
    return FakeDists(tmp_path, monkeypatch)


def record(reg: Registry, name: str, what: str | None = None) -> Any:
    """The single record called ``name`` (optionally of kind ``what``)."""
    found = [r for r in reg.records if r.name == name and (what is None or r.what == what)]
    assert len(found) == 1, f"expected one record {name!r}, got {found}"
    return found[0]


# -- discovery ------------------------------------------------------------------------------------------------
def test_a_good_plugin_registers_with_its_distribution(dists: FakeDists) -> None:
    dists.add("toy-dist", "1.2.3", {"toy-plugin": GOOD_PLUGIN})
    reg = dists.registry()
    assert reg.modality_kinds() == ["toy"]
    assert reg.dataset_names() == ["toyset"]
    rec = record(reg, "toy")
    assert (rec.what, rec.plugin, rec.distribution, rec.version, rec.status, rec.roles) == (
        "modality", "toy-plugin", "toy-dist", "1.2.3", "ok", ("aggregated",))
    assert reg.failures == []
    m = reg.build_modality({"kind": "toy", "name": "brightness", "loss_weight": 2.0})
    assert type(m) is reg.modality_class("toy") and m.name == "brightness" and m.loss_weight == 2.0
    assert reg.build_modality(m.to_config()) == m
    assert reg.dataset("toyset")(a=1) == {"a": 1}


def test_loading_is_lazy() -> None:
    calls: list[str] = []

    class EP:
        name, value, dist = "lazy", "lazy_module", None

        def load(self) -> Any:
            calls.append("load")
            return types.SimpleNamespace()

    reg = Registry(entry_points=[EP()], blocked=())
    assert calls == [] and repr(reg) == "Registry(not loaded)"
    reg.modality_kinds()
    reg.modality_kinds()
    assert calls == ["load"]


def test_import_error_is_isolated(dists: FakeDists) -> None:
    dists.add("good-dist", "1.0", {"good": GOOD_PLUGIN})
    broken = dists.add("broken-dist", "0.3", {"broken": "import numpy\nimport nonexistent_dependency_xyz\n"})
    reg = dists.registry()
    assert reg.modality_kinds() == ["toy"]
    [fail] = reg.failures
    assert (fail.name, fail.what, fail.plugin, fail.distribution, fail.version, fail.status) == (
        "broken", "plugin", "broken", "broken-dist", "0.3", "failed")
    assert "ModuleNotFoundError" in fail.error and "nonexistent_dependency_xyz" in fail.error
    assert f"{broken['broken']}.py:2)" in fail.error  # the line of the plugin's source that failed
    msg = fail.message()
    assert "plugin 'broken'" in msg and "distribution broken-dist 0.3" in msg and "nonexistent_dependency_xyz" in msg
    assert "Traceback" in fail.traceback


def test_raising_hook_is_isolated_and_drops_the_whole_plugin(dists: FakeDists) -> None:
    dists.add("good-dist", "1.0", {"good": GOOD_PLUGIN})
    dists.add("raising-dist", "2.0", {"raising": """
        from mtd_core.plugins import hookimpl

        @hookimpl
        def mtd_register_datasets():
            return {"fine_dataset": dict}

        @hookimpl
        def mtd_register_modalities():
            raise RuntimeError("the weights folder is missing")
    """})
    reg = dists.registry()
    assert reg.modality_kinds() == ["toy"]
    assert reg.dataset_names() == ["toyset"]  # nothing from the failed plugin, not even its valid dataset
    [fail] = reg.failures
    assert (fail.plugin, fail.distribution, fail.version) == ("raising", "raising-dist", "2.0")
    assert "mtd_register_modalities() raised RuntimeError: the weights folder is missing" in fail.error
    assert reg.pm.get_plugin("raising") is None and reg.pm.get_plugin("good") is not None


INVALID_RETURNS = {
    "none": ("return None", "modalities", "returned None", "is a `return` missing?"),
    "instance": ("return [Toy()]", "modalities", "expected a Modality subclass", "return the class, not an instance"),
    "not_a_modality": ("return [int]", "modalities", "the class builtins.int", "does not subclass"),
    "abstract": ("return [Abstract]", "modalities", "is abstract", "'sample'"),
    "no_kind": ("return [NoKind]", "modalities", "must set the class attribute `kind`", "got None"),
    "string": ("return 'toy'", "modalities", "returned a str", "a list of concrete Modality subclasses"),
    "dataset_list": ("return [dict]", "datasets", "returned a list", "a mapping of dataset names"),
    "not_callable": ("return {'bad': 3}", "datasets", "maps 'bad' to 3 (int)", "not callable"),
    "backbone_key": ("return {1: dict}", "backbones", "the key 1", "non-empty str"),
    "metric_none": ("return None", "metrics", "mtd_register_metrics() returned None", "is a `return` missing?"),
}


@pytest.mark.parametrize("case", sorted(INVALID_RETURNS))
def test_invalid_hook_results_are_reported_and_skipped(dists: FakeDists, case: str) -> None:
    body, hook, *expected = INVALID_RETURNS[case]
    dists.add("good-dist", "1.0", {"good": GOOD_PLUGIN})
    dists.add("invalid-dist", "0.1", {"invalid": f"""
        from mtd_core.modality import DataSpec, Modality
        from mtd_core.plugins import hookimpl

        class Toy(Modality):
            kind = "other_toy"
            def data_spec(self): return DataSpec(())
            def loss(self, pred, x): return pred
            def sample(self, pred, *, greedy=False, generator=None): return pred

        class Abstract(Modality):
            kind = "abstract"
            def data_spec(self): return DataSpec(())
            def loss(self, pred, x): return pred

        class NoKind(Toy):
            kind = None

        @hookimpl
        def mtd_register_{hook}():
            {body}
    """})
    reg = dists.registry()
    assert reg.modality_kinds() == ["toy"] and reg.dataset_names() == ["toyset"]
    [fail] = reg.failures
    assert (fail.plugin, fail.distribution, fail.status) == ("invalid", "invalid-dist", "failed")
    for fragment in expected:
        assert fragment in fail.error, f"{fragment!r} not in {fail.error!r}"
    assert "other_toy" not in reg.modality_kinds()


def test_unknown_and_undecorated_hooks_are_reported(dists: FakeDists) -> None:
    dists.add("typo-dist", "1.0", {
        "typo": "from mtd_core.plugins import hookimpl\n@hookimpl\ndef mtd_register_modality():\n    return []\n",
        "plain": "def mtd_register_datasets():\n    return {}\n",
    })
    reg = dists.registry()
    typo, plain = record(reg, "typo"), record(reg, "plain")
    assert "'mtd_register_modality', which is not an mtd hook" in typo.error
    assert "did you mean 'mtd_register_modalities'" in typo.error
    assert "implements no mtd hook" in plain.error and "not decorated with @mtd_core.plugins.hookimpl" in plain.error


def test_duplicate_names_fail_for_both_distributions(dists: FakeDists) -> None:
    dists.add("alpha-dist", "1.0", {"alpha": GOOD_PLUGIN})
    dists.add("beta-dist", "2.5", {"beta": """
        from mtd_core.modality import DataSpec, Modality
        from mtd_core.plugins import hookimpl

        class OtherToy(Modality):
            kind = "toy"
            def data_spec(self): return DataSpec(())
            def loss(self, pred, x): return pred
            def sample(self, pred, *, greedy=False, generator=None): return pred

        @hookimpl
        def mtd_register_modalities():
            return [OtherToy]

        @hookimpl
        def mtd_register_backbones():
            return {"beta_net": dict}
    """})
    reg = dists.registry()
    assert reg.modality_kinds() == []
    assert reg.dataset_names() == ["toyset"] and reg.backbone_names() == ["beta_net"]  # the rest still loads
    clashes = [r for r in reg.records if r.name == "toy"]
    assert sorted((r.plugin, r.distribution, r.status) for r in clashes) == [
        ("alpha", "alpha-dist", "failed"), ("beta", "beta-dist", "failed")]
    for r in clashes:
        assert "alpha-dist 1.0" in r.error and "beta-dist 2.5" in r.error
    with pytest.raises(PluginError) as err:
        reg.modality_class("toy")
    assert "provided by 2 plugins" in str(err.value)
    assert "alpha-dist 1.0" in str(err.value) and "beta-dist 2.5" in str(err.value)
    with pytest.raises(PluginError, match="alpha-dist"):
        reg.build_modality({"kind": "toy"})


def test_a_clash_with_a_builtin_keeps_the_builtin_and_names_the_newcomer(dists: FakeDists) -> None:
    dists.add("mtd", "0.1.0", {"mtd-toy": GOOD_PLUGIN})  # the distribution the built-ins ship in
    dists.add("their-dist", "2.0", {"theirs": GOOD_PLUGIN.replace('"toyset"', '"their_set"')})
    reg = dists.registry()
    assert reg.modality_kinds() == ["toy"] and reg.modality_class("toy").__module__.startswith("fake_mtd_mtd_toy")
    assert reg.dataset_names() == ["their_set", "toyset"]  # the newcomer's other names still load
    failed = [r for r in reg.failures if r.name == "toy"]
    assert [(r.plugin, r.distribution) for r in failed] == [("theirs", "their-dist")]
    assert "already provided by the built-in plugin 'mtd-toy'" in failed[0].error
    assert "block the plugin with MTD_BLOCK_PLUGINS=theirs" in failed[0].error


def test_duplicate_entry_point_names_are_reported(dists: FakeDists) -> None:
    dists.add("first-dist", "1.0", {"same": GOOD_PLUGIN})
    dists.add("second-dist", "1.0", {"same": "raise SystemExit('must never be imported')\n"})
    reg = dists.registry()
    failed = [r for r in reg.failures if r.what == "plugin"]
    assert len(failed) == 1 and "already taken by plugin 'same'" in failed[0].error
    assert reg.modality_kinds() == ["toy"]


def test_plugin_calling_sys_exit_does_not_end_the_process(dists: FakeDists) -> None:
    dists.add("exit-dist", "1.0", {"exiting": "import sys\nsys.exit(3)\n"})
    [fail] = dists.registry().failures
    assert "SystemExit: 3" in fail.error


def test_block_list_from_the_environment(dists: FakeDists, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = dists.add("good-dist", "1.0", {"good": GOOD_PLUGIN})
    broken = dists.add("broken-dist", "1.0", {"broken": "raise ImportError('never imported when blocked')\n"})
    dists.add("extra-dist", "1.0", {"extra": "from mtd_core.plugins import hookimpl\n"
                                             "@hookimpl\ndef mtd_register_metrics():\n    return {'m': len}\n"})
    monkeypatch.setenv("MTD_BLOCK_PLUGINS", " broken, extra-dist ,,typo-plugin")
    reg = dists.registry(blocked=None)
    assert reg.modality_kinds() == ["toy"] and reg.metric_names() == []
    assert reg.failures == []
    blocked = sorted((r.plugin, r.distribution) for r in reg.records if r.status == "blocked")
    assert blocked == [("broken", "broken-dist"), ("extra", "extra-dist")]
    assert broken["broken"] not in sys.modules and modules["good"] in sys.modules
    assert reg.blocked_unmatched == ["typo-plugin"]
    assert "blocked by MTD_BLOCK_PLUGINS" in record(reg, "broken").message()


# -- lookups --------------------------------------------------------------------------------------------------
def test_unknown_names_list_the_known_ones_and_the_nearest(dists: FakeDists) -> None:
    dists.add("good-dist", "1.0", {"good": GOOD_PLUGIN})
    dists.add("broken-dist", "1.0", {"broken": "import nonexistent_dependency_xyz\n"})
    reg = dists.registry()
    with pytest.raises(ConfigError) as err:
        reg.build_modality({"kind": "tyo"})
    msg = str(err.value)
    assert "unknown modality 'tyo' (did you mean 'toy'?)" in msg and "known modalities: ['toy']" in msg
    assert "plugin 'broken'" in msg and "nonexistent_dependency_xyz" in msg  # a failed plugin may provide it
    with pytest.raises(ConfigError, match=r"unknown dataset 'toyste' \(did you mean 'toyset'\?\)"):
        reg.dataset("toyste")
    with pytest.raises(ConfigError, match=r"unknown backbone 'unet'; known backbones: \[\]"):
        reg.backbone("unet")
    with pytest.raises(ConfigError, match="unknown metric 'fid'"):
        reg.metric("fid")
    with pytest.raises(ConfigError, match=r"has no 'kind' key; expected one of \['toy'\]"):
        reg.build_modality({"name": "x"})
    with pytest.raises(ConfigError, match="must be a mapping"):
        reg.build_modality(["toy"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown option 'sigmaa'"):
        reg.build_modality({"kind": "toy", "sigmaa": 1})


# -- explicit registration ------------------------------------------------------------------------------------
class Scalar(Modality):
    """A minimal aggregated modality used for explicit registration."""

    kind = "scalar"

    def data_spec(self) -> DataSpec:
        return DataSpec(())

    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        return (pred - x) ** 2

    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return pred


class ScalarPlugin:
    """A plugin object (not a module) with two hooks."""

    @hookimpl
    def mtd_register_modalities(self) -> list[type[Modality]]:
        return [Scalar]

    @hookimpl
    def mtd_register_metrics(self) -> dict[str, Any]:
        return {"mean": lambda ctx: {"mean": 0.0}}


def test_explicit_registration_of_objects_classes_and_modules(mtd_registry: Registry) -> None:
    assert mtd_registry.modality_kinds() == [] and mtd_registry.records == []
    name = mtd_registry.register(ScalarPlugin(), name="scalars")
    assert name == "scalars" and mtd_registry.modality_class("scalar") is Scalar
    assert mtd_registry.metric("mean")(None) == {"mean": 0.0}
    rec = record(mtd_registry, "scalar")
    assert (rec.plugin, rec.distribution, rec.version, rec.status, rec.source) == (
        "scalars", None, None, "ok", f"{__name__}.ScalarPlugin")

    class Other(Scalar):
        kind = "other"
        roles = (Role.BASE, Role.AGGREGATED)

    assert mtd_registry.register(Other) == f"{__name__}.{Other.__qualname__}"
    assert record(mtd_registry, "other").roles == ("base", "aggregated")

    module = types.ModuleType("notebook_cell")
    exec("from mtd_core.plugins import hookimpl\n@hookimpl\ndef mtd_register_backbones():\n    return {'tiny': dict}",
         module.__dict__)
    assert mtd_registry.register(module) == "notebook_cell"
    assert mtd_registry.backbone("tiny") is dict

    mtd_registry.unregister("scalars")
    assert mtd_registry.modality_kinds() == ["other"] and mtd_registry.metric_names() == []
    with pytest.raises(PluginError, match="no plugin named 'scalar' is registered"):
        mtd_registry.unregister("scalar")


def test_explicit_registration_raises_and_leaves_the_registry_unchanged(mtd_registry: Registry) -> None:
    mtd_registry.register(ScalarPlugin(), name="first")
    before = mtd_registry.records

    with pytest.raises(PluginError) as err:
        mtd_registry.register(Scalar, name="second")
    assert "modality 'scalar' is already provided by plugin 'first'" in str(err.value)
    with pytest.raises(PluginError, match="plugin name is already registered"):
        mtd_registry.register(Scalar, name="first")

    class Raising:
        @hookimpl
        def mtd_register_datasets(self) -> dict[str, Any]:
            raise OSError("no such folder: /data/x")

    with pytest.raises(PluginError) as err:
        mtd_registry.register(Raising(), name="raising")
    assert "cannot register plugin 'raising'" in str(err.value)
    assert "mtd_register_datasets() raised OSError: no such folder: /data/x" in str(err.value)
    assert mtd_registry.records == before and mtd_registry.pm.get_plugin("raising") is None

    mtd_registry.unregister("first")
    assert mtd_registry.register(Scalar, name="second") == "second"  # the name is free again


def test_unregistering_one_side_of_a_clash_frees_the_name() -> None:
    def plugin(cls: type[Modality]) -> types.SimpleNamespace:
        return types.SimpleNamespace(mtd_register_modalities=hookimpl(lambda: [cls]))

    class EP:
        def __init__(self, name: str, obj: Any) -> None:
            self.name, self.value, self.obj = name, f"{name}_module", obj
            self.dist = types.SimpleNamespace(name=f"{name}-dist", version="1")

        def load(self) -> Any:
            return self.obj

    class Scalar2(Scalar):
        pass

    reg = Registry(entry_points=[EP("a", plugin(Scalar)), EP("b", plugin(Scalar2))], blocked=())
    with pytest.raises(PluginError, match="a-dist 1"):
        reg.modality_class("scalar")
    reg.unregister("a")
    assert reg.modality_class("scalar") is Scalar2 and reg.failures == []


def test_an_entry_point_may_name_a_modality_class_directly() -> None:
    ep = types.SimpleNamespace(name="scalar-plugin", value=f"{__name__}:Scalar", load=lambda: Scalar,
                               dist=types.SimpleNamespace(name="scalar-dist", version="3"))
    reg = Registry(entry_points=[ep], blocked=())
    assert reg.modality_class("scalar") is Scalar
    rec = record(reg, "scalar")
    assert (rec.plugin, rec.distribution, rec.source, rec.status) == ("scalar-plugin", "scalar-dist", ep.value, "ok")


@settings(max_examples=30)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True, max_size=3),
                min_size=1, max_size=5))
def test_every_name_is_registered_iff_exactly_one_plugin_provides_it(provided: list[list[str]]) -> None:
    """Random plugin sets: a kind is usable iff one plugin provides it; otherwise every provider has a failure."""

    def make_plugin(kinds: list[str]) -> types.SimpleNamespace:
        classes = [type(f"M_{k}", (Scalar,), {"kind": k}) for k in kinds]
        return types.SimpleNamespace(mtd_register_modalities=hookimpl(lambda: classes))

    eps = [types.SimpleNamespace(name=f"p{i}", value=f"mod{i}", dist=types.SimpleNamespace(name=f"d{i}", version="1"),
                                 load=(lambda p=make_plugin(kinds): p)) for i, kinds in enumerate(provided)]
    reg = Registry(entry_points=eps, blocked=())
    counts = {k: sum(k in kinds for kinds in provided) for k in "abcde"}
    assert reg.modality_kinds() == sorted(k for k, n in counts.items() if n == 1)
    for k, n in counts.items():
        recs = [r for r in reg.records if r.name == k]
        assert len(recs) == n and all(r.status == ("ok" if n == 1 else "failed") for r in recs)
        if n > 1:
            with pytest.raises(PluginError):
                reg.modality_class(k)
            assert all(f"d{i}" in recs[0].error for i, kinds in enumerate(provided) if k in kinds)


# -- process-wide registry, fixtures --------------------------------------------------------------------------
def test_get_registry_is_process_wide_until_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "discover_entry_points", lambda group="mtd": [])
    reset_registry()
    try:
        first = get_registry()
        assert get_registry() is first and first.modality_kinds() == []
        reset_registry()
        assert get_registry() is not first
    finally:
        reset_registry()


def test_mtd_registry_fixture_is_fresh_and_isolated(mtd_registry: Registry) -> None:
    assert mtd_registry.records == [] and mtd_registry is not get_registry()
    mtd_registry.register(Scalar, name="leaks-if-not-isolated")


def test_mtd_registry_fixture_does_not_keep_registrations(mtd_registry: Registry) -> None:
    assert mtd_registry.records == []


def test_mtd_registry_builtin_fixture_uses_the_entry_points(mtd_registry_builtin: Registry,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "discover_entry_points", lambda group="mtd": [])
    assert mtd_registry_builtin is not get_registry()
    assert mtd_registry_builtin.records == []  # it reads discover_entry_points, here emptied


# -- the contract: every hook is handled by the registry and documented ---------------------------------------
def _hookspec_names() -> list[str]:
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                  if getattr(fn, f"{hookspecs.PROJECT}_spec", None) is not None)


def test_the_registry_calls_every_hookspec() -> None:
    assert _hookspec_names() == sorted(HOOKS.values())


def test_every_hook_is_documented_in_docs_plugins_md() -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    headings = set(re.findall(r"^#+ .*?`(\w+)", docs, flags=re.M))
    missing = [name for name in _hookspec_names() if name not in headings]
    assert not missing, f"docs/plugins.md has no section for the hooks {missing}"
    assert len(_hookspec_names()) == 8


def test_schedules_and_transforms_are_registry_kinds_a_plugin_can_add(mtd_registry_builtin: Registry) -> None:
    import attrs
    import torch

    from mtd_core.data.build import load_dataset
    from mtd_core.diffusion.noise import NoiseSchedule
    from mtd_core.diffusion.weights import WeightSchedule
    from mtd_core.taskset import TaskSet

    @attrs.frozen
    class Tent(WeightSchedule):
        """lambda_t rising linearly to ``peak`` at T / 2 and back to 0 at T."""

        kind = "tent"
        defines = "lambda"
        peak: float = 0.5

        def _w_or_lambda(self, noise: NoiseSchedule) -> torch.Tensor:
            u = torch.arange(noise.T + 1, dtype=torch.float64) / noise.T
            return self.peak * (1 - (2 * u - 1).abs())

    def flat(T: int = 100, beta: float = 0.02) -> NoiseSchedule:
        return NoiseSchedule.custom([beta] * T)

    @attrs.frozen
    class Invert:
        """The image, negated, as a new field."""

        source: str = "image"

        def __call__(self, batch: dict) -> dict:
            return {**batch, "negative": -batch[self.source]}

        def to_config(self) -> dict:
            return {"kind": "invert", **attrs.asdict(self)}

    class Plugin:
        @hookimpl
        def mtd_register_weight_schedules(self):
            return {"tent": Tent}

        @hookimpl
        def mtd_register_noise_schedules(self):
            return {"flat": flat}

        @hookimpl
        def mtd_register_transforms(self):
            return {"invert": Invert}

    reg = mtd_registry_builtin
    reg.register(Plugin(), name="my-schedules")
    ts = TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "size": 8},
                                             {"kind": "label", "num_classes": 10, "weights": {"kind": "tent"}}],
                              "diffusion": {"kind": "flat", "T": 50}}, reg)
    assert isinstance(ts.modalities["label"].weights, Tent) and ts.forward_process().T == 50
    assert {"tent", "windowed"} <= set(reg.names("weight_schedule"))
    assert {"flat", "linear"} <= set(reg.names("noise_schedule")) and {"invert", "edges"} <= set(reg.names("transform"))
    assert {(r.what, r.name, r.plugin) for r in reg.records} >= {("weight_schedule", "tent", "my-schedules"),
                                                                ("transform", "invert", "my-schedules")}
    data = load_dataset({"name": "digits", "transforms": [{"kind": "invert"}]}, reg)
    batch = data.batch(data.splits.test, torch.arange(3))
    assert torch.equal(batch["negative"], -batch["image"])
    with pytest.raises(ConfigError, match=r"diffusion.kind must be one of \[.*'flat'.*\], got 'flta' \(did you mean"):
        TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "size": 8}],
                             "diffusion": {"kind": "flta"}}, reg)
