"""Keeping a VideoTracker in step with editable prompt tables (napari's Points and Shapes layers,
or any other front end). Qt-free, so the widget stays thin and this logic is tested here."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ..model import SAM2Model
from .prompts import PromptError
from .reruns import rename_tracked
from .session_windows import SessionWindows
from .tiles import Window
from .video import FrameResult, VideoTracker, frames_in
from .windowed_prompts import WindowedPrompts


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
    object is left), the objects that no longer have any prompt (removed from tracking), and
    the prompts that could not be used (object id -> why): one bad prompt never stops the
    others."""

    frame: int
    result: FrameResult | None
    removed: tuple[int, ...]
    errors: tuple[tuple[int, str], ...] = ()
    windows: tuple[tuple[int, Window], ...] = ()  # (object id, the window that answered it)


@dataclass(frozen=True)
class SessionView:
    """What a front end's event loop reads of a session without waiting for it: the objects
    (in result order), each object's prompted frames, and each frame's mask-prompted ids."""

    obj_ids: tuple[int, ...] = ()
    prompted: dict[int, tuple[int, ...]] = field(default_factory=dict)
    masked: dict[int, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, session: PromptSession) -> SessionView:
        tracker = session.tracker
        ids = tracker.obj_ids
        return cls(
            ids,
            {i: tuple(tracker.prompted_frames(i)) for i in ids},
            {f: frozenset(ids) for f, (_, ids) in session._label_prompts.items() if ids},
        )


