"""TaskSet: whole-set validation, latent-shape inference, the forward process, config/JSON/TOML round trips, errors."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.diffusion.weights import ConstantWeight, WindowedLambda
from mtd_core.errors import ConfigError, ScheduleError
from mtd_core.modality import Role
from mtd_core.plugins.registry import get_registry
from mtd_core.taskset import TaskSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

IMAGE = {"kind": "image", "role": "base", "size": 8}
LABEL = {"kind": "label", "num_classes": 10}


def registry():
    return get_registry()


def image(**kw):
    return registry().build_modality({**IMAGE, **kw})


def label(**kw):
    return registry().build_modality({**LABEL, **kw})


def test_views_and_latent_inferred_from_the_base():
    ts = TaskSet([image(), label(), label(name="digit2", num_classes=3)], NoiseSchedule.linear(50))
    assert ts.base is not None and ts.base.name == "image"
    assert [m.name for m in ts.aggregated] == ["label", "digit2"]
    assert list(ts.modalities) == ["image", "label", "digit2"]
    assert ts.base_latent.shape == (1, 8, 8) and ts.latent.shape == (2, 8, 8)
    assert ts.aux_channels == 1 and ts.encoding_latent.shape == (1, 8, 8)  # the label kind's channel of its own
    fp = ts.forward_process()
    assert fp is ts.forward_process()  # built once
    assert fp.names == ("label", "digit2") and fp.T == 50
    assert ts["digit2"].config.num_classes == 3 and "label" in ts and "text" not in ts
    with pytest.raises(KeyError, match="did you mean 'label'"):
        ts["labl"]


def test_aux_channels_place_the_encodings_and_round_trip():
    shared = TaskSet([image(), label()], aux_channels=0)
    assert shared.latent.shape == shared.encoding_latent.shape == (1, 8, 8)
    wide = TaskSet([image(), label()], aux_channels=3)
    assert wide.latent.shape == (4, 8, 8) and wide.encoding_latent.shape == (3, 8, 8)
    for ts in (shared, wide):
        assert TaskSet.from_config(json.loads(json.dumps(ts.to_config())), registry()) == ts
    assert TaskSet([image()]).aux_channels == 0 and "aux_channels" not in TaskSet([image()]).to_config()


@pytest.mark.parametrize("kwargs, message", [
    (dict(aux_channels=-1), r"aux_channels must be an integer >= 0, got -1"),
    (dict(aux_channels=True), r"aux_channels must be an integer >= 0, got True"),
    (dict(aux_channels=1.0), r"aux_channels must be an integer >= 0, got 1.0"),
])
def test_aux_channels_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TaskSet([image(), label()], **kwargs)
    with pytest.raises(ConfigError, match=r"aux_channels = 2 needs a base and at least one aggregated modality, but "
                                          r"there is no aggregated modality"):
        TaskSet([image()], aux_channels=2)


def test_encoding_scale_round_trips_and_rejects_unknown_kinds():
    assert TaskSet([image(), label()]).encoding_scales == {"label": "rms"}  # the label kind's, written out
    assert TaskSet([image(), label()]).to_config()["encoding_scale"] == "rms"
    spread = TaskSet([image(), label()], aux_channels=1, encoding_scale="spread")
    assert spread.to_config()["encoding_scale"] == "spread"
    assert TaskSet.from_config(spread.to_config()) == spread
    with pytest.raises(ConfigError, match=r"encoding_scale must be one of \['rms', 'spread'\], got 'std'"):
        TaskSet([image(), label()], encoding_scale="std")
    with pytest.raises(ConfigError, match=r"encoding_scale = 'spread' needs an aggregated modality"):
        TaskSet([image()], encoding_scale="spread")


def test_aux_eps_round_trips_and_needs_channels_of_their_own():
    heads = TaskSet([image(), label()], aux_channels=1)
    assert heads.aux_eps == "heads" and heads.to_config()["aux_eps"] == "heads"  # the default, written out
    assert TaskSet.from_config(json.loads(json.dumps(heads.to_config())), registry()) == heads
    assert TaskSet([image(), label()], aux_channels=0).aux_eps == "network"  # shared channels: the backbone's
    assert "aux_eps" not in TaskSet([image(), label()], aux_channels=0).to_config()
    with pytest.raises(ConfigError, match=r"aux_eps must be one of \['network', 'heads'\], got 'head'"):
        TaskSet([image(), label()], aux_channels=1, aux_eps="head")
    with pytest.raises(ConfigError, match=r"aux_eps = \"heads\" needs channels of the encodings' own "
                                          r"\(aux_channels > 0\)"):
        TaskSet([image(), label()], aux_channels=0, aux_eps="heads")


def test_peak_ratios_are_reported_and_warned_about_only_on_shared_channels():
    ts = TaskSet([image(), label()], aux_channels=0)  # the default window: lambda_t / sqrt(abar_t) peaks far above 1
    ratio = ts.peak_ratios()["label"]
    fp = ts.forward_process()
    assert ratio == pytest.approx(float((fp.lam[0, 1:] / fp.abar[1:].sqrt()).max()))
    assert ratio > 4
    strong = label(weights={"kind": "windowed", "peak": 2.0})
    with pytest.warns(UserWarning, match=r"modality 'label' reaches lambda_t / sqrt\(abar_t\) = 8.53 \(above 5\)"):
        TaskSet([image(), strong], aux_channels=0)
    bounded = label(weights={"kind": "ratio", "rho": 0.8})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TaskSet([image(), bounded], aux_channels=0).peak_ratios()["label"] == pytest.approx(0.8)
        TaskSet([image(), label()], aux_channels=0)  # the default window (4.27) does not warn
        TaskSet([image(), strong])  # in channels of its own (the default) the ratio is only reported


def test_default_noise_is_linear_1000():
    ts = TaskSet([image()])
    assert ts.noise == NoiseSchedule.linear(1000) and ts.aggregated == ()


def test_without_a_base_the_latent_shape_is_required_and_kept_in_the_config():
    with pytest.raises(ConfigError, match="latent_shape .* required because no modality has the role 'base'"):
        TaskSet([label()])
    ts = TaskSet([label()], latent_shape=(2, 4, 4))
    assert ts.base is None and ts.latent.shape == (2, 4, 4)
    assert ts.to_config()["latent_shape"] == [2, 4, 4]
    assert TaskSet.from_config(ts.to_config()) == ts


@pytest.mark.parametrize("bad", [(1, 8), (0, 8, 8), (1.0, 8, 8), "1,8,8", (True, 8, 8)])
def test_malformed_latent_shape(bad):
    with pytest.raises(ConfigError, match=r"three positive integers \[C, H, W\]"):
        TaskSet([label()], latent_shape=bad)


def test_latent_shape_matching_the_base_is_accepted_and_a_conflicting_one_is_an_error():
    assert TaskSet([image(), label()], latent_shape=(1, 8, 8)).base_latent.shape == (1, 8, 8)
    with pytest.raises(ConfigError, match=r"latent_shape \[1, 4, 4\] contradicts the base modality 'image'.*\[1, 8, 8\]"):
        TaskSet([image(), label()], latent_shape=(1, 4, 4))


def test_duplicate_names_two_bases_and_non_modalities_are_rejected():
    with pytest.raises(ConfigError, match=r"names must be unique; repeated: \['label'\]"):
        TaskSet([image(), label(), label()])
    with pytest.raises(ConfigError, match=r"at most one .* 'base', got \['image', 'other'\]"):
        TaskSet([image(), image(name="other")])
    with pytest.raises(ConfigError, match=r"modalities\[1\] must be a Modality instance, got dict"):
        TaskSet([image(), LABEL])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="at least one modality"):
        TaskSet([])


def test_an_invalid_weight_schedule_fails_at_construction_naming_the_modality():
    bad = label(name="digit", weights=ConstantWeight(1.0).to_config())
    with pytest.raises(ScheduleError, match=r"modality 'digit'.*lambda_T"):
        TaskSet([image(), bad])
    # the same schedule is fine when lambda_T stays within tolerance on a short schedule
    short = label(name="digit", weights=WindowedLambda(peak=2.0).to_config())
    assert TaskSet([image(), short], NoiseSchedule.cosine(10)).forward_process().lam[0, -1] == 0


def test_config_round_trips_through_json():
    ts = TaskSet([image(), label(weights=WindowedLambda(peak=2.0, center=0.5, end=0.95).to_config(), loss_weight=0.5)],
                 NoiseSchedule.cosine(200))
    config = json.loads(json.dumps(ts.to_config()))
    back = TaskSet.from_config(config, registry())
    assert back == ts
    assert back.to_config() == ts.to_config()
    assert back["label"].weights == ts["label"].weights and back["label"].loss_weight == 0.5
    assert back.noise == ts.noise
    assert "latent_shape" not in config  # inferred from the base, so not repeated


def test_config_round_trips_through_toml(tmp_path):
    ts = TaskSet([image(), label(class_names=[str(i) for i in range(10)])], NoiseSchedule.linear(100, 2e-4, 0.03))
    path = tmp_path / "taskset.toml"
    text = ts.to_toml(path)
    assert "[[modalities]]" in text and "[diffusion]" in text
    assert TaskSet.from_toml(path) == ts
    # a run config whose task set sits in a [taskset] table reads the same
    run = tmp_path / "run.toml"
    run.write_text(text.replace("[[modalities]]", "[[taskset.modalities]]").replace("[diffusion]", "[taskset.diffusion]"))
    assert TaskSet.from_toml(run) == ts


def test_custom_noise_schedule_round_trips_through_toml(tmp_path):
    ts = TaskSet([image()], NoiseSchedule.custom([0.1, 0.2, 0.3]))
    assert TaskSet.from_toml(_write(tmp_path, ts.to_toml())) == ts


def _write(tmp_path, text):
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


@settings(max_examples=15)
@given(peak=st.floats(0.1, 4.0), start=st.floats(0.0, 0.3), center=st.floats(0.35, 0.6), end=st.floats(0.65, 1.0),
       T=st.integers(25, 200), cosine=st.booleans(), loss_weight=st.floats(0.0, 5.0))
def test_round_trip_property(peak, start, center, end, T, cosine, loss_weight):
    noise = NoiseSchedule.cosine(T) if cosine else NoiseSchedule.linear(T)
    weights = WindowedLambda(peak=peak, start=start, center=center, end=end).to_config()
    ts = TaskSet([image(), label(weights=weights, loss_weight=loss_weight)], noise)
    assert TaskSet.from_config(json.loads(json.dumps(ts.to_config()))) == ts
    assert TaskSet.from_config(tomllib.loads(ts.to_toml())) == ts


def test_unknown_keys_suggest_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown key 'modalites' \(did you mean 'modalities'\?\)"):
        TaskSet.from_config({"modalites": [IMAGE]})
    with pytest.raises(ConfigError, match=r"unknown key diffusion.beta_strat \(did you mean 'beta_start'\?\)"):
        TaskSet.from_config({"modalities": [IMAGE], "diffusion": {"kind": "linear", "beta_strat": 1e-4}})
    with pytest.raises(ConfigError, match=r"diffusion.kind must be one of .* got 'cosin' \(did you mean 'cosine'\?\)"):
        TaskSet.from_config({"modalities": [IMAGE], "diffusion": {"kind": "cosin"}})
    with pytest.raises(ConfigError, match=r"modalities\[1\] \(kind 'label'\): .*unknown option 'num_clases'.*'num_classes'"):
        TaskSet.from_config({"modalities": [IMAGE, {"kind": "label", "num_clases": 3}]})


def test_malformed_modality_lists_name_the_index():
    with pytest.raises(ConfigError, match="missing key 'modalities'"):
        TaskSet.from_config({"diffusion": {"kind": "linear"}})
    with pytest.raises(ConfigError, match="'modalities' must be a list"):
        TaskSet.from_config({"modalities": IMAGE})
    with pytest.raises(ConfigError, match=r"modalities\[1\] has no 'kind'"):
        TaskSet.from_config({"modalities": [IMAGE, {"num_classes": 3}]})
    with pytest.raises(ConfigError, match=r"modalities\[0\] \(kind 'imag'\): unknown modality 'imag' \(did you mean 'image'\?\)"):
        TaskSet.from_config({"modalities": [{"kind": "imag"}]})
    with pytest.raises(ConfigError, match=r"modalities\[0\] .*role"):
        TaskSet.from_config({"modalities": [{"kind": "label", "role": "base"}]}).base


def test_from_config_builds_roles_and_accepts_ready_modalities():
    ts = TaskSet.from_config({"modalities": [image(), LABEL], "diffusion": {"kind": "cosine", "T": 10}})
    assert ts.base is not None and ts.base.role is Role.BASE and ts.noise == NoiseSchedule.cosine(10)


def test_toml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: taskset file not found"):
        TaskSet.from_toml(tmp_path / "missing.toml")
    bad = _write(tmp_path, "modalities = [\n")
    with pytest.raises(ConfigError, match=r"t\.toml: not valid TOML"):
        TaskSet.from_toml(bad)
    typo = _write(tmp_path, '[[modalities]]\nkind = "image"\nrole = "base"\n[difusion]\nkind = "linear"\n')
    with pytest.raises(ConfigError, match=r"t\.toml: taskset: unknown key 'difusion' \(did you mean 'diffusion'\?\)"):
        TaskSet.from_toml(typo)


def test_a_kind_sets_the_loss_weight_its_configs_get_and_an_explicit_one_wins():
    base = {"kind": "image", "channels": 1, "size": 8}
    default = TaskSet.from_config({"modalities": [base, {"kind": "label", "num_classes": 3},
                                                  {"kind": "masked_image", "channels": 1, "size": 8}]})
    assert default["label"].loss_weight == pytest.approx(0.1)
    assert default["masked_image"].loss_weight == pytest.approx(0.05)
    assert default["image"].loss_weight == 1.0  # the Modality default
    explicit = TaskSet.from_config({"modalities": [base, {"kind": "label", "num_classes": 3, "loss_weight": 1.0}]})
    assert explicit["label"].loss_weight == 1.0
    # the resolved weight is written out, so a saved config keeps it if the kind's default changes later
    again = TaskSet.from_config(json.loads(json.dumps(default.to_config())))
    assert [m["loss_weight"] for m in again.to_config()["modalities"]] == [1.0, 0.1, 0.05]
