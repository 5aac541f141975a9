"""The label modality: expected-embedding predicted encoding, categorical loss and sampling, options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.modality import FeatureSpec, LatentSpec
from mtd_plugins.label import LabelModality

LATENT = LatentSpec((2, 4, 4))


@pytest.fixture
def built() -> tuple[LabelModality, torch.nn.Module]:
    torch.manual_seed(0)
    m = LabelModality(num_classes=5)
    return m, m.build_encoder(LATENT)


def test_one_hot_logits_give_exactly_the_class_encoding(built: tuple) -> None:
    m, enc = built
    y = torch.tensor([0, 3, 4, 3])
    logits = 1e4 * F.one_hot(y, 5).float()  # softmax is exactly one-hot in float32
    assert torch.equal(m.predicted_encoding(enc, logits), m.encode(enc, y))


def test_predicted_encoding_is_probability_weighted_embedding(built: tuple) -> None:
    m, enc = built
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    probs = logits.softmax(1)
    per_class = [m.encode(enc, torch.full((3,), k)) for k in range(5)]  # RMS-normalised E(k)
    expected = sum(probs[:, k].reshape(3, 1, 1, 1) * per_class[k] for k in range(5))
    torch.testing.assert_close(m.predicted_encoding(enc, logits), expected)


def test_a_low_temperature_commits_the_predicted_encoding_to_the_most_probable_class(built: tuple) -> None:
    m, enc = built
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(m.predicted_encoding(enc, m.temper(logits, 1.0)), m.predicted_encoding(enc, logits))
    torch.testing.assert_close(m.predicted_encoding(enc, m.temper(logits, 1e-4)), m.encode(enc, logits.argmax(1)))
    sharp = m.temper(logits, 0.5).softmax(1)
    assert torch.all(sharp.max(1).values > logits.softmax(1).max(1).values)  # sharper, same mode
    assert torch.equal(sharp.argmax(1), logits.argmax(1))


def test_loss_is_cross_entropy_per_example(built: tuple) -> None:
    m, _ = built
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 0, 4, 2])
    ref = torch.logsumexp(logits, 1) - logits[torch.arange(4), y]
    torch.testing.assert_close(m.loss(logits, y), ref)


def test_sampling_greedy_and_categorical(built: tuple) -> None:
    m, _ = built
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4, 1e-9]])).expand(20000, 5)
    assert torch.equal(m.sample(logits, greedy=True), torch.full((20000,), 3))
    draws = m.sample(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0]), atol=0.015, rtol=0)
    assert torch.equal(draws, m.sample(logits, generator=torch.Generator().manual_seed(0)))


def test_head_reads_pooled_features(built: tuple) -> None:
    m, _ = built
    head = m.build_head(LATENT, FeatureSpec(pooled_dim=6, map_channels=3))
    assert head(torch.randn(2, 6)).shape == (2, 5)
    with pytest.raises(ModalityDataError, match=r"'label'.*\(B, 5\)"):
        m.loss(torch.randn(2, 4), torch.tensor([0, 1]))


def test_out_of_range_labels_name_the_modality() -> None:
    m = LabelModality(name="digit", num_classes=10)
    with pytest.raises(ModalityDataError, match=r"'digit'.*\[0, 9\].*10"):
        m.validate(torch.tensor([3, 10]))


def test_class_names_round_trip_and_must_match_num_classes() -> None:
    m = LabelModality(num_classes=3, class_names=["cat", "dog", "cow"])
    assert m.class_names() == ["cat", "dog", "cow"]
    assert m.describe(torch.tensor(1)) == "dog" and m.describe(torch.tensor(1), ["a", "b", "c"]) == "b"
    assert m.parse("0, Cow,dog").tolist() == [0, 2, 1]
    assert m.to_config()["class_names"] == ["cat", "dog", "cow"]
    assert LabelModality.from_config(m.to_config()) == m
    assert LabelModality(num_classes=2).class_names() is None and LabelModality(num_classes=2).describe(
        torch.tensor(1)) == "1"
    with pytest.raises(ModalityDataError, match="3: class index out of range; modality 'label' has classes 0..2"):
        m.parse("3")
    with pytest.raises(ModalityDataError, match="did you mean 'cow'"):
        m.parse("cwo")
    with pytest.raises(ConfigError, match="class_names has 2 entries, expected num_classes = 3"):
        LabelModality(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ConfigError, match="list of non-empty strings"):
        LabelModality(num_classes=1, class_names="a")
