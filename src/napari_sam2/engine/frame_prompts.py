"""A user's prompt on one frame as the model reads it: clicks and boxes scaled to the model's
input (new clicks added to the frame's earlier ones unless they replace them), masks resized to
the input as the official ``add_new_mask`` does, and a label image's objects made into records
of their masks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model import SAM2Model
from ..model.sam2 import ImageEmbedding
from .conditioning import mask_as_output
from .memory_bank import FramePrompt, FrameRecord, ObjectMemory
from .prompts import Prompt, PromptError, mask_prompt, to_model_points
from .window_frames import label_parts
from .window_masks import WindowMasks, mask_bounds, mask_rows


def build_frame_prompt(
    model: SAM2Model,
    obj: ObjectMemory | None,
    frame: int,
    obj_id: int,
    shape: tuple[int, int],
    points,
    labels,
    box,
    mask,
    replace: bool,
) -> tuple[FramePrompt, torch.Tensor | None]:
    """The prompt of object ``obj_id`` (its memory ``obj``, None if new) on ``frame``, and the
    mask at the model's input size for a mask prompt (None otherwise)."""
    if mask is not None:
        if points is not None or box is not None:
            raise PromptError("give either a mask or points/box in one add_prompt call")
        try:
            m = mask_prompt(mask, shape)
        except PromptError as e:
            raise PromptError(f"object {obj_id}, frame {frame}: {e}") from None
        return FramePrompt(is_mask=True), model_masks([m], model)
    new = Prompt.build(shape, points, labels, box)
    coords, lbl = to_model_points(new, shape, model.config.image_size, model.device)
    if coords is None:
        raise PromptError("give points (with labels), a box or a mask")
    old = None if obj is None else obj.prompts.get(frame)
    if old is not None and old.points is not None and box is None and not replace:
        coords = torch.cat((old.points, coords), dim=1)
        lbl = torch.cat((old.labels, lbl), dim=1)
    return FramePrompt(points=coords, labels=lbl), None


# Frames up to this many pixels are resized by F.interpolate itself, exactly as the official
# add_new_mask; larger ones from their masks' bounding boxes (:func:`resize_from_bounds`).
EXACT_RESIZE_PIXELS = 2048 * 2048
_STRIP_PIXELS = 1 << 22  # mask pixels turned into floats at a time on the bounding-box path


def model_masks(masks, model: SAM2Model) -> torch.Tensor:
    """(H, W) bool masks (arrays, or one-mask :class:`~.window_masks.WindowMasks`) -> (N, 1, S, S)
    float 0/1 at the model's input size: resized as floats (bilinear, antialiased) and
    thresholded at 0.5, as the official add_new_mask. Frames above
    :data:`EXACT_RESIZE_PIXELS` are resized from each mask's bounding box only (the same
    weights, no full-frame float array; a cropped mask never made full); an empty one is zeros
    without work."""
    s = model.config.image_size
    return torch.stack([_model_mask(m, s, model.device) for m in masks])[:, None]


def _model_mask(mask, s: int, device) -> torch.Tensor:
    h, w = mask.shape
    if (h, w) == (s, s) or h * w <= EXACT_RESIZE_PIXELS:
        t = torch.from_numpy(np.asarray(mask)).float()[None, None].to(device)
        if (h, w) != (s, s):
            t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (t[0, 0] >= 0.5).float()
    return torch.from_numpy(resize_from_bounds(mask, s) >= 0.5).float().to(device)


