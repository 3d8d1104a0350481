"""Tracking in big frames: each object followed in a native-resolution window around it.

SAM 2 resizes every frame to its input (1024² for the released checkpoints); on 4096² frames a
small cell shrinks below the network's 16-pixel feature grid. :class:`WindowTracker` follows each
object in a window of the frame instead (``tile`` pixels, by default the model's input, so the
window is seen without any resize):

- An object's window holds its prompts' extent (points, box corners, mask pixels, on every
  prompted frame) at least ``margin`` pixels from each side cut inside the frame
  (:class:`.window_frames.WindowPlacer`). Windows come from one grid where they can, so objects
  near each other land in the same window; objects in the same window share one
  :class:`~napari_sam2.VideoTracker`, hence one embedding per frame.
- Each window is an ordinary :class:`~napari_sam2.VideoTracker` on a lazy crop of the stack
  (:class:`.window_frames.CroppedFrames`), with the intensity window of the whole stack, so a
  crop is preprocessed as the whole stack would be. While an object's window does not move, its
  result is exactly SAM 2's on the cropped movie.
- When a tracked mask comes closer than ``margin / 2`` to a cut side of its window, the window
  re-centres on the mask: a new window tracker, in which the object continues from its last
  mask as a mask prompt on that frame. This is an approximation: in the new window the object
  remembers only that mask, not its earlier frames. Re-centrings are counted per object
  (:attr:`WindowTracker.recentrings`, ``result.recentred``).
- Results are full-frame :class:`.window_frames.WindowFrameResult` s: label writing
  (:func:`~napari_sam2.track_to_labels`) takes them as any tracker's.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..model import SAM2Model
from .embeddings import store_for
from .frames import FrameSource
from .plan import DIRECTIONS, plan_passes
from .preprocess import DEFAULT_PERCENTILES, IntensityWindow
from .prompts import Prompt, PromptError, check_obj_id, label_ids, mask_prompt
from .reruns import rename_tracked
from .tiles import TilesError, Window, resolve_tiles
from .video import VideoTracker
from .window_frames import (
    AwayResults,
    CroppedFrames,
    WindowFrameResult,
    WindowPlacer,
    bounding_part,
    check_window_options,
    label_parts,
    prompt_extent,
    shift_prompt,
    stack_window,
)
from .window_passes import WindowPasses


@dataclass(frozen=True)
class _Entry:
    """One prompt of one object, in frame pixels (a mask as its bounding crop)."""

    frame: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_part: tuple | None = None

    def shifted(self, window: Window) -> dict:
        points, box, mask = shift_prompt(window, self.points, self.box, self.mask_part)
        if mask is not None:
            return {"mask": mask}
        return {"points": points, "labels": self.labels, "box": box}


class WindowTracker(WindowPasses):
    """Track objects through a stack of big frames, each in a native-resolution window.

    The same calls as :class:`~napari_sam2.VideoTracker` (``add_prompt``, ``add_labels``,
    ``propagate``, ``plan``, ``result``, ``clear_prompts``, ``remove_object``, ``reset``,
    ``close``), in frame pixels. ``tile``:
    the window's side (default: the model's input; not smaller); ``margin``: how far from a cut
    side of its window an object is placed (default: an eighth of the tile); the window
    re-centres when the object comes closer than half of it. The intensity window (``window``,
    or ``percentiles`` of a few frames) is set once on the whole stack. ``embeddings``: None (a
    temporary store per window), False (none), or a store (a path, made if missing, or an
    :class:`~.embeddings.EmbeddingStore`) checked against the stack and model as a
    :class:`~napari_sam2.VideoTracker`'s: each window's frames are kept in its window store
    there (``windows/r0-c0-r1-c1``), read back instead of encoded again, by this tracker or the
    next run. The other options are :class:`~napari_sam2.VideoTracker`'s, for each window.
    """

    def __init__(
        self,
        model: SAM2Model,
        frames,
        *,
        tile: int | None = None,
        margin: int | None = None,
        channel: int = 0,
        window: IntensityWindow | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        spill_dir=None,
        feature_cache: int = 2,
        object_batch: int | None = None,
        embeddings=None,
        embeddings_dtype: str | None = None,
    ) -> None:
        self.model = model
        self.tile, self.margin = check_window_options(tile, margin, model.config.image_size)
        if window is None:  # set once for the whole stack, without reading a whole frame
            probe = FrameSource(
                frames,
                image_size=model.config.image_size,
                channel=channel,
                window=IntensityWindow(0.0, 1.0),
            )
            window = stack_window(frames, probe.shape, probe.dtype, channel, percentiles)
        self.source = FrameSource(
            frames,
            image_size=model.config.image_size,
            channel=channel,
            window=window,
            percentiles=percentiles,
        )
        self.placer = WindowPlacer(self.source.frame_shape, self.tile, self.margin)
        self._store = None  # a store kept on disk: each window's frames in its window store
        if embeddings is not None and embeddings is not False:
            self._store = store_for(embeddings, embeddings_dtype, spill_dir, self.source, model)
            embeddings = None  # per window, below; None: a temporary store of its own
        self._options = {
            "channel": channel,
            "window": self.source.window,  # one intensity window for every crop
            "percentiles": percentiles,
            "spill_dir": spill_dir,
            "feature_cache": feature_cache,
            "object_batch": object_batch,
            "embeddings": embeddings,
            "embeddings_dtype": embeddings_dtype,
        }
        self._groups: dict[Window, VideoTracker] = {}  # each prompt window's tracker
        self._home: dict[int, Window] = {}  # object -> its prompt window, in prompt order
        self._entries: dict[int, list[_Entry]] = {}
        self._new_prompt_frames: set[int] = set()
        self._recentred: list[VideoTracker] = []  # trackers of re-centred windows, this pass
        # its results on the frames it was followed on in a re-centred window (whose tracker
        # is closed after the pass)
        self._away = AwayResults(spill_dir)
        self.recentrings: dict[int, int] = {}  # per object, in the last propagation
        self.trackers_made = 0  # window trackers created (prompt windows and re-centrings)
        self._closed = False

    # ------------------------------------------------------------------ properties
    @property
    def num_frames(self) -> int:
        return len(self.source)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.source.frame_shape

    @property
    def obj_ids(self) -> tuple[int, ...]:
        return tuple(self._home)

    @property
    def lineage(self) -> list:
        """Always empty: new objects and divisions are tracked on whole frames only."""
        return []

    @property
    def windows(self) -> dict[int, Window]:
        """Each object's prompt window (min_row, min_col, max_row, max_col)."""
        return dict(self._home)

    @property
    def new_prompt_frames(self) -> list[int]:
        """Frames prompted since the last complete propagation (where the next one starts)."""
        return sorted(self._new_prompt_frames)

    @property
    def num_windows(self) -> int:
        """Prompt windows in use: objects sharing a window count once."""
        return len(self._groups)

    def __enter__(self) -> WindowTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ prompts
    def add_prompt(
        self,
        frame: int,
        obj_id: int,
        points=None,
        labels=None,
        box=None,
        mask=None,
        *,
        replace: bool = False,
    ) -> WindowFrameResult:
        """As :meth:`VideoTracker.add_prompt`, in frame pixels; the object's window follows
        from all its prompts (a prompt that moves it replays its prompts in the new window)."""
        self._check_open()
        frame = self.source.check_index(frame)
        obj_id = check_obj_id(obj_id)
        shape = self.frame_shape
        if mask is not None:
            if points is not None or box is not None:
                raise PromptError("give either a mask or points/box in one add_prompt call")
            try:
                entry = _Entry(frame, mask_part=bounding_part(mask_prompt(mask, shape)))
            except PromptError as e:
                raise PromptError(f"object {obj_id}, frame {frame}: {e}") from None
        else:
            p = Prompt.build(shape, points, labels, box)
            if p.num_points == 0 and p.box is None:
                raise PromptError("give points (with labels), a box or a mask")
            pts = p.points if p.num_points else None
            entry = _Entry(frame, pts, p.labels if p.num_points else None, p.box)
        entries = self._entries.get(obj_id, [])
        if replace or box is not None or mask is not None:
            entries = [e for e in entries if e.frame != frame]
        entries = [*entries, entry]
        window = self._window_of(entries)
        self._away.pop(obj_id, frame)  # its prompt window answers there now
        if self._home.get(obj_id) == window:
            self._groups[window].add_prompt(frame, obj_id, **entry.shifted(window), replace=replace)
        else:
            self._move(obj_id, entries, window)
        self._entries[obj_id] = entries
        self._home[obj_id] = window
        self._new_prompt_frames.add(frame)
        return self.result(frame)

    def add_labels(self, frame: int, labels, obj_ids=None) -> WindowFrameResult:
        """As :meth:`VideoTracker.add_labels`: each id of ``labels`` (H, W), or of ``obj_ids``,
        becomes an object prompted by its mask, objects of one window in one batch. Returns the
        frame's result for the ids prompted; ``.dropped``: ids too small for the model's input
        even in a window (not added)."""
        self._check_open()
        frame = self.source.check_index(frame)
        lab, ids = label_ids(labels, self.frame_shape, obj_ids)
        ids = [check_obj_id(i) for i in ids]
        parts = label_parts(lab, ids)
        plans: dict[int, tuple[list[_Entry], Window]] = {}
        for obj_id in ids:
            entries = [e for e in self._entries.get(obj_id, []) if e.frame != frame]
            entries.append(_Entry(frame, mask_part=parts[obj_id]))
            plans[obj_id] = (entries, self._window_of(entries))
        batch: dict[Window, list[int]] = {}
        for obj_id, (entries, window) in plans.items():
            if self._home.get(obj_id, window) == window:
                batch.setdefault(window, []).append(obj_id)
            else:
                self._move(obj_id, entries, window)
                self._commit(obj_id, entries, window, frame)
        dropped: list[int] = []
        for window, group_ids in batch.items():
            tracker = self._group(window)
            r0, c0, r1, c1 = window
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # said once below, for the whole frame
                done = tracker.add_labels(frame, lab[r0:r1, c0:c1], obj_ids=group_ids)
            dropped += list(done.dropped)
            for obj_id in group_ids:
                if obj_id not in done.dropped:
                    self._commit(obj_id, plans[obj_id][0], window, frame)
            if not tracker.obj_ids:
                self._drop_group(window)
        if dropped:
            warnings.warn(
                f"object id(s) {sorted(dropped)} on frame {frame} are too small to survive the "
                f"resize to the model's {self.model.config.image_size}-pixel input even in a "
                "window, and were not added",
                stacklevel=2,
            )
        added = [i for i in ids if i not in set(dropped)]
        result = self.result(frame, added)
        result.dropped = tuple(dropped)
        return result

    def clear_prompts(self, frame: int, obj_id: int) -> WindowFrameResult:
        """As :meth:`VideoTracker.clear_prompts`: remove ``obj_id``'s prompt on ``frame``. The
        object's window follows from its remaining prompts (a move replays them)."""
        self._check_open()
        frame = self.source.check_index(frame)
        window = self._window(obj_id)
        entries = [e for e in self._entries[obj_id] if e.frame != frame]
        new = self._window_of(entries) if entries else window
        if new == window:
            self._groups[window].clear_prompts(frame, obj_id)
        else:
            self._move(obj_id, entries, new)
        self._entries[obj_id] = entries
        self._home[obj_id] = new
        return self.result(frame)

    def prompted_frames(self, obj_id: int | None = None) -> list[int]:
        """The frames prompted (of ``obj_id``, or of any object)."""
        if obj_id is not None:
            self._window(obj_id)  # a KeyError naming the known ids
        ids = list(self._home) if obj_id is None else [obj_id]
        return sorted({e.frame for i in ids for e in self._entries[i]})

    def remove_object(self, obj_id: int) -> None:
        """Forget an object entirely (prompts, memory, results)."""
        self._check_open()
        window = self._window(obj_id)
        self._groups[window].remove_object(obj_id)
        if not self._groups[window].obj_ids:
            self._drop_group(window)
        del self._home[obj_id], self._entries[obj_id]
        self._away.drop(obj_id)

    def rename_object(self, old: int, new: int) -> None:
        """Give object ``old`` the unused id ``new``, keeping its window, memory and results."""
        self._check_open()
        window = self._window(old)
        new = check_obj_id(new)
        if new in self._home:
            raise ValueError(f"object id {new} is in use; choose an unused id")
        rename_tracked(self._groups[window], old, new)

        def renamed(table: dict) -> dict:
            return {(new if k == old else k): v for k, v in table.items()}

        self._home, self._entries = renamed(self._home), renamed(self._entries)
        self._away.rename(old, new)
        self.recentrings = renamed(self.recentrings)

    def reset(self) -> None:
        """Forget all objects and prompts; keep the frame source."""
        for tracker in self._groups.values():
            tracker.close()
        self._close_recentred()
        self._groups.clear()
        self._home.clear()
        self._entries.clear()
        self._new_prompt_frames.clear()
        self._away.clear()
        self.recentrings = {}

    def close(self) -> None:
        """Release every window tracker (threads, temporary stores). Closing twice is fine."""
        self.reset()
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def _commit(self, obj_id: int, entries: list[_Entry], window: Window, frame: int) -> None:
        self._away.pop(obj_id, frame)
        self._entries[obj_id] = entries
        self._home[obj_id] = window
        self._new_prompt_frames.add(frame)

    def _window_of(self, entries: list[_Entry]) -> Window:
        rows, cols = [], []
        for e in entries:
            r, c = prompt_extent(e.points, e.box, e.mask_part)
            rows += r
            cols += c
        return self.placer.window_for(rows, cols)

    def _group(self, window: Window) -> VideoTracker:
        if window not in self._groups:
            self._groups[window] = self._tracker_on(window)
        return self._groups[window]

    def _tracker_on(self, window: Window) -> VideoTracker:
        frames = CroppedFrames(self.source.frames, window, self.source.shape, self.source.dtype)
        self.trackers_made += 1
        options = dict(self._options)
        if self._store is not None:  # the whole frame's embeddings are the store's own frames
            whole = window == self.placer.whole and not self._store.is_temporary
            options["embeddings"] = self._store if whole else self._store.window(window)
        return VideoTracker(self.model, frames, **options)

    def _drop_group(self, window: Window) -> None:
        self._groups.pop(window).close()

    def _move(self, obj_id: int, entries: list[_Entry], window: Window) -> None:
        """Give ``obj_id`` all its prompts in ``window``'s tracker, then take it out of its old
        window; a prompt refused there leaves everything as it was."""
        fresh = window not in self._groups
        tracker = self._group(window)
        try:
            for e in entries:
                tracker.add_prompt(e.frame, obj_id, **e.shifted(window))
        except Exception:
            if obj_id in tracker.obj_ids:
                tracker.remove_object(obj_id)
            if fresh:
                self._drop_group(window)
            raise
        old = self._home.get(obj_id)
        self._away.drop(obj_id)  # its tracked frames went with the old window's tracker
        if old is not None:
            self._groups[old].remove_object(obj_id)
            if not self._groups[old].obj_ids:
                self._drop_group(old)

    def _window(self, obj_id: int) -> Window:
        try:
            return self._home[obj_id]
        except KeyError:
            raise KeyError(
                f"unknown object id {obj_id!r}; tracked objects are {list(self._home)}"
            ) from None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                "this WindowTracker is closed (close() released its window trackers); create a "
                "new one to track again"
            )

    # ------------------------------------------------------------------ results
    def result(self, frame: int, obj_ids=None) -> WindowFrameResult:
        """Every object's (or ``obj_ids``') current result on ``frame`` (-1024 where none), in
        the window it was followed in there: its prompt window, or, on a frame the last
        propagation followed it on in a re-centred window, that window (its result kept, at
        the model's low resolution, until a prompt or a move of the object replaces it)."""
        self._check_open()
        frame = self.source.check_index(frame)
        ids = list(self._home) if obj_ids is None else [check_obj_id(i) for i in obj_ids]
        lows, windows = [], []
        for obj_id in ids:
            window = self._window(obj_id)
            away = self._away.get(obj_id, frame)
            if away is not None:
                windows.append(away[0])
                lows.append(away[1])
                continue
            lows.append(self._groups[window].result(frame, [obj_id]).low_res)
            windows.append(window)
        size = self.model.config.low_res_mask_size
        low = torch.cat(lows) if lows else torch.zeros(0, 1, size, size)
        recentred = {i: self.recentrings.get(i, 0) for i in ids}
        return WindowFrameResult(frame, ids, low, self.frame_shape, windows, recentred)

    # ------------------------------------------------------------------ propagation
    def plan(
        self, direction: str = "forward", start=None, stop=None
    ) -> list[tuple[int, int, bool]]:
        """The passes :meth:`propagate` runs, as (first, last, reverse) triples."""
        self._check_open()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        start = None if start is None else self.source.check_index(start)
        stop = None if stop is None else self.source.check_index(stop)
        if not self._home:
            raise PromptError("no objects to track: add a prompt with add_prompt() first")

        def default(reverse: bool) -> int:
            frames = self._new_prompt_frames or {
                e.frame for entries in self._entries.values() for e in entries
            }
            return max(frames) if reverse else min(frames)

        return plan_passes(direction, start, stop, self.num_frames, default)

    def propagate(
        self, direction: str = "forward", start=None, stop=None, **lineage
    ) -> Iterator[WindowFrameResult]:
        """Follow every object in its window, yielding one full-frame
        :class:`.window_frames.WindowFrameResult` per frame, as :meth:`VideoTracker.propagate`
        does (forward, backward, both; the same default start). Stopping the iteration keeps
        what was yielded; the next call starts again from the prompted frames. New objects,
        divisions and lineage are not available in windows."""
        used = [k for k, v in lineage.items() if v is not None and v is not False]
        if used:
            raise TilesError(
                f"{', '.join(used)}: new objects, divisions and lineage are not available when "
                "tracking in windows; track whole frames for them (VideoTracker, --tiles off)"
            )
        passes = self.plan(direction, start, stop)
        return self._propagate(passes)


def make_tracker(model: SAM2Model, frames, tiles="auto", *, tile=None, margin=None, **options):
    """A :class:`WindowTracker` when ``tiles`` (True, False or "auto": frames larger than 1.5
    times the model's input on a side) says to track the stack's frames in windows, else a
    :class:`~napari_sam2.VideoTracker` (the whole frame resized to the input)."""
    from .tiles import check_tile_options

    check_tile_options(tiles, tile, None)
    shape = getattr(frames, "shape", None)
    if shape is None:
        shape = (len(frames), *np.shape(frames[0]))
    tile_px = model.config.image_size if tile is None else int(tile)
    if resolve_tiles(tiles, tuple(shape[1:3]), model.config.image_size, tile_px):
        return WindowTracker(model, frames, tile=tile, margin=margin, **options)
    return VideoTracker(model, frames, **options)
