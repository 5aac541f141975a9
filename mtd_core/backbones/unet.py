"""An ADM-style U-Net (Dhariwal & Nichol 2021) for the shared latent space Z, written from the paper's description.

    t -> sinusoidal embedding -> MLP -> emb
    z_t -> conv -> [ResBlock (+ self-attention)] x num_res_blocks per level, downsampling between levels
        -> middle: ResBlock, self-attention, ResBlock           (the bottleneck; pooled features for heads)
        -> mirrored up path with skip connections, upsampling between levels
        -> GroupNorm, SiLU (the full-resolution feature map for heads) -> zero-initialised conv -> eps_theta

Residual blocks condition on emb by scale-shift (FiLM) after their second GroupNorm. Downsampling is a stride-2
convolution (H -> ceil(H / 2)), and upsampling resizes to the exact size of the matching skip connection, so
odd sizes such as 28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28 work without padding.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mtd_core.backbones import BackboneOutput
from mtd_core.backbones.unet_config import MAX_PARAMETERS, UNetConfig, level_heights
from mtd_core.errors import ConfigError, closest
from mtd_core.modality import FeatureSpec, LatentSpec
from mtd_core.types import ConfigValue


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim): cos/sin at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so that a residual branch (or the output) starts at zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM by the time embedding, GroupNorm-SiLU-dropout-conv (zero-init), plus a skip.

    Args:
        in_ch: input channels.
        out_ch: output channels (a 1x1 conv adapts the skip when they differ).
        emb_dim: width of the time embedding.
        dropout: dropout probability before the second convolution.
        groups: GroupNorm groups.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions (scaled_dot_product_attention), with a residual.

    Args:
        ch: channels (split evenly over the heads).
        heads: number of heads.
        groups: GroupNorm groups.
    """

    def __init__(self, ch: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        _zero(self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The 1x1 convolutions run as F.linear on (B, H*W, C) tokens, and q, k, v are laid out so that
        # scaled_dot_product_attention takes its fused kernel (docs/performance.md: 2-4x faster per block on CPU).
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)
        qkv = F.linear(h, self.qkv.weight.view(3 * C, C), self.qkv.bias)
        q, k, v = qkv.view(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        out = F.linear(out, self.proj.weight.view(C, C), self.proj.bias)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """A stride-2 3x3 convolution: H -> ceil(H / 2).

    Args:
        ch: channels (unchanged).
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to the size of the matching skip connection, then a 3x3 convolution.

    Args:
        ch: channels (unchanged).
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class _Stage(nn.ModuleList):
    """A sequence of layers; residual blocks get the time embedding, an upsampler the target size."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, Upsample):
                assert size is not None
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """The ADM-style denoiser eps_theta(z_t, t) with pooled and full-resolution features for the heads.

    Args:
        latent: the shared latent space Z; z_t is (B, *latent.shape).
        config: the architecture options (:class:`UNetConfig`; default: its defaults).

    Attributes:
        feature_spec: what the heads read: ``pooled_dim`` (bottleneck width) and ``map_channels`` (the width
            of the first level).
    """

    def __init__(self, latent: LatentSpec, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        self.latent, self.config = latent, cfg
        in_ch, H, W = latent.shape
        resolutions = level_heights(H, len(cfg.channel_mult))
        _check_attention_resolutions(cfg, resolutions, f"{H}x{W}")
        ch0 = cfg.channels * cfg.channel_mult[0]
        emb_dim = cfg.time_embed_dim or 4 * cfg.channels
        self._normed: list[int] = []
        self._attended: list[int] = []

        self.time_embed = nn.Sequential(nn.Linear(cfg.channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_conv = nn.Conv2d(in_ch, ch0, 3, padding=1)

        ch = ch0
        skips = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, cfg.channels * mult, emb_dim)]
                ch = cfg.channels * mult
                if resolutions[level] in cfg.attention_resolutions:
                    layers.append(self._attn(ch))
                self.down.append(_Stage(layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(_Stage([Downsample(ch)]))
                skips.append(ch)

        mid: list[nn.Module] = [self._res(ch, ch, emb_dim)]
        if cfg.mid_attention:
            mid.append(self._attn(ch))
        mid.append(self._res(ch, ch, emb_dim))
        self.mid = _Stage(mid)
        self.pool_norm = self._norm(ch)
        pooled_dim = ch

        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            out = cfg.channels * cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = [self._res(ch + skips.pop(), out, emb_dim)]
                ch = out
                if resolutions[level] in cfg.attention_resolutions:
                    layers.append(self._attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.up.append(_Stage(layers))

        self.out_norm = self._norm(ch)
        self.out_conv = _zero(nn.Conv2d(ch, in_ch, 3, padding=1))
        self._check_divisibility()
        self.feature_spec = FeatureSpec(pooled_dim=pooled_dim, map_channels=ch)

    # -- construction helpers ---------------------------------------------------------------------
    def _norm(self, ch: int) -> nn.Module:
        self._normed.append(ch)
        # a non-dividing count gets 1 group here and a ConfigError from _check_divisibility once all are known
        return nn.GroupNorm(self.config.groups if ch % self.config.groups == 0 else 1, ch)

    def _res(self, in_ch: int, out_ch: int, emb_dim: int) -> ResBlock:
        self._normed += [in_ch, out_ch]
        groups = self.config.groups
        ok = in_ch % groups == 0 and out_ch % groups == 0
        return ResBlock(in_ch, out_ch, emb_dim, float(self.config.dropout), groups if ok else 1)

    def _attn(self, ch: int) -> AttentionBlock:
        self._normed.append(ch)
        self._attended.append(ch)
        ok = ch % self.config.groups == 0 and ch % self.config.num_heads == 0
        return AttentionBlock(ch, self.config.num_heads if ok else 1, self.config.groups if ok else 1)

    def _check_divisibility(self) -> None:
        cfg = self.config
        bad = sorted({c for c in self._normed if c % cfg.groups})
        if bad:
            raise ConfigError(
                f"backbone 'unet': groups = {cfg.groups} must divide every normalised channel count, "
                f"but these do not: {bad} (channels = {cfg.channels}, channel_mult = {list(cfg.channel_mult)}; "
                "skip connections add channels); choose groups dividing channels, e.g. groups = "
                f"{math.gcd(cfg.channels, cfg.groups) or 1}"
            )
        bad = sorted({c for c in self._attended if c % cfg.num_heads})
        if bad:
            raise ConfigError(
                f"backbone 'unet': num_heads = {cfg.num_heads} must divide the channels of every attention "
                f"block, but these do not: {bad}"
            )

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> BackboneOutput:
        """eps_theta(z_t, t) and the head features; ``t`` holds the original integer timesteps, shape (B,)."""
        if z_t.ndim != 4 or tuple(z_t.shape[1:]) != tuple(self.latent.shape):
            raise ValueError(
                f"backbone 'unet': z_t must have shape (B, {', '.join(map(str, self.latent.shape))}), "
                f"got {tuple(z_t.shape)}"
            )
        if t.shape != (z_t.shape[0],):
            raise ValueError(f"backbone 'unet': t must have shape ({z_t.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_embed(timestep_embedding(t, self.config.channels, self.config.max_period))
        h = self.input_conv(z_t)
        hs = [h]
        for stage in self.down:
            h = stage(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        pooled = F.silu(self.pool_norm(h)).mean(dim=(-2, -1))
        for stage in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            h = stage(h, emb, tuple(hs[-1].shape[-2:]) if hs else None)
        fmap = F.silu(self.out_norm(h))
        return BackboneOutput(eps=self.out_conv(fmap), pooled=pooled, fmap=fmap)


def _check_attention_resolutions(cfg: UNetConfig, heights: list[int], latent: str) -> None:
    """Every attention_resolutions entry must be the height of a level: one that matches none would add no
    attention at all."""
    unmatched = [r for r in cfg.attention_resolutions if r not in heights]
    if unmatched:
        raise ConfigError(
            f"backbone 'unet': attention_resolutions = {list(cfg.attention_resolutions)}: "
            f"{', '.join(map(str, unmatched))} {'is not the height' if len(unmatched) == 1 else 'are not heights'} "
            "of any level, so no attention would be added there; entries are feature-map heights in pixels (not "
            f"downsampling factors), and on this {latent} latent with channel_mult = {list(cfg.channel_mult)} the "
            f"levels have heights {heights}"
        )


def build_unet(latent: LatentSpec, **options: ConfigValue) -> UNet:
    """The registered "unet" factory: ``options`` are :class:`UNetConfig` fields; an unknown one is a
    ConfigError naming the nearest valid option."""
    fields = [f.name for f in attrs.fields(UNetConfig)]
    for key in options:
        if key not in fields:
            raise ConfigError(
                f"backbone 'unet': unknown option {key!r}{closest(key, fields)}; valid options: {fields}"
            )
    try:
        config = UNetConfig(**options)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"backbone 'unet': invalid options {options}: {e}") from None
    return UNet(latent, config)


__all__ = ["MAX_PARAMETERS", "AttentionBlock", "Downsample", "ResBlock", "UNet", "UNetConfig", "Upsample",
           "build_unet", "level_heights", "timestep_embedding"]
