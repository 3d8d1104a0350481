"""Image encoder: the Hiera trunk plus a feature-pyramid neck with sine position encodings."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import sine_position_encoding
from .config import HieraConfig
from .hiera import Hiera
from .precision import Conv2d


class FpnNeck(nn.Module):
    """Projects every trunk stage to ``d_model`` channels with a 1x1 convolution and adds the
    nearest-upsampled coarser level on the two coarsest levels only (``top_down_levels``).

    ``convs`` are ordered coarsest first, as in the checkpoints.
    """

    top_down_levels = (2, 3)

    def __init__(self, stage_dims: tuple[int, ...], d_model: int = 256) -> None:
        super().__init__()
        self.d_model = d_model
        self.convs = nn.ModuleList()
        for dim in reversed(stage_dims):
            branch = nn.Sequential()
            branch.add_module("conv", Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(branch)

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """Stage outputs (finest first) -> d_model feature maps (finest first)."""
        n = len(stages) - 1
        out: list[torch.Tensor] = [None] * len(stages)  # type: ignore[list-item]
        coarser = None
        for level in range(n, -1, -1):
            lateral = self.convs[n - level](stages[level])
            if level in self.top_down_levels and coarser is not None:
                up = F.interpolate(coarser.float(), scale_factor=2.0, mode="nearest")
                coarser = lateral + up
            else:
                coarser = lateral
            out[level] = coarser
        return out


class BackboneFeatures(NamedTuple):
    """The image encoder's output for a batch of images (batch first everywhere).

    ``levels``: the three finest pyramid levels, finest first —
    (B, 256, S/4, S/4), (B, 256, S/8, S/8), (B, 256, S/16, S/16).
    ``pos``: the sine position encoding of each level, same shapes (batch size 1).
    """

    levels: list[torch.Tensor]
    pos: list[torch.Tensor]


class ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck. The coarsest pyramid level (stride 32) is dropped ("scalp")."""

    def __init__(self, trunk_config: HieraConfig, d_model: int = 256) -> None:
        super().__init__()
        self.trunk = Hiera(trunk_config)
        self.neck = FpnNeck(trunk_config.stage_dims, d_model)

    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        """(B, 3, S, S) normalised images -> :class:`BackboneFeatures`."""
        levels = self.neck(self.trunk(images))[:-1]
        pos = [
            sine_position_encoding(x.shape[-2], x.shape[-1], self.neck.d_model, x.device)[None].to(
                x.dtype
            )
            for x in levels
        ]
        return BackboneFeatures(levels, pos)
