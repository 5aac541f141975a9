"""The measured design is what a minimal config gets: the kinds' declared designs (Modality.design) resolve every
option a config or a Python composition leaves out, the experiments train exactly that, saved configs keep what
they pinned, and retired options say what replaced them."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mtd_core.design import Design
from mtd_core.errors import ConfigError
from mtd_core.model import MultiTaskModel
from mtd_core.sampling import generate
from mtd_core.taskset import TaskSet
from mtd_core.taskset_options import RetiredOptionWarning, saved_taskset_config
from mtd_core.training.config import read_config, resolve_config
from mtd_plugins.image import ImageModality
from mtd_plugins.label import LabelModality

ROOT = Path(__file__).resolve().parents[1]
IMAGE = {"kind": "image", "role": "base", "size": 28}
LABEL = {"kind": "label", "num_classes": 10}
MEASURED_LABEL_DESIGN = {"aux_channels": 1, "aux_eps": "heads", "known_input": True, "known_dropout": 0.1,
                         "encoding_scale": "rms"}


def options(config: dict) -> dict:
    """The task-set options of a config (everything but the modalities and the schedule)."""
    return {k: v for k, v in config.items() if k not in ("modalities", "diffusion")}


def test_the_issue_s_minimal_config_builds_the_measured_image_label_design():
    ts = TaskSet.from_config({"modalities": [IMAGE, LABEL]})
    config = ts.to_config()
    assert options(config) == MEASURED_LABEL_DESIGN
    label = config["modalities"][1]
    assert (label["head_grad"], label["loss_weight"], label["train_encoder"]) == (0.1, 0.1, True)
    assert label["weights"]["kind"] == "windowed"
    assert ts.latent.shape == (2, 28, 28)  # the label on a channel of its own


def test_a_python_composition_gets_the_same_design_as_the_config():
    composed = TaskSet([ImageModality(role="base", size=28), LabelModality(num_classes=10)])
    assert composed == TaskSet.from_config({"modalities": [IMAGE, LABEL]})


def test_a_given_label_is_guided_by_its_kind_s_scale_and_joint_generation_is_not():
    torch.manual_seed(0)
    ts = TaskSet.from_config({"modalities": [{**IMAGE, "size": 8}, LABEL], "diffusion": {"T": 50}})
    model = MultiTaskModel(ts, "unet", {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "groups": 4,
                                        "mid_attention": False})
    g = torch.Generator().manual_seed(0)
    given = generate(model, given={"label": torch.tensor([1, 2])}, nfe=4, generator=g, progress=False)
    joint = generate(model, n=2, nfe=4, generator=g, progress=False)
    assert given.cfg_scale == LabelModality.design.cfg_scale == 1.5
    assert joint.cfg_scale == 1.0


def _experiment_tasksets() -> dict[str, tuple[dict, list[dict]]]:
    """Each experiment's resolved task set (cpu preset) and its minimal config written here from the data alone."""
    from experiments import (common, image_caption, image_label, image_representation, image_transition,
                             masked_image)
    from experiments.presets import get_preset

    p = get_preset("cpu")
    image = {"kind": "image", "role": "base", "channels": 1, "size": 28}
    built = {
        "image_label": ([image_label.label_modality()], (), [LABEL]),
        "image_caption": ([image_caption.text_modality(p)], [image_caption.captions_transform(p)],
                          [{"kind": "text", "max_len": 12, "vocab_size": 64}]),
        "image_representation": ([image_representation.representation_modality()], (),
                                 [{"kind": "representation", "dim": 16, "source": "image",
                                   "builtin_extractor": "random_conv", "seed": 0}]),
        "masked_image": ([masked_image.masked_modality(p)], (),
                         [{"kind": "masked_image", "channels": 1, "size": 28, "ratio": 0.5, "mask": "patch",
                           "patch": 4, "source": "image"}]),
        "image_transition": ([image_transition.edges_modality(p)], [image_transition.EDGES],
                             [{"kind": "image", "name": "edges", "role": "aggregated", "channels": 1, "size": 28}]),
    }
    out = {}
    for name, (mods, transforms, minimal) in built.items():
        run = resolve_config(common.run_config(p, [common.image_modality(p), *mods], 0, transforms))
        out[name] = (run.taskset, [image, *minimal])
    return out


@pytest.mark.parametrize("experiment", ["image_label", "image_caption", "image_representation", "masked_image",
                                        "image_transition"])
def test_each_experiment_trains_the_design_its_minimal_config_resolves_to(experiment):
    resolved, minimal = _experiment_tasksets()[experiment]
    assert TaskSet.from_config(resolved) == TaskSet.from_config({"modalities": minimal})
    assert resolved["aux_channels"] == 1 and resolved["aux_eps"] == "heads"


def test_the_kinds_declare_what_was_measured_for_them():
    from mtd_plugins.representation import RepresentationModality
    from mtd_plugins.text import TextModality

    text = TextModality(max_len=12, vocab_size=64)
    rep = RepresentationModality(dim=16, builtin_extractor="random_conv")
    assert (text.head_grad, text.train_encoder) == (0.01, False)
    assert (rep.head_grad, rep.config.head, rep.loss_weight) == (0.0, "map", 0.1)
    assert ImageModality(role="aggregated", size=8).loss_weight == 0.05
    assert ImageModality(role="base", size=8).loss_weight == 1.0
    ts = TaskSet([ImageModality(role="base", size=8), text, LabelModality(num_classes=3)])
    assert ts.encoding_scales == {"text": "spread", "label": "rms"}
    assert ts.known_input  # the label asks to be told
    assert ts.to_config()["encoding_scale"] == {"text": "spread", "label": "rms"}
    assert TaskSet.from_config(ts.to_config()) == ts


