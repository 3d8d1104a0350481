"""Meta's training model (``training.model.sam2.SAM2Train`` from the sam2 1.1.0 wheel) and loss
(``training.loss_fns.MultiStepMultiMasksAndIous``), built from the same configuration as ours with
identical random weights, for the training parity tests."""

from __future__ import annotations

import torch
from official import build_official
from training.loss_fns import MultiStepMultiMasksAndIous
from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

from napari_sam2.train.loss import WEIGHTS
from napari_sam2.train.prompts import PromptSettings


def build_meta_train(name: str, image_size: int, seed: int, settings: PromptSettings):
    """SAM2Train with the fine-tuning configuration's training switches, in training mode with
    dropout off (our network has none; the memory attention's config asks for 0.1)."""
    s = settings
    overrides = [
        "++model._target_=training.model.sam2.SAM2Train",
        f"++model.image_size={image_size}",
        f"++model.prob_to_use_pt_input_for_train={s.prob_points}",
        f"++model.prob_to_use_box_input_for_train={s.prob_box}",
        f"++model.prob_to_sample_from_gt_for_train={s.prob_sample_from_gt}",
        f"++model.num_frames_to_correct_for_train={s.frames_to_correct}",
        f"++model.rand_frames_to_correct_for_train={s.random_frames_to_correct}",
        f"++model.add_all_frames_to_correct_as_cond={s.corrected_frames_become_cond}",
        f"++model.num_init_cond_frames_for_train={s.init_cond_frames}",
        f"++model.rand_init_cond_frames_for_train={s.random_init_cond_frames}",
        f"++model.num_correction_pt_per_frame={s.correction_points}",
    ]
    model = build_official(name, seed=seed, overrides=overrides)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
        if hasattr(m, "dropout_p"):  # attention dropout of the memory attention
            m.dropout_p = 0.0
    return model


def meta_loss():
    weights = {f"loss_{k}": v for k, v in WEIGHTS.items()}
    return MultiStepMultiMasksAndIous(
        weights,
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def meta_batch(images: torch.Tensor, gt: torch.Tensor) -> BatchedVideoDatapoint:
    """(T, 3, S, S) normalised frames of one video and (T, O, S, S) bool masks."""
    t, o = gt.shape[:2]
    frame = torch.arange(t, dtype=torch.int)[:, None].expand(t, o)
    obj_to_frame = torch.stack((frame, torch.zeros_like(frame)), dim=-1)
    ids = torch.zeros(t, o, 3, dtype=torch.long)
    sizes = torch.full((t, o, 2), images.shape[-1], dtype=torch.long)
    return BatchedVideoDatapoint(
        img_batch=images[:, None],
        obj_to_frame_idx=obj_to_frame,
        masks=gt,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=ids, frame_orig_size=sizes, batch_size=[t]
        ),
        dict_key="all",
        batch_size=[t],
    )
