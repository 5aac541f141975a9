"""The image modality: base (identity, discretised Gaussian L_0) and aggregated (Gaussian head) behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.modality import BasePrediction, FeatureSpec, HeadInput, LatentSpec, Role
from mtd_plugins.image import ImageModality

LATENT = LatentSpec((1, 8, 8))
FEATURES = FeatureSpec(pooled_dim=8, map_channels=4)


def grid_images(n: int, bits: int = 8, seed: int = 0) -> torch.Tensor:
    """Images whose values lie on the 2**bits-level grid over [-1, 1] (what real 8-bit data look like)."""
    levels = 2 ** bits - 1
    k = torch.randint(0, levels + 1, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    return (k.float() / levels) * 2 - 1


def test_base_is_identity_without_head() -> None:
    m = ImageModality(role="base")
    assert m.latent_shape() == (1, 8, 8) and m.head_input is HeadInput.NONE
    enc = m.build_encoder(LATENT)
    x = grid_images(3)
    assert torch.equal(m.encode(enc, x), x)  # z_0 is the image itself, not RMS-normalised
    assert m.build_head(LATENT, FEATURES) is None
    assert ImageModality(role="aggregated").head_input is HeadInput.MAP


def test_discretised_nll_lower_when_mean_is_right() -> None:
    m = ImageModality(role="base")
    x = grid_images(4)
    log_var = torch.full_like(x, math.log(1e-4 ** 2))
    right = m.loss(BasePrediction(mean=x, log_var=log_var), x)
    off = m.loss(BasePrediction(mean=(x + 0.05).clamp(-1, 1), log_var=log_var), x)
    assert right.shape == (4,) and (right < off).all()
    # a std far below the bin half-width (1/255) puts almost all the mass in the right bin: -log(mass) ~ 0
    assert (right < 1e-3).all()


def test_fewer_bits_means_wider_bins_and_lower_nll() -> None:
    x = grid_images(2, bits=4)
    pred = BasePrediction(mean=(x + 0.02).clamp(-1, 1), log_var=torch.full_like(x, math.log(0.02 ** 2)))
    nll4 = ImageModality(role="base", bits=4).loss(pred, x)
    nll8 = ImageModality(role="base", bits=8).loss(pred, x)
    assert (nll4 < nll8).all()


def test_aggregated_gaussian_loss_is_a_true_nll() -> None:
    m = ImageModality(role="aggregated", sigma=0.2)
    x = grid_images(3)
    mean = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    ref = torch.distributions.Normal(mean, 0.2).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(m.loss(mean, x), -ref)


def test_aggregated_encoder_identity_or_learned() -> None:
    same = ImageModality(role="aggregated")  # the model scales the raw encoding (EncodingScale), not the modality
    assert isinstance(same.build_encoder(LATENT), nn.Identity)
    x = grid_images(3)
    assert torch.equal(same.encode(same.build_encoder(LATENT), x), x)

    other = ImageModality(role="aggregated", channels=3, size=16)
    enc = other.build_encoder(LATENT)
    assert sum(p.numel() for p in enc.parameters()) > 0
    assert other.encode(enc, torch.rand(2, 3, 16, 16) * 2 - 1).shape == (2, 1, 8, 8)
    head = other.build_head(LATENT, FEATURES)
    assert head(torch.randn(2, 4, 8, 8)).shape == (2, 3, 16, 16)


def test_sampling_clamps_and_draws_with_sigma() -> None:
    m = ImageModality(role="aggregated", sigma=0.1)
    mean = torch.zeros(64, 1, 8, 8)
    mean[0] = 3.0
    greedy = m.sample(mean, greedy=True)
    assert torch.equal(greedy[0], torch.ones(1, 8, 8)) and torch.equal(greedy[1:], mean[1:])
    draw = m.sample(mean, generator=torch.Generator().manual_seed(0))
    assert draw.min() >= -1 and draw.max() <= 1
    assert abs(draw[1:].std().item() - 0.1) < 0.01
    again = m.sample(mean, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)


def test_predicted_encoding_is_encoding_of_clamped_mean() -> None:
    m = ImageModality(role="aggregated")
    enc = m.build_encoder(LATENT)
    mean = 2 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.predicted_encoding(enc, mean), m.encode(enc, mean.clamp(-1, 1)))


def test_loss_rejects_wrong_prediction_naming_the_modality() -> None:
    base = ImageModality(name="photo", role="base")
    x = grid_images(2)
    with pytest.raises(ModalityDataError, match="'photo'.*BasePrediction"):
        base.loss(x, x)
    agg = ImageModality(name="target", role=Role.AGGREGATED)
    with pytest.raises(ModalityDataError, match="'target'.*shape"):
        agg.loss(torch.zeros(2, 1, 4, 4), x)


@pytest.mark.parametrize(("options", "needle"), [
    ({"size": 0}, "'size' must be an integer >= 1"),
    ({"bits": 17}, "'bits' must be at most 16"),
    ({"sigma": -1.0}, "'sigma' must be a finite number > 0"),
    ({"normalize": 1}, "'normalize' must be true or false"),
    ({"sizes": 8}, "did you mean 'size'"),
])
def test_bad_options_are_config_errors(options: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match="'image'") as info:
        ImageModality(**options)
    assert needle in str(info.value)