def resize_from_bounds(mask, s: int) -> np.ndarray:
    """An (H, W) mask (array or one-mask WindowMasks) as (s, s) float64 values of
    ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``, computed from the
    mask's bounding box alone: separable, with PyTorch's weights (:func:`antialias_weights`),
    rows read a strip at a time. Agrees with F.interpolate to float32 rounding."""
    h, w = mask.shape
    out = np.zeros((s, s))
    bounds = mask_bounds(mask)
    if bounds is None:
        return out
    r0, c0, r1, c1 = bounds
    rows, cols = antialias_weights(h, s), antialias_weights(w, s)
    ka, kb = _touching(cols, c0, c1)
    across = np.zeros((r1 - r0, kb - ka), np.float32)  # the horizontal pass, bbox rows only
    step = max(1, _STRIP_PIXELS // (c1 - c0))
    for a in range(r0, r1, step):
        b = min(a + step, r1)
        part = mask_rows(mask, a, b, c0, c1).astype(np.float32)
        across[a - r0 : b - r0] = _pass(part, c0, cols, ka, kb, np.float32)
    ia, ib = _touching(rows, r0, r1)
    out[ia:ib, ka:kb] = _pass(across.T, r0, rows, ia, ib, np.float64).T
    return out


def antialias_weights(n: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D weights of PyTorch's antialiased bilinear resize of ``n`` samples to ``s``, in its
    float32 arithmetic: (first input index (s,), support length (s,), weights (s, k)) with
    zeros past each output's support. For a downscale (scale = n / s > 1) output i is centred
    at scale * (i + 0.5) with a triangle of half-width scale; for an upscale the half-width is
    1 (plain bilinear); each output's weights are normalised to sum to 1."""
    f32 = np.float32
    scale = f32(n) / f32(s)
    support = scale if scale >= 1 else f32(1)
    invscale = f32(1 / np.float64(scale)) if scale >= 1 else f32(1)
    center = (np.float64(scale) * (np.arange(s) + 0.5)).astype(f32)
    first = np.maximum(((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    last = np.minimum(((center + support).astype(np.float64) + 0.5).astype(np.int64), n)
    k = int(np.ceil(support)) * 2 + 1
    size = np.clip(last - first, 0, k)
    j = (first[:, None] + np.arange(k)).astype(f32)
    x = np.abs((((j - center[:, None]).astype(np.float64) + 0.5) * invscale).astype(f32))
    wts = np.where(x < 1, f32(1) - x, f32(0)).astype(f32)
    wts[np.arange(k) >= size[:, None]] = 0
    total = np.zeros(s, f32)
    for t in range(k):  # summed in order, as PyTorch
        total = (total + wts[:, t]).astype(f32)
    wts = (wts / np.where(total == 0, f32(1), total)[:, None]).astype(f32)
    return first, size, wts


def _touching(axis, lo: int, hi: int) -> tuple[int, int]:
    """The outputs [a, b) whose support meets the input samples [lo, hi)."""
    first, size, _ = axis
    meets = np.flatnonzero((first < hi) & (first + size > lo))
    return (0, 0) if len(meets) == 0 else (int(meets[0]), int(meets[-1]) + 1)


def _pass(x: np.ndarray, x0: int, axis, a: int, b: int, dtype) -> np.ndarray:
    """Outputs [a, b) of the 1-D resize along the last axis of ``x``, which holds the input
    samples [x0, x0 + x.shape[-1]) (zeros elsewhere): each output's weighted sum, in order."""
    first, size, wts = axis
    k = wts.shape[1]
    n = x.shape[-1]
    padded = np.zeros((*x.shape[:-1], n + 2 * k), x.dtype)
    padded[..., k : k + n] = x
    index = np.clip(first[a:b, None] - x0 + k + np.arange(k), 0, n + 2 * k - 1)
    w = wts[a:b].astype(dtype)
    acc = np.zeros((*x.shape[:-1], b - a), dtype)
    for t in range(int(size[a:b].max(initial=0))):
        acc += padded[..., index[:, t]] * w[:, t]
    return acc


def label_records(
    model: SAM2Model, emb: ImageEmbedding, labels: np.ndarray, ids, absent, batch: int
) -> tuple[list[tuple[int, FrameRecord]], list[int]]:
    """Each id of ``ids`` in the label image ``labels`` as a mask prompt's record (an id of
    ``absent`` as an empty mask), ``batch`` objects at a time: ([(id, record)], dropped), where
    dropped are the ids whose mask vanishes at the model's input size. Each object's mask is
    cut from its bounding box (one pass over the image), never made full-frame on big ones."""
    records, dropped = [], []
    parts = label_parts(labels, [i for i in ids if i not in absent])
    shape = labels.shape
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        masks = model_masks([_label_mask(parts.get(i), shape) for i in chunk], model)
        kept = masks.flatten(1).any(dim=1) | torch.tensor([i in absent for i in chunk])
        dropped += [i for i, k in zip(chunk, kept.tolist()) if not k]
        chunk = [i for i, k in zip(chunk, kept.tolist()) if k]
        if chunk:
            made = mask_as_output(model, emb, masks[kept])
            records += [(obj_id, made.select(i)) for i, obj_id in enumerate(chunk)]
    return records, dropped


def _label_mask(part, shape: tuple[int, int]) -> WindowMasks:
    """An object's (top, left, crop) of a label image as its cropped mask (empty: absent)."""
    if part is None:
        return WindowMasks(np.zeros((0, 0), bool), (0, 0, 0, 0), shape)
    top, left, crop = part
    return WindowMasks(crop, (top, left, top + crop.shape[0], left + crop.shape[1]), shape)
