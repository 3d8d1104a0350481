"""Validated prompts in image pixel coordinates, numpy/napari order.

A point is ``(row, col)``; a box is ``(min_row, min_col, max_row, max_col)``; a label is 1 for a
positive click and 0 for a negative one. Conversion to SAM's ``(x, y)`` in the model's
input frame happens in exactly one place: :func:`to_model_points`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .window_masks import WindowMasks

# A click on a pixel's outer edge in napari lands up to half a pixel outside the array.
_EDGE_TOLERANCE = 0.5


class PromptError(ValueError):
    """A prompt that cannot be used, with what was wrong and how to fix it."""


@dataclass(frozen=True)
class Prompt:
    """Points with labels and/or a box for one object on one image, validated.

    points: (N, 2) float64 (row, col); labels: (N,) int32 of 0/1; box: (4,) or None.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None

    @property
    def num_points(self) -> int:
        return len(self.points)

    @classmethod
    def build(cls, shape: tuple[int, int], points=None, labels=None, box=None) -> Prompt:
        """Validate user input for an image of ``shape`` (H, W)."""
        h, w = shape
        pts = np.zeros((0, 2)) if points is None else _numbers(points, "points", "(row, col)")
        if pts.ndim == 1 and pts.size == 2:
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise PromptError(f"points must have shape (N, 2) as (row, col) pairs, got {pts.shape}")
        if labels is None:
            if len(pts):
                raise PromptError("labels are required with points: 1 = positive, 0 = negative")
            lbl = np.zeros(0, dtype=np.int32)
        else:
            lbl = np.asarray(labels).reshape(-1)
            if len(lbl) != len(pts):
                raise PromptError(f"got {len(pts)} points but {len(lbl)} labels")
            if not np.isin(lbl, (0, 1)).all():
                raise PromptError(
                    f"labels must be 1 (positive) or 0 (negative), got {np.unique(lbl)}"
                )
            lbl = lbl.astype(np.int32)
        if not np.isfinite(pts).all():
            raise PromptError("points contain NaN or inf")
        for r, c in pts:
            _check_inside(r, c, h, w, "point")
        bx = None
        if box is not None:
            bx = _numbers(box, "a box", "(min_row, min_col, max_row, max_col)").reshape(-1)
            if bx.shape != (4,) or not np.isfinite(bx).all():
                raise PromptError(
                    f"a box is (min_row, min_col, max_row, max_col), got {np.asarray(box).tolist()}"
                )
            if bx[0] > bx[2] or bx[1] > bx[3]:
                raise PromptError(
                    f"box {bx.tolist()} has min > max; "
                    "a box is (min_row, min_col, max_row, max_col)"
                )
            _check_inside(bx[0], bx[1], h, w, "box corner")
            _check_inside(bx[2], bx[3], h, w, "box corner")
        return cls(pts, lbl, bx)


def _numbers(values, what: str, layout: str) -> np.ndarray:
    """``values`` as a float64 array, or a PromptError saying they are not numbers."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(
            f"{what} must be numbers {layout} in pixels, got {_shorten(values)}"
        ) from None
    return array


def _shorten(values, limit: int = 80) -> str:
    text = repr(values)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mask_prompt(mask, shape: tuple[int, int]) -> np.ndarray | WindowMasks:
    """A user's mask prompt as an (H, W) bool array, validated; a cropped one (a one-mask
    :class:`~.window_masks.WindowMasks`: the crop inside its window) as a WindowMasks of its
    bool crop, never made full-frame.

    Accepted: bool; integers holding only 0 and 1; floats in [0, 1], read as probabilities:
    the mask is ``mask >= 0.5`` (so a probability map and its thresholded copy are the same
    prompt). Refused with a :class:`PromptError`: another shape, NaN or inf, integers other
    than 0/1 (a label image: pass ``labels == obj_id``), floats outside [0, 1] (logits: pass
    ``logits > 0``), and a mask with nothing in it. A cropped mask's values follow the same
    rules; its shape is the frame's."""
    if isinstance(mask, WindowMasks):
        if mask.shape != tuple(shape):
            raise PromptError(
                f"a mask prompt must have the frame's shape {tuple(shape)}, got a cropped mask "
                f"(WindowMasks) of shape {mask.shape}; give it image_shape={tuple(shape)} and "
                "one (h, w) crop"
            )
        return WindowMasks(_mask_values(mask.crop), mask.tile, shape)
    try:
        m = np.asarray(mask)
    except (TypeError, ValueError) as e:
        raise PromptError(f"a mask prompt must be an (H, W) array, got {_shorten(mask)}") from e
    if m.shape != tuple(shape):
        raise PromptError(
            f"a mask prompt must have the frame's shape {tuple(shape)}, got {m.shape}"
        )
    return _mask_values(m)


def _mask_values(m: np.ndarray) -> np.ndarray:
    """A mask prompt's values (bool, 0/1 integers or probabilities) as bool, checked by the
    rules of :func:`mask_prompt`."""
    if m.dtype == np.bool_:
        values = m
    elif np.issubdtype(m.dtype, np.integer):
        if not np.isin(m, (0, 1)).all():
            found = np.unique(m)
            raise PromptError(
                f"an integer mask prompt must hold only 0 and 1, found values {found[:6]}"
                f"{' ...' if len(found) > 6 else ''}; for one object of a label image pass "
                "labels == obj_id"
            )
        values = m == 1
    elif np.issubdtype(m.dtype, np.floating):
        if not np.isfinite(m).all():
            raise PromptError(
                "the mask prompt contains NaN or infinite values; pass a bool mask "
                "(e.g. np.nan_to_num(prob) >= 0.5)"
            )
        lo, hi = (float(m.min()), float(m.max())) if m.size else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise PromptError(
                f"a float mask prompt must hold probabilities in [0, 1] (thresholded at 0.5), "
                f"got values in [{lo:g}, {hi:g}]; for logits pass logits > 0, for a 0/255 image "
                "pass image > 0"
            )
        values = m >= 0.5
    else:
        raise PromptError(
            f"a mask prompt must be bool, 0/1 integers or probabilities in [0, 1], got dtype "
            f"{m.dtype}"
        )
    if not values.any():
        raise PromptError(
            "the mask prompt is empty (no pixel is set); to remove an object use remove_object()"
        )
    return values


