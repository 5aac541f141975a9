"""A plugin's modality with a kind of its own is a first-class citizen through the contract alone: its values appear in
grids and in `mtd sample`, are parsed from `--given`, steer generation by guidance and are scored by `mtd eval`."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtd_core.cli.eval import evaluate_readout
from mtd_core.cli.sample import parse_given, to_npz_arrays
from mtd_core.data.build import LoadedData
from mtd_core.data.splits import ArrayDataset, DatasetSplits
from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.errors import ModalityDataError
from mtd_core.model import MultiTaskModel
from mtd_core.modality import DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, NoOptions, Role
from mtd_core.plugins.validate import validate_modality
from mtd_core.sampling import GuidanceConfig, generate
from mtd_core.taskset import TaskSet
from mtd_core.training.grids import sample_cells
from mtd_plugins.image import ImageModality

UNET = dict(channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], groups=4)


class Attributes(Modality):
    """Four binary attributes per example: a multi-label modality written as a third-party plugin would."""

    kind = "attributes_toy"
    roles = (Role.AGGREGATED,)
    head_input = HeadInput.POOLED
    Config = NoOptions

    def data_spec(self) -> DataSpec:
        return DataSpec((4,), "int64", 0, 1)

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        return nn.Sequential(nn.Linear(4, latent.numel), nn.Unflatten(1, latent.shape))

    def encode(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return encoder(x.float())

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        return nn.Linear(features.pooled_dim, 4)

    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(pred, x.float(), reduction="none").sum(1)

    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        p = torch.sigmoid(pred.detach())
        return (p > 0.5).long() if greedy else torch.bernoulli(p, generator=generator).long()


def _model() -> MultiTaskModel:
    torch.manual_seed(0)
    ts = TaskSet([ImageModality(role="base", size=8), Attributes(name="attributes")], NoiseSchedule.linear(T=50))
    model = MultiTaskModel(ts, "unet", UNET)
    with torch.no_grad():  # randomise the zero-initialised output layers, so eps and the head vary with z_t
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model.eval()


def test_the_toy_plugin_passes_validation() -> None:
    report = validate_modality(Attributes)
    assert report.ok, report.problems


def test_default_describe_and_parse_of_a_vector() -> None:
    m = Attributes(name="attributes")
    assert m.describe(torch.tensor([0, 1, 1, 0])) == "0 1 1 0"
    assert m.parse("0,1 1, 0").tolist() == [[0, 1, 1, 0]]
    with pytest.raises(ModalityDataError, match="modality 'attributes' .* takes 4 values, got 2"):
        m.parse("0,1")
    with pytest.raises(ModalityDataError, match="takes 4 int64 numbers separated by commas or spaces"):
        m.parse("yes,no,no,yes")
    class Light(Attributes):
        def data_spec(self) -> DataSpec:
            return DataSpec((), "float32", -1.0, 1.0)

    b = Light(name="light")
    assert b.parse("0.25,-0.5").tolist() == [0.25, -0.5] and b.describe(torch.tensor(0.25)) == "0.25"
    with pytest.raises(ModalityDataError, match="'light' .* takes numbers separated by commas"):
        b.parse("bright")


def test_its_values_appear_in_grids_and_in_the_samples_file() -> None:
    model = _model()
    samples = {"image": torch.zeros(2, 1, 8, 8), "attributes": torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])}
    cells = sample_cells(model.taskset, samples)
    assert [c.caption for c in cells] == ["0 1 1 0", "1 1 1 1"]
    assert to_npz_arrays(model.taskset, samples)["attributes_text"].tolist() == ["0 1 1 0", "1 1 1 1"]


def test_given_on_the_command_line_guided_and_scored() -> None:
    model = _model()
    given, total, rows = parse_given(model, ["attributes=1,0,0,1"], n=3)
    assert total == 3 and rows is None and given["attributes"].tolist() == [[1, 0, 0, 1]] * 3

    def images(guidance: GuidanceConfig | None) -> torch.Tensor:
        out = generate(model, given=given, guidance=guidance, steps=3, generator=torch.Generator().manual_seed(0),
                       progress=False)
        return out.samples["image"]

    plain, guided = images(None), images(GuidanceConfig("attributes", given["attributes"], scale=5.0))
    assert guided.shape == (3, 1, 8, 8) and torch.isfinite(guided).all()
    assert not torch.equal(plain, guided)  # its head's log-likelihood steered the images

    x = torch.rand(6, 1, 8, 8) * 2 - 1
    attrs_ = torch.randint(0, 2, (6, 4))
    split = ArrayDataset({"image": x, "attributes": attrs_}, "toy")
    scores = evaluate_readout(model, LoadedData(splits=DatasetSplits(split, split)), n=0, batch_size=4, seed=0)
    assert set(scores["attributes"]) == {"accuracy", "element_accuracy", "n_examples"}
    assert scores["attributes"]["n_examples"] == 6 and 0 <= scores["attributes"]["element_accuracy"] <= 1
