"""The ADM-style U-Net: shapes at 8x8 / 28x28 / 32x32, features, attention, conditioning on t, option errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtd_core.backbones import BackboneOutput, UNet, UNetConfig, build_unet, count_parameters
from mtd_core.backbones.unet import AttentionBlock, timestep_embedding
from mtd_core.errors import ConfigError
from mtd_core.modality import LatentSpec
from mtd_core.plugins.registry import get_registry

SMALL = dict(channels=16, num_res_blocks=1, groups=8, num_heads=2)


def _randomise_zero_layers(net: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised layers make every output 0 at first; give them small random weights for behaviour tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("shape, mult, attn", [
    ((1, 8, 8), (1, 2), (4,)),
    ((1, 28, 28), (1, 2, 2, 2), (7,)),  # 28 -> 14 -> 7 -> 4 and back: odd sizes
    ((3, 32, 32), (1, 2, 2), (16, 8)),
])
def test_shapes_and_features(shape, mult, attn):
    net = build_unet(LatentSpec(shape), channel_mult=mult, attention_resolutions=attn, **SMALL)
    z = torch.randn(3, *shape)
    out = net(z, torch.tensor([1, 500, 1000]))
    assert isinstance(out, BackboneOutput)
    assert out.eps.shape == z.shape
    assert out.pooled.shape == (3, net.feature_spec.pooled_dim) == (3, 16 * mult[-1])
    assert out.fmap.shape == (3, net.feature_spec.map_channels, *shape[1:])
    assert any(isinstance(m, AttentionBlock) for m in net.modules())
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.fmap).all()


def test_output_conv_is_zero_initialised_and_every_parameter_gets_a_gradient():
    net = build_unet(LatentSpec((1, 8, 8)), channel_mult=(1, 2), attention_resolutions=(4,), **SMALL)
    z, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    assert torch.equal(net(z, t).eps, torch.zeros_like(z))  # the untrained denoiser predicts eps = 0
    _randomise_zero_layers(net)
    out = net(z, t)
    (out.eps.square().sum() + out.pooled.sum() + out.fmap.mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_output_depends_on_the_timestep():
    net = build_unet(LatentSpec((1, 8, 8)), channel_mult=(1, 2), **SMALL)
    _randomise_zero_layers(net)
    z = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = net(z, torch.tensor([10, 900]))
    assert not torch.allclose(out.eps[0], out.eps[1])
    assert not torch.allclose(out.pooled[0], out.pooled[1])


def test_timestep_embedding_is_the_sinusoid():
    t = torch.tensor([0, 7, 1000])
    emb = timestep_embedding(t, 6)
    freqs = [1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)]
    for i, ti in enumerate(t.tolist()):
        want = [math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
        assert torch.allclose(emb[i], torch.tensor(want), atol=1e-4)
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_attention_block_is_multi_head_softmax_attention():
    torch.manual_seed(0)
    block = AttentionBlock(8, heads=2, groups=4)
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(2, 8, 3, 3)
    # reference: per head, softmax(q k^T / sqrt(d)) v over the 9 positions
    qkv = block.qkv(block.norm(x)).reshape(2, 3, 2, 4, 9)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, d, L)
    att = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / 2.0, dim=-1)
    ref = torch.einsum("bhij,bhdj->bhdi", att, v).reshape(2, 8, 3, 3)
    assert torch.allclose(block(x), x + block.proj(ref), atol=1e-5)


def test_attention_mixes_positions_a_convolution_cannot_reach():
    # with no downsampling and a 1x1-conv-free path, only attention connects far-apart pixels of a 16x16 map at once
    block = AttentionBlock(8, heads=2, groups=4)
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    block(x)[0, :, 0, 0].sum().backward()
    assert x.grad[0, :, 15, 15].abs().sum() > 0


def test_registered_as_unet_and_counts_parameters():
    factory = get_registry().backbone("unet")
    net = factory(LatentSpec((1, 8, 8)), channel_mult=[1, 2], **SMALL)
    assert isinstance(net, UNet)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters()) > 0
    net.time_embed.requires_grad_(False)
    assert count_parameters(net) < count_parameters(net, trainable_only=False)


def test_config_round_trips_as_a_plain_dict():
    cfg = UNetConfig(channels=8, channel_mult=[1, 2], attention_resolutions=[4], groups=4, dropout=0.1)
    d = cfg.to_dict()
    assert d["channel_mult"] == [1, 2] and d["attention_resolutions"] == [4]
    assert UNetConfig(**d) == cfg


def test_dropout_is_active_in_training_only():
    net = build_unet(LatentSpec((1, 8, 8)), channel_mult=(1,), dropout=0.5, **SMALL)
    _randomise_zero_layers(net)
    z, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 5])
    net.eval()
    assert torch.equal(net(z, t).eps, net(z, t).eps)
    net.train()
    assert not torch.equal(net(z, t).eps, net(z, t).eps)


@pytest.mark.parametrize("options, message", [
    ({"channels": 12, "groups": 8}, r"groups = 8 must divide every normalised channel count, but these do not: \[12, 36\].*e.g. groups = 4"),
    ({"channels": 16, "groups": 8, "num_heads": 3, "attention_resolutions": [4]},
     r"num_heads = 3 must divide the channels of every attention block, but these do not: \[32\]"),
    ({"chanels": 16}, r"unknown option 'chanels' \(did you mean 'channels'\?\)"),
    ({"channel_mult": []}, r"channel_mult must list at least one level"),
    ({"channel_mult": 2}, r"channel_mult must be a list of integers, got 2"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
    ({"num_res_blocks": 0}, r"num_res_blocks must be a positive integer, got 0"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build_unet(LatentSpec((1, 8, 8)), **options)


def test_wrong_input_shapes_are_reported():
    net = build_unet(LatentSpec((1, 8, 8)), channel_mult=(1,), **SMALL)
    with pytest.raises(ValueError, match=r"z_t must have shape \(B, 1, 8, 8\), got \(2, 1, 7, 7\)"):
        net(torch.randn(2, 1, 7, 7), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\), got \(1,\)"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([1]))


def test_bf16_autocast_on_cpu():
    net = build_unet(LatentSpec((1, 8, 8)), channel_mult=(1, 2), attention_resolutions=(4,), **SMALL)
    _randomise_zero_layers(net)
    z, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 999])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(z, t)
    ref = net(z, t)
    assert out.eps.dtype == torch.bfloat16
    assert F.mse_loss(out.eps.float(), ref.eps) < 1e-2 * ref.eps.square().mean() + 1e-4
