"""Mask decoder: a two-way transformer between prompt tokens and the image embedding,
then hypernetwork heads that turn output tokens into mask logits, plus IoU and object-score heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .precision import Conv2d, ConvTranspose2d, Linear
from .products import attention

NUM_MULTIMASK = 3
STABILITY_DELTA = 0.05
STABILITY_THRESHOLD = 0.98


class Attention(nn.Module):
    """Multi-head attention with an optional reduced internal width and key/value input width."""

    def __init__(
        self, dim: int, num_heads: int, downsample_rate: int = 1, kv_in_dim: int | None = None
    ) -> None:
        super().__init__()
        internal = dim // downsample_rate
        kv_in_dim = kv_in_dim or dim
        self.num_heads = num_heads
        self.q_proj = Linear(dim, internal)
        self.k_proj = Linear(kv_in_dim, internal)
        self.v_proj = Linear(kv_in_dim, internal)
        self.out_proj = Linear(internal, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, h, N, d)

    def attend(self, q, k, v, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Heads-split (B, h, N, d) tensors -> (B, N, dim). ``key_mask`` (B, 1, 1, Nk) bool
        marks the keys that take part (None: all)."""
        out = attention(q, k, v, key_mask)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B|1, Nq, C), (B|1, Nk, Ckv), (B|1, Nk, Ckv) -> (B, Nq, C). An input of batch 1 is
        shared by every row of the batch: it is projected once, not once per row.

        Where a few prompt tokens attend to many image tokens, the image's key and value
        projections are folded into the tokens' side (exact algebra, :meth:`_fold_keys`): the
        image meets heads x tokens vectors instead of being projected to the internal width.
        (The image-to-token direction is not folded: its softmax over a few keys per image
        token costs more than the projection it would save.)"""
        b = max(q.shape[0], k.shape[0], v.shape[0])
        internal = self.q_proj.out_features
        h, nq, nk = self.num_heads, q.shape[1], k.shape[1]
        if h * nq < internal <= nk and k.shape[0] == v.shape[0] == b:
            return self._fold_keys(q, k, v)
        q, k, v = (
            self.split_heads(proj(x)).expand(b, -1, -1, -1)
            for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v))
        )
        return self.attend(q, k, v)

    def _fold_keys(self, q_in, k_in, v_in) -> torch.Tensor:
        """Few queries (B, Nq, C), many keys (B, Nk, Ckv). Per head, q . (Wk x + bk) =
        (q Wk) . x + q . bk: the last term is the same for every key and cancels in the
        softmax; and softmax-weighted (Wv x + bv) = Wv (weighted x) + bv, the weights summing
        to one. So keys and values are never projected: (B, h Nq, Ckv) rows meet the raw x."""
        b, nq, _ = q_in.shape
        h = self.num_heads
        q = self.split_heads(self.q_proj(q_in))  # (B, h, Nq, d)
        d = q.shape[-1]
        k_in, v_in = self.k_proj.compute_input(k_in), self.v_proj.compute_input(v_in)
        wk = self.k_proj.weights()[0].reshape(h, d, -1)  # (h, d, Ckv)
        qk = (q * d**-0.5) @ wk  # (B, h, Nq, Ckv)
        weights = torch.softmax(qk.flatten(1, 2) @ k_in.transpose(1, 2), dim=-1)  # (B, hNq, Nk)
        mixed = (weights @ v_in).reshape(b, h, nq, -1)  # (B, h, Nq, Ckv)
        wv, bv = self.v_proj.weights()
        wv = wv.reshape(h, d, -1)  # (h, d, Ckv)
        out = mixed @ wv.transpose(1, 2) + bv.reshape(h, 1, d)  # (B, h, Nq, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, h * d))


class TwoWayAttentionBlock(nn.Module):
    """Tokens self-attend, tokens attend to the image, MLP on tokens, image attends to tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, num_layers=2, activation=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            # The first layer replaces the tokens by their self-attention (no residual, no PE).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """(B|1, C, H, W) image, (B|1, C, H, W) its PE, (B, N, C) tokens
        -> (B, N, C) tokens, (B, HW, C) image.

        An image of batch 1 is the same for every prompt (clicks without a mask input): the
        first layer's projections of it are computed once for the batch; it becomes one per
        prompt where the first layer's image-to-token attention updates it."""
        keys = image.flatten(2).transpose(1, 2)  # (B|1, HW, C)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class DecoderOutput(NamedTuple):
    """All four mask hypotheses; the caller chooses single, multi or the stability fallback.

    masks: (B, 4, 4E, 4E) logits — index 0 is the single-mask token, 1..3 the multimask tokens.
    ious: (B, 4) predicted IoU. tokens: (B, 4, C) mask output tokens. object_score: (B, 1) logit.
    """

    masks: torch.Tensor
    ious: torch.Tensor
    tokens: torch.Tensor
    object_score: torch.Tensor


