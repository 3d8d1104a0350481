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
    winner = np.argmax(logits, axis=0)
    best = np.take_along_axis(logits, winner[None], axis=0)[0]
    return winner, best > 0


def compose_labels(current: np.ndarray, result: FrameResult) -> np.ndarray:
    """The (H, W) label frame after writing ``result`` over ``current``: pixels of the result's
    ids and background take the new labels; pixels of any other label keep theirs."""
    if current.shape != result.logits.shape[1:]:
        raise ValueError(
            f"frame {result.frame}: labels are {current.shape}, results {result.logits.shape[1:]}"
        )
    ids = np.asarray(result.obj_ids, dtype=current.dtype)
    new = np.zeros_like(current)
    if len(ids):
        winner, foreground = resolve_overlaps(result.logits)
        new = np.where(foreground, ids[winner], 0).astype(current.dtype)
    owned = (current == 0) | np.isin(current, ids)
    return np.where(owned, new, current)


class LabelSink:
    """Writes :class:`FrameResult` s into ``labels`` (T, H, W): numpy, zarr, or anything that
    supports ``labels[t]`` reads and ``labels[t] = ...`` writes.

    Each object's label value is its id. Writing a frame replaces the pixels that carry the ids
    being written (an object's previous result) and fills background; pixels of any other label
    are never overwritten.
    """

    def __init__(self, labels) -> None:
        if len(getattr(labels, "shape", ())) != 3:
            raise ValueError(
                f"labels must be a (T, H, W) array, got shape {getattr(labels, 'shape', None)}"
            )
        if not np.issubdtype(np.dtype(labels.dtype), np.integer):
            raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
        self.labels = labels
        self.frames_written = 0

    def write(self, result: FrameResult) -> None:
        self.labels[result.frame] = compose_labels(np.asarray(self.labels[result.frame]), result)
        self.frames_written += 1


def track_to_labels(
    tracker: VideoTracker,
    labels=None,
    *,
    direction: str = "forward",
    start: int | None = None,
    stop: int | None = None,
    progress: Callable[[int, int], None] | None = None,
):
    """Propagate and write every frame into ``labels`` (created as uint32 zeros when None).

    ``progress(done, total)`` is called after each frame. Returns ``labels``. Interrupting
    (KeyboardInterrupt, or an exception from ``progress``) leaves the frames written so far.
    """
    if labels is None:
        labels = np.zeros((tracker.num_frames, *tracker.frame_shape), dtype=np.uint32)
    sink = LabelSink(labels)
    passes = tracker.plan(direction, start, stop)
    total = frames_in(passes)
    for done, result in enumerate(tracker.propagate(direction, start, stop), start=1):
        sink.write(result)
        if progress is not None:
            progress(done, total)
    return labels
