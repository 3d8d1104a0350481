"""Segment everything on a big image window by window, and merge what the windows found.

Each window of a :class:`~napari_sam2.engine.tiles.TileGrid` is read (only it: the image may be
lazy), shown to the model at native resolution and segmented by the ordinary pipeline of
:class:`~napari_sam2.engine.automatic.AutomaticMaskGenerator` (its crop layers apply inside the
window). Then :func:`merge_window_records`:

- a mask that touches a *cut* side of its window (a side inside the image) is cut by the
  window: it is dropped there, and kept from a window where it lies whole — with the default
  halo (a quarter of a window) every object up to a quarter of a window lies whole in one.
  An object larger than the halo may lie whole in no window and is then lost: raise ``halo``
  (or ``tile``) for big objects, or segment the downscaled image (``tiles=False``);
- the same object found whole in two overlapping windows is one mask: of two masks whose
  *mask* IoU exceeds ``crop_nms_thresh`` the one with the lower predicted IoU goes (box IoU
  would also merge distinct objects that share a box, such as a ring and its centre).

Memory: one window's pixels, its float RGB and one batch of window-sized masks at a time, plus
the records found (each mask kept inside its box), whatever the image's size.
"""

from __future__ import annotations

import numpy as np

from .automatic import MaskRecord
from .tiles import TileGrid, Window

CUT_TOLERANCE = 1  # a mask box this close (pixels) to a cut side of its window is cut by it


def shift_record(record: MaskRecord, window: Window, image_shape) -> MaskRecord:
    """A record found in ``window`` (its coordinates relative to the window) in image pixels."""
    r0, c0 = window[0], window[1]
    b0, b1, b2, b3 = record.box
    box = (b0 + r0, b1 + c0, b2 + r0, b3 + c0) if record.area else (0, 0, 0, 0)
    k0, k1, k2, k3 = record.crop_box
    return MaskRecord(
        box_mask=record.box_mask,
        box=box,
        image_shape=(int(image_shape[0]), int(image_shape[1])),
        score=record.score,
        stability=record.stability,
        point=(record.point[0] + r0, record.point[1] + c0),
        area=record.area,
        crop_box=(k0 + r0, k1 + c0, k2 + r0, k3 + c0),
    )


def is_cut(record: MaskRecord, window: Window, grid: TileGrid) -> bool:
    """Whether a record (in window coordinates) touches a side of ``window`` inside the image."""
    if record.area == 0:
        return True
    top, left, bottom, right = grid.cut_sides(window)
    h, w = window[2] - window[0], window[3] - window[1]
    b0, b1, b2, b3 = record.box
    t = CUT_TOLERANCE
    return (
        (top and b0 <= t)
        or (left and b1 <= t)
        or (bottom and b2 >= h - t)
        or (right and b3 >= w - t)
    )


def mask_iou(a: MaskRecord, b: MaskRecord) -> float:
    """IoU of two records' masks, computed on their boxes' intersection only."""
    r0, c0 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    r1, c1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if r1 <= r0 or c1 <= c0:
        return 0.0
    ma = a.box_mask[r0 - a.box[0] : r1 - a.box[0], c0 - a.box[1] : c1 - a.box[1]]
    mb = b.box_mask[r0 - b.box[0] : r1 - b.box[0], c0 - b.box[1] : c1 - b.box[1]]
    inter = int(np.count_nonzero(ma & mb))
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def merge_window_records(
    found: list[tuple[Window, list[MaskRecord]]], grid: TileGrid, iou_thresh: float
) -> list[MaskRecord]:
    """The records of all windows as one list in image pixels, by decreasing predicted IoU:
    masks cut by their window dropped, duplicates (mask IoU above ``iou_thresh``) removed,
    the higher predicted IoU kept (on ties, the earlier window)."""
    whole = [
        shift_record(rec, window, grid.shape)
        for window, records in found
        for rec in records
        if not is_cut(rec, window, grid)
    ]
    order = sorted(range(len(whole)), key=lambda i: -whole[i].score)  # stable: ties keep order
    kept: list[MaskRecord] = []
    boxes = np.zeros((0, 4), dtype=np.int64)
    for i in order:
        rec = whole[i]
        b = np.asarray(rec.box)
        overlaps = np.nonzero(
            (boxes[:, 0] < b[2])
            & (b[0] < boxes[:, 2])
            & (boxes[:, 1] < b[3])
            & (b[1] < boxes[:, 3])
        )[0]
        if any(mask_iou(rec, kept[j]) > iou_thresh for j in overlaps):
            continue
        kept.append(rec)
        boxes = np.vstack([boxes, b[None]])
    return kept
