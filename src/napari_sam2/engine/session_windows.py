"""Propagation in native-resolution windows for :class:`~.session.PromptSession` on big frames.

A tiled session (``tiles``, see ``windowed_prompts.py``) keeps its
:class:`~napari_sam2.VideoTracker` (downscaled frames) as the record of every prompt, and
propagates through a :class:`~.window_tracking.WindowTracker` that follows each object in a
native-resolution window around it. The window tracker is brought in step with the session's
prompts when a propagation starts (:meth:`SessionWindows.feed`), so that a click costs what it
cost before:

- clicks and boxes are given as they are: the window tracker places the object's window by
  them and answers them in it (at native resolution, as the answer the user saw, in a window
  of its own grid); the clicked slice keeps showing the answer the user saw;
- a mask prompt (labels, segment everything) is the same mask there, refined by the object's
  clicks on that frame.

After a propagation in windows, an object's result on a propagated frame is the window
tracker's (:meth:`overlay`), and a correction click there is answered by the window tracker
(:meth:`prompt`): conditioned on the object's memory of the other frames, starting from its
tracked mask, in its window, as on small slices. The next propagation re-propagates it.

An embeddings store at a path serves both trackers: the downscaled one keeps whole frames in
it, the window tracker each window's frames in its window store there (``embeddings.py``).
New objects, divisions and lineage need whole frames: a propagation with them runs on the
downscaled tracker, as the command line does (:meth:`downscaled_because`).
"""

from __future__ import annotations

import warnings

import torch

from .frame_prompts import model_masks
from .plan import plan_passes
from .prompts import PromptError
from .results import FrameResult
from .tiles import Window
from .video import VideoTracker
from .window_frames import WindowFrameResult, label_parts, window_logits
from .window_masks import WindowMasks
from .window_tracking import WindowTracker
from .windowed_prompts import WindowedPrompts

LINEAGE_OPTIONS = ("new_objects", "divisions", "lineage_options", "lineage_edits")


def _same(a: tuple | None, b: tuple | None) -> bool:
    """Two prompt keys alike: the same kind, the same answer or label image (by identity),
    the same clicks (by value)."""
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and a[1] is b[1] and a[2] == b[2]


def _clicks(signature):
    points, box = signature if signature is not None else ((), None)
    coords = [(r, c) for r, c, _ in points] or None
    labels = [int(p) for _, _, p in points] or None
    return coords, labels, box


