"""The network parts that the video tracker uses, each against Meta's implementation on the same
inputs: memory attention (RoPE self/cross attention with object-pointer tokens), the memory
encoder, the tracker's decoding step with object pointers, and the object-pointer temporal
encoding (SAM 2 and SAM 2.1). Random weights; small inputs where the size does not matter."""

from __future__ import annotations

import pytest
import torch
from official import build_official
from sam2.modeling.sam2_utils import get_1d_sine_pe

from napari_sam2.model import CONFIGS, SAM2Model

TOL = 1e-4


@pytest.fixture(scope="module", params=["sam2.1_hiera_tiny", "sam2_hiera_tiny"])
def pair(request):
    official = build_official(request.param, seed=5, video=True)
    ours = SAM2Model(CONFIGS[request.param])
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_memory_attention(pair):
    official, ours = pair
    b, side, frames, ptrs = 2, 16, 3, 8
    n = side * side
    feats, pos = _randn(b, 256, side, side, seed=1), _randn(1, 256, side, side, seed=2)
    memory, memory_pos = (
        _randn(b, frames * n + ptrs, 64, seed=3),
        _randn(b, frames * n + ptrs, 64, seed=4),
    )
    got = ours.condition_on_memory(feats, pos, memory, memory_pos, num_obj_ptr_tokens=ptrs)
    seq = lambda t: t.flatten(2).permute(2, 0, 1)  # noqa: E731  (B, C, H, W) -> (HW, B, C)
    want = official.memory_attention(
        curr=[seq(feats)],
        curr_pos=[seq(pos.expand(b, -1, -1, -1))],
        memory=memory.transpose(0, 1),
        memory_pos=memory_pos.transpose(0, 1),
        num_obj_ptr_tokens=ptrs,
    )
    want = want.permute(1, 2, 0).reshape(b, 256, side, side)
    assert (got - want).abs().max().item() <= TOL
    assert want.std() > 0.1


@torch.inference_mode()
@pytest.mark.parametrize("binarize", [False, True])
def test_memory_encoder(pair, binarize):
    official, ours = pair
    b, side = 2, 16
    feats = _randn(b, 256, side, side, seed=6)
    mask = 5 * _randn(b, 1, 16 * side, 16 * side, seed=7)
    score = torch.tensor([[2.0], [-3.0]])  # one present, one absent object
    got, got_pos = ours.encode_memory(feats, mask, score, binarize=binarize)
    official.binarize_mask_from_pts_for_mem_enc = True
    want, want_pos = official._encode_new_memory(
        current_vision_feats=[feats.flatten(2).permute(2, 0, 1)],
        feat_sizes=[(side, side)],
        pred_masks_high_res=mask,
        object_score_logits=score,
        is_mask_from_pts=binarize,
    )
    assert (got - want).abs().max().item() <= TOL
    assert (got_pos - want_pos[0]).abs().max().item() <= TOL
    assert want.std() > 0.1


@torch.inference_mode()
@pytest.mark.parametrize("prompt", ["one_click", "clicks", "mask", "none"])
def test_tracked_decoding_and_object_pointer(pair, prompt):
    official, ours = pair
    b = 2
    feats = _randn(b, 256, 64, 64, seed=8)
    high_res = (_randn(b, 32, 256, 256, seed=9), _randn(b, 64, 128, 128, seed=10))
    points = labels = mask = None
    if prompt == "one_click":
        points, labels = (
            torch.tensor([[[300.0, 400.0]], [[700.0, 100.0]]]),
            torch.ones(b, 1, dtype=torch.int32),
        )
    elif prompt == "clicks":
        points = torch.tensor([[[300.0, 400.0], [10.0, 20.0]], [[700.0, 100.0], [500, 500]]])
        labels = torch.tensor([[1, 0], [1, 1]], dtype=torch.int32)
    elif prompt == "mask":
        mask = 3 * _randn(b, 1, 1024, 1024, seed=11)
    multimask = prompt in ("one_click", "none")
    point_inputs = None if points is None else {"point_coords": points, "point_labels": labels}
    want = official._forward_sam_heads(
        backbone_features=feats,
        point_inputs=point_inputs,
        mask_inputs=mask,
        high_res_features=list(high_res),
        multimask_output=multimask,
    )
    masks, ious, best, pointer, score = ours.decode_tracked(
        feats, high_res, points, labels, mask, multimask
    )
    for got, ref in zip(
        (masks, ious, best, pointer, score), (want[0], want[2], want[3], want[5], want[6])
    ):
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= TOL
    assert want[5].std() > 0.01


@torch.inference_mode()
def test_object_pointer_temporal_encoding(pair):
    official, ours = pair
    offsets = torch.tensor([-3, 0, 1, 5, 15])
    got = ours.object_pointer_pos(offsets, max_offset=15)
    if ours.config.is_sam21:
        want = official.obj_ptr_tpos_proj(get_1d_sine_pe(offsets / 15, dim=256))
    else:
        want = torch.zeros(5, 64)
    assert (got - want).abs().max().item() <= TOL
