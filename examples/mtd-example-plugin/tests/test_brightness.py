"""What is specific to brightness: the derived value, the likelihood, and registration through mtd's fixtures."""

from __future__ import annotations

import math

import pytest
import torch

import mtd_example_plugin
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.plugins.registry import Registry
from mtd_example_plugin import BrightnessModality


def test_derive_is_the_mean_intensity_of_the_source_image() -> None:
    image = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 0.5)])
    image[1, 0, 0, :2] = -1.0  # 2 of 16 pixels dark: mean = (14 * 0.5 - 2) / 16
    m = BrightnessModality(source="photo")
    assert torch.allclose(m.derive({"photo": image}), torch.tensor([-1.0, (14 * 0.5 - 2) / 16]))
    with pytest.raises(ModalityDataError, match="'photo', which the batch does not hold"):
        m.derive({"image": image})


def test_loss_is_the_gaussian_nll_and_smallest_at_the_truth() -> None:
    m = BrightnessModality(sigma=0.2)
    x = torch.tensor([0.3, -0.4])
    nll = m.loss(x.clone(), x)
    assert torch.allclose(nll, torch.full((2,), math.log(0.2) + 0.5 * math.log(2 * math.pi)))
    assert (m.loss(x + 0.1, x) > nll).all()


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="sigma"):
        BrightnessModality(sigma=0.0)
    with pytest.raises(ConfigError, match="did you mean 'sigma'"):
        BrightnessModality(sigmas=0.1)


def test_registered_explicitly(mtd_registry: Registry) -> None:
    """The `mtd_registry` fixture (from mtd's pytest plugin) is empty until the test registers the plugin."""
    assert mtd_registry.modality_kinds() == []
    mtd_registry.register(mtd_example_plugin, name="brightness-plugin")
    m = mtd_registry.build_modality({"kind": "brightness", "name": "light", "sigma": 0.1})
    assert isinstance(m, BrightnessModality) and m.name == "light"
    assert mtd_registry.build_modality(m.to_config()) == m


def test_found_through_the_installed_entry_point(mtd_registry_builtin: Registry) -> None:
    """Installed (pip install .), the plugin is found through its entry point next to mtd's built-ins."""
    assert mtd_registry_builtin.modality_class("brightness") is BrightnessModality
    [record] = [r for r in mtd_registry_builtin.records if r.name == "brightness"]
    assert (record.plugin, record.distribution, record.status) == ("mtd-example-brightness", "mtd-example-plugin", "ok")
