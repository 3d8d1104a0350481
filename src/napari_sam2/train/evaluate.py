"""Validation while training: one-click IoU on images, tracking IoU over clips.

Each held-out object gets one positive click at its centre (the pixel farthest from its border)
on the first frame where it appears; the IoU of the best of the three answers (by predicted IoU,
as the predictors choose) is its one-click IoU. In a stack the object is then tracked through the
next frames of a clip, and the mean IoU over those frames is its tracking IoU. Masks are compared
at the model's input size."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from ..model.sam2 import SAM2Model
from .data import Sample, Source, load_sample
from .forward import track_clip
from .prompts import ClipPlan, PointPrompt, PromptSettings

MAX_VAL_OBJECTS = 16


def centre_click(mask: torch.Tensor) -> PointPrompt:
    """(H, W) bool -> one positive click (x, y) at the pixel farthest from the border."""
    dist = distance_transform_edt(np.pad(mask.cpu().numpy(), 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    points = torch.tensor([[[float(x), float(y)]]], device=mask.device)
    return PointPrompt(points, torch.ones(1, 1, dtype=torch.int32, device=mask.device))


def iou(pred: torch.Tensor, truth: torch.Tensor) -> float:
    union = (pred | truth).sum().item()
    return 1.0 if union == 0 else (pred & truth).sum().item() / union


@torch.no_grad()
def evaluate(
    model: SAM2Model,
    sources: list[Source],
    objects: set,
    image_size: int,
    clip_frames: int,
    embed,
) -> dict:
    """Mean one-click IoU (and tracking IoU, for stacks) of ``objects`` ((source, id) pairs).
    ``embed(source, frames)`` gives the frames' :class:`ImageEmbedding`."""
    one_click, tracking = [], []
    settings = PromptSettings(correction_points=0)
    for s, obj in sorted(objects)[:MAX_VAL_OBJECTS]:
        src = sources[s]
        first = min(t for t, ids in src.objects.items() if obj in ids)
        k = min(clip_frames, src.num_frames - first) if src.num_frames > 1 else 1
        sample = Sample(s, tuple(range(first, first + k)), (obj,))
        _, gt = load_sample(sources, sample, image_size)
        gt = gt.to(model.device)
        plan = ClipPlan(k, [0], [], True, points={0: centre_click(gt[0, 0])})
        frames = track_clip(
            model, embed(s, sample.frames), gt, plan, settings, np.random.default_rng(0), None
        )
        one_click.append(iou(frames[0].high_res[0, 0] > 0, gt[0, 0]))
        if k > 1:
            tracking.append(
                float(
                    np.mean(
                        [iou(f.high_res[0, 0] > 0, gt[t, 0]) for t, f in enumerate(frames) if t > 0]
                    )
                )
            )
    return {
        "one_click_iou": float(np.mean(one_click)) if one_click else None,
        "tracking_iou": float(np.mean(tracking)) if tracking else None,
        "objects": len(one_click),
    }
