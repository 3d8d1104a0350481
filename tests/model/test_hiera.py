"""The Hiera trunk's position embedding: interpolated once per size, not once per frame, and
made again when its parameters change."""

from __future__ import annotations

import torch

from napari_sam2.model import CONFIGS
from napari_sam2.model.hiera import Hiera


def test_the_position_embedding_is_kept_per_size_until_its_parameters_change():
    torch.manual_seed(0)
    trunk = Hiera(CONFIGS["sam2.1_hiera_tiny"].trunk)
    with torch.no_grad():
        trunk.pos_embed.normal_()
        trunk.pos_embed_window.normal_()
        first = trunk.position_embedding(32, 32)
        assert trunk.position_embedding(32, 32) is first  # kept: not interpolated again
        assert trunk.position_embedding(16, 16).shape == (1, 16, 16, 96)
        trunk.pos_embed.add_(1.0)  # an optimiser step, a loaded state dict
        changed = trunk.position_embedding(32, 32)
        assert torch.allclose(changed, first + 1.0, atol=1e-5)
    with_grad = trunk.position_embedding(32, 32)  # training: computed, with its graph
    assert with_grad.requires_grad and torch.equal(with_grad.detach(), changed)
