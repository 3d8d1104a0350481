"""Keeping a VideoTracker in step with editable prompt tables (napari's Points and Shapes layers,
or any other front end). Qt-free, so the widget stays thin and this logic is tested here."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..model import SAM2Model
from .video import FrameResult, VideoTracker, frames_in


@dataclass(frozen=True)
class PointRow:
    """One click: object, frame, (row, col) in image pixels, positive or negative."""

    obj_id: int
    frame: int
    row: float
    col: float
    positive: bool


@dataclass(frozen=True)
class BoxRow:
    """One box: object, frame, (min_row, min_col, max_row, max_col) in image pixels."""

    obj_id: int
    frame: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class SyncResult:
    """What a sync changed: the frame's new result (None when nothing changed there, or no
    object is left) and the objects that no longer have any prompt (removed from tracking)."""

    frame: int
    result: FrameResult | None
    removed: tuple[int, ...]


class PromptSession:
    """Owns a :class:`VideoTracker` and applies prompt tables to it, frame by frame.

    ``sync_frame(frame, points, boxes)`` takes *all* the clicks and boxes currently on that
    frame; objects whose prompts changed are re-prompted (replacing their old prompt there),
    objects whose prompts disappeared are cleared there, and objects left with no prompt
    anywhere are removed. Calls are serialised by a lock, so a front end may call from worker
    threads (e.g. a click while a propagation runs waits for the frame in progress).
    """

    def __init__(self, model: SAM2Model, frames, **tracker_options) -> None:
        self.tracker = VideoTracker(model, frames, **tracker_options)
        self.lock = threading.RLock()
        self._synced: dict[tuple[int, int], tuple] = {}  # (frame, obj_id) -> prompt signature

    def sync_frame(self, frame: int, points: list[PointRow], boxes: list[BoxRow]) -> SyncResult:
        with self.lock:
            wanted: dict[int, tuple[list[PointRow], BoxRow | None]] = {}
            for p in points:
                if p.frame == frame:
                    wanted.setdefault(p.obj_id, ([], None))[0].append(p)
            for b in boxes:
                if b.frame == frame:
                    clicks = wanted.get(b.obj_id, ([], None))[0]
                    wanted[b.obj_id] = (clicks, b)  # one box per object and frame: the last
            tracker = self.tracker
            result = None
            for obj_id, (clicks, box) in wanted.items():
                signature = (
                    tuple((p.row, p.col, p.positive) for p in clicks),
                    None if box is None else box.box,
                )
                if self._synced.get((frame, obj_id)) == signature:
                    continue
                result = tracker.add_prompt(
                    frame,
                    obj_id,
                    points=[(p.row, p.col) for p in clicks] or None,
                    labels=[int(p.positive) for p in clicks] or None,
                    box=None if box is None else box.box,
                    replace=True,
                )
                self._synced[(frame, obj_id)] = signature
            removed, cleared = [], False
            for f, obj_id in list(self._synced):
                if f == frame and obj_id not in wanted:
                    del self._synced[(f, obj_id)]
                    if not any(o == obj_id for _, o in self._synced):
                        tracker.remove_object(obj_id)
                        removed.append(obj_id)
                    else:
                        tracker.clear_prompts(frame, obj_id)
                        cleared = True
            changed = result is not None or bool(removed) or cleared
            if changed and tracker.obj_ids:
                result = tracker.result(frame)  # every object's current mask on this frame
            return SyncResult(frame, result, tuple(removed))

    def synced_frames(self) -> set[int]:
        """Frames on which some object currently has a prompt from the tables."""
        with self.lock:
            return {frame for frame, _ in self._synced}

    def embed(self, frame: int) -> None:
        """Compute (and cache) the embedding of ``frame`` ahead of a click on it. A no-op once
        the session is closed: a background embedding may outlive its session."""
        with self.lock:
            if not self.tracker.closed:
                self.tracker.embed(frame)

    def propagate(self, direction="forward", start=None, stop=None):
        """Like :meth:`VideoTracker.propagate`, holding the lock for each frame only."""
        with self.lock:
            run = self.tracker.propagate(direction, start, stop)
        while True:
            with self.lock:
                try:
                    result = next(run)
                except StopIteration:
                    return
            try:
                yield result
            except GeneratorExit:
                with self.lock:
                    run.close()
                raise

    def plan(self, direction="forward", start=None, stop=None) -> int:
        """How many frames ``propagate`` will yield."""
        with self.lock:
            return frames_in(self.tracker.plan(direction, start, stop))

    def close(self) -> None:
        with self.lock:
            self.tracker.close()


def points_from_arrays(coords: np.ndarray, obj_ids, positive) -> list[PointRow]:
    """Rows from (N, 3) (frame, row, col) coordinates and per-point ids and polarities."""
    return [
        PointRow(int(o), int(f), float(r), float(c), bool(s))
        for (f, r, c), o, s in zip(np.asarray(coords), obj_ids, positive)
    ]
