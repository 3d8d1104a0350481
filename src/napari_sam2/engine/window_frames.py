"""The parts of tracking in windows that hold no model: a lazy cropped view of a stack, where an
object's window goes, and a frame's results over windows pasted into the full frame.

See :mod:`.window_tracking` for the tracker that uses them and docs/big-images.md for the rules.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..model.sam2 import NO_OBJECT_LOGIT
from .frames import sample_stack_window
from .memory_bank import FrameRecord, SpillingStore
from .preprocess import IntensityWindow, select_channels
from .prompts import FIND_OBJECTS_MAX_ID
from .results import FrameResult
from .tiles import TileGrid, TilesError, Window, check_tile_options, tile_geometry
from .window_masks import mask_bounds, mask_rows

# The default margin as a fraction of the tile: an object is placed at least tile / 8 from a
# window's cut sides, and the window re-centres when its mask comes closer than half of that.
MARGIN_FRACTION = 8
SAMPLE_PIXELS = 1_000_000  # pixels read for a stack's intensity window (strided)


class CroppedFrames:
    """``frames[t, r0:r1, c0:c1]`` of a (T, H, W) or (T, H, W, C) stack, read one frame at a time
    when indexed: a stack for :class:`~napari_sam2.VideoTracker` that never reads outside the
    window (numpy, memmaps, dask and zarr read only the window's pixels)."""

    def __init__(self, frames, window: Window, shape: tuple[int, ...], dtype) -> None:
        self.frames = frames
        self.window = window
        r0, c0, r1, c1 = window
        self.shape = (int(shape[0]), r1 - r0, c1 - c0, *shape[3:])
        self.dtype = np.dtype(dtype)
        self._tuple_index = hasattr(frames, "shape") and not isinstance(frames, (list, tuple))
        self.step = 1  # read every step-th row and column (a sample; 1: the window)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t) -> np.ndarray:
        r0, c0, r1, c1 = self.window
        rows, cols = slice(r0, r1, self.step), slice(c0, c1, self.step)
        if self._tuple_index:
            try:
                return np.asarray(self.frames[t, rows, cols])
            except (TypeError, IndexError):  # an array-like indexed by frame only
                self._tuple_index = False
        return np.asarray(self.frames[t])[rows, cols]


def stack_window(frames, shape, dtype, channel: int, percentiles) -> IntensityWindow | None:
    """The intensity window of a whole stack of big frames, by the rule of
    :class:`~napari_sam2.engine.frames.FrameSource` (:func:`.frames.sample_stack_window`: the
    same frames and percentiles) but from about a million pixels: each frame read with an even
    stride (``frames[t, ::s, ::s]``), never whole. None for uint8 and bool data (no window).
    Frames small enough are read whole, which gives what ``FrameSource`` computes."""
    if np.dtype(dtype) in (np.uint8, np.bool_):
        return None
    height, width = int(shape[1]), int(shape[2])
    strided = CroppedFrames(frames, (0, 0, height, width), shape, dtype)

    def read(t: int, step: int) -> np.ndarray:
        strided.step = step
        return select_channels(strided[t], channel)

    return sample_stack_window(read, int(shape[0]), height * width, percentiles, SAMPLE_PIXELS)


def check_window_options(tile, margin, image_size: int) -> tuple[int, int]:
    """(tile, margin) in pixels for tracking in windows; :class:`TilesError` for values that
    cannot work, before any work."""
    check_tile_options(True, tile, None)
    if margin is not None and (
        isinstance(margin, (bool, np.bool_)) or not isinstance(margin, (int, np.integer))
    ):
        raise TilesError(
            f"margin must be an integer number of pixels or None (the default, an eighth of the "
            f"tile), got {margin!r} ({type(margin).__name__})"
        )
    tile, _ = tile_geometry(image_size, tile, None)
    if tile < image_size:
        raise TilesError(
            f"tile ({tile} px) is smaller than the model's input ({image_size} px): a window "
            "would be enlarged to the input, not seen at native resolution; use tile >= "
            f"{image_size} (the default is the input size)"
        )
    margin = int(tile // MARGIN_FRACTION if margin is None else margin)
    if not 0 <= margin <= tile // 4:
        raise TilesError(
            f"margin must be between 0 and a quarter of the tile ({tile // 4} px for a {tile}-"
            f"pixel tile), got {margin}: an object is placed at least margin pixels from the "
            "window's cut sides, so two margins must leave room for the object"
        )
    return tile, margin


class WindowPlacer:
    """Where an object's window goes on frames of ``shape`` (H, W): a ``tile``-pixel window
    that holds the object's extent at least ``margin`` pixels from every side cut inside the
    frame (the frame's own edges do not count). A window of the grid of windows advancing by
    ``tile - 2 * margin`` when one holds it so (objects near each other then share a window),
    else a window centred on it; the whole frame (downscaled to the input) when the extent
    with its margins is larger than a tile."""

    def __init__(self, shape: tuple[int, int], tile: int, margin: int) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.tile, self.margin = tile, margin
        self.grid = TileGrid(self.shape, tile, min(2 * margin, tile - 1))

    @property
    def whole(self) -> Window:
        return (0, 0, *self.shape)

    def window_for(self, rows, cols) -> Window:
        rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        h, w = self.shape
        if h <= self.tile and w <= self.tile:
            return self.whole
        room = self.tile - 1 - 2 * self.margin
        too_tall = h > self.tile and rows.max() - rows.min() > room
        too_wide = w > self.tile and cols.max() - cols.min() > room
        if too_tall or too_wide:
            return self.whole
        window = self.grid.best_window(rows, cols)
        return self.whole if window is None else window

    def too_close(self, window: Window, rows, cols) -> bool:
        """Whether the extent comes closer than ``margin / 2`` to a cut side of ``window``
        (the signal to re-centre)."""
        return self.grid.margin(window, np.asarray(rows), np.asarray(cols)) < self.margin / 2


def mask_extent(low_res: torch.Tensor, window: Window) -> tuple[np.ndarray, np.ndarray] | None:
    """The (rows, cols) corners in frame pixels of the positive part of one object's (1, 1, L,
    L) logits over ``window``, taken generously (whole low-resolution cells); None when empty."""
    cells = np.nonzero(low_res[0, 0].float().cpu().numpy() > 0)
    if len(cells[0]) == 0:
        return None
    r0, c0, r1, c1 = window
    size = low_res.shape[-1]
    sy, sx = (r1 - r0) / size, (c1 - c0) / size
    rows = np.array([r0 + cells[0].min() * sy, r0 + (cells[0].max() + 1) * sy - 1])
    cols = np.array([c0 + cells[1].min() * sx, c0 + (cells[1].max() + 1) * sx - 1])
    return np.clip(rows, r0, r1 - 1), np.clip(cols, c0, c1 - 1)


def window_logits(low_res: torch.Tensor, window: Window) -> np.ndarray:
    """(n, 1, L, L) logits over ``window`` as (n, h, w) at the window's resolution (the
    bilinear upscale :class:`FrameResult` makes)."""
    r0, c0, r1, c1 = window
    full = F.interpolate(
        low_res.float(), size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False
    )
    return full[:, 0].numpy()


class WindowFrameResult(FrameResult):
    """All objects' masks on one frame when each object was tracked in its own window.

    ``windows[i]``: the window (min_row, min_col, max_row, max_col) that object ``obj_ids[i]``
    was followed in on this frame; ``low_res[i]`` covers that window only. ``logits`` and
    ``masks`` are full-frame (N, H, W) as for any :class:`FrameResult`: the window's logits
    upscaled to its native size, -1024 outside it. ``recentred``: per object, how many times
    its window re-centred in the propagation so far (0 outside a propagation)."""

    def __init__(self, frame, obj_ids, low_res, shape, windows, recentred=None, dropped=()) -> None:
        super().__init__(frame, obj_ids, low_res=low_res, shape=shape)
        self.windows = tuple(windows)
        self.recentred = dict(recentred or {})
        self.dropped = tuple(dropped)

    @property
    def logits(self) -> np.ndarray:
        if self._logits is None:
            self._logits = self._paste(0, len(self.obj_ids))
        return self._logits

    def chunks(self, size: int = 16) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self.obj_ids), size):
            stop = min(start + size, len(self.obj_ids))
            if self._logits is not None:
                yield start, self._logits[start:stop]
            else:
                yield start, self._paste(start, stop)

    def without(self, obj_ids) -> WindowFrameResult:
        drop = set(obj_ids)
        return self.select([i for i, o in enumerate(self.obj_ids) if o not in drop])

    def select(self, keep) -> WindowFrameResult:
        keep = list(keep)
        ids = [self.obj_ids[i] for i in keep]
        return WindowFrameResult(
            self.frame,
            ids,
            self._low_res[keep],
            self.shape,
            [self.windows[i] for i in keep],
            {o: n for o, n in self.recentred.items() if o in ids},
        )

    def object_windows(self) -> tuple[Window, ...]:
        return self.windows

    def logits_in_window(self, index: int) -> np.ndarray:
        if self._logits is not None:
            r0, c0, r1, c1 = self.windows[index]
            return self._logits[index, r0:r1, c0:c1]
        return window_logits(self._low_res[index : index + 1], self.windows[index])[0]

    def _paste(self, start: int, stop: int) -> np.ndarray:
        out = np.full((stop - start, *self.shape), NO_OBJECT_LOGIT, dtype=np.float32)
        for i in range(start, stop):
            r0, c0, r1, c1 = self.windows[i]
            out[i - start, r0:r1, c0:c1] = window_logits(self._low_res[i : i + 1], self.windows[i])
        return out

    def __repr__(self) -> str:
        moved = sum(self.recentred.values())
        return (
            f"WindowFrameResult(frame={self.frame}, obj_ids={self.obj_ids}, shape={self.shape}, "
            f"windows={len(set(self.windows))}, recentred={moved})"
        )


