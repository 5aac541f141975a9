"""mtd-example-plugin: an example third-party mtd plugin providing the ``brightness`` modality.

This module is the plugin: the entry point ``mtd-example-brightness = "mtd_example_plugin"`` in the group ``mtd``
points here, and the registry calls the hooks below once when it loads. Keep plugin modules cheap to import (no
model building, no downloads): ``mtd plugins list`` imports every installed plugin.
"""

from __future__ import annotations

from mtd_core.modality import Modality
from mtd_core.plugins import hookimpl

from mtd_example_plugin.brightness import BrightnessConfig, BrightnessModality

__version__ = "0.1.0"


@hookimpl
def mtd_register_modalities() -> list[type[Modality]]:
    """The modalities this plugin provides: ``brightness``."""
    return [BrightnessModality]


__all__ = ["BrightnessConfig", "BrightnessModality", "mtd_register_modalities"]
