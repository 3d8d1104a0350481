"""Memory encoder: fuses a frame's features with its predicted mask into a compact memory."""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d, sine_position_encoding
from .precision import Conv2d, Linear


class MaskDownSampler(nn.Module):
    """Four stride-2 3x3 convolutions (x16 down, channels 1->4->16->64->256), then a 1x1."""

    def __init__(self, embed_dim: int = 256, num_layers: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        c_in = 1
        for _ in range(num_layers):
            c_out = c_in * 4
            self.encoder.append(Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(c_out))
            self.encoder.append(nn.GELU())
            c_in = c_out
        self.encoder.append(Conv2d(c_in, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm, pointwise MLP, layer scale, residual."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.dwconv = Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, dim: int = 256, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, dim: int = 256, mem_dim: int = 64) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(dim)
        self.pix_feat_proj = Conv2d(dim, dim, kernel_size=1)
        self.fuser = Fuser(dim)
        self.out_proj = Conv2d(dim, mem_dim, kernel_size=1)
        self.mem_dim = mem_dim

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, projected: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (1|B, C, E, E); mask (B, 1, 16E, 16E), already squashed to the range the
        encoder expects (see :meth:`SAM2Model.encode_memory`). ``projected``: the frame's
        ``pix_feat_proj(features)``, when computed once for all of its objects.
        Returns memory (B, mem_dim, E, E) and its sine PE (1, mem_dim, E, E)."""
        if projected is None:
            projected = self.pix_feat_proj(features)
        x = projected + self.mask_downsampler(mask)
        x = self.out_proj(self.fuser(x))
        pos = sine_position_encoding(x.shape[-2], x.shape[-1], self.mem_dim, x.device)[None]
        return x, pos.to(x.dtype)
