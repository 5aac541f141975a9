"""What a plugin returns is checked where it is used (mtd_core/outputs.py): a wrong shape or dtype of an encoding, a
head's prediction, a predicted encoding or a per-example loss is an error naming the modality, its kind, the plugin
and its distribution, what was expected and what came back."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mtd_core.errors import ModalityDataError
from mtd_core.model import MultiTaskModel
from mtd_core.outputs import provenance
from mtd_core.taskset import TaskSet
from mtd_plugins.label import LabelModality

UNET = dict(channels=16, channel_mult=[1], num_res_blocks=1, attention_resolutions=[], groups=8, num_heads=2)
CONFIG = {"modalities": [{"kind": "image", "role": "base", "size": 8}, {"kind": "label", "num_classes": 10, "hidden": 16}],
          "diffusion": {"kind": "linear", "T": 50}}
NAMED = ("modality 'label'", "kind 'label'", "plugin 'mtd-label'", "distribution mtd")


def make_model() -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(TaskSet.from_config(CONFIG), "unet", UNET)


def batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, "label": torch.randint(0, 10, (n,), generator=g)}


def raises_naming(*parts: str) -> pytest.RaisesContext[ModalityDataError]:
    return pytest.raises(ModalityDataError, match=".*".join(map(re.escape, parts)))


def test_a_loss_of_shape_b_1_stops_training_instead_of_broadcasting() -> None:
    model = make_model()
    label = model.taskset["label"]
    right = label.loss
    label.loss = lambda pred, x: right(pred, x)[:, None]  # type: ignore[method-assign]
    with raises_naming(*NAMED, "Modality.loss returned shape (4, 1); expected (4,)"):
        model.loss(batch())
    label.loss = right  # type: ignore[method-assign]
    assert model.loss(batch()).loss.ndim == 0  # the same model trains once the loss is right


def test_an_encoder_returning_float64_names_the_modality_not_a_torch_dtype_clash() -> None:
    model = make_model()
    label = model.taskset["label"]
    right = label.encode
    label.encode = lambda enc, x: right(enc, x).double()  # type: ignore[method-assign]
    with raises_naming(*NAMED, "its encoder returned dtype float64; expected float32"):
        model.loss(batch())


def test_an_encoder_returning_the_wrong_batch_size_is_refused() -> None:
    model = make_model()
    label = model.taskset["label"]
    right = label.encode
    label.encode = lambda enc, x: right(enc, x)[:2]  # type: ignore[method-assign]
    with raises_naming(*NAMED, "its encoder returned shape (2, 1, 8, 8); expected (B, 1, 8, 8) with B = 4"):
        model.eval().encode(batch())


class _Dropping(nn.Module):
    """A head that loses the batch dimension of its input (a plugin bug)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).mean(0)


def test_a_head_that_drops_the_batch_dimension_is_refused() -> None:
    model = make_model()
    model.heads["label"] = _Dropping(model.heads["label"])
    with raises_naming(*NAMED, "its head returned a tensor of shape (10,); expected its first dimension to be the "
                                "batch's, 4"):
        model.loss(batch())


def test_a_predicted_encoding_of_the_wrong_shape_is_refused() -> None:
    model = make_model().eval()
    label = model.taskset["label"]
    label.predicted_encoding = lambda enc, pred: torch.zeros(len(pred), 3, 8, 8)  # type: ignore[method-assign]
    preds = {"label": torch.zeros(4, 10)}
    with raises_naming(*NAMED, "its predicted_encoding returned shape (4, 3, 8, 8); expected (B, 1, 8, 8)"):
        model.predicted_encodings(preds)


def test_bf16_autocast_encodings_pass_and_an_integer_loss_is_refused() -> None:
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model.loss(batch()).loss)
    model.taskset["label"].loss = lambda pred, x: x  # type: ignore[method-assign]  # the labels themselves
    with raises_naming(*NAMED, "Modality.loss returned dtype int64; expected a floating-point tensor"):
        model.loss(batch())


def test_a_modality_class_outside_the_registry_is_named_by_its_class() -> None:
    class Mine(LabelModality):
        pass

    m = Mine(name="mine", num_classes=3)
    assert provenance(m) == (f"modality 'mine' (kind 'label', class {__name__}."
                             "test_a_modality_class_outside_the_registry_is_named_by_its_class.<locals>.Mine, "
                             "not from an installed plugin)")
