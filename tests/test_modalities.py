"""Every built-in modality passes the conformance kit, through the class a third party would use.

Modality-specific behaviour lives in tests/test_modality_*.py.
"""

from __future__ import annotations

from typing import Any

import torch

from mtd_core.modality import Modality
from mtd_core.plugins.conformance import ModalityConformance
from mtd_plugins.image import ImageModality
from mtd_plugins.label import LabelModality
from mtd_plugins.masked_image import MaskedImageModality
from mtd_plugins.representation import RepresentationModality
from mtd_plugins.text import TextModality


def _images(n: int, generator: torch.Generator, channels: int = 1, size: int = 8) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=generator) * 2 - 1


class TestImage(ModalityConformance):
    modality_class = ImageModality


class TestImageRGBResized(ModalityConformance):
    """An aggregated RGB image of another size than the latent: the learned resize + 1x1 conv encoder."""

    modality_class = ImageModality
    options = {"role": "aggregated", "channels": 3, "size": 12, "name": "target"}


class TestLabel(ModalityConformance):
    modality_class = LabelModality
    options = {"num_classes": 7, "name": "digit"}


class TestMaskedImage(ModalityConformance):
    modality_class = MaskedImageModality

    def derive_batch(self, modality: Modality, n: int, generator: torch.Generator) -> dict[str, Any]:
        return {"image": _images(n, generator)}


class TestMaskedImagePixels(ModalityConformance):
    modality_class = MaskedImageModality
    options = {"mask": "pixel", "ratio": 0.25, "fill": -1.0, "size": 6, "source": "photo"}

    def derive_batch(self, modality: Modality, n: int, generator: torch.Generator) -> dict[str, Any]:
        return {"photo": _images(n, generator, size=6)}


class TestRepresentation(ModalityConformance):
    modality_class = RepresentationModality
    options = {"builtin_extractor": "random_conv", "dim": 8}

    def derive_batch(self, modality: Modality, n: int, generator: torch.Generator) -> dict[str, Any]:
        return {"image": _images(n, generator)}


class TestRepresentationMapHead(TestRepresentation):  # derive_batch inherited (it derives nothing without an extractor)
    options = {"head": "map", "dim": 6}


class TestRepresentationCosine(TestRepresentation):
    options = {"loss": "cosine"}


class TestText(ModalityConformance):
    modality_class = TextModality
    options = {"max_len": 10, "vocab_size": 48}

    def derive_batch(self, modality: Modality, n: int, generator: torch.Generator) -> dict[str, Any]:
        captions = ["a bright thick three", "a faint thin seven", "an eight", "a bright thin shape"]
        pick = torch.randint(len(captions), (n,), generator=generator).tolist()
        return {"text": [captions[i] for i in pick]}  # raw captions (the captions transform's output), tokenised


class TestTextMapHead(TestText):
    options = {"max_len": 10, "vocab_size": 48, "head": "map"}
