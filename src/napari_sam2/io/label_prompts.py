"""Label images as prompts: a segmentation the user already has (Cellpose, StarDist, a previous
run, painted labels) whose every object becomes a mask prompt on one frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .stacks import Stack

LABEL_PROMPT_SUFFIXES = (".tif", ".tiff", ".npy")


def read_label_prompt(path: str | Path, stack: Stack, frame: int) -> np.ndarray:
    """The (H, W) label image in ``path`` (TIFF or .npy), for ``frame`` of ``stack``.

    The file holds one frame's labels, (H, W) like the stack's frames, or a (T, H, W) label
    volume of the stack's shape (a previous run's output), of which ``frame`` is taken. Ids are
    integers, 0 is background. Raises :class:`InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label image not found: {path}")
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            import tifffile

            data = tifffile.imread(path, aszarr=False)
    except (ValueError, OSError) as e:
        raise InputError(f"cannot read the label image {path}: {e}") from e
    hw = stack.frame_shape
    volume = (stack.num_frames, *hw)
    if tuple(data.shape) == volume:
        data = data[frame]
    if tuple(data.shape) != hw:
        raise InputError(
            f"{path}: a label image of shape {tuple(data.shape)} does not fit {stack.path}: "
            f"expected {hw} (one frame's labels) or {volume} (a label volume)"
        )
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        raise InputError(
            f"{path}: a label image holds integer object ids (0 = background), got dtype "
            f"{data.dtype}"
        )
    labels = np.array(data)
    if labels.min() < 0:
        raise InputError(f"{path}: object ids are >= 0 (0 = background), found {labels.min()}")
    if not labels.any():
        raise InputError(f"{path}: the label image is empty on frame {frame} (all 0)")
    return labels
