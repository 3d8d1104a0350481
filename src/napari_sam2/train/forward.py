"""The training forward pass: a clip of frames and its objects through our SAM 2 network.

It runs the frame-level steps of :class:`~napari_sam2.model.SAM2Model` with gradients, in the
order and with the memory Meta's ``SAM2Train`` uses while training:

- the initial conditioning frames first (no memory: ``no_mem_embed``), then the others in order;
- a frame prompted by a mask takes that mask as its prediction (logits of +-10) and its object
  pointer from decoding the downsampled mask;
- a tracked frame attends to the memories of all conditioning frames, of the previous six
  frames, and to the object pointers of all conditioning frames (past and future) and of the
  previous frames of the clip;
- masks are memory-encoded through a sigmoid (never binarised while training); a frame that
  received correction clicks becomes a conditioning frame.

All objects of a clip are one batch. A single image is a clip of one frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..model.sam2 import MEMORY_MASK_BIAS, MEMORY_MASK_SCALE, ImageEmbedding, SAM2Model
from .loss import Prediction
from .prompts import ClipPlan, PointPrompt, PromptSettings, click_in_error


@dataclass
class FrameOutput:
    """What one frame leaves for the loss and for later frames (B objects)."""

    steps: list[Prediction]
    low_res: torch.Tensor  # (B, 1, 4E, 4E) final mask logits
    high_res: torch.Tensor  # (B, 1, S, S)
    pointer: torch.Tensor  # (B, C)
    memory: torch.Tensor | None = None  # (B, mem_dim, E, E)
    memory_pos: torch.Tensor | None = None  # (1, mem_dim, E, E)


def encode_frames(
    model: SAM2Model, images: torch.Tensor, encoder_trained: bool, use_checkpoint: bool = False
) -> ImageEmbedding:
    """(T, 3, S, S) -> :class:`ImageEmbedding` of T frames. The trunk and neck run without
    gradients when the image encoder is frozen; the decoder's projections of the finer levels
    (``conv_s0``/``conv_s1``, decoder parameters) always keep them."""
    if encoder_trained:
        if use_checkpoint:
            levels, pos = checkpoint(model.image_encoder, images, use_reentrant=False)
        else:
            levels, pos = model.image_encoder(images)
    else:
        with torch.no_grad():
            levels, pos = model.image_encoder(images)
    return embedding_from_levels(model, levels, pos)


def embedding_from_levels(model: SAM2Model, levels, pos) -> ImageEmbedding:
    decoder = model.sam_mask_decoder
    high_res = (decoder.conv_s0(levels[0]), decoder.conv_s1(levels[1]))
    return ImageEmbedding(levels[2], high_res, pos[2])


def track_clip(
    model: SAM2Model,
    emb: ImageEmbedding,
    gt: torch.Tensor,
    plan: ClipPlan,
    settings: PromptSettings,
    rng: np.random.Generator,
    gen: torch.Generator,
    use_checkpoint: bool = False,
) -> list[FrameOutput]:
    """Track the B objects of ``gt`` (T, B, S, S) bool through the T frames of ``emb`` with the
    prompts of ``plan``; corrections are drawn with ``rng`` and ``gen``. Returns the outputs of
    frames 0..T-1."""
    num_frames, b = gt.shape[:2]
    cond: dict[int, FrameOutput] = {}
    tracked: dict[int, FrameOutput] = {}
    for t in plan.processing_order:
        feats = emb.features[t : t + 1].expand(b, -1, -1, -1)
        high_res = tuple(h[t : t + 1].expand(b, -1, -1, -1) for h in emb.high_res)
        is_init = t in plan.init_cond_frames
        if t in plan.masks:
            out = _mask_as_output(model, feats, high_res, plan.masks[t])
        else:
            if is_init:
                conditioned = model.without_memory(feats)
            else:
                conditioned = _condition(
                    model, feats, emb.pos, t, num_frames, cond, tracked, use_checkpoint
                )
            prompt = plan.points.get(t)
            out = _decode(model, conditioned, high_res, prompt, None)
            if t in plan.correct_frames:
                for _ in range(settings.correction_points):
                    from_gt = settings.prob_sample_from_gt > 0 and bool(
                        rng.random() < settings.prob_sample_from_gt
                    )
                    frame_gt = gt[t][:, None]
                    click = click_in_error(frame_gt, None if from_gt else out.high_res > 0, gen)
                    prompt = click if prompt is None else prompt.add(click.points, click.labels)
                    step = _decode(model, conditioned, high_res, prompt, out.low_res)
                    step.steps = out.steps + step.steps
                    out = step
        if num_frames > 1:  # a single image's memory is never read
            out.memory, out.memory_pos = _encode_memory(model, feats, out)
        becomes_cond = is_init or (
            settings.corrected_frames_become_cond and t in plan.correct_frames
        )
        (cond if becomes_cond else tracked)[t] = out
    return [cond.get(t) or tracked[t] for t in range(num_frames)]


def _decode(model, features, high_res, prompt: PointPrompt | None, mask_logits) -> FrameOutput:
    """One decoding step; several masks for no click or one (not for a box or more clicks)."""
    points, labels = (None, None) if prompt is None else (prompt.points, prompt.labels)
    multimask = prompt is None or prompt.num_points <= 1
    masks, ious, best, pointer, score = model.decode_tracked(
        features, high_res, points, labels, mask_logits, multimask, stability_fallback=False
    )
    pred = Prediction(model.upscale_masks(masks), ious, score)
    return FrameOutput([pred], best, model.upscale_masks(best), pointer)


def _mask_as_output(model, features, high_res, mask: torch.Tensor) -> FrameOutput:
    """A frame prompted by its mask (B, 1, S, S) bool: the mask itself is the prediction."""
    high = mask.float() * MEMORY_MASK_SCALE + MEMORY_MASK_BIAS
    side = high.shape[-1] // 4
    low = F.interpolate(high, size=(side, side), mode="bilinear", antialias=True)
    # The pointer comes from decoding the downsampled mask, then follows the mask's presence.
    _, _, _, pointer, _ = model.decode_tracked(
        features, high_res, None, None, model.mask_downsample(mask.float()), False, False
    )
    present = mask.flatten(1).any(1, keepdim=True).float()  # (B, 1)
    pointer = present * pointer + (1 - present) * model.no_obj_ptr
    score = MEMORY_MASK_SCALE * present + MEMORY_MASK_BIAS
    ious = mask.new_ones(mask.shape[0], 1, dtype=torch.float32)
    return FrameOutput([Prediction(high, ious, score)], low, high, pointer)


def _encode_memory(model: SAM2Model, features, out: FrameOutput):
    score = out.steps[-1].object_score
    return model.encode_memory(features, out.high_res, score, binarize=False)


def _condition(model, feats, pos, t, num_frames, cond, tracked, use_checkpoint):
    """Frame ``t``'s features conditioned on the clip's memory so far (see the module doc)."""
    b = feats.shape[0]
    n_mem = model.config.num_maskmem
    tpos = model.maskmem_tpos_enc  # (num_maskmem, 1, 1, mem_dim)
    memories, memory_pos = [], []

    def add(out: FrameOutput, slot: int) -> None:
        memories.append(out.memory.flatten(2).transpose(1, 2))  # (B, EE, mem_dim)
        p = out.memory_pos.flatten(2).transpose(1, 2) + tpos[slot].reshape(1, 1, -1)
        memory_pos.append(p.expand(b, -1, -1))

    for out in cond.values():
        add(out, n_mem - 1)
    for slot_pos in range(1, n_mem):  # the previous six frames, oldest first
        prev = tracked.get(t - (n_mem - slot_pos))
        if prev is not None:
            add(prev, n_mem - slot_pos - 1)

    max_ptrs = min(num_frames, model.config.max_obj_ptrs)
    offsets = [t - c for c in cond]
    pointers = [out.pointer for out in cond.values()]
    for d in range(1, max_ptrs):
        if t - d < 0:
            break
        prev = tracked.get(t - d)
        if prev is not None:
            offsets.append(d)
            pointers.append(prev.pointer)
    num_ptr_tokens = 0
    if pointers:
        c, m = model.config.hidden_dim, model.config.mem_dim
        split = c // m
        ptrs = torch.stack(pointers, dim=1)  # (B, N, C)
        ptrs = ptrs.reshape(b, -1, m)  # each pointer: `split` tokens of mem_dim
        ptr_pos = model.object_pointer_pos(
            torch.tensor(offsets, device=feats.device), max_ptrs - 1
        )  # (N, mem_dim)
        ptr_pos = ptr_pos.repeat_interleave(split, dim=0)[None].expand(b, -1, -1)
        memories.append(ptrs)
        memory_pos.append(ptr_pos)
        num_ptr_tokens = ptrs.shape[1]
    memory = torch.cat(memories, dim=1)
    memory_pos = torch.cat(memory_pos, dim=1)
    if use_checkpoint:
        return checkpoint(
            model.condition_on_memory,
            feats,
            pos,
            memory,
            memory_pos,
            num_ptr_tokens,
            use_reentrant=False,
        )
    return model.condition_on_memory(feats, pos, memory, memory_pos, num_ptr_tokens)
