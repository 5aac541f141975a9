"""The representation modality: user and built-in extractors, Gaussian and cosine losses."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.modality import FeatureSpec, HeadInput, LatentSpec
from mtd_plugins.representation import RepresentationModality


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_user_callable_extractor_feeds_derive() -> None:
    m = RepresentationModality(dim=4, extractor=lambda x: x.flatten(1)[:, :4] * 2)
    x = images(3)
    r = m.derive({"image": x})
    assert torch.equal(r, x.flatten(1)[:, :4] * 2)
    m.validate(r)


def test_user_module_extractor_is_frozen_and_runs_without_grad() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    m = RepresentationModality(dim=6, source="photo", extractor=net)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    r = m.derive({"photo": images(2)})
    assert r.shape == (2, 6) and not r.requires_grad


def test_extractor_output_is_checked() -> None:
    m = RepresentationModality(name="feat", dim=5, extractor=lambda x: x.flatten(1)[:, :3])
    with pytest.raises(ModalityDataError, match=r"'feat' \(extractor output\).*\(B, 5\)"):
        m.derive({"image": images(2)})
    with pytest.raises(ModalityDataError, match=r"'feat'.*'image'.*lacks"):
        m.derive({"label": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ModalityDataError, match="callable"):
        RepresentationModality(extractor=3)  # type: ignore[arg-type]


def test_without_extractor_the_data_comes_with_the_dataset() -> None:
    assert RepresentationModality().derive({"image": images(2)}) is None


def test_builtin_random_conv_is_seeded_frozen_and_input_dependent() -> None:
    a = RepresentationModality(dim=8, builtin_extractor="random_conv", seed=1)
    b = RepresentationModality(dim=8, builtin_extractor="random_conv", seed=1)
    c = RepresentationModality(dim=8, builtin_extractor="random_conv", seed=2)
    x = images(4)
    ra, rb, rc = (m.derive({"image": x}) for m in (a, b, c))
    assert torch.equal(ra, rb) and not torch.allclose(ra, rc)
    assert not torch.allclose(ra[0], ra[1])  # different images, different vectors
    torch.testing.assert_close(ra.pow(2).mean(1), torch.ones(4))
    assert not any(p.requires_grad for p in a.extractor.parameters())  # type: ignore[union-attr]
    rgb = a.derive({"image": torch.rand(2, 3, 16, 16) * 2 - 1})  # any channel count and size
    assert rgb.shape == (2, 8)


def test_extractor_is_not_part_of_the_config() -> None:
    m = RepresentationModality(dim=4, extractor=lambda x: x.flatten(1)[:, :4])
    config = json.loads(json.dumps(m.to_config()))
    assert "extractor" not in config
    rebuilt = RepresentationModality.from_config(config)
    assert rebuilt == m and rebuilt.extractor is None


def test_gaussian_loss_matches_normal_log_prob() -> None:
    m = RepresentationModality(dim=3, sigma=0.5)
    x, pred = torch.randn(4, 3), torch.randn(4, 3)
    ref = -torch.distributions.Normal(pred, 0.5).log_prob(x).sum(1)
    torch.testing.assert_close(m.loss(pred, x), ref)


def test_cosine_loss_ignores_norm_and_scales_with_sigma() -> None:
    m = RepresentationModality(dim=3, loss="cosine", sigma=0.5)
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 0.0]])
    torch.testing.assert_close(m.loss(3.0 * x, x), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.loss(-x, x), torch.full((2,), 2.0 / 0.25))
    pred = torch.randn(2, 3)
    torch.testing.assert_close(m.loss(pred, x), m.loss(7.0 * pred, x))


def test_encoder_and_head_shapes_and_sampling() -> None:
    m = RepresentationModality(dim=5, hidden=16, head="pooled")
    latent = LatentSpec((2, 4, 4))
    enc, head = m.build_encoder(latent), m.build_head(latent, FeatureSpec(pooled_dim=7, map_channels=3))
    x = torch.randn(3, 5)
    assert m.encode(enc, x).shape == (3, 2, 4, 4)
    pred = head(torch.randn(3, 7))
    assert torch.equal(m.sample(pred, greedy=True), pred.detach()) and torch.equal(m.sample(pred), pred.detach())
    with pytest.raises(ModalityDataError, match=r"'representation'.*\(B, 5\)"):
        m.loss(torch.randn(3, 4), x)


def test_map_head_reads_the_full_resolution_map_and_its_positions() -> None:
    m = RepresentationModality(dim=5, hidden=16)  # the map: the kind's measured head
    assert m.head_input is HeadInput.MAP and RepresentationModality(dim=5, head="pooled").head_input is HeadInput.POOLED
    assert RepresentationModality.from_config(json.loads(json.dumps(m.to_config()))).head_input is HeadInput.MAP
    torch.manual_seed(0)
    head = m.build_head(LatentSpec((2, 8, 8)), FeatureSpec(pooled_dim=7, map_channels=3))
    fmap = torch.randn(3, 3, 8, 8)
    pred = head(fmap)
    assert pred.shape == (3, 5)
    # a head that averaged the whole map would not tell a map from its mirror image; the encoder is positional
    assert not torch.allclose(head(fmap.flip(-1)), pred, atol=1e-4)


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="'loss' must be one of \\['gaussian', 'cosine'\\]"):
        RepresentationModality(loss="l2")
    with pytest.raises(ConfigError, match="builtin_extractor"):
        RepresentationModality(builtin_extractor="resnet")
    with pytest.raises(ConfigError, match="'head' must be one of \\['pooled', 'map'\\]"):
        RepresentationModality(head="conv")