# Label images whose ids stay below this are read by scipy's find_objects (a bounding box per
# id up to the largest, in one pass); above it, per id or by sorting.
FIND_OBJECTS_MAX_ID = 1 << 20


def present_ids(lab: np.ndarray) -> list[int]:
    """The ids > 0 of an integer label image, in increasing order: by one pass over the image
    (its bounding boxes) where ids are below 2**20, never a sorted copy of it (a giant slice's
    labels are hundreds of MB). :class:`PromptError` for negative values."""
    from scipy import ndimage

    lo, hi = (int(lab.min()), int(lab.max())) if lab.size else (0, 0)
    if lo < 0:
        negative = np.unique(lab[lab < 0])
        raise PromptError(
            f"labels hold negative values {negative[:5].tolist()}; object ids are "
            "positive (0 = background)"
        )
    if hi == 0:
        return []
    if hi <= FIND_OBJECTS_MAX_ID:
        boxes = ndimage.find_objects(lab, max_label=hi)
        return [i + 1 for i, box in enumerate(boxes) if box is not None]
    return [int(v) for v in np.unique(lab) if v > 0]


def label_ids(
    labels, shape: tuple[int, int], obj_ids=None, allow_absent: bool = False
) -> tuple[np.ndarray, list[int]]:
    """Check a label image used as prompts and choose its objects.

    ``labels``: (H, W) of ``shape``, integers (or bool: one object, id 1); 0 is background.
    Returns the label image as an array and the object ids to prompt: every id > 0 present, in
    increasing order, or ``obj_ids`` (each must be present, unless ``allow_absent``).
    Raises :class:`PromptError`."""
    try:
        lab = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise PromptError(f"labels must be an (H, W) integer array, got {_shorten(labels)}") from e
    if lab.shape != tuple(shape):
        raise PromptError(f"labels must have the frame's shape {tuple(shape)}, got {lab.shape}")
    if lab.dtype == np.bool_:
        lab = lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        raise PromptError(
            f"labels must hold integer object ids (0 = background), got dtype {lab.dtype}; "
            "a float label image can be converted with labels.astype(np.int64) if its values "
            "are whole numbers"
        )
    present = present_ids(lab)
    if obj_ids is None:
        if not present:
            raise PromptError("the labels are empty: no pixel holds an object id > 0")
        return lab, present
    if isinstance(obj_ids, (str, bytes)) or not hasattr(obj_ids, "__iter__"):
        raise PromptError(
            f"obj_ids must be a list of object ids (positive integers), e.g. [3], got "
            f"{_shorten(obj_ids)}"
        )
    try:
        wanted = [check_obj_id(i) for i in obj_ids]
    except PromptError as e:
        raise PromptError(f"obj_ids: {e}") from None
    missing = sorted(set(wanted) - set(present))
    if missing and not allow_absent:
        raise PromptError(
            f"object id(s) {missing[:10]} are not in the labels (they hold "
            f"{present[:10]}{' ...' if len(present) > 10 else ''})"
        )
    if not wanted:
        raise PromptError("obj_ids is empty: name at least one object id of the labels")
    return lab, list(dict.fromkeys(wanted))


def _check_inside(r: float, c: float, h: int, w: int, what: str) -> None:
    t = _EDGE_TOLERANCE
    if not (-t <= r <= h - 1 + t and -t <= c <= w - 1 + t):
        raise PromptError(
            f"{what} (row={r:g}, col={c:g}) lies outside the image of shape (H={h}, W={w}); "
            "coordinates are (row, col) pixel indices of the original image"
        )


def to_model_points(
    prompt: Prompt, shape: tuple[int, int], image_size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(1, P, 2) SAM (x, y) coordinates in the model's ``image_size`` frame and (1, P) labels,
    box corners first (labels 2, 3) then clicks, or (None, None) when there is neither."""
    h, w = shape
    xy = prompt.points[:, ::-1]
    labels = prompt.labels
    if prompt.box is not None:
        r0, c0, r1, c1 = prompt.box
        xy = np.concatenate(([[c0, r0], [c1, r1]], xy))
        labels = np.concatenate(([2, 3], labels)).astype(np.int32)
    if len(xy) == 0:
        return None, None
    coords = torch.as_tensor(np.ascontiguousarray(xy), dtype=torch.float32, device=device)
    # Same arithmetic as the official transform: normalise by (W, H), then scale.
    coords = coords / torch.tensor([w, h], dtype=torch.float32, device=device) * image_size
    return coords[None], torch.as_tensor(labels, dtype=torch.int32, device=device)[None]


MAX_OBJ_ID = int(np.iinfo(np.uint64).max)  # the largest value any label dtype holds


def check_obj_id(obj_id) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)) or obj_id < 1:
        raise PromptError(
            "object ids are positive integers (int or numpy integer, not bool or float: they "
            f"become label values), got {obj_id!r} ({type(obj_id).__name__})"
        )
    if obj_id > MAX_OBJ_ID:
        raise PromptError(
            f"object id {obj_id} is too large for any label array (the largest is "
            f"{MAX_OBJ_ID:,}, uint64); use smaller ids"
        )
    return int(obj_id)
