"""All eight official configurations: the same parameters (names and shapes, both ways) and the
same image-encoder features as Meta's implementation. Small 256-pixel inputs keep this fast;
the trunk's windowing, padding and position embeddings all take part at that size."""

from __future__ import annotations

import pytest
import torch
from official import build_official

from napari_sam2.model import CONFIGS, MODEL_NAMES, SAM2Model

TOL = 1e-4


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_matches_official(name):
    official = build_official(name, seed=3)
    ours = SAM2Model(CONFIGS[name])
    expected = official.state_dict()

    # Ours loads the official state dict strictly, and the official model loads ours.
    ours.load_state_dict(expected, strict=True)
    official.load_state_dict(ours.state_dict(), strict=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in expected.items()
    }

    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        theirs = official.forward_image(x)
        emb = ours.encode_image(x)
    levels = theirs["backbone_fpn"]
    assert len(levels) == 3
    for got, want in zip((*emb.high_res, emb.features), levels):
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= TOL
    assert (emb.pos - theirs["vision_pos_enc"][2]).abs().max().item() <= TOL
    assert levels[2].std() > 0.1