def shift_prompt(window: Window, points, box, mask_part):
    """A prompt in frame pixels moved into ``window``'s pixels: points (N, 2), box (4,), and a
    mask given as (top, left, bool crop) cut out as the window's (h, w) mask."""
    r0, c0, r1, c1 = window
    if points is not None:
        points = np.asarray(points, np.float64).reshape(-1, 2) - [r0, c0]
    if box is not None:
        box = np.asarray(box, np.float64).reshape(-1) - [r0, c0, r0, c0]
    mask = None
    if mask_part is not None:
        top, left, crop = mask_part
        mask = np.zeros((r1 - r0, c1 - c0), bool)
        a, b = max(top, r0), max(left, c0)
        e, f = min(top + crop.shape[0], r1), min(left + crop.shape[1], c1)
        if e > a and f > b:
            mask[a - r0 : e - r0, b - c0 : f - c0] = crop[a - top : e - top, b - left : f - left]
    return points, box, mask


def prompt_extent(points, box, mask_part) -> tuple[list[float], list[float]]:
    """The rows and cols (frame pixels) a prompt spans: its points, box corners, mask pixels."""
    rows, cols = [], []
    if points is not None:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        rows += pts[:, 0].tolist()
        cols += pts[:, 1].tolist()
    if box is not None:
        b = np.asarray(box, np.float64).reshape(-1)
        rows += [b[0], b[2]]
        cols += [b[1], b[3]]
    if mask_part is not None:
        top, left, crop = mask_part
        rr, cc = np.nonzero(crop)
        rows += [top + rr.min(), top + rr.max()]
        cols += [left + cc.min(), left + cc.max()]
    return rows, cols


