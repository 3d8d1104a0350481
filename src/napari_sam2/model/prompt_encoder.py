"""Prompt encoder: points and box corners -> sparse tokens; a mask -> a dense embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

# Point labels as the network understands them.
NOT_A_POINT, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class RandomFourierEncoding(nn.Module):
    """Positional encoding by random spatial frequencies (a fixed Gaussian matrix)."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        # Name kept for checkpoint compatibility.
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates in [0, 1] as (x, y) -> (..., 2 * num_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat((coords.sin(), coords.cos()), dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """Encoding of pixel centres of an (h, w) grid -> (C, h, w)."""
        device = self.positional_encoding_gaussian_matrix.device
        ones = torch.ones((h, w), device=device, dtype=torch.float32)
        y = (ones.cumsum(dim=0) - 0.5) / h
        x = (ones.cumsum(dim=1) - 0.5) / w
        return self.encode(torch.stack((x, y), dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    def __init__(
        self, embed_dim: int, embedding_size: int, image_size: int, mask_in_chans: int = 16
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding_size = embedding_size
        self.image_size = image_size
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)
        # Indexed by label: negative, positive, box top-left, box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> int:
        return 4 * self.embedding_size

    def dense_pe(self) -> torch.Tensor:
        """(1, C, E, E) encoding of the image-embedding grid."""
        return self.pe_layer.grid(self.embedding_size, self.embedding_size)[None]

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) (x, y) pixel coordinates in the model's input frame and (B, N) labels
        -> (B, N + 1, C) tokens: one "not a point" token is appended, as the released
        predictors always do."""
        b = coords.shape[0]
        coords = torch.cat((coords + 0.5, coords.new_zeros(b, 1, 2)), dim=1)  # pixel centres
        labels = torch.cat((labels, -labels.new_ones(b, 1)), dim=1)
        emb = self.pe_layer.encode(coords.float() / self.image_size)
        labels = labels[..., None]
        emb = torch.where(labels == NOT_A_POINT, self.not_a_point_embed.weight, emb)
        for label, table in enumerate(self.point_embeddings):
            emb = torch.where(labels == label, emb + table.weight, emb)
        return emb

    def embed_mask(self, mask_logits: torch.Tensor | None, batch: int | None = None):
        """(B, 1, 4E, 4E) mask logits, or None -> (B, C, E, E) dense embedding; without a mask
        (1, C, E, E) when ``batch`` is None (the same for every prompt: the decoder shares it)."""
        if mask_logits is not None:
            return self.mask_downscaling(mask_logits)
        e = self.embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch or 1, -1, e, e)