class MaskDecoder(nn.Module):
    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(dim=dim)
        num_tokens = NUM_MULTIMASK + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        # Project the two finer pyramid levels for the upscaling path (applied once per image).
        self.conv_s0 = Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(num_tokens)
        )
        self.iou_prediction_head = MLP(dim, 256, num_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
    ) -> DecoderOutput:
        """image (B or 1, C, E, E), image_pe (1, C, E, E), sparse prompt tokens (B, N, C),
        dense prompt embedding (B or 1, C, E, E),
        high_res (finest (B|1, C/8, 4E, 4E), (B|1, C/4, 2E, 2E)).

        One image and one dense embedding (batch 1) for B prompts — clicks without a mask
        input, as segment-everything asks — are not repeated B times: the transformer shares
        what does not depend on the prompt (same results, a quarter less work per click)."""
        b = sparse.shape[0]
        out_tokens = torch.cat(
            (self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight), dim=0
        )
        tokens = torch.cat((out_tokens[None].expand(b, -1, -1), sparse), dim=1)
        if image.shape[0] != 1 or dense.shape[0] != 1:
            image = image.expand(b, -1, -1, -1)
        src = image + dense  # (B|1, C, E, E)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, image_pe, tokens)
        obj_token, iou_token = hs[:, 0], hs[:, 1]
        mask_tokens = hs[:, 2 : 2 + NUM_MULTIMASK + 1]  # (B, 4, C)

        src = src.transpose(1, 2).reshape(b, c, h, w)
        feat_s0, feat_s1 = high_res
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        up = act1(norm1(deconv1(src) + feat_s1))
        up = act2(deconv2(up) + feat_s0)  # (B, C/8, 4E, 4E)

        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, 4, C/8)
        _, uc, uh, uw = up.shape
        # The mask logits in fp32 whatever the precision (the hypernetwork heads are fp32).
        masks = (hyper @ up.reshape(b, uc, uh * uw).to(hyper.dtype)).reshape(b, -1, uh, uw)
        return DecoderOutput(
            masks,
            self.iou_prediction_head(iou_token),
            mask_tokens,
            self.pred_obj_score_head(obj_token),
        )


def stability_scores(mask_logits: torch.Tensor, delta: float = STABILITY_DELTA) -> torch.Tensor:
    """IoU between the mask thresholded at +delta and at -delta: (..., H, W) -> (...)."""
    flat = mask_logits.flatten(-2)
    inter = (flat > delta).sum(-1).float()
    union = (flat > -delta).sum(-1).float()
    return torch.where(union > 0, inter / union, 1.0)


def select_masks(out: DecoderOutput, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the decoder's answer: the three multimask hypotheses, or one mask.

    With one mask requested, the single-mask token is used unless its logits are unstable
    (stability < 0.98), in which case the best multimask hypothesis (by predicted IoU) stands in.
    This is the "dynamic multimask" behaviour of the released predictors.
    Returns masks (B, M, 4E, 4E) and ious (B, M), M = 3 or 1.
    """
    if multimask:
        return out.masks[:, 1:], out.ious[:, 1:]
    multi_ious = out.ious[:, 1:]
    best = multi_ious.argmax(dim=-1)
    rows = torch.arange(best.shape[0], device=best.device)
    best_masks = out.masks[:, 1:][rows, best][:, None]
    best_ious = multi_ious[rows, best][:, None]
    single_masks, single_ious = out.masks[:, :1], out.ious[:, :1]
    stable = stability_scores(single_masks) >= STABILITY_THRESHOLD  # (B, 1)
    masks = torch.where(stable[..., None, None], single_masks, best_masks)
    ious = torch.where(stable, single_ious, best_ious)
    return masks, ious
