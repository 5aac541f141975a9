"""A closed error surface: every field of a run config, given a value of the wrong type, out of range or of the
wrong shape, either resolves to exactly that value or fails with an MTDError naming the key, never anything else.

Starting from a minimal valid config (one per registered modality kind), one field of one section is replaced:
every [trainer] field, the generic [dataset] keys, every option of the backbone's config, the [taskset] options and
[taskset.diffusion], and every option each registered modality kind declares (its Modality arguments, its attrs
``Config`` fields and its weight schedule's). The config path runs as ``mtd config show`` runs it (``RunConfig``,
``resolve_config``: the task set and the backbone built, nothing trained), then the memory estimate; the same
through the CLI's ``--set``. Builds configs only: no data is loaded and nothing trains.
"""

from __future__ import annotations

import copy
import re
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtd_core.backbones.unet import UNetConfig
from mtd_core.diffusion.weights import WindowedLambda
from mtd_core.errors import ConfigError, MTDError
from mtd_core.modality import Role
from mtd_core.plugins.registry import get_registry
from mtd_core.tomlio import dumps_toml
from mtd_core.training.config import RunConfig, TrainConfig, resolve_config
from mtd_core.training.memory import MemoryEstimate, check_batch_memory, estimate_batch_memory
from mtd_core.types import ConfigDict

REGISTRY = get_registry()
BACKBONE = {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4}
SECOND = {"label": {"kind": "label"}, "masked_image": {"kind": "masked_image"},
          "representation": {"kind": "representation", "builtin_extractor": "random_conv"},
          "text": {"kind": "text"}, "image": {"kind": "image", "name": "edges", "role": "aggregated"}}
INT64 = 2**63


def base_config(kind: str) -> ConfigDict:
    """A minimal valid run config: an 8x8 image as the base and one aggregated modality of ``kind``."""
    second = SECOND.get(kind, {"kind": kind})
    return {"dataset": {"name": "digits"},
            "taskset": {"modalities": [{"kind": "image", "role": "base", "size": 8}, dict(second)],
                        "diffusion": {"kind": "linear", "T": 1000}},
            "backbone": dict(BACKBONE), "trainer": {"device": "cpu", "sample_steps": 10}}


def spec(annotation: object) -> tuple[str, bool]:
    """(type, optional) from an attrs annotation string: int, float, bool, str, list of int/str, or any."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "any")
    parts = [p.strip() for p in str(text).split("|")]
    optional = "None" in parts
    rest = [p for p in parts if p != "None"]
    base = rest[0] if len(rest) == 1 else "any"
    named = {"int": "int", "float": "float", "bool": "bool", "str": "str", "tuple[int, ...]": "int_list",
             "tuple[str, ...]": "str_list", "tuple[float, float]": "pair"}
    return named.get(base, "any"), optional


@attrs.frozen
class Site:
    """One field of one section: where it is (``path`` into the config), its type and what must name it."""

    kind: str
    path: tuple[str | int, ...]
    type: str
    optional: bool = False

    @property
    def dotted(self) -> str:
        return ".".join(str(p) for p in self.path)


MODALITY_ARGS = {"name": ("str", True), "role": ("str", True), "weights": ("table", True),
                 "loss_weight": ("float", True), "head_grad": ("float", True), "train_encoder": ("bool", True)}
TASKSET_OPTIONS = {"latent_shape": ("int_list", True), "aux_channels": ("int", True), "known_input": ("bool", True),
                   "known_dropout": ("float", True), "aux_eps": ("str", True), "encoding_scale": ("any", True)}
DIFFUSION = {"kind": ("str", False), "T": ("int", False), "beta_start": ("float", False),
             "beta_end": ("float", False)}
DATASET = {"name": ("str", False), "keys": ("table", False), "transforms": ("any", False), "holdout": ("int", False)}


def sites() -> Iterator[Site]:
    """Every field of every section; every option of every registered modality kind."""
    for f in attrs.fields(TrainConfig):
        yield Site("label", ("trainer", f.name), *spec(f.type))
    for f in attrs.fields(UNetConfig):  # the registered "unet" backbone's config
        yield Site("label", ("backbone", f.name), *spec(f.type))
    for key, (t, opt) in DATASET.items():
        yield Site("label", ("dataset", key), t, opt)
    for key, (t, opt) in TASKSET_OPTIONS.items():
        yield Site("label", ("taskset", key), t, opt)
    for key, (t, opt) in DIFFUSION.items():
        yield Site("label", ("taskset", "diffusion", key), t, opt)
    for kind in REGISTRY.modality_kinds():
        cls = REGISTRY.modality_class(kind)
        if Role.AGGREGATED not in cls.roles:  # a base-only kind (latent_image: its own tests cover its options)
            continue
        for key, (t, opt) in MODALITY_ARGS.items():
            yield Site(kind, ("taskset", "modalities", 1, key), t, opt)
        for f in attrs.fields(cls.Config):
            yield Site(kind, ("taskset", "modalities", 1, f.name), *spec(f.type))
        for f in attrs.fields(WindowedLambda):
            yield Site(kind, ("taskset", "modalities", 1, "weights", f.name), *spec(f.type))
    for f in attrs.fields(REGISTRY.modality_class("image").Config):  # the base's options too
        yield Site("label", ("taskset", "modalities", 0, f.name), *spec(f.type))


SITES = list(sites())
WRONG_TYPE = ["abc", "", [1, 2], [], {"a": 1}, {}, True, False, None]
OUT_OF_RANGE = [-1, 0, 1, 2**31, INT64 - 1, 10**30, -1.5, 0.5, 2.5, 2.0, 1e300, 1e-300, math.nan, math.inf, -math.inf]
WRONG_SHAPE = [[0.9], [0.9, 0.99, 0.999], [1, 2, 3, 4], [1, -2, 3], [1, "a"], [[1], [2]]]
BAD_VALUES = WRONG_TYPE + OUT_OF_RANGE + WRONG_SHAPE


def must_fail(t: str, optional: bool, v: Any) -> bool:
    """Whether ``v`` is no value of type ``t`` at all (accepting it would be a silent coercion)."""
    if v is None:
        return not optional
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "int":  # a float, even 2.0, is no integer (TOML tells 2 from 2.0)
        return not (number and isinstance(v, int) and -INT64 <= v < INT64)
    if t == "float":
        return not (number and math.isfinite(float(v)) and abs(float(v)) <= 3.4e38
                    and not (isinstance(v, int) and abs(v) >= INT64))
    if t == "bool":
        return not isinstance(v, bool)
    if t == "str":
        return not isinstance(v, str)
    if t == "table":
        return not isinstance(v, dict)
    if t in ("int_list", "str_list", "pair"):
        item = {"int_list": int, "str_list": str, "pair": float}[t]
        ok = isinstance(v, list) and all(isinstance(x, item) and not isinstance(x, bool) for x in v)
        return not ok or (t == "pair" and len(v) != 2)
    return False


def with_value(site: Site, value: object) -> ConfigDict:
    d = base_config(site.kind)
    node: Any = d
    for k in site.path[:-1]:
        default: ConfigDict = {"kind": "windowed"} if k == "weights" else {}
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, default)
    node[site.path[-1]] = copy.deepcopy(value)
    return d


def at(config: ConfigDict, path: tuple[str | int, ...]) -> object:
    """The value at ``path``, or the config's own default when the resolved config leaves it out (holdout = 0)."""
    node: object = config
    for k in path:
        if isinstance(node, dict) and k not in node:
            return MISSING
        node = node[k]  # type: ignore[index]
    return node


