"""Memory attention: the current frame's features attend to the memory bank (past frames'
mask memories and object pointers). Self- and cross-attention use axial rotary position
encodings (RoPE) over the 2-D feature grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import Attention
from .precision import Linear
from .products import blocked_attention, linear

ROPE_THETA = 10000.0


def axial_rope_tables(dim: int, side: int, device, theta: float = ROPE_THETA):
    """cos and sin tables (side*side, dim/2) for axial RoPE on a side x side grid, row-major.

    The first half of the rotated pairs encodes the column (x), the second half the row (y).
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4, device=device)[: dim // 4].float() / dim))
    t = torch.arange(side * side, dtype=torch.float32, device=device)
    xs, ys = t % side, torch.div(t, side, rounding_mode="floor")
    angles = torch.cat((torch.outer(xs, freqs), torch.outer(ys, freqs)), dim=-1)  # (N, dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of (B, h, N, d) by the (N, d/2) angles."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class RoPEAttention(Attention):
    """Attention with axial RoPE on queries and on the first ``num_k_rope`` keys.

    Memory keys are several frames of the same grid stacked, so the query's table is repeated
    for each of them; object-pointer tokens at the end of the keys get no rotation.
    """

    def __init__(self, dim: int, num_heads: int = 1, kv_in_dim: int | None = None) -> None:
        super().__init__(dim, num_heads, kv_in_dim=kv_in_dim)
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def rope_tables(self, n: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"RoPE attention needs a square feature grid, got {n} tokens")
        key = (n, head_dim, str(device))
        if key not in self._tables:
            self._tables[key] = axial_rope_tables(head_dim, side, device)
        return self._tables[key]

    def forward(self, q, k, v, num_k_exclude_rope: int = 0, key_mask=None):
        """(B, Nq, C), (B, Nk, Ckv), (B, Nk, Ckv) -> (B, Nq, C); Nq must be a square grid.
        ``key_mask`` (B, 1, 1, Nk) bool: keys that take part (padding excluded)."""
        q = self.split_heads(self.q_proj(q))
        k = self.split_heads(self.k_proj(k))
        cos, sin = self.rope_tables(q.shape[-2], q.shape[-1], q.device)
        q = apply_rope(q, cos, sin)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            repeats = n_rope // q.shape[-2]
            k_rot = apply_rope(k[:, :, :n_rope], cos.repeat(repeats, 1), sin.repeat(repeats, 1))
            k = torch.cat((k_rot, k[:, :, n_rope:]), dim=2)
        if self.values_first:
            return self.attend_values_first(q, k, v, key_mask)
        return self.attend(q, k, self.split_heads(self.v_proj(v)), key_mask)

    @property
    def values_first(self) -> bool:
        """Whether weighting the raw values and projecting afterwards is cheaper (narrow values:
        the memory's 64 channels against 256)."""
        v = self.v_proj
        return self.num_heads * v.in_features < v.out_features

    def attend_values_first(self, q, k, v, key_mask=None) -> torch.Tensor:
        """Attention with the value projection after the weighting: softmax(QK^T) (V W^T + b)
        = (softmax(QK^T) V) W^T + b, as every row of the weights sums to 1. Exact algebra, with
        a quarter of the multiply-adds of the weighting for 64-channel values.

        q, k: (B, h, N, d) heads-split; v: (B, Nk, Cv) raw values. Returns (B, Nq, dim)."""
        b, h, n, d = q.shape
        v = self.v_proj.compute_input(v)[:, None].expand(b, h, *v.shape[1:])  # same for all heads
        if q.device.type == "cpu":
            weighted = blocked_attention(q, k, v, key_mask)
        else:
            weighted = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        w, bias = self.v_proj.weights()
        if h == 1:  # SAM 2's memory attention
            out = linear(weighted[:, 0], w, bias)
        else:
            w, bias = w.reshape(h, d, -1), bias.reshape(h, 1, d)  # (h, d, Cv), (h, 1, d)
            out = torch.einsum("bhnc,hdc->bhnd", weighted, w) + bias
            out = out.transpose(1, 2).reshape(b, n, h * d)
        return self.out_proj(out)


class MemoryAttentionLayer(nn.Module):
    def __init__(self, dim: int = 256, mem_dim: int = 64, ffn_dim: int = 2048) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(dim)
        self.cross_attn_image = RoPEAttention(dim, kv_in_dim=mem_dim)
        self.linear1 = Linear(dim, ffn_dim)
        self.linear2 = Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, memory, memory_pos, num_obj_ptr_tokens: int, memory_mask=None):
        """x (B, HW, C); memory and memory_pos (B, M, mem_dim); memory_mask (B, 1, 1, M)."""
        return self.attend_memory(
            self.attend_self(x), memory, memory_pos, num_obj_ptr_tokens, memory_mask
        )

    def attend_self(self, x: torch.Tensor) -> torch.Tensor:
        """The self-attention step: (B, HW, C) -> (B, HW, C)."""
        y = self.norm1(x)
        return x + self.self_attn(y, y, y)

    def attend_memory(self, x, memory, memory_pos, num_obj_ptr_tokens: int, memory_mask=None):
        """Cross-attention to the memory, then the MLP. ``x`` (1 or B, HW, C) broadcasts over
        the B memories."""
        y = self.norm2(x)
        b = memory.shape[0]
        if y.shape[0] != b:
            x, y = x.expand(b, -1, -1), y.expand(b, -1, -1)
        x = x + self.cross_attn_image(
            y, memory + memory_pos, memory, num_obj_ptr_tokens, memory_mask
        )
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    def __init__(self, dim: int = 256, mem_dim: int = 64, num_layers: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim, mem_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        features: torch.Tensor,
        features_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int = 0,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Condition the current frame on memory.

        features, features_pos: (B, HW, C) current frame tokens and their sine PE, or (1, HW, C)
        when every object of the batch sees the same frame. memory, memory_pos: (B, M, mem_dim);
        the last ``num_obj_ptr_tokens`` are object pointers. memory_mask: (B, 1, 1, M) bool,
        False for padding (objects with less memory than others in the batch), or None.
        Returns (B, HW, C).
        """
        tokens = self.frame_tokens(features, features_pos)
        return self.attend(tokens, memory, memory_pos, num_obj_ptr_tokens, memory_mask)

    def frame_tokens(self, features: torch.Tensor, features_pos: torch.Tensor) -> torch.Tensor:
        """The work that does not depend on the object: the frame's tokens through the first
        layer's self-attention. (1|B, HW, C) -> (1|B, HW, C); compute it once per frame and
        pass it to :meth:`attend` for every object (or batch of objects) on that frame."""
        return self.layers[0].attend_self(features + 0.1 * features_pos)

    def attend(self, frame_tokens, memory, memory_pos, num_obj_ptr_tokens=0, memory_mask=None):
        """From :meth:`frame_tokens` (1 or B, HW, C) to the conditioned (B, HW, C)."""
        first, *rest = self.layers
        x = first.attend_memory(frame_tokens, memory, memory_pos, num_obj_ptr_tokens, memory_mask)
        for layer in rest:
            x = layer.attend_memory(
                layer.attend_self(x), memory, memory_pos, num_obj_ptr_tokens, memory_mask
            )
        return self.norm(x)
