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


def model_masks(masks, model: SAM2Model) -> torch.Tensor:
    """(H, W) bool masks -> (N, 1, S, S) float 0/1 at the model's input size: resized as floats
    (bilinear, antialiased) and thresholded at 0.5, as the official add_new_mask."""
    s = model.config.image_size
    t = torch.from_numpy(np.stack(masks)).float()[:, None].to(model.device)
    if t.shape[-2:] != (s, s):
        t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    return (t >= 0.5).float()


def label_records(
    model: SAM2Model, emb: ImageEmbedding, labels: np.ndarray, ids, absent, batch: int
) -> tuple[list[tuple[int, FrameRecord]], list[int]]:
    """Each id of ``ids`` in the label image ``labels`` as a mask prompt's record (an id of
    ``absent`` as an empty mask), ``batch`` objects at a time: ([(id, record)], dropped), where
    dropped are the ids whose mask vanishes at the model's input size."""
    records, dropped = [], []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        masks = model_masks([labels == i for i in chunk], model)
        kept = masks.flatten(1).any(dim=1) | torch.tensor([i in absent for i in chunk])
        dropped += [i for i, k in zip(chunk, kept.tolist()) if not k]
        chunk = [i for i, k in zip(chunk, kept.tolist()) if k]
        if chunk:
            made = mask_as_output(model, emb, masks[kept])
            records += [(obj_id, made.select(i)) for i, obj_id in enumerate(chunk)]
    return records, dropped
