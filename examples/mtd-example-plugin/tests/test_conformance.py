"""The brightness modality passes mtd's conformance kit (every test below is inherited from ModalityConformance)."""

from __future__ import annotations

import torch

from mtd_core.modality import Modality
from mtd_core.plugins.conformance import ModalityConformance
from mtd_example_plugin import BrightnessModality


class TestBrightnessConformance(ModalityConformance):
    modality_class = BrightnessModality
    options = {"sigma": 0.1, "hidden": 16}

    def derive_batch(self, modality: Modality, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """derive() reads the base image, here a random (n, 1, 8, 8) batch in [-1, 1]."""
        return {"image": torch.rand(n, 1, 8, 8, generator=generator) * 2 - 1}
