"""Simulated prompts for training, as Meta's ``SAM2Train`` draws them.

A training clip (one frame for an image) is prompted the way a user would: on one or two
*initial conditioning frames* the objects get either their ground-truth mask, or one click
inside each object, or a noisy box around it; then, on the frames chosen for correction, up to
``correction_points`` further clicks are placed one at a time in what the model still gets wrong
(a positive click on a missed pixel, a negative one on a wrong one), each decoded together with
the previous mask logits. The model is supervised on every one of these predictions.

Which kind of prompt and which frames are decided with a ``numpy`` generator, the clicks and the
box noise with a ``torch`` generator, in the same order as the reference draws them: with both
generators seeded as the reference's are, the prompts are identical (the parity tests rely on
it). Defaults are those of the sam2.1 fine-tuning configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

BOX_NOISE = 0.1  # box corners move by up to 10 % of the box side ...
BOX_NOISE_BOUND = 20  # ... and at most 20 pixels


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are simulated (the sam2.1 fine-tuning configuration's values)."""

    prob_points: float = 0.5  # clicks or a box rather than the ground-truth mask (clips)
    prob_box: float = 0.5  # of those, a box rather than one click
    prob_sample_from_gt: float = 0.1  # a correction click drawn from the object, not the error
    init_cond_frames: int = 2  # at most this many initial conditioning frames (first included)
    random_init_cond_frames: bool = True  # 1..init_cond_frames of them, drawn per clip
    frames_to_correct: int = 2  # frames that receive correction clicks (with points)
    random_frames_to_correct: bool = True
    corrected_frames_become_cond: bool = True
    correction_points: int = 7

    def __post_init__(self) -> None:
        for name in ("prob_points", "prob_box", "prob_sample_from_gt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.init_cond_frames < 1 or self.frames_to_correct < self.init_cond_frames:
            raise ValueError("need 1 <= init_cond_frames <= frames_to_correct")
        if self.correction_points < 0:
            raise ValueError("correction_points must be at least 0")


@dataclass
class PointPrompt:
    """Clicks or box corners of B objects on one frame: (B, P, 2) (x, y) in input pixels and
    (B, P) int32 labels (1 positive, 0 negative, 2/3 box corners)."""

    points: torch.Tensor
    labels: torch.Tensor

    def add(self, points: torch.Tensor, labels: torch.Tensor) -> PointPrompt:
        return PointPrompt(torch.cat((self.points, points), 1), torch.cat((self.labels, labels), 1))

    @property
    def num_points(self) -> int:
        return self.points.shape[1]


@dataclass
class ClipPlan:
    """The prompts of one clip, decided before it is tracked."""

    num_frames: int
    init_cond_frames: list[int]
    correct_frames: list[int]
    use_points: bool
    points: dict[int, PointPrompt] = field(default_factory=dict)  # initial clicks / boxes
    masks: dict[int, torch.Tensor] = field(default_factory=dict)  # (B, 1, S, S) bool

    @property
    def processing_order(self) -> list[int]:
        """Initial conditioning frames first (their memories are needed by the others), then
        the rest of the clip in order."""
        return self.init_cond_frames + [
            t for t in range(self.num_frames) if t not in self.init_cond_frames
        ]


def plan_clip(
    gt: torch.Tensor, settings: PromptSettings, rng: np.random.Generator, gen: torch.Generator
) -> ClipPlan:
    """Decide the prompts of a clip. ``gt`` (T, B, S, S) bool ground truth."""
    num_frames = gt.shape[0]
    prob_points, n_correct, n_init = (
        settings.prob_points,
        settings.frames_to_correct,
        (settings.init_cond_frames),
    )
    if num_frames == 1:  # a single image is always prompted by clicks or a box
        prob_points, n_correct, n_init = 1.0, 1, 1
    n_init = min(n_init, num_frames)
    use_points = bool(rng.random() < prob_points)
    if settings.random_init_cond_frames and n_init > 1:
        n_init = int(rng.integers(1, n_init, endpoint=True))
    if use_points and settings.random_frames_to_correct and n_correct > n_init:
        n_correct = int(rng.integers(n_init, n_correct, endpoint=True))
    init = [0]
    if n_init > 1:
        init += [int(t) for t in rng.choice(range(1, num_frames), n_init - 1, replace=False)]
    others = [t for t in range(num_frames) if t not in init]
    plan = ClipPlan(num_frames, init, [], use_points)
    for t in init:
        frame_gt = gt[t][:, None]  # (B, 1, S, S)
        if not use_points:
            plan.masks[t] = frame_gt
        elif rng.random() < settings.prob_box:
            plan.points[t] = noisy_box(frame_gt, gen)
        else:
            plan.points[t] = click_in_error(frame_gt, None, gen)
    if use_points:
        plan.correct_frames = list(init)
        extra = min(n_correct, num_frames) - n_init
        if extra > 0:
            plan.correct_frames += [int(t) for t in rng.choice(others, extra, replace=False)]
    return plan


def click_in_error(
    gt: torch.Tensor, pred: torch.Tensor | None, gen: torch.Generator
) -> PointPrompt:
    """One click per object, uniformly at random in its error region: (B, 1, H, W) bool ground
    truth and prediction (None: nothing predicted yet) -> :class:`PointPrompt` of one click.

    Every pixel of both error kinds gets a uniform random number (one draw per pixel and kind);
    the largest wins, so the click lands uniformly in the union of false negatives (a positive
    click) and false positives (a negative click). Where the prediction is already right, the
    click is a negative one on the background."""
    if pred is None:
        pred = torch.zeros_like(gt)
    b, _, h, w = gt.shape
    missed = gt & ~pred
    wrong = pred & ~gt
    perfect = (gt == pred).flatten(2).all(-1)[..., None, None]  # (B, 1, 1, 1)
    draw = torch.rand((b, 1, h, w, 2), generator=gen, device=gt.device)
    draw[..., 0] *= wrong | (perfect & ~gt)  # channel 0: negative clicks
    draw[..., 1] *= missed  # channel 1: positive clicks
    winner = draw.flatten(2).argmax(dim=2)  # (B, 1) over (pixel, kind)
    labels = (winner % 2).to(torch.int32)
    pixel = winner // 2
    points = torch.stack((pixel % w, pixel // w), dim=2).float()  # (B, 1, 2) as (x, y)
    return PointPrompt(points, labels)


def mask_box(gt: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool -> (B, 1, 4) int (x0, y0, x1, y1), inclusive pixel bounds."""
    _, _, h, w = gt.shape
    ys = torch.arange(h, device=gt.device, dtype=torch.int32)[:, None].expand(h, w)
    xs = torch.arange(w, device=gt.device, dtype=torch.int32)[None, :].expand(h, w)
    x0 = torch.where(gt, xs, w).flatten(-2).amin(-1)
    x1 = torch.where(gt, xs, -1).flatten(-2).amax(-1)
    y0 = torch.where(gt, ys, h).flatten(-2).amin(-1)
    y1 = torch.where(gt, ys, -1).flatten(-2).amax(-1)
    return torch.stack((x0, y0, x1, y1), dim=-1)


def noisy_box(gt: torch.Tensor, gen: torch.Generator) -> PointPrompt:
    """The bounding box of each object, each side moved at random by up to
    min(10 % of the box side, 20 px), clamped to the image: corners labelled 2 and 3."""
    b, _, h, w = gt.shape
    box = mask_box(gt)  # (B, 1, 4)
    bw, bh = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    bound = torch.tensor(BOX_NOISE_BOUND, device=gt.device)
    dx, dy = torch.min(bw * BOX_NOISE, bound), torch.min(bh * BOX_NOISE, bound)
    noise = 2 * torch.rand((b, 1, 4), generator=gen, device=gt.device) - 1
    box = box + noise * torch.stack((dx, dy, dx, dy), dim=-1)
    limit = torch.tensor([w, h, w, h], device=gt.device) - 1
    box = box.clamp(torch.zeros_like(limit), limit)
    labels = torch.tensor([2, 3], dtype=torch.int32, device=gt.device).repeat(b, 1)
    return PointPrompt(box.reshape(b, 2, 2), labels)
