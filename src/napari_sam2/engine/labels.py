"""Writing tracking results into a label volume: one label value per object."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .video import FrameResult, VideoTracker, frames_in


def resolve_overlaps(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) logits -> (winner index (H, W), foreground (H, W) bool).

    Where objects overlap the one with the highest logit wins (ties: the first), as the
    official predictor's ``non_overlap_masks``; a pixel is foreground when its winner's logit
    is above 0.
    """
    return _resolve_chunks([(0, logits)], logits.shape[1:])


def _resolve_chunks(chunks, shape) -> tuple[np.ndarray, np.ndarray]:
    """:func:`resolve_overlaps` over (first index, (n, H, W) logits) chunks, holding one chunk
    at a time: a running maximum, where a later chunk wins only when strictly higher."""
    winner, best = _resolve_values(chunks, shape)
    return winner, best > 0


def _resolve_values(chunks, shape) -> tuple[np.ndarray, np.ndarray]:
    """(winner index, its logit) per pixel, over (first index, (n, H, W) logits) chunks."""
    best = np.full(shape, -np.inf, dtype=np.float32)
    winner = np.zeros(shape, dtype=np.int64)
    for start, logits in chunks:
        index = np.argmax(logits, axis=0)
        value = np.take_along_axis(logits, index[None], axis=0)[0]
        better = value > best
        winner[better] = index[better] + start
        best[better] = value[better]
    return winner, best


STRIP_PIXELS = 1 << 22  # label frames are composed this many pixels at a time


