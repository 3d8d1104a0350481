"""Hiera, the hierarchical vision transformer that SAM 2 uses as its image trunk.

Four stages; each later stage halves the resolution by max-pooling the *queries* of its first
block ("q-pooling") and doubles the width. Most blocks attend inside non-overlapping windows;
a few ("global" blocks) attend over the whole map. Tokens stay in (B, H, W, C) layout throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP
from .config import HieraConfig
from .precision import Conv2d, Linear
from .products import attention


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * num_windows, window, window, C), zero-padding H and W up to a
    multiple of ``window``. The padded tokens take part in attention like any other (the
    released weights were trained that way), so they must not be masked out."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: back to (B, H, W, C), padding cropped."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


def _max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H/2, W/2, C) by 2x2 max pooling."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be pooled 2x2 (at a stage change)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, pool_queries: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pool_queries = pool_queries
        self.qkv = Linear(dim, dim_out * 3)
        self.proj = Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H', W', C_out); H' = H/2 when queries are pooled."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)  # (B, HW, 3, heads, hd)
        q, k, v = qkv.unbind(2)
        if self.pool_queries:
            q = _max_pool_2x2(q.reshape(b, h, w, -1))
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x.transpose(1, 2).reshape(b, h, w, -1)  # (B, H', W', C_out)
        return self.proj(x)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block; at a stage change it also widens and pools the residual."""

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, window_size: int, pool: bool
    ) -> None:
        super().__init__()
        self.window_size = window_size  # 0 = global attention
        self.pool = pool
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, pool_queries=pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, 4 * dim_out, dim_out, num_layers=2, activation=nn.GELU)
        self.proj = Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H', W', C_out)."""
        shortcut = x
        x = self.norm1(x)
        if self.proj is not None:
            # The residual is widened from the *normalised* tokens, then pooled like the queries.
            shortcut = self.proj(x)
            if self.pool:
                shortcut = _max_pool_2x2(shortcut)

        window = self.window_size
        if window > 0:
            x, padded_hw = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            h, w = shortcut.shape[1:3]
            if self.pool:
                # Each window's queries were pooled in place: the windows shrank with the map.
                window //= 2
                padded_hw = (h + (-h) % window, w + (-w) % window)
            x = window_unpartition(x, window, padded_hw, (h, w))

        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution: (B, 3, S, S) -> (B, S/4, S/4, C)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The trunk. Returns the output of every stage, highest resolution first."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.config = config
        c = config.embed_dim
        self.patch_embed = PatchEmbed(c)
        # Position embedding = a coarse "background" grid interpolated to the feature size
        # plus a window-sized pattern tiled over it (arXiv:2311.05613).
        self.pos_embed = nn.Parameter(torch.zeros(1, c, *config.window_pos_embed_bkg_spatial_size))
        w0 = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, c, w0, w0))
        self._pos_cache: tuple | None = None  # (size and parameter versions, embedding)

        stage_ends = [sum(config.stages[: i + 1]) - 1 for i in range(len(config.stages))]
        self.stage_ends = tuple(stage_ends)
        self.blocks = nn.ModuleList()
        dim, heads, stage = c, config.num_heads, 0
        for i in range(config.depth):
            # The first block of a stage still uses the previous stage's window size: it
            # attends at the old resolution and pools its queries down to the new one.
            window = 0 if i in config.global_att_blocks else config.window_spec[stage]
            starts_stage = i > 0 and (i - 1) in stage_ends
            dim_out = dim
            if starts_stage:
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            self.blocks.append(MultiScaleBlock(dim, dim_out, heads, window, pool=starts_stage))
            dim = dim_out

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, H, W, C) position embedding for an (H, W) token map. Without gradients it is
        kept for the size until the parameters change (the bicubic interpolation costs about
        2 % of an encoding, the same on every frame)."""
        bkg, win = self.pos_embed, self.pos_embed_window
        key = (h, w, bkg.device, bkg.data_ptr(), bkg._version, win._version)
        cached = self._pos_cache
        if cached is not None and cached[0] == key and not torch.is_grad_enabled():
            return cached[1]
        pos = F.interpolate(bkg, size=(h, w), mode="bicubic")
        pos = pos + win.tile(1, 1, h // win.shape[-2], w // win.shape[-1])
        pos = pos.permute(0, 2, 3, 1)
        if not torch.is_grad_enabled():
            self._pos_cache = (key, pos)
        return pos

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) -> stage outputs (B, C, S/4, S/4) ... (B, 8C, S/32, S/32), finest first."""
        x = self.patch_embed(x)  # (B, S/4, S/4, C)
        x = x + self.position_embedding(*x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
