"""The U-Net's options (:class:`UNetConfig`), checked at construction: every error names the option at fault."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from mtd_core.config_types import is_float32
from mtd_core.errors import ConfigError
from mtd_core.types import ConfigDict

MAX_PARAMETERS = 2e9
"""The largest U-Net the factory builds (an estimate, checked before allocating): 8 GiB of float32 weights."""


def _int_tuple(name: str, v: object) -> tuple[int, ...]:
    if isinstance(v, (int, str, bytes)) or not isinstance(v, Sequence):
        raise ConfigError(f"backbone 'unet': {name} must be a list of integers, got {v!r}")
    return tuple(v)


def _channel_mult(v: object) -> tuple[int, ...]:
    return _int_tuple("channel_mult", v)


def _attention_resolutions(v: object) -> tuple[int, ...]:
    return _int_tuple("attention_resolutions", v)


def level_heights(height: int, levels: int) -> list[int]:
    """The feature-map height of each of ``levels`` U-Net levels on a latent ``height`` pixels high: each
    stride-2 downsampling takes H to ceil(H / 2) (28 -> 14 -> 7 -> 4)."""
    heights = [height]
    for _ in range(levels - 1):
        heights.append((heights[-1] + 1) // 2)
    return heights


@attrs.frozen
class UNetConfig:
    """Options of the U-Net (the ``[backbone]`` table of a config, minus ``name``).

    Args:
        channels: base width; level ``i`` has ``channels * channel_mult[i]`` channels.
        channel_mult: width multiplier per resolution level; its length is the number of levels
            (the latent is downsampled ``len(channel_mult) - 1`` times).
        num_res_blocks: residual blocks per level on the way down (the up path has one more per level).
        attention_resolutions: feature-map heights in pixels (not downsampling factors) at which a self-attention
            block follows each residual block, e.g. ``[4]`` for 8x8 digits or ``[16, 8]`` for 32x32 images; each
            must be the height of a level (:func:`level_heights`), checked when the U-Net is built.
        mid_attention: whether the bottleneck has a self-attention block between its two residual blocks.
        num_heads: attention heads; must divide the channel count at every attention block.
        dropout: dropout probability inside residual blocks (before their second convolution).
        groups: GroupNorm groups; must divide every normalised channel count (checked at construction).
        time_embed_dim: width of the timestep embedding MLP (default ``4 * channels``).
        max_period: the longest period of the sinusoidal timestep embedding (timesteps are raw t in 0..T).
    """

    channels: int = 64
    channel_mult: tuple[int, ...] = attrs.field(default=(1, 2, 2), converter=_channel_mult)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = attrs.field(default=(), converter=_attention_resolutions)
    mid_attention: bool = True
    num_heads: int = 4
    dropout: float = 0.0
    groups: int = 32
    time_embed_dim: int | None = None
    max_period: float = 10000.0

    def __attrs_post_init__(self) -> None:
        def positive(name: str, v: object) -> None:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"backbone 'unet': {name} must be a positive integer, got {v!r}")

        positive("channels", self.channels)
        positive("num_res_blocks", self.num_res_blocks)
        positive("num_heads", self.num_heads)
        positive("groups", self.groups)
        if self.time_embed_dim is not None:
            positive("time_embed_dim", self.time_embed_dim)
        if not self.channel_mult:
            raise ConfigError("backbone 'unet': channel_mult must list at least one level, got []")
        for m in self.channel_mult:
            positive("every channel_mult entry", m)
        for r in self.attention_resolutions:
            positive("every attention_resolutions entry", r)
        if not isinstance(self.mid_attention, bool):
            raise ConfigError(f"backbone 'unet': mid_attention must be true or false, got {self.mid_attention!r}")
        if not is_float32(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"backbone 'unet': dropout must be a number in [0, 1), got {self.dropout!r}")
        if not is_float32(self.max_period) or not self.max_period > 1.0:
            raise ConfigError(f"backbone 'unet': max_period must be a finite number > 1, got {self.max_period!r}")
        self._check_size()

    def _check_size(self) -> None:
        convs, embed = self._parameter_terms()
        estimate = convs + embed
        if estimate > MAX_PARAMETERS:
            lower = (f"time_embed_dim (its MLP alone is about {embed:.3g} of them)" if embed > convs
                     else "channels, channel_mult or num_res_blocks")
            raise ConfigError(f"backbone 'unet': these options make about {estimate:.3g} parameters "
                              f"({4 * estimate / 2**30:.3g} GiB of float32 weights), above the {MAX_PARAMETERS:.0e} "
                              f"this build refuses to allocate; lower {lower}")

    def _parameter_terms(self) -> tuple[float, float]:
        """(residual-block convolutions, time-embedding MLP): the two terms of :meth:`estimated_parameters`."""
        widths = [self.channels * m for m in self.channel_mult]
        convs = sum(2 * 9 * w * w for w in widths) * (2 * self.num_res_blocks + 1)
        return float(convs), float((self.time_embed_dim or 4 * self.channels) ** 2)

    def estimated_parameters(self) -> float:
        """A rough count of the network's weights (the 3x3 convolutions of its residual blocks dominate, unless
        time_embed_dim is very large), cheap enough to check before anything is allocated."""
        return math.fsum(self._parameter_terms())

    def to_dict(self) -> ConfigDict:
        """The options as a plain JSON-representable dict (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self).items()}


__all__ = ["MAX_PARAMETERS", "UNetConfig", "level_heights"]