class SessionWindows:
    """The window tracker of a tiled session and what it was given (see the module).

    ``synced`` and ``label_prompts`` are the session's own tables ((frame, obj_id) -> (clicks,
    box); frame -> (labels, ids)), read, never written."""

    def __init__(
        self,
        tracker: VideoTracker,
        windows: WindowedPrompts,
        synced: dict,
        label_prompts: dict,
        *,
        embeddings=None,
        options: dict | None = None,
    ) -> None:
        self.tracker, self.windows = tracker, windows
        self._synced, self._label_prompts = synced, label_prompts
        self.on = windows.on
        self._store = embeddings is not None and embeddings is not False
        self._options = {
            k: v
            for k, v in (options or {}).items()
            if k in ("spill_dir", "feature_cache", "object_batch", "embeddings_dtype")
        }
        self.window_tracker: WindowTracker | None = None
        self._fed: dict[tuple[int, int], tuple] = {}  # (frame, obj_id) -> prompt key given
        self._frames: set[int] = set()  # frames whose current results are the window tracker's
        self.recentrings: dict[int, int] = {}  # per object, in the last propagation in windows
        self.running = False  # a propagation in windows is under way (its trackers in use)

    # ------------------------------------------------------------------ which tracker
    def downscaled_because(self, lineage: dict) -> str | None:
        """Why a tiled session's propagation with ``lineage`` options runs on the downscaled
        slices (None: it runs in windows, or the session is not tiled)."""
        if not self.on:
            return None
        used = [k for k in LINEAGE_OPTIONS if lineage.get(k) not in (None, False, (), [])]
        if used or self.tracker._lineage is not None:
            return "new objects and divisions are found on whole slices"
        return None

    def in_windows(self, lineage: dict) -> bool:
        return self.on and self.downscaled_because(lineage) is None

    def _tracker(self) -> WindowTracker:
        if self.window_tracker is None:
            source = self.tracker.source
            self.window_tracker = WindowTracker(
                self.tracker.model,
                source.frames,
                tile=self.windows.tile,
                channel=source.channel,
                window=source.window,  # the intensities the clicks were answered with
                percentiles=source.percentiles,
                # the session's store at a path keeps the windows' frames too (else temporary)
                embeddings=self.tracker.embeddings if self._store else None,
                **self._options,
            )
        return self.window_tracker

    # ------------------------------------------------------------------ prompts
    def _wanted(self) -> dict[tuple[int, int], tuple]:
        """(frame, obj_id) -> the key of the prompt the window tracker should hold there."""
        wanted = {}
        for key, signature in self._synced.items():
            answer = self.windows.answers.get(key)
            if answer is not None:
                wanted[key] = ("answer", answer, signature)
            else:
                wanted[key] = ("clicks", None, signature)
        for frame, (labels, ids) in self._label_prompts.items():
            for obj_id in ids:
                wanted[(frame, obj_id)] = ("mask", labels, self._synced.get((frame, obj_id)))
        tracked = set(self.tracker.obj_ids)
        return {k: v for k, v in wanted.items() if k[1] in tracked}

    def pending(self) -> set[int]:
        """Frames whose prompts changed since the window tracker was last given them."""
        wanted = self._wanted()
        changed = {k[0] for k, v in wanted.items() if not _same(self._fed.get(k), v)}
        return changed | {k[0] for k in self._fed if k not in wanted}

    def feed(self) -> None:
        """Give the window tracker every prompt of the session that it does not hold yet, and
        take back those the session no longer has."""
        wt = self._tracker()
        wanted = self._wanted()
        order = {o: i for i, o in enumerate(self.tracker.obj_ids)}  # results list them so
        todo = [(k, v) for k, v in wanted.items() if not _same(self._fed.get(k), v)]
        todo.sort(key=lambda kv: (order[kv[0][1]], kv[0][0]))
        masks: dict[tuple[int, int], list[int]] = {}  # (frame, id(labels)) -> objects
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracker warned of the same prompts already
            for (frame, obj_id), key in todo:
                if key[0] == "mask":
                    masks.setdefault((frame, id(key[1])), []).append(obj_id)
                    continue
                try:
                    self._give(wt, frame, obj_id, key)
                except PromptError:
                    continue
                self._fed[(frame, obj_id)] = key
            for (frame, _), obj_ids in masks.items():
                labels = wanted[(frame, obj_ids[0])][1]
                present = label_parts(labels, obj_ids)  # one pass, no sorted copy of a frame
                here = [o for o in obj_ids if o in present]
                try:
                    done = wt.add_labels(frame, labels, here) if here else None
                except PromptError:
                    continue
                dropped = set(done.dropped) if done is not None else set()
                for obj_id in obj_ids:
                    key = wanted[(frame, obj_id)]
                    if obj_id not in here or obj_id in dropped:  # erased, or too small
                        self._take_back(wt, frame, obj_id)
                        continue
                    coords, labels_, box = _clicks(key[2])
                    if coords or box is not None:
                        try:
                            wt.add_prompt(frame, obj_id, coords, labels_, box)
                        except PromptError:
                            continue
                    self._fed[(frame, obj_id)] = key
        for key in [k for k in self._fed if k not in wanted]:
            self._take_back(wt, *key)
        tracked = set(self.tracker.obj_ids)
        for obj_id in wt.obj_ids:
            if obj_id not in tracked or not wt.prompted_frames(obj_id):
                wt.remove_object(obj_id)

    def _give(self, wt: WindowTracker, frame: int, obj_id: int, key: tuple) -> None:
        """Clicks and boxes as they are: the window tracker places the object's window by them
        and answers them there itself (the answer's mask would place a window around a mask
        that may fill the answering window)."""
        wt.add_prompt(frame, obj_id, *_clicks(key[2]), replace=True)

    def _take_back(self, wt: WindowTracker, frame: int, obj_id: int) -> None:
        self._fed.pop((frame, obj_id), None)
        if obj_id in wt.obj_ids and frame in wt.prompted_frames(obj_id):
            wt.clear_prompts(frame, obj_id)

    def forget(self, obj_id: int) -> None:
        """An object removed from the session: out of the window tracker."""
        wt = self.window_tracker
        if self.running:  # its trackers are in use: the next feed takes it out
            return
        for key in [k for k in self._fed if k[1] == obj_id]:
            del self._fed[key]
        if wt is not None and obj_id in wt.obj_ids:
            wt.remove_object(obj_id)

    def rename(self, old: int, new: int) -> None:
        """An object renamed in the session: renamed in the window tracker, with its memory
        (during a propagation in windows: given again under ``new`` by the next one)."""
        if self.running:
            return
        for frame, obj_id in [k for k in self._fed if k[1] == old]:
            self._fed[(frame, new)] = self._fed.pop((frame, obj_id))
        if old in self.recentrings:
            self.recentrings[new] = self.recentrings.pop(old)
        wt = self.window_tracker
        if wt is not None and old in wt.obj_ids:
            wt.rename_object(old, new)

    def prompt(self, frame: int, obj_id: int, points, box) -> bool:
        """Answer a click on a frame propagated in windows with the window tracker (a
        correction: conditioned on the object's memory, from its tracked mask there), and give
        the downscaled tracker that mask as the object's prompt. False (nothing done) where the
        object's result on ``frame`` is not the window tracker's."""
        wt = self.window_tracker
        if self.running or wt is None or frame not in self._frames or obj_id not in wt.obj_ids:
            return False  # (while it runs, its trackers are in use: the next feed gives it)
        key = (frame, obj_id)
        if key in self._fed and self._fed[key][0] == "mask":
            return False  # a mask prompt refined: the session refines it in the tracker
        coords, labels, box_ = _clicks((points, box))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = wt.add_prompt(frame, obj_id, coords, labels, box_, replace=True)
        i = r.obj_ids.index(obj_id)
        window, low = r.windows[i], r.low_res[i : i + 1].float()
        if window == (0, 0, *wt.frame_shape):  # its prompts span more than a window
            self._fed.pop(key, None)  # the windowed answer is given at the next propagation
            return False
        crop = window_logits(low, window)[0] > 0
        mask = WindowMasks(crop, window, self.tracker.frame_shape)  # never made full-frame
        survives = bool(model_masks([mask], self.tracker.model).any()) or not crop.any()
        if survives:
            self.tracker.add_prompt(frame, obj_id, mask=mask)
        else:
            self.tracker.add_prompt(frame, obj_id, coords, labels, box_, replace=True)
        answer = self.windows.record(frame, obj_id, window, low, crop, survives)
        self._fed[key] = ("answer", answer, (points, box))
        return True

    # ------------------------------------------------------------------ propagation
    def plan(self, direction: str, start=None, stop=None) -> list[tuple[int, int, bool]]:
        """The passes :meth:`propagate` runs, worked out without the model (the window tracker
        is given the prompts only when it starts)."""
        source = self.tracker.source
        start = None if start is None else source.check_index(start)
        stop = None if stop is None else source.check_index(stop)
        wanted = self._wanted()
        if not wanted:
            raise PromptError("no objects to track: click on an object first")
        new = set(self.window_tracker.new_prompt_frames) if self.window_tracker else set()
        frames = (new | self.pending()) or {f for f, _ in wanted}

        def default(reverse: bool) -> int:
            return max(frames) if reverse else min(frames)

        return plan_passes(direction, start, stop, len(source), default)

    def propagate(self, lock, direction: str, start=None, stop=None):
        """Feed the window tracker, then follow every object in its window, holding ``lock``
        for each frame only; each frame's result with the windowed answers of its prompts."""
        with lock:
            self.feed()
            run = self.window_tracker.propagate(direction, start, stop)
            self.running = True
        try:
            while True:
                with lock:
                    try:
                        result = next(run)
                    except StopIteration:
                        return
                    self._frames.add(result.frame)
                    self.recentrings = dict(result.recentred)
                    shown = self.windows.result(result)
                yield shown
        finally:
            with lock:
                run.close()
                self.running = False

    def downscaled(self, frame: int) -> None:
        """``frame`` was propagated by the downscaled tracker: its results are the tracker's."""
        self._frames.discard(frame)

    def overlay(self, result: FrameResult) -> FrameResult:
        """``result`` (the downscaled tracker's) with the window tracker's results in place of
        the objects whose current result on that frame is the window tracker's: the frame was
        propagated in windows, and their prompt there has not changed since."""
        wt = self.window_tracker
        frame = result.frame
        if wt is None or frame not in self._frames or result.low_res is None:
            return result
        wanted = self._wanted()
        mine = [
            o
            for o in result.obj_ids
            if o in wt.obj_ids and _same(self._fed.get((frame, o)), wanted.get((frame, o)))
        ]
        if not mine:
            return result
        theirs = wt.result(frame, mine)
        where = {o: i for i, o in enumerate(mine)}
        whole: Window = (0, 0, *result.shape)
        lows, windows = [], []
        for i, obj_id in enumerate(result.obj_ids):
            if obj_id in where:
                j = where[obj_id]
                lows.append(theirs.low_res[j : j + 1])
                windows.append(theirs.windows[j])
            else:
                lows.append(result.low_res[i : i + 1].float())
                windows.append(whole)
        return WindowFrameResult(
            frame, result.obj_ids, torch.cat(lows), result.shape, windows, theirs.recentred
        )

    def close(self) -> None:
        if self.window_tracker is not None:
            self.window_tracker.close()
        self.window_tracker = None
        self._fed.clear()
        self._frames.clear()


__all__ = ["SessionWindows"]
