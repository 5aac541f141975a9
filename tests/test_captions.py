"""The ``captions`` dataset transform (mtd_plugins/captions.py): the captions it writes, its option and data errors,
its registration as a built-in plugin, and a text task set trained through the config path with it (the text
modality itself makes no captions up)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from mtd_core.data.build import load_dataset, resolve_dataset_config
from mtd_core.data.transforms import build_transform
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.plugins.registry import Registry, get_registry
from mtd_core.training import RunConfig, Trainer, build_run
from mtd_plugins.captions import DIGIT_NAMES, CaptionsTransform, synthesise


def _images() -> torch.Tensor:
    img = torch.full((3, 1, 8, 8), -1.0)
    img[0, :, :, :4] = 1.0  # half the pixels, full intensity: bright, thick
    img[1, :, :1, :3] = 0.4  # 3 dim pixels: faint, thin
    img[2, :, :, :] = 0.9  # all ink, bright
    return img


def _kinds() -> dict[str, Any]:
    return get_registry().table("transform")


def test_captions_from_a_known_label_and_image() -> None:
    batch = {"label": torch.tensor([3, 7, 8]), "image": _images()}
    out = CaptionsTransform(nouns=DIGIT_NAMES)(batch)
    assert out["caption"] == ["a bright thick three", "a faint thin seven", "a bright thick eight"]
    assert out["label"] is batch["label"] and out["image"] is batch["image"] and "caption" not in batch
    into = CaptionsTransform(into="text", nouns=["boot", "shirt", "bag", "coat", "dress", "sandal", "sneaker",
                                                 "trouser", "eel", "top"])(batch)
    assert into["text"] == ["a bright thick coat", "a faint thin trouser", "a bright thick eel"]
    assert CaptionsTransform(image="", nouns=DIGIT_NAMES)(batch)["caption"] == ["a three", "a seven", "an eight"]
    assert CaptionsTransform(label="")(batch)["caption"] == ["a bright thick shape", "a faint thin shape",
                                                             "a bright thick shape"]


def test_registered_as_a_builtin_plugin_with_the_dataset_class_names_as_nouns() -> None:
    reg = Registry(entry_points=True)
    plugin = {(r.what, r.name): r.plugin for r in reg.records}
    assert plugin[("transform", "captions")] == plugin[("transform", "edges")]
    data = load_dataset({"name": "digits", "transforms": [{"kind": "captions", "into": "text"}]}, reg)
    assert data.transforms[0].nouns == tuple(data.info["class_names"]) == DIGIT_NAMES
    b = data.batch(data.splits.train, torch.arange(16))
    assert b["text"] == synthesise(DIGIT_NAMES, b["label"], b["image"])  # what the text modality used to write
    resolved = resolve_dataset_config({"name": "digits", "transforms": [{"kind": "captions", "into": "text"}]}, reg)
    assert resolved.transforms == [{"kind": "captions", "label": "label", "image": "image", "into": "text"}]
    given = CaptionsTransform(into="text", nouns=["a", "b"])
    assert build_transform(given.to_config(), reg.table("transform")) == given
    assert given.with_info({"class_names": ["x", "y"]}) == given  # its own nouns win


@pytest.mark.parametrize("options, match", [
    ({"nuons": ["a"]}, r"dataset.transforms \('captions'\): unknown option 'nuons' \(did you mean 'nouns'\?\)"),
    ({"nouns": []}, r"transform 'captions': nouns must be a non-empty list of non-empty strings.*got \[\]"),
    ({"nouns": "zero"}, r"transform 'captions': nouns must be a non-empty list.*got 'zero'"),
    ({"nouns": ["zero", ""]}, r"transform 'captions': nouns must be a non-empty list of non-empty strings"),
    ({"into": ""}, r"transform 'captions': into must be a field name, got ''"),
    ({"label": 3}, r"transform 'captions': label must be a field name, or \"\" to read none, got 3"),
    ({"label": "", "image": ""}, r"transform 'captions': label and image are both \"\""),
])
def test_invalid_options_name_the_transform_and_what_was_expected(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_transform({"kind": "captions", **options}, _kinds())


def test_missing_or_malformed_fields_name_the_transform_and_the_field() -> None:
    tf = CaptionsTransform(into="text", nouns=DIGIT_NAMES)
    labels, images = torch.tensor([3, 7, 8]), _images()
    with pytest.raises(ModalityDataError, match=r"transform 'captions': the batch has no field 'label' \(fields: "
                                                r"\['image'\]\); set the transform's 'label' \(\"\" to caption without"):
        tf({"image": images})
    with pytest.raises(ModalityDataError, match=r"transform 'captions': the batch has no field 'image'.*'image'"):
        tf({"label": labels})
    with pytest.raises(ModalityDataError, match=r"transform 'captions': field 'label' must be integer class "
                                                r"indices \(B,\), got torch.float32"):
        tf({"label": labels.float(), "image": images})
    with pytest.raises(ModalityDataError, match=r"transform 'captions': field 'image' must be float images"):
        tf({"label": labels, "image": images[:, 0]})
    with pytest.raises(ModalityDataError, match=r"transform 'captions': fields 'label' and 'image' hold 2 and 3"):
        tf({"label": labels[:2], "image": images})
    with pytest.raises(ModalityDataError, match=r"transform 'captions': field 'label': label 12 has no class name; "
                                                r"the names cover 0..9.*set the transform's 'nouns'"):
        tf({"label": torch.tensor([12, 1, 2]), "image": images})
    with pytest.raises(ConfigError, match=r"transform 'captions': field 'label' needs a noun per class.*no class_names"
                                          r".*set the transform's 'nouns'"):
        CaptionsTransform().with_info({"name": "npz"})({"label": labels, "image": images})


TINY: dict[str, Any] = {
    "dataset": {"name": "digits", "transforms": [{"kind": "captions", "into": "text"}]},
    "taskset": {"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                               {"kind": "text", "max_len": 10, "vocab_size": 48, "embed_dim": 8, "hidden": 16}],
                "diffusion": {"kind": "linear", "T": 50}},
    "backbone": {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4},
    "trainer": {"steps": 2, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 0, "log_every": 1,
                "sample_n": 0, "progress": False, "device": "cpu"},
}


def test_a_text_task_set_trains_through_the_config_with_the_transform(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(copy.deepcopy(TINY))
    run = build_run(cfg)
    text = run.model.taskset["text"]
    captions = run.data.batch(run.data.splits.train, torch.arange(8))["text"]
    assert captions[0] == "a faint thin zero"  # digits example 0, as the text modality synthesised it before
    assert text.detokenize(text.tokenize(captions)) == captions  # the tokenizer was fitted on the data's captions
    result = Trainer(run.model, run.data, cfg.trainer, tmp_path / "run", run_config=run.config.to_dict()).fit()
    assert result.status == "finished" and result.step == 2


def test_a_text_task_set_without_captions_or_the_transform_fails_with_the_fix() -> None:
    cfg = copy.deepcopy(TINY)
    cfg["dataset"] = {"name": "digits"}
    with pytest.raises(ModalityDataError, match=r"(?s)^modality 'text' \(text\): the batch has no captions under "
                                                r"'text' \(fields: \['image', 'label'\]\).*add \{kind = \"captions\", "
                                                r"into = \"text\"\} to \[dataset\] transforms"):
        build_run(RunConfig.from_dict(cfg))