def bounding_part(mask) -> tuple[int, int, np.ndarray]:
    """An (H, W) bool mask (an array, or a one-mask :class:`~.window_masks.WindowMasks` read
    from its crop) as (top, left, its bounding crop), so prompts keep no full frames."""
    bounds = mask_bounds(mask)
    if bounds is None:
        return 0, 0, np.zeros((0, 0), bool)
    top, left, bottom, right = bounds
    return top, left, np.array(mask_rows(mask, top, bottom, left, right))


def label_parts(labels: np.ndarray, ids) -> dict[int, tuple[int, int, np.ndarray]]:
    """Each id's :func:`bounding_part` of a label image, in one pass over the image."""
    from scipy import ndimage

    wanted = [int(i) for i in ids]
    parts = {}
    if not wanted:
        return parts
    if max(wanted) <= FIND_OBJECTS_MAX_ID:
        boxes = ndimage.find_objects(labels, max_label=max(wanted))
        for i in wanted:
            sl = boxes[i - 1]
            if sl is not None:
                parts[i] = (sl[0].start, sl[1].start, labels[sl] == i)
        return parts
    for i in wanted:  # huge ids: one comparison each
        part = bounding_part(labels == i)
        if part[2].size:
            parts[i] = part
    return parts


class AwayResults:
    """Per object, its (1, 1, L, L) results on the frames a propagation followed it on in a
    re-centred window, with that window: kept exactly after the window's tracker is gone, the
    16 most recent of each object in RAM and the rest spilled to files (as a tracker's own
    results are, :class:`~.memory_bank.SpillingStore`)."""

    def __init__(self, spill_dir=None) -> None:
        self._spill_dir = spill_dir
        self._windows: dict[int, dict[int, Window]] = {}
        self._stores: dict[int, SpillingStore] = {}

    def put(self, obj_id: int, frame: int, window: Window, low_res: torch.Tensor) -> None:
        if obj_id not in self._stores:
            self._stores[obj_id] = SpillingStore(16, self._spill_dir)
            self._windows[obj_id] = {}
        empty = torch.zeros(0)
        self._stores[obj_id].put(frame, FrameRecord(low_res.float().cpu(), empty, empty))
        self._windows[obj_id][frame] = window

    def get(self, obj_id: int, frame: int) -> tuple[Window, torch.Tensor] | None:
        window = self._windows.get(obj_id, {}).get(frame)
        if window is None:
            return None
        return window, self._stores[obj_id].get(frame).low_res

    def pop(self, obj_id: int, frame: int) -> None:
        if self._windows.get(obj_id, {}).pop(frame, None) is not None:
            self._stores[obj_id].pop(frame)

    def drop(self, obj_id: int) -> None:
        self._windows.pop(obj_id, None)
        store = self._stores.pop(obj_id, None)
        if store is not None:
            store.clear()

    def rename(self, old: int, new: int) -> None:
        if old in self._stores:
            self._stores[new] = self._stores.pop(old)
            self._windows[new] = self._windows.pop(old)

    def clear(self) -> None:
        for obj_id in list(self._stores):
            self.drop(obj_id)
