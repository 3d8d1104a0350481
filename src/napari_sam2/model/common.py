"""Small building blocks shared by several parts of the network."""

from __future__ import annotations

import math

import torch
from torch import nn

from .precision import Linear


class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them (none after the last)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _sine_cosine_interleaved(pos: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """(..., ) positions -> (..., num_feats): sin on even frequencies, cos on odd, interleaved."""
    k = torch.arange(num_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * (k // 2) / num_feats)
    angles = pos[..., None] / dim_t
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


_SINE_CACHE: dict[tuple, torch.Tensor] = {}


def sine_position_encoding(
    height: int,
    width: int,
    dim: int,
    device: torch.device | str = "cpu",
    temperature: float = 10000.0,
) -> torch.Tensor:
    """DETR-style 2-D sine encoding of a (height, width) grid -> (dim, height, width).

    Rows and columns are numbered from 1 and normalised to (0, 2π]; the first half of the
    channels encodes the row, the second half the column. Cached per size and device.
    """
    key = (height, width, dim, str(device), temperature)
    if key not in _SINE_CACHE:
        eps, scale = 1e-6, 2 * math.pi
        rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        rows = rows / (height + eps) * scale
        cols = cols / (width + eps) * scale
        enc_rows = _sine_cosine_interleaved(rows, dim // 2, temperature)  # (H, dim/2)
        enc_cols = _sine_cosine_interleaved(cols, dim // 2, temperature)  # (W, dim/2)
        enc = torch.cat(
            (
                enc_rows[:, None, :].expand(height, width, -1),
                enc_cols[None, :, :].expand(height, width, -1),
            ),
            dim=-1,
        )
        _SINE_CACHE[key] = enc.permute(2, 0, 1).contiguous()
    return _SINE_CACHE[key]


def sine_encoding_1d(
    positions: torch.Tensor, dim: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Transformer-style 1-D encoding: (N,) -> (N, dim), all sines first, then all cosines."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (k // 2) / half)
    angles = positions[:, None] / dim_t
    return torch.cat((angles.sin(), angles.cos()), dim=-1)
