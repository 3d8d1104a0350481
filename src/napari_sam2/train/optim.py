"""What is trained and how: parameter selection (decoder / memory / all, or LoRA adapters on
the image encoder via PEFT), AdamW with the fine-tuning configuration's layer-wise learning-rate
decay and weight decay, a cosine schedule, and the merge of LoRA adapters into plain weights."""

from __future__ import annotations

import copy
import fnmatch
import math

import torch
from torch import nn

from ..model.sam2 import SAM2Model

TRAIN_MODES = ("decoder", "memory", "all")
LAYER_DECAY = 0.9  # per Hiera block, from the last block down to the patch embedding
VISION_LR_RATIO = 0.6  # the image encoder's learning rate against the rest (3e-6 / 5e-6)
WEIGHT_DECAY = 0.1  # none for biases and LayerNorm parameters
GRAD_CLIP = 0.1  # max L2 norm of all gradients together
FINAL_LR_RATIO = 0.1  # the cosine schedule ends at a tenth of the start
LORA_TARGETS = ("qkv", "proj", "layers.0", "layers.1")  # Hiera attention and MLP linears


def is_trained(name: str, mode: str) -> bool:
    """Whether parameter ``name`` of the plain model is trained in ``mode``."""
    if mode == "all":
        return True
    if name.startswith(("sam_prompt_encoder.", "sam_mask_decoder.")):
        return True
    return mode == "memory" and not name.startswith("image_encoder.")


def add_lora(model: SAM2Model, rank: int) -> None:
    """LoRA adapters (PEFT) of ``rank`` on the image encoder trunk's attention and MLP layers."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:  # an optional extra
        raise ImportError(
            "LoRA training needs the PEFT library: pip install 'napari-sam2[train]'"
        ) from e
    config = LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS)
    )
    inject_adapter_in_model(config, model.image_encoder.trunk)


def is_lora(name: str) -> bool:
    return ".lora_" in name


def merged_state_dict(model: SAM2Model) -> dict[str, torch.Tensor]:
    """The model's state dict in Meta's keys, LoRA adapters (if any) merged into the weights."""
    if not any(is_lora(n) for n, _ in model.named_parameters()):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    plain = copy.deepcopy(model)
    for parent in list(plain.modules()):
        for child_name, child in list(parent.named_children()):
            if hasattr(child, "merge") and hasattr(child, "get_base_layer"):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    return {k: v.detach().clone() for k, v in plain.state_dict().items()}


def prepare_trainable(model: SAM2Model, mode: str, lora_rank: int | None) -> list[str]:
    """Set ``requires_grad`` for ``mode`` (plus LoRA adapters); return the trained names."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"train must be one of {', '.join(TRAIN_MODES)}, got {mode!r}")
    if lora_rank:
        if mode == "all":
            raise ValueError("LoRA adapts a frozen image encoder: use it with decoder or memory")
        add_lora(model, lora_rank)
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora(name) or is_trained(name, mode))
        if p.requires_grad:
            names.append(name)
    return names


def encoder_trained(model: SAM2Model) -> bool:
    return any(p.requires_grad for p in model.image_encoder.parameters())


def _lr_scale(name: str, num_blocks: int) -> float:
    """Layer-wise decay for the Hiera trunk (BEiT style), 1 elsewhere."""
    if not name.startswith("image_encoder.trunk."):
        return 1.0
    if fnmatch.fnmatchcase(name, "*pos_embed*"):
        return 1.0  # the configuration exempts position embeddings
    if "patch_embed" in name:
        layer = 0
    elif ".blocks." in name:
        layer = int(name.split(".blocks.")[1].split(".")[0]) + 1
    else:
        layer = num_blocks + 1
    return LAYER_DECAY ** (num_blocks + 1 - layer)


def make_optimizer(model: SAM2Model, lr: float) -> torch.optim.AdamW:
    """AdamW over the trained parameters, one group per (lr scale, weight decay)."""
    num_blocks = len(model.image_encoder.trunk.blocks)
    no_decay = {
        f"{mn}.{pn}" if mn else pn
        for mn, m in model.named_modules()
        if isinstance(m, nn.LayerNorm)
        for pn, _ in m.named_parameters(recurse=False)
    }
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = _lr_scale(name.replace(".base_layer", ""), num_blocks)
        if name.startswith("image_encoder."):
            scale *= VISION_LR_RATIO
        decay = 0.0 if ("bias" in name or name in no_decay) else WEIGHT_DECAY
        groups.setdefault((scale, decay), []).append(p)
    param_groups = [
        {"params": ps, "lr": lr * s, "lr_scale": s, "weight_decay": d}
        for (s, d), ps in groups.items()
    ]
    return torch.optim.AdamW(param_groups, lr=lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, step: int, steps: int) -> float:
    """Cosine from ``lr`` down to ``lr * FINAL_LR_RATIO`` over ``steps``; returns the rate."""
    progress = min(step / max(steps, 1), 1.0)
    now = lr * (FINAL_LR_RATIO + (1 - FINAL_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))
    for group in optimizer.param_groups:
        group["lr"] = now * group["lr_scale"]
    return now
