"""What identifies an embeddings store's content: the data (:func:`data_signature`), the model
(:func:`model_signature`), the arrays a model stores (:func:`embedding_layout`), a frame's raw
pixels (:func:`frame_fingerprint`), and the check that refuses a store made for something else."""

from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from ..model import SAM2Model
from ..model.config import SAM2Config
from .embedding_files import EmbeddingsError

_HASH_FRAMES = 8  # frames whose pixels go into the data signature
_HASH_VALUES = 1 << 18  # values sampled per frame


def data_signature(source) -> dict:
    """What identifies a stack's embeddings: shape, dtype, the channel and intensity window
    that map it to the network's input, and a hash of pixels of up to 8 frames."""
    digest = hashlib.sha256()
    picks = np.unique(np.linspace(0, len(source) - 1, _HASH_FRAMES).astype(int))
    for t in picks:
        frame = np.ascontiguousarray(source.read(int(t))).ravel()
        step = max(1, frame.size // _HASH_VALUES)
        digest.update(np.ascontiguousarray(frame[::step]).tobytes())
    window = source.window
    return {
        "shape": list(source.shape),
        "dtype": str(source.dtype),
        "channel": int(source.channel),
        "window": None if window is None else [float(window.low), float(window.high)],
        "pixels_sha256": digest.hexdigest(),
    }


def image_signature(image, channel: int, window) -> dict:
    """What identifies one image's embeddings (:class:`~napari_sam2.ImagePredictor`'s windows):
    shape, dtype, the channel and intensity window, a hash of about 2**18 evenly strided pixels
    (``image[::s, ::s]``: a big lazy image is never read whole; each window's own pixels are
    checked on every read) and the predictor's preprocessing (the image path, not the video
    loader's, so a stack's store is never taken for an image's)."""
    height, width = (int(n) for n in image.shape[:2])
    step = max(1, math.isqrt(height * width // _HASH_VALUES))
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(np.asarray(image[::step, ::step])).tobytes())
    return {
        "shape": [int(n) for n in image.shape],
        "dtype": str(np.dtype(image.dtype)),
        "channel": int(channel),
        "window": None if window is None else [float(window.low), float(window.high)],
        "pixels_sha256": digest.hexdigest(),
        "preprocess": "image",
    }


def model_signature(model: SAM2Model) -> dict:
    """The model's name, input size and a hash of its weights. The hash is computed at every
    call (73 ms for tiny's 156 MB on a CPU, about 0.4 s for large): weights changed in place
    (``load_state_dict``, ``param.data``) leave no trace a cache could key on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    cfg = model.config
    return {
        "model": cfg.name,
        "image_size": int(cfg.image_size),
        "weights_sha256": digest.hexdigest(),
    }


def embedding_layout(config: SAM2Config) -> dict[str, tuple[int, ...]]:
    """The shape of one frame's arrays (without the frame axis), and of the position
    encoding, that a model of ``config`` stores."""
    c, e = config.hidden_dim, config.embedding_size
    return {
        "features": (c, e, e),
        "high_res_0": (c // 8, 4 * e, 4 * e),
        "high_res_1": (c // 4, 2 * e, 2 * e),
        "pos": (1, c, e, e),
    }


def frame_fingerprint(frame: np.ndarray) -> int:
    """A 64-bit hash (never 0) of a raw frame's shape, dtype and every pixel."""
    frame = np.ascontiguousarray(frame)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{frame.shape} {frame.dtype.str}".encode())
    digest.update(frame.reshape(-1).view(np.uint8))
    return int.from_bytes(digest.digest(), "little") or 1


def checksum(parts, pos: np.ndarray) -> int:
    value = 0
    for array in (*parts, pos):
        value = zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8), value)
    return value


def check_signature_of(path: Path, stored: dict, expected: dict) -> None:
    """Refuse a store made for other data, another model or another input size."""
    differ = [k for k in sorted(set(stored) | set(expected)) if stored.get(k) != expected.get(k)]
    if not differ:
        return
    labels = {
        "shape": "data shape",
        "dtype": "data dtype",
        "channel": "channel",
        "window": "intensity window",
        "pixels_sha256": "pixel content",
        "model": "model",
        "image_size": "input size",
        "weights_sha256": "weights",
        "preprocess": "preprocessing (image predictor or tracker)",
        "tile": "window",
    }
    details = ", ".join(
        f"{labels.get(k, k)} ({stored.get(k)!r} in the store, {expected.get(k)!r} here)"
        if k != "pixels_sha256" and k != "weights_sha256"
        else f"{labels[k]}"
        for k in differ
    )
    raise EmbeddingsError(
        f"the embeddings in {path} were made for something else — differs: {details}. "
        "Give the store made for this stack and model, another path (a new store is made), or "
        "delete it"
    )
