"""Validated prompts in image pixel coordinates, numpy/napari order.

A point is ``(row, col)``; a box is ``(min_row, min_col, max_row, max_col)``; a label is 1 for a
positive click and 0 for a negative one. Conversion to SAM's ``(x, y)`` in the model's
input frame happens in exactly one place: :func:`to_model_points`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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
        pts = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=np.float64)
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
            bx = np.asarray(box, dtype=np.float64).reshape(-1)
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