MISSING = object()


def names_key(site: Site, message: str) -> bool:
    """The message names the key (its last part) and where it lives: the section, or the modality."""
    key = str(site.path[-1])
    if key == "role" and "role 'base'" in message:  # two bases: the task set's check names the role
        return True
    if site.path[:2] == ("taskset", "modalities"):
        where = ["modalities[1]", "modalities[0]", "modality '", "modality names"]  # or the task set's check
    else:
        where = [str(site.path[0])]
    return key in message and any(w in message for w in where)


def resolve(d: ConfigDict) -> RunConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resolve_config(RunConfig.from_dict(d), REGISTRY)


def check_site(site: Site, value: object) -> None:
    d = with_value(site, value)
    try:
        resolved = resolve(d)
    except MTDError as e:
        assert names_key(site, str(e)), f"{site.dotted} = {value!r}: the error does not name the key: {e}"
        return
    except Exception as e:  # noqa: BLE001 - the property under test: nothing else escapes
        pytest.fail(f"{site.dotted} = {value!r} escaped as {type(e).__name__}: {e}")
    assert not must_fail(site.type, site.optional, value), \
        f"{site.dotted} = {value!r} was accepted silently (expected {site.type})"
    if value is not None and site.type != "any":  # accepted as given, never clamped or coerced
        got = at(resolved.to_dict(), site.path)
        if got is MISSING:  # left out of the resolved config: it is the default, so it must be one
            assert at(resolve(base_config(site.kind)).to_dict(), site.path) is MISSING, site.dotted
            return
        same_number = site.type == "float" and isinstance(got, float) and got == float(value)  # type: ignore[arg-type]
        assert got == value or same_number or (isinstance(got, list) and list(got) == value), \
            f"{site.dotted} = {value!r} resolved to {got!r}"
    try:  # the memory estimate of an accepted config, however large, is a number or an MTDError
        est = estimate_batch_memory(resolved, REGISTRY)
        assert est.total_bytes >= 0
    except MTDError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=st.sampled_from([s for s in SITES if s.path[0] != "taskset" or s.path[1] != "modalities"]),
       value=st.sampled_from(BAD_VALUES))
def test_section_fields_fail_naming_the_key(site: Site, value: object) -> None:
    check_site(site, value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=st.sampled_from([s for s in SITES if s.path[:2] == ("taskset", "modalities")]),
       value=st.sampled_from(BAD_VALUES))
def test_modality_options_fail_naming_the_key(site: Site, value: object) -> None:
    check_site(site, value)


