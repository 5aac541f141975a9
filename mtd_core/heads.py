"""Building blocks for modality heads, for built-in and third-party plugins alike.

A head reads the backbone's features (:class:`~mtd_core.types.FeatureSpec`): the pooled bottleneck vector
(HeadInput.POOLED) or the last full-resolution feature map (HeadInput.MAP). :class:`MapReader` turns the map into a
flat vector while keeping coarse positions, which a pooled vector has averaged away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MapReader"]


class MapReader(nn.Module):
    """(B, map_channels, H, W) feature map -> (B, out_features): convs, a coarse grid of cell means, an MLP.

    Two 3x3 convs narrow the map to ``width`` channels, which are averaged over a ``grid`` x ``grid`` grid of cells
    and read by an MLP. Positions survive at the grid's resolution: a modality whose encoder spreads its value over
    Z's positions (a linear map into C*H*W) is read back from where it was written.

    Args:
        map_channels: channels of the feature map (FeatureSpec.map_channels).
        out_features: width of the output vector.
        hidden: width of the MLP's hidden layer.
        grid: cells per side of the pooled grid.
        width: channels the convs narrow the map to.
    """

    def __init__(self, map_channels: int, out_features: int, hidden: int, grid: int = 7, width: int = 8) -> None:
        super().__init__()
        self.grid = grid
        self.conv = nn.Sequential(nn.Conv2d(map_channels, map_channels, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(map_channels, width, 3, padding=1), nn.SiLU())
        self.mlp = nn.Sequential(nn.Linear(width * grid * grid, hidden), nn.SiLU(), nn.Linear(hidden, out_features))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, map_channels, H, W) features -> (B, out_features)."""
        return self.mlp(F.adaptive_avg_pool2d(self.conv(fmap), self.grid).flatten(1))
