"""One propagation of a :class:`~.window_tracking.WindowTracker`: its passes over the frames,
each window's tracker stepped frame by frame, and the re-centring of objects that near a cut
side of their window.

:class:`WindowPasses` is the propagating half of the window tracker, kept apart from its
prompt bookkeeping (``window_tracking.py``); it works on the tracker's tables: ``_groups``
(each prompt window's tracker), ``_home`` (each object's prompt window), ``_entries`` (its
prompts), ``_away`` (results on frames followed in a re-centred window), ``_recentred``,
``recentrings``, ``placer``, ``model`` and ``frame_shape``, and its ``_tracker_on(window)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch

from ..model.sam2 import NO_OBJECT_LOGIT
from .tiles import Window
from .video import VideoTracker
from .window_frames import WindowFrameResult, mask_extent, shift_prompt, window_logits


class _Run:
    """One window tracker's propagation within a pass, and the objects it follows."""

    def __init__(self, window: Window, tracker: VideoTracker) -> None:
        self.window, self.tracker, self.gen = window, tracker, None

    def start(self, direction: str, first: int, last: int, obj_ids=None) -> None:
        if self.gen is not None:
            self.gen.close()
        # from ``first``, always: not where an interrupted pass of the same call stopped
        self.tracker.forget_interrupted()
        self.gen = self.tracker.propagate(direction, first, last, obj_ids=obj_ids)


class WindowPasses:
    """The propagation of a window tracker (see the module); mixed into
    :class:`~.window_tracking.WindowTracker`, which defines the tables it uses."""

    def _propagate(self, passes) -> Iterator[WindowFrameResult]:
        self.recentrings = dict.fromkeys(self._home, 0)
        for first, last, reverse in passes:
            yield from self._pass(first, last, reverse)
        self._new_prompt_frames.clear()

    @torch.inference_mode()
    def _pass(self, first: int, last: int, reverse: bool) -> Iterator[WindowFrameResult]:
        direction = "backward" if reverse else "forward"
        step = -1 if reverse else 1
        runs = [_Run(w, t) for w, t in self._groups.items()]
        follows = {o: run for run in runs for o in run.tracker.obj_ids}
        for run in runs:
            run.start(direction, first, last)
        ids = tuple(self._home)
        try:
            for frame in range(first, last + step, step):
                lows, windows = {}, {}
                for run in runs:
                    if run.gen is None:
                        continue
                    r = next(run.gen)
                    for i, obj_id in enumerate(r.obj_ids):
                        if follows.get(obj_id) is run:
                            lows[obj_id], windows[obj_id] = r.low_res[i : i + 1], run.window
                # (an object prompted while this runs waits for the next propagation)
                size = self.model.config.low_res_mask_size
                absent = torch.full((1, 1, size, size), NO_OBJECT_LOGIT)
                low = torch.cat([lows.get(o, absent) for o in ids])
                for obj_id in ids:  # kept: the re-centred window's tracker goes after the pass
                    run = follows.get(obj_id)
                    away = run is not None and run.tracker not in self._groups.values()
                    if away and obj_id in lows:
                        self._away.put(obj_id, frame, run.window, lows[obj_id])
                    else:
                        self._away.pop(obj_id, frame)
                yield WindowFrameResult(
                    frame,
                    ids,
                    low,
                    self.frame_shape,
                    [windows.get(o, self._home.get(o, self.placer.whole)) for o in ids],
                    dict(self.recentrings),
                )
                if frame != last:
                    self._recentre(frame, frame + step, last, direction, lows, runs, follows)
        finally:
            for run in runs:
                if run.gen is not None:
                    run.gen.close()
            self._close_recentred()

    def _recentre(self, frame, following, last, direction, lows, runs, follows) -> None:
        """Before ``following``: move every object whose mask on ``frame`` nears a cut side of
        its window into a window re-centred on it, and every re-centred object prompted on
        ``following`` back to its prompt window (whose tracker holds that prompt)."""
        home = {id(run): run for run in runs if run.tracker in self._groups.values()}
        moves: dict[Window, list[int]] = {}
        back: dict[int, _Run] = {}
        for obj_id, low in lows.items():
            run = follows[obj_id]
            if id(run) not in home and following in self._prompted(obj_id):
                mine = [r for r in home.values() if obj_id in r.tracker.obj_ids]
                if mine:
                    back[obj_id] = mine[0]
                    continue
            extent = mask_extent(low, run.window)
            if extent is None or not self.placer.too_close(run.window, *extent):
                continue
            new = self.placer.window_for(*extent)
            if new != run.window:
                moves.setdefault(new, []).append(obj_id)
        changed: set[int] = set()  # runs (by id) whose followers change
        for obj_id, run in back.items():
            changed |= {id(follows[obj_id]), id(run)}
            follows[obj_id] = run
        for window, obj_ids in moves.items():
            crops = {}
            for obj_id in obj_ids:
                old = follows[obj_id].window
                mask = window_logits(lows[obj_id], old)[0] > 0
                _, _, crop = shift_prompt(window, None, None, (old[0], old[1], mask))
                if crop.any():  # (a positive low-resolution cell can upscale to nothing)
                    crops[obj_id] = crop
            if not crops:
                continue
            tracker = self._tracker_on(window)
            self._recentred.append(tracker)
            for obj_id, crop in crops.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # too small for the input: absent there
                    tracker.add_prompt(frame, obj_id, mask=crop)
            moved = list(crops)
            run = _Run(window, tracker)
            run.start(direction, following, last)
            runs.append(run)
            for obj_id in moved:
                changed.add(id(follows[obj_id]))
                follows[obj_id] = run
                self.recentrings[obj_id] = self.recentrings.get(obj_id, 0) + 1
        for run in [r for r in runs if id(r) in changed]:
            followers = [o for o in run.tracker.obj_ids if follows.get(o) is run]
            if followers:  # continues exactly: the memories up to ``frame`` are kept
                run.start(direction, following, last, obj_ids=followers)
            elif id(run) in home:  # idle until an object comes back
                run.gen.close()
                run.gen = None
            else:
                run.gen.close()
                runs.remove(run)
                self._recentred.remove(run.tracker)
                run.tracker.close()

    def _prompted(self, obj_id: int) -> set[int]:
        return {e.frame for e in self._entries[obj_id]}

    def _close_recentred(self) -> None:
        for tracker in self._recentred:
            tracker.close()
        self._recentred.clear()
