"""Building Meta's reference SAM 2 (``sam2==1.1.0``) with seeded random weights.

The parity tests compare our network against it. It is a hard requirement of the test suite:
if ``sam2`` is not installed, importing this module fails and the tests fail loudly
(``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import sam2  # noqa: F401  (a missing reference must fail, not skip)
import torch
from sam2.build_sam import build_sam2, build_sam2_video_predictor

_SIZE_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def config_file(name: str) -> str:
    """``"sam2.1_hiera_tiny"`` -> ``"configs/sam2.1/sam2.1_hiera_t.yaml"``."""
    family, size = name.split("_hiera_")
    return f"configs/{family}/{family}_hiera_{_SIZE_SUFFIX[size]}.yaml"


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter seeded random values, so that nothing is trivially zero or one
    (position embeddings, norms, layer scales start constant in a fresh model)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                p.copy_(p + 0.1 * noise)  # constant at init: norms, embeddings, layer scales
            else:
                p.add_(0.02 * noise)  # keep the default fan-in scale, change the values
    return model


def build_official(name: str, seed: int = 0, video: bool = False, overrides=()):
    """The official model ``name`` on the CPU with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    builder = build_sam2_video_predictor if video else build_sam2
    model = builder(
        config_file(name), ckpt_path=None, device="cpu", hydra_overrides_extra=list(overrides)
    )
    return randomize_(model, seed).eval()


def save_checkpoint(model: torch.nn.Module, path) -> None:
    """Save in the official file format."""
    torch.save({"model": model.state_dict()}, path)


def random_tiny(image_size: int, seed: int, object_bias: float = 0.0):
    """Our sam2.1_hiera_tiny at ``image_size`` with seeded random weights, in eval mode;
    ``object_bias`` pushes the object-score head towards "present" so that masks are real."""
    from napari_sam2.model import CONFIGS, SAM2Model

    torch.manual_seed(0)
    model = randomize_(SAM2Model(CONFIGS["sam2.1_hiera_tiny"].with_image_size(image_size)), seed)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias += object_bias
    return model.eval()