def row_strips(frame: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges (start, stop) of an (H, W) frame, about :data:`STRIP_PIXELS` pixels each:
    work on a giant frame holds one strip's temporaries, not the frame's."""
    rows = max(1, STRIP_PIXELS // max(1, frame.shape[-1]))
    return [(a, min(a + rows, frame.shape[0])) for a in range(0, frame.shape[0], rows)]


def compose_labels(current: np.ndarray, result: FrameResult) -> np.ndarray:
    """The (H, W) label frame after writing ``result`` over ``current``: pixels of the result's
    ids and background take the new labels; pixels of any other label keep theirs."""
    if current.shape != result.shape:
        raise ValueError(
            f"frame {result.frame}: labels are {current.shape}, results {result.shape}"
        )
    new = result_labels(result, current.dtype)
    return compose_resolved(current, result.obj_ids, new, out=new)


def result_labels(result: FrameResult, dtype) -> np.ndarray:
    """The (H, W) labels of ``result`` alone (the highest logit wins, above 0): the costly part
    of :func:`compose_labels`, which a worker can do ahead (:func:`compose_resolved`). Objects
    confined to windows (:meth:`FrameResult.object_windows`) are resolved window by window."""
    windows = result.object_windows()
    if all(w == (0, 0, *result.shape) for w in windows):
        return _labels_of(result, dtype)[0]
    return _labels_in_windows(result, windows, dtype)


def compose_resolved(current: np.ndarray, obj_ids, new: np.ndarray, out=None) -> np.ndarray:
    """:func:`compose_labels` from the result's own labels ``new`` (:func:`result_labels`):
    pixels of ``obj_ids`` and background take ``new``; other labels keep theirs. Composed in
    strips of rows (no frame-sized temporaries); into ``out`` when given (it may be ``new``)."""
    ids = np.asarray(obj_ids, dtype=current.dtype)
    out = np.empty_like(current) if out is None else out
    for a, b in row_strips(current):
        cur = current[a:b]
        owned = (cur == 0) | np.isin(cur, ids)
        out[a:b] = np.where(owned, new[a:b], cur)
    return out


def _labels_in_windows(result: FrameResult, windows, dtype) -> np.ndarray:
    """:func:`result_labels` of a result whose objects are -1024 outside their windows: the
    frame is cut along every window's edges into cells, each resolved over the objects whose
    windows cover it (in the result's order, so that ties go to the first as in
    :func:`resolve_overlaps`: an object outside its window, at -1024, never shows). Holds the
    labels and the window logits of the objects crossing one band of rows, never (N, H, W)
    floats. The labels are the same, bit for bit, as resolving every object on the frame."""
    labels = np.zeros(result.shape, dtype=dtype)
    live = [
        i
        for i, (r0, c0, r1, c1) in enumerate(windows)
        if r1 > r0 and c1 > c0 and result.may_show(i)
    ]
    if not live:
        return labels
    ids = np.asarray(result.obj_ids, dtype=dtype)
    row_edges = sorted({e for i in live for e in (windows[i][0], windows[i][2])})
    col_edges = sorted({e for i in live for e in (windows[i][1], windows[i][3])})
    col_index = {e: j for j, e in enumerate(col_edges)}
    held: dict[int, np.ndarray] = {}  # object index -> its logits inside its window
    for a, b in zip(row_edges, row_edges[1:]):
        for i in [i for i in held if windows[i][2] <= a]:  # windows above this band
            del held[i]
        covers: dict[int, list[int]] = {}  # cell (by its first column edge) -> objects
        for i in live:  # in the result's order
            if windows[i][0] <= a and b <= windows[i][2]:
                for j in range(col_index[windows[i][1]], col_index[windows[i][3]]):
                    covers.setdefault(j, []).append(i)
        for j, cover in covers.items():
            c, d = col_edges[j], col_edges[j + 1]
            parts = []
            for i in cover:
                if i not in held:
                    held[i] = result.logits_in_window(i)
                r0, c0 = windows[i][:2]
                parts.append(held[i][a - r0 : b - r0, c - c0 : d - c0])
            if len(parts) == 1:
                labels[a:b, c:d] = np.where(parts[0] > 0, ids[cover[0]], 0)
                continue
            stack = np.stack(parts)
            winner = np.argmax(stack, axis=0)
            value = np.take_along_axis(stack, winner[None], axis=0)[0]
            labels[a:b, c:d] = np.where(value > 0, ids[np.asarray(cover)][winner], 0)
    return labels


def resolve_frame(result: FrameResult, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The (H, W) labels of ``result`` alone, and the winning logit of each labelled pixel
    (float32, 0 on background): what :func:`merge_resolved` needs to combine the results of
    disjoint groups of objects exactly as one result of all of them would be written."""
    labels, value = _labels_of(result, dtype)
    return labels, np.where(value > 0, value, 0).astype(np.float32)


def _labels_of(result: FrameResult, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The result's (H, W) labels (the highest logit wins, above 0), and each pixel's highest
    logit where that is above 0 (elsewhere some value <= 0).

    Only the objects that can win a pixel are resolved: one whose low-resolution logits are
    nowhere above 0 is nowhere above 0 at full size either (bilinear upsampling takes convex
    combinations), so it can neither be foreground nor beat one that is (results made from
    windows resolve every object). With a single object left (a click on a frame with one
    object) its logits are the answer, without a running maximum. The labels are the same,
    bit for bit, as resolving every object."""
    live = _live(result) if _plain(result) else list(range(len(result.obj_ids)))
    if not live:
        return np.zeros(result.shape, dtype=dtype), np.zeros(result.shape, np.float32)
    ids = np.asarray([result.obj_ids[i] for i in live], dtype=dtype)
    if len(live) < len(result.obj_ids):
        result = result.select(live)
    if len(live) == 1:
        ((_, logits),) = result.chunks()
        value = logits[0]
        return np.where(value > 0, ids[0], 0).astype(dtype), value
    winner, value = _resolve_values(result.chunks(), result.shape)
    return np.where(value > 0, ids[winner], 0).astype(dtype), value


def _plain(result: FrameResult) -> bool:
    """Whether ``result`` makes its full-size logits from its low-resolution ones as
    :class:`FrameResult` does (results whose objects come from windows make them otherwise:
    all their objects are resolved)."""
    kind = type(result)
    return kind.chunks is FrameResult.chunks and kind.select is FrameResult.select


def _live(result: FrameResult) -> list[int]:
    """Indices of the result's objects whose logits are above 0 somewhere (at low resolution
    when the result has it: no full-size image is made for the others)."""
    if not result.obj_ids:
        return []
    if result.low_res is not None:
        best = result.low_res.flatten(1).amax(1).tolist()
    else:
        best = result.logits.reshape(len(result.obj_ids), -1).max(1, initial=-np.inf).tolist()
    return [i for i, b in enumerate(best) if b > 0]


def merge_resolved(parts) -> np.ndarray:
    """One (H, W) label frame from the :func:`resolve_frame` output of disjoint groups of
    objects, given in the order of one result's objects: the highest logit wins, ties go to
    the earlier group, as :func:`resolve_overlaps` over all objects at once decides."""
    labels = best = None
    for part_labels, part_best in parts:
        if labels is None:
            labels, best = part_labels.copy(), part_best.copy()
            continue
        better = part_best > best
        labels[better] = part_labels[better]
        best[better] = part_best[better]
    return labels


class LabelError(ValueError):
    """A label array that cannot take the results: wrong shape, a dtype too small for the
    object ids, or not writable. Raised before anything is tracked or written."""


def check_labels(labels, shape: tuple[int, int, int], obj_ids=(), *, writable: bool = True) -> None:
    """Check that ``labels`` can receive the results of a (T, H, W) ``shape`` stack with
    ``obj_ids``, before any frame is tracked: shape, integer dtype wide enough for every id,
    and (with ``writable``) that it accepts writes. Raises :class:`LabelError`."""
    got = getattr(labels, "shape", None)
    if got is None or len(got) != 3:
        raise LabelError(f"labels must be a (T, H, W) array, got shape {got}")
    if tuple(got) != tuple(shape):
        what = "too short" if got[0] < shape[0] and tuple(got[1:]) == shape[1:] else "wrong"
        raise LabelError(
            f"labels of shape {tuple(got)} are {what} for the stack: expected {tuple(shape)} "
            "(T, H, W), one label frame per stack frame"
        )
    dtype = np.dtype(labels.dtype)
    if not np.issubdtype(dtype, np.integer):
        raise LabelError(f"labels must have an integer dtype, got {dtype}")
    too_big = [i for i in obj_ids if not np.iinfo(dtype).min <= i <= np.iinfo(dtype).max]
    if too_big:
        raise LabelError(
            f"object id(s) {too_big[:5]} do not fit {dtype} labels (at most "
            f"{np.iinfo(dtype).max:,}); use a wider dtype, e.g. "
            f"{label_dtype_for(max(too_big))}, or smaller ids"
        )
    if writable:
        flags = getattr(labels, "flags", None)
        if (flags is not None and not flags.writeable) or getattr(labels, "read_only", False):
            raise LabelError(
                "the labels array is read-only; pass a writable array (e.g. labels.copy(), or "
                "open the zarr/TIFF for writing)"
            )


def label_dtype_for(max_id: int) -> np.dtype:
    """The smallest unsigned dtype, from uint16 up, that holds ``max_id``."""
    for dtype in (np.uint16, np.uint32, np.uint64):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise LabelError(f"object id {max_id} does not fit any label dtype (uint64 at most)")


class LabelSink:
    """Writes :class:`FrameResult` s into ``labels`` (T, H, W): numpy, zarr, or anything that
    supports ``labels[t]`` reads and ``labels[t] = ...`` writes.

    Each object's label value is its id. Writing a frame replaces the pixels that carry the ids
    being written (an object's previous result) and fills background; pixels of any other label
    are never overwritten.
    """

    def __init__(self, labels) -> None:
        if len(getattr(labels, "shape", ())) != 3:
            raise LabelError(
                f"labels must be a (T, H, W) array, got shape {getattr(labels, 'shape', None)}"
            )
        if not np.issubdtype(np.dtype(labels.dtype), np.integer):
            raise LabelError(f"labels must have an integer dtype, got {labels.dtype}")
        self.labels = labels
        self.frames_written = 0

    def write(self, result: FrameResult) -> None:
        self.labels[result.frame] = compose_labels(np.asarray(self.labels[result.frame]), result)
        self.frames_written += 1


# A new label volume up to this size is a numpy array; a larger one is a zarr array in memory
# that stores only the frames written (compressed), so tracking a few frames of a long stack
# costs those frames, not the whole volume.
IN_MEMORY_LABELS_LIMIT = 1 << 30


def new_labels(shape: tuple[int, int, int], dtype):
    """A zero (T, H, W) label volume: numpy when it takes at most ``IN_MEMORY_LABELS_LIMIT``
    bytes (1 GiB), else a zarr array in memory, one chunk per frame, holding only the frames
    written with labels in them (read frames or ranges of it as numpy: ``labels[a:b]``)."""
    dtype = np.dtype(dtype)
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize <= IN_MEMORY_LABELS_LIMIT:
        return np.zeros(shape, dtype=dtype)
    import zarr

    return zarr.create_array(
        zarr.storage.MemoryStore(),
        shape=shape,
        chunks=(1, *shape[1:]),
        dtype=dtype,
        fill_value=0,
        config={"write_empty_chunks": False},
    )


def track_to_labels(
    tracker: VideoTracker,
    labels=None,
    *,
    direction: str = "forward",
    start: int | None = None,
    stop: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **lineage,
):
    """Propagate and write every frame into ``labels`` (created when None: uint16, or wider
    when the object ids need it; see :func:`new_labels` for what kind of array).

    Everything that can fail before tracking does so before the first frame is computed: the
    propagation range, and the labels' shape, dtype (wide enough for every object id) and
    writability (:class:`LabelError`). ``progress(done, total)`` is called after each frame.
    Returns ``labels``. Interrupting (KeyboardInterrupt, or an exception from ``progress``)
    leaves the frames written so far. ``lineage``: ``new_objects``, ``divisions`` and
    ``lineage_options`` of :meth:`VideoTracker.propagate` (label values are then track ids).
    """
    passes = tracker.plan(direction, start, stop)
    shape = (tracker.num_frames, *tracker.frame_shape)
    if labels is None:
        # new objects and daughters take new ids: room for many more with a lineage
        most = max(tracker.obj_ids) + (60000 if lineage else 0)
        labels = new_labels(shape, label_dtype_for(most))
    check_labels(labels, shape, tracker.obj_ids)
    sink = LabelSink(labels)
    total = frames_in(passes)
    results = tracker.propagate(direction, start, stop, **lineage)
    for done, result in enumerate(results, start=1):
        sink.write(result)
        if progress is not None:
            progress(done, total)
    return labels