def test_explicit_options_override_the_kinds():
    ts = TaskSet.from_config({"modalities": [IMAGE, {**LABEL, "head_grad": 1.0}], "aux_channels": 0,
                              "known_input": False, "encoding_scale": "spread"})
    assert options(ts.to_config()) == {"aux_channels": 0, "known_input": False, "encoding_scale": "spread"}
    assert ts["label"].head_grad == 1.0


@pytest.mark.parametrize("bad, message", [
    ({"head_grad": 2.0}, "head_grad must be a number in [0, 1]"),
    ({"own_channels": -1}, "own_channels must be an integer >= 0"),
    ({"encoding_scale": "norm"}, "encoding_scale must be one of"),
    ({"cfg_scale": 0.5}, "cfg_scale must be a finite number >= 1"),
])
def test_a_plugin_s_invalid_design_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Design(**bad)


def test_an_encoding_scale_table_must_name_aggregated_modalities():
    with pytest.raises(ConfigError, match="names 'caption', which is no aggregated modality"):
        TaskSet.from_config({"modalities": [IMAGE, LABEL], "encoding_scale": {"caption": "spread"}})


def test_the_retired_aux_eps_is_replaced_with_a_message_naming_what_replaced_it():
    config = {"modalities": [IMAGE, LABEL], "aux_eps": "network"}
    with pytest.warns(RetiredOptionWarning, match='aux_eps = "network" is retired.*using aux_eps = "heads"'):
        ts = TaskSet.from_config(config)
    assert ts.aux_eps == "heads"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TaskSet.from_config(config, saved=True).aux_eps == "network"  # a saved run keeps what it pinned


def test_a_config_saved_before_the_designs_loads_with_the_defaults_of_its_time():
    legacy = {"modalities": [{"kind": "image", "role": "base", "size": 8},
                             {"kind": "label", "num_classes": 10, "loss_weight": 0.1}],
              "diffusion": {"kind": "linear", "T": 100}, "aux_channels": 0}
    ts = TaskSet.from_config(legacy, saved=True)
    assert (ts.aux_channels, ts.known_input, ts["label"].head_grad, ts.encoding_scales["label"]) == (0, False, 1.0,
                                                                                                    "rms")
    own = TaskSet.from_config({**legacy, "aux_channels": 1}, saved=True)
    assert own.aux_eps == "network"
    new = TaskSet.from_config({"modalities": [IMAGE, LABEL]}).to_config()
    assert saved_taskset_config(new) == new  # what is written today is already explicit


def test_a_legacy_checkpoint_loads_and_samples_with_its_pinned_design(tmp_path):
    from mtd_core.training import load_run
    from mtd_core.training.checkpoint import Checkpoint, save_checkpoint

    legacy = {"modalities": [{"kind": "image", "role": "base", "size": 8},
                             {"kind": "label", "num_classes": 10, "loss_weight": 0.1}],
              "diffusion": {"kind": "linear", "T": 50}, "aux_channels": 0}
    unet = {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "groups": 4, "mid_attention": False}
    model = MultiTaskModel(TaskSet.from_config(legacy, saved=True), "unet", unet)
    config = {"model": {"taskset": legacy, "backbone": "unet", "backbone_options": unet}}
    save_checkpoint(tmp_path / "checkpoints", Checkpoint(step=1, model=model.state_dict(), config=config))
    loaded = load_run(tmp_path).model
    assert loaded.taskset.aux_channels == 0 and not loaded.taskset.known_input
    assert loaded.taskset["label"].head_grad == 1.0


@pytest.mark.parametrize("name", ["image_label", "image_caption", "image_representation", "image_transition",
                                  "masked_image"])
def test_the_example_configs_state_no_design_option_and_resolve_to_the_measured_one(name):
    path = ROOT / "examples" / "configs" / f"{name}.toml"
    text = path.read_text(encoding="utf-8")
    for key in ("aux_channels =", "aux_eps =", "known_input =", "head_grad =", "encoding_scale ="):
        assert key not in text, f"{path.name} sets {key.rstrip(' =')}, which its kinds declare"
    resolved = resolve_config(read_config(path)).taskset
    assert resolved["aux_channels"] == 1 and resolved["aux_eps"] == "heads"


def test_config_show_prints_every_resolved_option():
    out = subprocess.run([sys.executable, "-m", "mtd_core.cli", "config", "show", "--json",
                          str(ROOT / "examples" / "configs" / "image_label.toml")],
                         capture_output=True, text=True, check=True).stdout
    taskset = json.loads(out)["taskset"]
    for key in ("aux_channels", "aux_eps", "known_input", "known_dropout", "encoding_scale"):
        assert key in taskset
    label = taskset["modalities"][1]
    assert label["head_grad"] == 0.1 and label["train_encoder"] is True


def test_a_modality_weighted_zero_claims_no_channel_and_is_not_told():
    """A noise-aware classifier's label (weights zero: it never reaches z_t) leaves the design's channel and known
    input out, as examples/configs/label_classifier.toml relies on."""
    ts = TaskSet.from_config({"modalities": [{**IMAGE, "loss_weight": 0.0}, {**LABEL, "weights": {"kind": "zero"}}]})
    assert (ts.aux_channels, ts.known_input) == (0, False)
