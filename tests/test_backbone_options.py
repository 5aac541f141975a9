"""The U-Net's option errors: each names the option at fault and what was expected, in one line."""

from __future__ import annotations

import math

import pytest

from mtd_core.backbones import UNetConfig, build_unet
from mtd_core.backbones.unet import AttentionBlock, level_heights
from mtd_core.errors import ConfigError
from mtd_core.model import MultiTaskModel
from mtd_core.modality import LatentSpec
from mtd_core.taskset import TaskSet

SMALL = dict(channels=8, num_res_blocks=1, groups=4, num_heads=2)


def _attention_blocks(**options: object) -> int:
    net = build_unet(LatentSpec((1, 28, 28)), **{**SMALL, **options})
    return sum(isinstance(m, AttentionBlock) for m in net.modules())


def test_level_heights_halve_rounding_up() -> None:
    assert level_heights(28, 4) == [28, 14, 7, 4]
    assert level_heights(8, 1) == [8]
    assert level_heights(1, 3) == [1, 1, 1]


@pytest.mark.parametrize("attn, message", [
    ([3], r"attention_resolutions = \[3\]: 3 is not the height of any level"),
    ([7, 2, 5], r"attention_resolutions = \[7, 2, 5\]: 2, 5 are not heights of any level"),
    ([4], r"4 is not the height"),  # a downsampling factor of 28 -> 7, not a height
])
def test_an_attention_resolution_matching_no_level_is_an_error(attn: list[int], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        _attention_blocks(channel_mult=[1, 2, 2], attention_resolutions=attn)
    text = str(e.value)
    assert "\n" not in text
    assert "feature-map heights in pixels (not downsampling factors)" in text
    assert text.endswith("on this 28x28 latent with channel_mult = [1, 2, 2] the levels have heights [28, 14, 7]")


def test_every_level_height_is_accepted_and_adds_attention() -> None:
    # one level, num_res_blocks = 1: one block down, two up, plus the middle one
    assert _attention_blocks(channel_mult=[1, 2, 2], attention_resolutions=[7]) == 1 + 2 + 1
    assert _attention_blocks(channel_mult=[1, 2, 2], attention_resolutions=[28, 14, 7]) == 3 * 3 + 1
    assert _attention_blocks(channel_mult=[1, 2, 2], attention_resolutions=[], mid_attention=False) == 0


@pytest.mark.parametrize("options, message", [
    ({"channel_mult": 2}, r"channel_mult must be a list of integers, got 2"),
    ({"channel_mult": "12"}, r"channel_mult must be a list of integers, got '12'"),
    ({"attention_resolutions": 4}, r"attention_resolutions must be a list of integers, got 4"),
    ({"attention_resolutions": ["a"]}, r"every attention_resolutions entry must be a positive integer, got 'a'"),
    ({"mid_attention": "abc"}, r"mid_attention must be true or false, got 'abc'"),
    ({"mid_attention": 1}, r"mid_attention must be true or false, got 1"),
    ({"dropout": "abc"}, r"dropout must be a number in \[0, 1\), got 'abc'"),
    ({"dropout": True}, r"dropout must be a number in \[0, 1\), got True"),
    ({"dropout": None}, r"dropout must be a number in \[0, 1\), got None"),
    ({"dropout": math.nan}, r"dropout must be a number in \[0, 1\), got nan"),
    ({"max_period": "abc"}, r"max_period must be a finite number > 1, got 'abc'"),
    ({"max_period": False}, r"max_period must be a finite number > 1, got False"),
    ({"max_period": math.inf}, r"max_period must be a finite number > 1, got inf"),
    ({"max_period": 1}, r"max_period must be a finite number > 1, got 1"),
])
def test_option_errors_name_the_option(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^backbone 'unet': " + message + "$"):
        build_unet(LatentSpec((1, 8, 8)), **{**SMALL, "channel_mult": [1, 2], **options})


def test_numbers_of_either_kind_are_accepted() -> None:
    cfg = UNetConfig(**SMALL, dropout=0, max_period=100)
    assert cfg.dropout == 0 and cfg.max_period == 100


def test_the_parameter_limit_names_time_embed_dim_when_it_is_the_cause() -> None:
    with pytest.raises(ConfigError, match=r"lower time_embed_dim \(its MLP alone is about 1e\+12 of them\)$"):
        UNetConfig(**SMALL, time_embed_dim=10**6)
    with pytest.raises(ConfigError, match=r"lower channels, channel_mult or num_res_blocks$"):
        UNetConfig(channels=100_000, groups=4)


def test_the_divisibility_error_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"e\.g\. groups = 4$") as e:
        build_unet(LatentSpec((1, 8, 8)), channels=12, groups=8)
    assert "\n" not in str(e.value)


def test_multi_task_model_passes_the_option_errors_on() -> None:
    taskset = TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "size": 8},
                                                  {"kind": "label", "num_classes": 3}]})
    with pytest.raises(ConfigError, match=r"mid_attention must be true or false, got 'abc'"):
        MultiTaskModel(taskset, "unet", {**SMALL, "channel_mult": [1, 2], "mid_attention": "abc"})
    with pytest.raises(ConfigError, match=r"attention_resolutions = \[3\]: 3 is not the height .* heights \[8, 4\]"):
        MultiTaskModel(taskset, "unet", {**SMALL, "channel_mult": [1, 2], "attention_resolutions": [3]})
