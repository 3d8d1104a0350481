"""Our training forward, prompt simulation and loss against Meta's training code (``SAM2Train``
and ``MultiStepMultiMasksAndIous`` from the sam2 1.1.0 wheel): on identical random weights and a
fixed batch, with both sides' prompt sampling seeded alike (numpy for the decisions, torch for
the clicks and box noise), every loss term and the gradient of every parameter agree.

The batches: an image with two objects (the image path: one click or a box, then 7 correction
clicks), and a clip of 3 frames with two objects (the memory path: 1-2 initial conditioning
frames prompted by clicks, boxes or masks, corrections, a tracked frame attending to memories and
object pointers). Training mode ``all``, so every parameter has a gradient to compare."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meta_train import build_meta_train, meta_batch, meta_loss

from napari_sam2.model import CONFIGS, SAM2Model
from napari_sam2.train.forward import encode_frames, track_clip
from napari_sam2.train.loss import clip_loss
from napari_sam2.train.prompts import PromptSettings, plan_clip

SIZE = 128
LOSS_TOL = 1e-5  # relative, per term
GRAD_TOL = 1e-4  # max |ours - Meta| over a tensor / max |Meta| over it
# The mask decoder's attention key biases have an exactly zero gradient (softmax ignores a
# shift common to all keys; unlike the memory attention's, they are not rotated by RoPE): both
# sides hold rounding noise there, compared against the largest gradient instead.
ZERO_BY_SYMMETRY = ("sam_mask_decoder.", "k_proj.bias")
NP_SEED, TORCH_SEED, WEIGHT_SEED = 11, 7, 5


def _batch(num_frames: int):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(num_frames, 3, SIZE, SIZE, generator=g)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    gt = torch.zeros(num_frames, 2, SIZE, SIZE, dtype=torch.bool)
    for t in range(num_frames):  # a disc and a rectangle, moving
        gt[t, 0] = (yy - 40 - 3 * t) ** 2 + (xx - 50) ** 2 < 20**2
        gt[t, 1] = ((yy - 90).abs() < 15) & ((xx - 80 - 4 * t).abs() < 25)
    return images, gt


def _run_both(num_frames: int, prompt: str):
    settings = PromptSettings(
        prob_points=0.0 if prompt == "mask" else 1.0, prob_box=1.0 if prompt == "box" else 0.0
    )
    meta = build_meta_train("sam2.1_hiera_tiny", SIZE, WEIGHT_SEED, settings)
    ours = SAM2Model(CONFIGS["sam2.1_hiera_tiny"].with_image_size(SIZE))
    ours.load_state_dict(meta.state_dict(), strict=True)
    ours.train()
    for model in (meta, ours):  # objects judged present, so that masks are real
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[2].bias += 1.0
    images, gt = _batch(num_frames)

    torch.manual_seed(TORCH_SEED)
    meta.rng = np.random.default_rng(NP_SEED)
    want = meta_loss()(meta(meta_batch(images, gt)), gt)
    want["core_loss"].backward()

    rng, gen = np.random.default_rng(NP_SEED), torch.Generator().manual_seed(TORCH_SEED)
    emb = encode_frames(ours, images, encoder_trained=True)
    plan = plan_clip(gt, settings, rng, gen)
    frames = track_clip(ours, emb, gt, plan, settings, rng, gen)
    got = clip_loss([f.steps for f in frames], gt)
    got["total"].backward()
    return meta, ours, want, got, plan


CASES = [(1, "clicks"), (1, "box"), (3, "clicks"), (3, "box"), (3, "mask")]


@pytest.mark.parametrize(("num_frames", "prompt"), CASES, ids=[f"{t}f-{p}" for t, p in CASES])
def test_loss_and_gradients_match_meta_training(num_frames, prompt):
    meta, ours, want, got, plan = _run_both(num_frames, prompt)
    # What the case exercises (so that it cannot silently test less).
    assert plan.use_points == (prompt != "mask")
    if num_frames == 3:
        assert len(plan.init_cond_frames) < 3, "no tracked frame: memory attention untested"
    if prompt != "mask":
        assert plan.correct_frames, "no correction clicks"

    for key in ("mask", "dice", "iou", "class", "total"):
        a, b = float(got[key]), float(want["core_loss" if key == "total" else f"loss_{key}"])
        assert b != 0.0
        assert abs(a - b) <= LOSS_TOL * abs(b), (key, a, b)

    reference = dict(meta.named_parameters())
    largest = max(p.grad.abs().max() for p in reference.values() if p.grad is not None)
    worst, compared = 0.0, 0
    for name, p in ours.named_parameters():
        a, b = p.grad, reference[name].grad
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if name.startswith(ZERO_BY_SYMMETRY[0]) and name.endswith(ZERO_BY_SYMMETRY[1]):
            assert a.abs().max() <= 1e-6 * largest and b.abs().max() <= 1e-6 * largest, name
            continue
        scale = b.abs().max()
        if scale == 0:
            assert a.abs().max() == 0, name
            continue
        rel = float((a - b).abs().max() / scale)
        worst = max(worst, rel)
        assert rel <= GRAD_TOL, (name, rel)
        compared += 1
    assert compared > 200  # the whole network, not a few heads
    if num_frames == 3 and prompt != "mask":
        memory_grad = reference["memory_attention.layers.0.cross_attn_image.q_proj.weight"].grad
        assert memory_grad.abs().max() > 0
    print(f"{num_frames} frame(s), {prompt}: worst gradient rel. diff {worst:.2e}")