class _ViewLock:
    """The session's re-entrant lock; each time it is released for good (the outermost
    ``with``), the session's :class:`SessionView` is read again, so that the view is always
    the state as the lock last left it."""

    def __init__(self, publish) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # changed only by the thread that holds the lock
        self._publish = publish

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self._depth += 1
        return got

    def release(self) -> None:
        try:
            if self._depth == 1:
                self._publish()
        finally:  # released even if reading the view failed
            self._depth -= 1
            self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class PromptSession:
    """Owns a :class:`VideoTracker` and applies prompt tables to it, frame by frame.

    ``sync_frame(frame, points, boxes)`` takes *all* the clicks and boxes currently on that
    frame; objects whose prompts changed are re-prompted (replacing their old prompt there),
    objects whose prompts disappeared are cleared there, and objects left with no prompt
    anywhere are removed.

    Masks are prompts too: :meth:`add_label_prompts` makes objects of a label image's ids
    (segment everything, a Cellpose layer, painted corrections). An object's prompt on a frame is
    then its mask, refined by its clicks there, if any; the mask stays when the clicks go.

    Big frames: with ``tiles`` (``True``, or ``"auto"``: frames larger than 1.5 times the
    model's input on a side) clicks and boxes are answered at native resolution, in the window
    of ``tile`` pixels (default: the model's input) that holds them best, and that mask
    prompts the tracker (see ``windowed_prompts.py``). ``tiled`` says whether it applies.
    Propagation then follows each object in a native-resolution window too (a
    :class:`~.window_tracking.WindowTracker` given the session's prompts, see
    ``session_windows.py``; with an embeddings store, each window's frames are kept there),
    except with new objects or divisions, which need whole frames (:meth:`downscaled_because`).

    Calls are serialised by a lock, so a front end may call from worker threads (e.g. a click
    while a propagation runs waits for the frame in progress). What an event loop reads —
    :attr:`obj_ids`, :meth:`mask_prompted`, :meth:`prompted_frames` — never waits for the lock:
    it is the current state when the lock is free, else the state as it was when the lock was
    last free (a propagated frame or an embedding holds it for seconds).
    """

    def __init__(
        self, model: SAM2Model, frames, *, tiles=False, tile=None, halo=None, **tracker_options
    ) -> None:
        self.tracker = VideoTracker(model, frames, **tracker_options)
        self.windows = WindowedPrompts(self.tracker, tiles, tile, halo)
        self._view = SessionView()
        self.lock = _ViewLock(self._read_view)
        self._synced: dict[tuple[int, int], tuple] = {}  # (frame, obj_id) -> prompt signature
        # frame -> the label image its mask prompts were taken from, and the ids taken
        self._label_prompts: dict[int, tuple[np.ndarray, set[int]]] = {}
        self.window_tracking = SessionWindows(
            self.tracker,
            self.windows,
            self._synced,
            self._label_prompts,
            embeddings=tracker_options.get("embeddings"),
            options=tracker_options,
        )

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
            masked = self.mask_prompted(frame)
            changed = False
            errors = []
            answered = []
            for obj_id, (clicks, box) in wanted.items():
                signature = (
                    tuple((p.row, p.col, p.positive) for p in clicks),
                    None if box is None else box.box,
                )
                if self._synced.get((frame, obj_id)) == signature:
                    continue
                try:
                    self._prompt(frame, obj_id, clicks, box, obj_id in masked)
                except PromptError as e:  # this object's prompt only; the others go on
                    errors.append((obj_id, str(e)))
                    continue
                self._synced[(frame, obj_id)] = signature
                changed = True
                window = self.windows.window(frame, obj_id)
                if window is not None:
                    answered.append((obj_id, window))
            removed = []
            for f, obj_id in list(self._synced):
                if f == frame and obj_id not in wanted:
                    del self._synced[(f, obj_id)]
                    self.windows.forget(frame, obj_id)
                    changed = True
                    if obj_id in masked:  # the clicks went, the mask stays
                        self._prompt(frame, obj_id, [], None, True)
                    elif not self._has_prompts(obj_id):
                        self.tracker.remove_object(obj_id)
                        removed.append(obj_id)
                    else:
                        self.tracker.clear_prompts(frame, obj_id)
            result = None
            if changed and self.tracker.obj_ids:
                result = self._result(frame)  # every object's current mask on this frame
            return SyncResult(frame, result, tuple(removed), tuple(errors), tuple(answered))

    def add_label_prompts(self, frame: int, labels: np.ndarray, obj_ids=None) -> SyncResult:
        """Make each id of ``labels`` (or only ``obj_ids``) an object prompted by its mask on
        ``frame``.

        ``labels`` is the frame's whole (H, W) label image as the user sees it now; it replaces
        the one earlier mask prompts on this frame came from (which must agree with it for every
        object not in ``obj_ids``). An id of ``obj_ids`` that the labels no longer hold (erased
        by hand) is prompted as absent there. Clicks the object has on the frame refine its mask.
        Returns the frame's result; ``removed`` lists ids too small for the model (not added)."""
        with self.lock:
            labels = np.array(labels, copy=True)
            res = self.tracker.add_labels(frame, labels, obj_ids, allow_absent=obj_ids is not None)
            _, before = self._label_prompts.get(frame, (None, set()))
            self._label_prompts[frame] = (labels, before | set(res.obj_ids))
            for obj_id in res.obj_ids:
                self.windows.forget(frame, obj_id)  # the mask is its prompt now
                signature = self._synced.get((frame, obj_id))
                if signature is not None:
                    self._refine(frame, obj_id, *signature)
            result = self._result(frame) if self.tracker.obj_ids else None
            return SyncResult(frame, result, tuple(res.dropped))

    def segment_everything(self, frame: int, progress=None, **options) -> list:
        """Every object SAM 2 finds on ``frame``: the records of an
        :class:`~napari_sam2.AutomaticMaskGenerator` with ``options``, seen as the tracker sees
        the frame (channel, intensity window). Nothing is prompted: the caller chooses ids and
        calls :meth:`add_label_prompts`. ``progress(done, total)`` may raise to cancel."""
        from .automatic import AutomaticMaskGenerator

        source = self.tracker.source
        image = source.read(self.tracker.source.check_index(frame))
        generator = AutomaticMaskGenerator(self.tracker.model, channel=source.channel, **options)
        return generator.generate(image, progress=progress, window=source.window)

    def remove_object(self, obj_id: int) -> None:
        """Forget an object everywhere: its prompts (tables and masks) and the tracker's memory."""
        with self.lock:
            for key in [k for k in self._synced if k[1] == obj_id]:
                del self._synced[key]
            self.windows.forget(obj_id=obj_id)
            self.window_tracking.forget(obj_id)
            for frame, (_, ids) in list(self._label_prompts.items()):
                ids.discard(obj_id)
                if not ids:
                    del self._label_prompts[frame]
            if obj_id in self.tracker.obj_ids:
                self.tracker.remove_object(obj_id)

    def remove_mask_prompts(self, frame: int, obj_ids) -> SyncResult:
        """Take back the mask prompts of ``obj_ids`` on ``frame`` (an undone painting): their
        clicks there, if any, prompt them again; objects left with no prompt are removed."""
        with self.lock:
            labels, ids = self._label_prompts.get(frame, (None, set()))
            gone = set(obj_ids) & ids
            ids -= gone
            if not ids:
                self._label_prompts.pop(frame, None)
            removed = []
            for obj_id in sorted(gone):
                signature = self._synced.get((frame, obj_id))
                if signature is not None:
                    self._prompt_clicks(frame, obj_id, *signature)
                elif not self._has_prompts(obj_id):
                    self.tracker.remove_object(obj_id)
                    removed.append(obj_id)
                else:
                    self.tracker.clear_prompts(frame, obj_id)
            result = self._result(frame) if gone and self.tracker.obj_ids else None
            return SyncResult(frame, result, tuple(removed))

    def mask_prompted(self, frame: int) -> set[int]:
        """Ids of the objects whose prompt on ``frame`` is a mask (their labels there are the
        user's: a front end should not overwrite them with the tracker's result). Never waits
        for the lock (:meth:`view`)."""
        return set(self.view().masked.get(frame, ()))

    @property
    def obj_ids(self) -> tuple[int, ...]:
        """The tracked objects' ids, in result order. Never waits for the lock (:meth:`view`)."""
        return self.view().obj_ids

    def prompted_frames(self, obj_id: int) -> tuple[int, ...]:
        """The frames where object ``obj_id`` has a prompt (none for an id not tracked). Never
        waits for the lock (:meth:`view`)."""
        return self.view().prompted.get(obj_id, ())

    def view(self) -> SessionView:
        """The session's objects and prompts without waiting: read now when the lock is free
        (or held by this thread), else as they were when it was last free."""
        if self.lock.acquire(blocking=False):
            try:
                self._read_view()
            finally:
                self.lock.release()
        return self._view

    def _read_view(self) -> None:
        self._view = SessionView.of(self)

    def _has_prompts(self, obj_id: int) -> bool:
        return any(o == obj_id for _, o in self._synced) or any(
            obj_id in ids for _, ids in self._label_prompts.values()
        )

    def _prompt(self, frame, obj_id, clicks, box, masked: bool) -> None:
        points = tuple((p.row, p.col, p.positive) for p in clicks)
        box = None if box is None else box.box
        if masked:  # the mask again, then the clicks on top of it
            labels = self._label_prompts[frame][0]
            self.tracker.add_labels(frame, labels, [obj_id], allow_absent=True)
            self._refine(frame, obj_id, points, box)
        else:
            self._prompt_clicks(frame, obj_id, points, box)

    def _prompt_clicks(self, frame, obj_id, points, box) -> None:
        """The object's clicks and box on ``frame`` replace its prompt there: in a native
        window on a big frame (tiles), else in the tracker; on a frame propagated in windows,
        by the window tracker."""
        if self.window_tracking.prompt(frame, obj_id, points, box):
            return
        if not self.windows.prompt(frame, obj_id, points, box):
            self.tracker.add_prompt(frame, obj_id, *_clicks(points, box), replace=True)
            self.windows.forget(frame, obj_id)

    def _result(self, frame: int) -> FrameResult:
        """Every object's current mask on ``frame`` (windowed answers at native resolution)."""
        return self.windows.result(self.window_tracking.overlay(self.tracker.result(frame)))

    @property
    def tiled(self) -> bool:
        """Whether prompts on this stack's frames are answered in native-resolution windows."""
        return self.windows.on

    def _refine(self, frame, obj_id, points, box) -> None:
        """Clicks (and a box) on top of the object's current mask on ``frame``."""
        if points or box is not None:
            self.tracker.add_prompt(frame, obj_id, *_clicks(points, box), replace=False)

    def synced_frames(self) -> set[int]:
        """Frames on which some object currently has a prompt from the tables."""
        with self.lock:
            return {frame for frame, _ in self._synced}

    def embed(self, frame: int, wanted=None) -> None:
        """Compute (and cache) the embedding of ``frame`` ahead of a click on it. A no-op once
        the session is closed (a background embedding may outlive its session), or when
        ``wanted()`` has turned false by the time the lock is free (the user moved on)."""
        with self.lock:
            if not self.tracker.closed and (wanted is None or wanted()):
                self.tracker.embed(frame)

    def embed_ahead(self, frame: int, wanted=None) -> bool:
        """Compute the embedding of ``frame`` (a slice next to the one shown) *outside* the
        lock, so that clicks and propagation go on meanwhile; only handing it to the tracker
        holds the lock. The same embedding as :meth:`embed` (the tracker's own preparation and
        encoder). Nothing is done when the frame is embedded already, the session is closed,
        or ``wanted()`` is false before the work starts. True if it computed one."""
        tracker = self.tracker
        with self.lock:
            if tracker.closed or (wanted is not None and not wanted()):
                return False
            if tracker.has_embedding(frame):
                return False
        keep = tracker.embed_detached(frame, wanted)  # no tracker state touched
        if keep is None:
            return False
        with self.lock:
            if tracker.closed:
                return False
            keep()
        return True

    def propagate(self, direction="forward", start=None, stop=None, obj_ids=None, **lineage):
        """Like :meth:`VideoTracker.propagate` (of ``obj_ids`` only, if given; ``lineage``: its
        new_objects, divisions, lineage_options, lineage_edits), holding the lock for each frame
        only. On a tiled session (without new objects or divisions: :meth:`in_windows`)
        every object is followed in its native-resolution window (``obj_ids`` is not used:
        every object runs), results as :class:`~.window_frames.WindowFrameResult` s."""
        if self.in_windows(**lineage):
            yield from self.window_tracking.propagate(self.lock, direction, start, stop)
            return
        with self.lock:
            run = self.tracker.propagate(direction, start, stop, obj_ids=obj_ids, **lineage)
        while True:
            with self.lock:
                try:
                    result = next(run)
                except StopIteration:
                    return
                self.window_tracking.downscaled(result.frame)
                result = self.windows.result(result)
            try:
                yield result
            except GeneratorExit:
                with self.lock:
                    run.close()
                raise

    def lineage(self, upto: int | None = None, keep: bool = True):
        """The tracker's :class:`~.lineage.Lineage` table as the frames up to ``upto`` decide it
        (``[]`` without one), and its edits: (tracks, edits). ``keep``: forget removed objects
        first (not needed, and not cheap, between the frames of a propagation)."""
        with self.lock:
            lineage = self.tracker._lineage
            if lineage is None:
                return [], []
            if keep:
                lineage.keep_only(self.tracker.obj_ids)
            return lineage.table_upto(upto), list(lineage.edits)

    def lineage_edit(self, action: str, *args):
        """``Lineage.cut``/``join``/``divide``/``remove_edit`` on the tracker's lineage; returns
        the relabelling of labels written so far. ValueError without a lineage."""
        with self.lock:
            if self.tracker._lineage is None:
                raise ValueError(
                    "there is no lineage yet: propagate forward with 'detect divisions' or "
                    "'find new objects' first"
                )
            return getattr(self.tracker._lineage, action)(*args)

    def plan(self, direction="forward", start=None, stop=None, obj_ids=None, **lineage) -> int:
        """How many frames ``propagate`` will yield."""
        return frames_in(self.passes(direction, start, stop, obj_ids, **lineage))

    def passes(self, direction="forward", start=None, stop=None, obj_ids=None, **lineage):
        """The (first, last, reverse) passes ``propagate`` runs with these arguments."""
        with self.lock:
            if self.in_windows(**lineage):
                return self.window_tracking.plan(direction, start, stop)
            return self.tracker.plan(direction, start, stop, obj_ids=obj_ids)

    def in_windows(self, **lineage) -> bool:
        """Whether :meth:`propagate` with these lineage options follows objects in windows."""
        return self.window_tracking.in_windows(lineage)

    def downscaled_because(self, **lineage) -> str | None:
        """On a tiled session, why a propagation with these options runs on downscaled
        frames (new objects and divisions need whole frames); else None."""
        return self.window_tracking.downscaled_because(lineage)

    @property
    def recentrings(self) -> dict[int, int]:
        """Per object, how often its window re-centred in the last propagation in windows."""
        return dict(self.window_tracking.recentrings)

    def prompts_waiting(self, in_windows: bool) -> bool:
        """Whether prompts were given that the last propagation (in windows, or not) did not
        follow: the next one will."""
        with self.lock:
            if in_windows:
                return bool(self.window_tracking.pending())
            return bool(self.tracker.new_prompt_frames)

    def rename_object(self, old: int, new: int) -> None:
        """Give object ``old`` the unused id ``new`` everywhere: its prompts (tables and mask
        prompts, whose label images are relabelled) and the tracker's memory and results."""
        with self.lock:
            if new in self.tracker.obj_ids or any(o == new for _, o in self._synced):
                raise ValueError(f"object id {new} is in use; choose an unused id")
            if old in self.tracker.obj_ids:
                rename_tracked(self.tracker, old, new)
            self.windows.rename(old, new)
            self.window_tracking.rename(old, new)
            for (frame, obj_id), signature in list(self._synced.items()):
                if obj_id == old:
                    del self._synced[(frame, obj_id)]
                    self._synced[(frame, new)] = signature
            for frame, (labels, ids) in list(self._label_prompts.items()):
                if old in ids:
                    relabelled = np.where(labels == old, new, labels)
                    if relabelled.dtype != labels.dtype and new <= np.iinfo(labels.dtype).max:
                        relabelled = relabelled.astype(labels.dtype)
                    self._label_prompts[frame] = (relabelled, (ids - {old}) | {new})

    def close(self) -> None:
        with self.lock:
            self.tracker.close()
            self.window_tracking.close()
            self.windows.close()


def _clicks(points, box):
    """(points, labels, box) arguments of add_prompt from a prompt signature."""
    coords = [(r, c) for r, c, _ in points] or None
    labels = [int(positive) for _, _, positive in points] or None
    return coords, labels, box


def points_from_arrays(coords: np.ndarray, obj_ids, positive) -> list[PointRow]:
    """Rows from (N, 3) (frame, row, col) coordinates and per-point ids and polarities."""
    return [
        PointRow(int(o), int(f), float(r), float(c), bool(s))
        for (f, r, c), o, s in zip(np.asarray(coords), obj_ids, positive)
    ]
