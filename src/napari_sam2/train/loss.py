"""The training loss of SAM 2, as a pure function of the predictions and the ground truth.

It equals Meta's ``MultiStepMultiMasksAndIous`` with the sam2.1 fine-tuning weights (focal 20,
dice 1, IoU 1, object score 1; IoU predictions supervised on every hypothesis with an L1 loss;
the object score by plain binary cross-entropy). For every prediction step of every frame:

- focal and dice losses of each mask hypothesis against the object; with several hypotheses
  only the best one (lowest 20 * focal + dice) is back-propagated, as in SAM;
- the L1 error of the predicted IoU of every hypothesis against its real IoU;
- mask and IoU terms count only where the object is present on the frame; the object-score term
  teaches presence everywhere.

Each term is divided by the number of objects and summed over steps and frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WEIGHTS = {"mask": 20.0, "dice": 1.0, "iou": 1.0, "class": 1.0}
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


@dataclass
class Prediction:
    """One decoding step of B objects on one frame: ``masks`` (B, M, S, S) logits at the
    input size, ``ious`` (B, M) predicted IoU, ``object_score`` (B, 1) logit."""

    masks: torch.Tensor
    ious: torch.Tensor
    object_score: torch.Tensor


def focal_terms(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float):
    """Per-pixel sigmoid focal loss (RetinaNet) of logits against a {0, 1} target."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_true) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss


def step_losses(pred: Prediction, target: torch.Tensor, num_objects: float) -> dict:
    """The four terms of one step; ``target`` (B, 1, S, S) float."""
    logits = pred.masks
    target = target.expand_as(logits)
    focal = focal_terms(logits, target, FOCAL_ALPHA, FOCAL_GAMMA).flatten(2).mean(-1)  # (B, M)
    probs = logits.sigmoid().flatten(2)
    flat_target = target.flatten(2)
    dice = 1 - (2 * (probs * flat_target).sum(-1) + 1) / (
        probs.sum(-1) + flat_target.sum(-1) + 1
    )  # (B, M)
    predicted, truth = logits.flatten(2) > 0, flat_target > 0
    inter = (predicted & truth).sum(-1).float()
    union = (predicted | truth).sum(-1).float()
    real_iou = inter / union.clamp(min=1.0)
    iou_err = (pred.ious - real_iou).abs()  # (B, M)
    present = truth[:, 0].any(-1, keepdim=True).float()  # (B, 1)
    score = focal_terms(pred.object_score, present, alpha=-1, gamma=0.0)  # plain BCE
    if logits.shape[1] > 1:
        best = (WEIGHTS["mask"] * focal + WEIGHTS["dice"] * dice).argmin(-1, keepdim=True)
        focal, dice = focal.gather(1, best), dice.gather(1, best)
        iou_err = iou_err.mean(-1, keepdim=True)  # every hypothesis's IoU is supervised
    return {
        "mask": (focal * present).sum() / num_objects,
        "dice": (dice * present).sum() / num_objects,
        "iou": (iou_err * present).sum() / num_objects,
        "class": score.mean(1).sum() / num_objects,
    }


def clip_loss(
    predictions: Sequence[Sequence[Prediction]], targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``predictions[t]``: the steps on frame t; ``targets`` (T, B, S, S) bool.

    Returns the terms ``mask`` (focal), ``dice``, ``iou``, ``class`` (object score), each summed
    over frames and steps, and ``total``, their weighted sum (the training objective)."""
    num_objects = max(float(targets.shape[1]), 1.0)
    terms = {k: targets.new_zeros((), dtype=torch.float32) for k in WEIGHTS}
    for steps, target in zip(predictions, targets):
        target = target[:, None].float()
        for pred in steps:
            for k, v in step_losses(pred, target, num_objects).items():
                terms[k] = terms[k] + v
    terms["total"] = sum(WEIGHTS[k] * terms[k] for k in WEIGHTS)
    return terms
