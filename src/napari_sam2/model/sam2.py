"""SAM 2 assembled: the network parts plus the learned embeddings that tie them together,
exposed as frame-level steps (encode an image, decode prompts, condition on memory, encode a
memory). Trackers and predictors in ``napari_sam2.engine`` drive these steps; this module keeps
no per-video state.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, sine_encoding_1d
from .config import SAM2Config
from .image_encoder import ImageEncoder
from .mask_decoder import DecoderOutput, MaskDecoder, select_masks
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .precision import DTYPES, resolve_precision, set_compute_dtype
from .prompt_encoder import PromptEncoder

NO_OBJECT_LOGIT = -1024.0  # mask logits of a frame where the object is judged absent
# Mask memories see sigmoid(mask) * 20 - 10 (a binary mask maps to exactly ±10).
MEMORY_MASK_SCALE, MEMORY_MASK_BIAS = 20.0, -10.0


class ImageEmbedding(NamedTuple):
    """One or more encoded images (batch first).

    features: (B, C, E, E) top-level features, before any memory conditioning.
    high_res: finest first, (B, C/8, 4E, 4E) and (B, C/4, 2E, 2E), projected for the decoder.
    pos: (1, C, E, E) sine position encoding of ``features``.
    """

    features: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]
    pos: torch.Tensor

    def select(self, index: int) -> ImageEmbedding:
        """The embedding of one image of the batch, keeping a batch axis of 1."""
        s = slice(index, index + 1)
        return ImageEmbedding(
            self.features[s], (self.high_res[0][s], self.high_res[1][s]), self.pos
        )


class SAM2Model(nn.Module):
    """The SAM 2 network. Parameter names follow Meta's checkpoints exactly.

    ``precision`` (see :mod:`.precision`): "fp32" (exact, the default) or a reduced one in
    which the :data:`REDUCED_PARTS` compute with weights converted once; set it with
    :meth:`set_precision`. Mask logits, scores and object pointers come back in fp32 whatever
    the precision.
    """

    # The parts that do the large products; the rest (the prompt encoder, the decoder's
    # hypernetwork, IoU and object-score heads, the object-pointer projections) stays fp32.
    REDUCED_PARTS = (
        "image_encoder",
        "memory_attention",
        "memory_encoder",
        "sam_mask_decoder.transformer",
        "sam_mask_decoder.output_upscaling",
        "sam_mask_decoder.conv_s0",
        "sam_mask_decoder.conv_s1",
    )

    def __init__(self, config: SAM2Config) -> None:
        super().__init__()
        self.config = config
        c, m = config.hidden_dim, config.mem_dim
        self.image_encoder = ImageEncoder(config.trunk, c)
        self.sam_prompt_encoder = PromptEncoder(c, config.embedding_size, config.image_size)
        self.sam_mask_decoder = MaskDecoder(c)
        self.memory_attention = MemoryAttention(c, m, config.memory_attention_layers)
        self.memory_encoder = MemoryEncoder(c, m)

        # Temporal position of each mask-memory slot (index num_maskmem-1 = conditioning frames).
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, m))
        # Added to the features of a frame that has no memory to attend to (first prompted frame).
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(
            torch.zeros(1, 1, c)
        )  # unused at inference; in checkpoints
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(c, c, c, 3)
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        if config.is_sam21:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, m))
            self.obj_ptr_tpos_proj = nn.Linear(c, m)
        self.precision = "fp32"
        self.compiled = False
        self.eval()

    def set_precision(self, precision: str) -> SAM2Model:
        """fp32, bf16, fp16 or auto (chosen for the model's device); raises
        :class:`~.precision.PrecisionError` where the device cannot compute it fast. A reduced
        precision converts the weights of :data:`REDUCED_PARTS` now, once, into copies beside
        the fp32 parameters, which it never changes: fp32 gives back the exact model, and the
        state dict is always fp32."""
        self.precision = resolve_precision(precision, self.device)
        dtype = None if self.precision == "fp32" else DTYPES[self.precision]
        for name in self.REDUCED_PARTS:
            set_compute_dtype(self.get_submodule(name), dtype)
        return self

    def state_token(self) -> tuple:
        """Changes whenever what the network computes may change: its precision, or a parameter
        changed in place (its version counter: an optimiser step, ``load_state_dict``) or
        replaced (its storage). Results computed under equal tokens are reproducible. (As for
        :class:`~.precision.CastOnce`, an edit through ``weight.data`` leaves no trace.)"""
        versions = tuple((p.data_ptr(), p._version) for p in self.parameters())
        return self.precision, hash(versions)

    def compile_parts(self) -> SAM2Model:
        """``torch.compile`` the image encoder (fixed input size) and the memory attention,
        the two parts that do almost all of the work. Worth it on a GPU; on a CPU it costs
        about half a minute of compilation per part and gains nothing measurable (2-core AVX-512
        machine). Parameter names are unchanged (``Module.compile``)."""
        self.image_encoder.compile(dynamic=False)
        self.memory_attention.compile()
        self.compiled = True
        return self

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    # ---------------------------------------------------------------- image
    def encode_image(self, images: torch.Tensor) -> ImageEmbedding:
        """(B, 3, S, S) normalised images -> :class:`ImageEmbedding`."""
        levels, pos = self.image_encoder(images)
        high_res = (
            self.sam_mask_decoder.conv_s0(levels[0]),
            self.sam_mask_decoder.conv_s1(levels[1]),
        )
        return ImageEmbedding(levels[2], high_res, pos[2])

    def decode(
        self,
        features: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None = None,
    ):
        """Run the prompt encoder and the mask decoder.

        features (B|1, C, E, E) — already conditioned (memory, or ``no_mem_embed``).
        points (B, N, 2) as (x, y) in input-image pixels with labels (B, N) — box corners are
        points labelled 2 and 3, placed first. ``mask_logits`` (B, 1, 4E, 4E) or None.
        Returns the raw :class:`~.mask_decoder.DecoderOutput` (all four hypotheses).
        """
        pe = self.sam_prompt_encoder
        if points is not None:
            # The released predictors always append one "not a point" token, box or not.
            sparse = pe.embed_points(points, labels)
            batch = sparse.shape[0]
        else:
            batch = mask_logits.shape[0] if mask_logits is not None else features.shape[0]
            sparse = torch.empty(batch, 0, pe.embed_dim, device=features.device)
        dense = pe.embed_mask(mask_logits)  # (1, C, E, E) without a mask: shared
        out = self.sam_mask_decoder(features, pe.dense_pe(), sparse, dense, high_res)
        return DecoderOutput(*(t.float() for t in out))  # logits and scores in fp32, always

    # ---------------------------------------------------------------- video steps
    def condition_on_memory(
        self,
        features: torch.Tensor,
        pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
        memory_mask: torch.Tensor | None = None,
        frame_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C, E, E) features attend to (B, M, mem_dim) memory -> (B, C, E, E).

        ``features`` may be (1, C, E, E) for B objects on the same frame. ``frame_tokens``:
        :meth:`memory_frame_tokens` of the frame, computed once for all its objects (else it is
        computed here). ``memory_mask`` (B, 1, 1, M) bool excludes padding where objects differ
        in memory size."""
        _, c, h, w = features.shape
        b = memory.shape[0]
        if frame_tokens is None:
            frame_tokens = self.memory_frame_tokens(features, pos)
        out = self.memory_attention.attend(
            frame_tokens, memory, memory_pos, num_obj_ptr_tokens, memory_mask
        )
        return out.transpose(1, 2).reshape(b, c, h, w)

    def memory_frame_tokens(self, features: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(1|B, C, E, E) -> (1|B, EE, C): the memory attention's object-independent start."""
        tokens = features.flatten(2).transpose(1, 2)  # (1|B, HW, C)
        tokens_pos = pos.flatten(2).transpose(1, 2).expand(tokens.shape[0], -1, -1)
        return self.memory_attention.frame_tokens(tokens, tokens_pos)

    def without_memory(self, features: torch.Tensor) -> torch.Tensor:
        """Features of a frame with nothing to remember: ``no_mem_embed`` added everywhere."""
        return features + self.no_mem_embed.reshape(1, -1, 1, 1)

    def object_pointer(self, token: torch.Tensor, object_score: torch.Tensor) -> torch.Tensor:
        """(B, C) decoder output token, (B, 1) object score logit -> (B, C) object pointer.
        Where the object is absent the pointer is the learned ``no_obj_ptr``."""
        present = (object_score > 0).float()
        return present * self.obj_ptr_proj(token) + (1 - present) * self.no_obj_ptr

    def object_pointer_pos(self, offsets: torch.Tensor, max_offset: int) -> torch.Tensor:
        """Temporal encoding of object pointers (N,) frame offsets -> (N, mem_dim).
        SAM 2.1 encodes the signed offset and projects it; SAM 2 uses none (zeros)."""
        if not self.config.is_sam21:
            return offsets.new_zeros(offsets.shape[0], self.config.mem_dim, dtype=torch.float32)
        enc = sine_encoding_1d(offsets.float() / max_offset, self.config.hidden_dim)
        return self.obj_ptr_tpos_proj(enc)

    def encode_memory(
        self,
        features: torch.Tensor,
        mask_logits: torch.Tensor,
        object_score: torch.Tensor,
        binarize: bool,
        projected: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A frame's memory from its unconditioned features (1|B, C, E, E) and its full-size
        mask logits (B, 1, S, S). ``binarize`` thresholds the mask (frames prompted by clicks)
        instead of a sigmoid. ``projected``: the memory encoder's projection of the frame
        (:meth:`memory_frame_projection`), shared by its objects. Returns memory
        (B, mem_dim, E, E) and its PE (1, mem_dim, E, E)."""
        mask = (mask_logits > 0).float() if binarize else torch.sigmoid(mask_logits)
        mask = mask * MEMORY_MASK_SCALE + MEMORY_MASK_BIAS
        memory, pos = self.memory_encoder(features, mask, projected)
        if self.config.is_sam21:
            absent = (object_score <= 0).float()[..., None, None]  # (B, 1, 1, 1)
            memory = memory + absent * self.no_obj_embed_spatial[..., None, None]
        return memory, pos

    def memory_frame_projection(self, features: torch.Tensor) -> torch.Tensor:
        """The memory encoder's object-independent projection of a frame's features."""
        return self.memory_encoder.pix_feat_proj(features)

    def upscale_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        """(B, M, 4E, 4E) -> (B, M, S, S) bilinear, as the trackers use for memory encoding."""
        s = self.config.image_size
        return F.interpolate(low_res.float(), size=(s, s), mode="bilinear", align_corners=False)

    def decode_tracked(
        self, features, high_res, points, labels, mask_logits, multimask, stability_fallback=True
    ):
        """The tracker's decoding step: decode, pick masks, blank absent objects, make the pointer.

        ``stability_fallback=False`` (training) always answers a single-mask request with the
        single-mask token, as the reference does while training.

        Returns (masks (B, M, 4E, 4E), ious (B, M), best_mask (B, 1, 4E, 4E), pointer (B, C),
        object_score (B, 1)).
        """
        b = features.shape[0]
        if points is None:
            points = torch.zeros(b, 1, 2, device=features.device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=features.device)
        if (
            mask_logits is not None
            and mask_logits.shape[-1] != self.sam_prompt_encoder.mask_input_size
        ):
            size = self.sam_prompt_encoder.mask_input_size
            mask_logits = F.interpolate(
                mask_logits.float(),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        out = self.decode(features, high_res, points, labels, mask_logits)
        if multimask or stability_fallback:
            masks, ious = select_masks(out, multimask)
        else:
            masks, ious = out.masks[:, :1], out.ious[:, :1]
        present = out.object_score > 0  # (B, 1)
        masks = torch.where(present[..., None, None], masks, NO_OBJECT_LOGIT).float()
        rows = torch.arange(b, device=masks.device)
        if multimask:
            best = ious.argmax(dim=-1)
            best_mask = masks[rows, best][:, None]
            token = out.tokens[:, 1:][rows, best]
        else:
            best_mask = masks
            token = out.tokens[:, 0]
        pointer = self.object_pointer(token, out.object_score).float()
        return masks, ious, best_mask, pointer, out.object_score