@pytest.mark.parametrize("site", [s for s in SITES if s.type in ("int", "float", "bool")], ids=lambda s: s.dotted)
def test_wrong_types_fail_for_every_typed_field(site: Site) -> None:
    """Deterministic sweep: every int, float and bool field rejects a string and a list (and ints a bool)."""
    for value in ("abc", [1, 2]) + ((True,) if site.type == "int" else ()):
        check_site(site, value)


def toml_value(v: object) -> str:
    """``v`` as a TOML value for ``--set`` (inline tables and arrays)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return dumps_toml({"v": v}).split("=", 1)[1].strip()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(site=st.sampled_from(SITES), value=st.sampled_from([v for v in BAD_VALUES if v is not None
                                                           and not (isinstance(v, int) and abs(v) >= INT64)]))
def test_cli_set_fails_in_one_line(site: Site, value: object, tmp_path_factory: pytest.TempPathFactory,
                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``mtd config show CONFIG --set KEY=VALUE``: exit 0 with the value as given, or exit 1 with one line on
    stderr that names the key, an MTDError's message (no exception type, no traceback)."""
    from mtd_core.cli import main

    monkeypatch.delenv("MTD_DEBUG", raising=False)
    path = tmp_path_factory.mktemp("cfg") / "run.toml"
    d = base_config(site.kind)
    if site.path[-2] == "weights":
        d["taskset"]["modalities"][1]["weights"] = {"kind": "windowed"}
    path.write_text(dumps_toml(d), encoding="utf-8")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["config", "show", str(path), "--set", f"{site.dotted}={toml_value(value)}", "--json"])
    err = capsys.readouterr().err.strip()
    if rc == 0:
        assert not must_fail(site.type, site.optional, value), f"--set {site.dotted}={value!r} accepted silently"
        return
    assert rc in (1, 2), rc
    lines = [line for line in err.splitlines() if "peak lambda" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "MTD_DEBUG" not in err, f"--set {site.dotted}={value!r}: not an MTDError: {err}"
    assert names_key(site, err) or site.dotted.split(".")[-1] in err, err


# -- the memory estimate and check ----------------------------------------------------------------------------
def _resolved(batch_size: int, **trainer: object) -> RunConfig:
    d = base_config("label")
    d["trainer"].update(batch_size=batch_size, **trainer)
    return resolve(d)


def test_memory_estimate_scales_with_batch_size() -> None:
    small, large = (estimate_batch_memory(_resolved(b), REGISTRY) for b in (64, 6400))
    assert small.parameters == large.parameters > 0 and small.fixed_bytes == large.fixed_bytes
    assert small.per_example_bytes == pytest.approx(large.per_example_bytes) and small.per_example_bytes > 0
    assert large.total_bytes - large.fixed_bytes == pytest.approx(100 * (small.total_bytes - small.fixed_bytes))
    # weights, gradients, two AdamW moments and the EMA copy, float32
    assert small.fixed_bytes == small.parameters * 4 * 5
    half = estimate_batch_memory(_resolved(6400), REGISTRY, world_size=2)
    assert half.batch_size == 3200


def test_memory_estimate_counts_activations_and_bf16_halves_them() -> None:
    full, bf16 = estimate_batch_memory(_resolved(64), REGISTRY), estimate_batch_memory(_resolved(64, bf16=True),
                                                                                        REGISTRY)
    assert full.activation_bytes > 10 * full.latent_bytes > 0  # a U-Net's feature maps dwarf its input
    assert bf16.activation_bytes == pytest.approx(full.activation_bytes / 2)


def test_memory_check_names_batch_size_estimate_and_available() -> None:
    config = _resolved(100_000)
    est = estimate_batch_memory(config, REGISTRY)
    with pytest.raises(ConfigError) as e:
        check_batch_memory(config, registry=REGISTRY, available=int(est.total_bytes / 2))
    message = str(e.value)
    assert "trainer.batch_size = 100000" in message and "GiB" in message
    assert f"{est.total_bytes / 2**30:.3g} GiB" in message and f"{est.total_bytes / 2 / 2**30:.3g} GiB" in message
    ok = check_batch_memory(_resolved(64), registry=REGISTRY, available=int(est.total_bytes))
    assert isinstance(ok, MemoryEstimate)


def test_memory_check_reads_the_machine_memory() -> None:
    from mtd_core.training.memory import available_memory

    free, where = available_memory("cpu")
    assert free > 0 and where
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        check_batch_memory(_resolved(2**40), "cpu", registry=REGISTRY)


@pytest.mark.parametrize("content, expected", [
    (None, "is a folder; expected a TOML config file"),
    (b"[trainer]\nsteps = 1\n# \xff\xfe\n", r"not UTF-8 text \(byte 22: b'\\xff'\); expected a TOML config file"),
    (b"[trainer\n", "not valid TOML"),
])
def test_read_toml_names_the_file_for_folders_bytes_and_syntax(tmp_path: Path, content: bytes | None,
                                                              expected: str) -> None:
    from mtd_core.tomlio import read_toml

    path = tmp_path / "run.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {expected}"):
        read_toml(path)
