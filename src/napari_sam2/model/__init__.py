"""Our PyTorch implementation of the SAM 2 network, compatible with Meta's checkpoints."""

from .checkpoint import CheckpointError, DeviceError, available_devices, load_model, pick_device
from .config import CONFIGS, DEFAULT_MODEL, MODEL_NAMES, SAM2Config, get_config
from .precision import PRECISIONS, PrecisionError, native_bf16_cpu
from .sam2 import ImageEmbedding, SAM2Model

__all__ = [
    "CONFIGS",
    "DEFAULT_MODEL",
    "MODEL_NAMES",
    "PRECISIONS",
    "PrecisionError",
    "CheckpointError",
    "DeviceError",
    "ImageEmbedding",
    "SAM2Config",
    "SAM2Model",
    "available_devices",
    "get_config",
    "load_model",
    "native_bf16_cpu",
    "pick_device",
]
