"""The eight official SAM 2 configurations as typed dataclasses.

Only what differs between the released checkpoints is a field; everything that is the same for
all of them (decoder depth, memory width, ...) is a constant of the module that uses it. Numbers
that must agree are derived, never repeated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class HieraConfig:
    """The Hiera image trunk: four stages, each halving resolution and doubling width."""

    embed_dim: int  # width of stage 1
    num_heads: int  # heads of stage 1 (doubled at each stage)
    stages: tuple[int, int, int, int]  # blocks per stage
    global_att_blocks: tuple[int, ...]  # blocks that attend globally instead of in windows
    window_spec: tuple[int, int, int, int] = (8, 4, 14, 7)  # window size per stage
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)

    def __post_init__(self) -> None:
        if max(self.global_att_blocks) >= self.depth:
            raise ValueError(
                f"global_att_blocks {self.global_att_blocks} exceed depth {self.depth}"
            )

    @property
    def depth(self) -> int:
        return sum(self.stages)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channel width at the end of each stage, highest resolution first."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.stages)))


@dataclass(frozen=True)
class SAM2Config:
    """One released SAM 2 model. ``name`` is what users type (``"sam2.1_hiera_tiny"``)."""

    name: str
    trunk: HieraConfig
    # SAM 2.1 adds a learned "no object" memory embedding and a projected, signed temporal
    # encoding of object pointers; SAM 2 has neither.
    is_sam21: bool
    checkpoint_url: str = ""
    checkpoint_bytes: int | None = None
    image_size: int = 1024
    hidden_dim: int = 256  # prompt/decoder/memory-attention width
    mem_dim: int = 64  # memory-encoder output width
    num_maskmem: int = 7  # the conditioning frame slot + 6 previous frames
    max_obj_ptrs: int = 16
    backbone_stride: int = 16
    memory_attention_layers: int = 4

    def __post_init__(self) -> None:
        if self.image_size % (self.backbone_stride * 4) != 0:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of {self.backbone_stride * 4}"
            )
        if self.hidden_dim % self.mem_dim != 0:
            raise ValueError("hidden_dim must be a multiple of mem_dim (object pointers are split)")

    @property
    def embedding_size(self) -> int:
        """Side of the lowest-resolution feature map the decoder and memory work on (64)."""
        return self.image_size // self.backbone_stride

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's mask logits (256 at 1024 input)."""
        return self.embedding_size * 4

    def with_image_size(self, image_size: int) -> SAM2Config:
        """The same network at another input size (tests use small inputs; weights unchanged)."""
        return replace(self, image_size=image_size)


_TINY = HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), window_pos_embed_bkg_spatial_size=(7, 7))
_SMALL = HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), window_pos_embed_bkg_spatial_size=(7, 7))
_BASE_PLUS = HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20))
_LARGE = HieraConfig(
    144,
    2,
    (2, 6, 36, 4),
    (23, 33, 43),
    window_spec=(8, 4, 16, 8),
    window_pos_embed_bkg_spatial_size=(7, 7),
)

_URL_SAM21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{}.pt"
_URL_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_{}.pt"
_SAM21_BYTES = {
    "tiny": 156_008_466,
    "small": 184_416_285,
    "base_plus": 323_606_802,
    "large": 898_083_611,
}

CONFIGS: dict[str, SAM2Config] = {}
for _size, _trunk in (
    ("tiny", _TINY),
    ("small", _SMALL),
    ("base_plus", _BASE_PLUS),
    ("large", _LARGE),
):
    CONFIGS[f"sam2.1_hiera_{_size}"] = SAM2Config(
        f"sam2.1_hiera_{_size}",
        _trunk,
        is_sam21=True,
        checkpoint_url=_URL_SAM21.format(_size),
        checkpoint_bytes=_SAM21_BYTES[_size],
    )
    CONFIGS[f"sam2_hiera_{_size}"] = SAM2Config(
        f"sam2_hiera_{_size}",
        _trunk,
        is_sam21=False,
        checkpoint_url=_URL_SAM2.format(_size),
    )

MODEL_NAMES: tuple[str, ...] = tuple(sorted(CONFIGS))
DEFAULT_MODEL = "sam2.1_hiera_tiny"


def get_config(name: str) -> SAM2Config:
    """The configuration called ``name``; a clear error lists the valid names otherwise."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(
            f"unknown SAM 2 model {name!r}; choose one of: {', '.join(MODEL_NAMES)}"
        ) from None
