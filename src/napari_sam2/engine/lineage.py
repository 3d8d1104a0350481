"""Lineage: which tracks there are, when each starts and ends, and which cell each came from.

The tracker follows *objects*; a cell that divides stays one object whose mask splits in two.
:class:`Lineage` reads the tracking results (each object's mask on each frame) and turns them
into *tracks*: one id per cell over the frames it lives, with a parent link for daughters.

Per object and frame it keeps only a summary of the mask's connected components (8-connected:
area and centroid), and derives everything else from these summaries, in frame order. The
lineage is therefore a function of the current results: propagating again over some frames
(after a correction) replaces their summaries, and the table is derived anew — a correction that
removes a division removes the daughters and extends the parent.

Rules, with the thresholds of :class:`LineageOptions`:

- A track follows the components of its object nearest (centroid) to where it was last seen.
- **Division**: a track whose components include two of at least ``min_area`` pixels on
  ``persist`` consecutive frames divides on the first of them: it ends on the frame before, and
  two daughter tracks (new ids, ``parent`` = its id) start there, each taking the components
  nearer to it. A split that does not last ``persist`` frames stays the parent's.
- **Disappearance**: a track with no component for ``vanish`` consecutive frames has ended (on
  the last frame it was seen); if its object shows again later, that is a new track (new id, no
  parent). A shorter gap keeps the track (the CTC writer turns such a gap into a parent link).
- **Merge**: two tracks of one object that are nearest to the same single component (daughters
  that join again), or two objects whose masks overlap by more than ``merge_overlap`` of the
  smaller one, are reported as a :class:`Merge` (and a warning), not resolved: the tracks keep
  their ids, the one not seen ends after ``vanish`` frames.

The first track of an object has the object's id, so without divisions or gaps the tracks are
the objects. New ids start above every object id and track id seen.

The user's corrections (mark a division, join, cut: :mod:`.lineage_edits`) are kept in
``edits`` and applied each time the table is derived, so they survive propagating again;
:meth:`Lineage.cut`, :meth:`Lineage.join` and :meth:`Lineage.divide` check and add one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .lineage_edits import Cut, Division, Edited, Join, apply_edits, renames, reserved_ids

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class LineageOptions:
    """Thresholds of the lineage rules (see the module docstring).

    - ``min_area``: pixels (of the frame) a part must have to count as a daughter (default 20).
    - ``persist``: frames a split must last to be a division, at least 1 (default 3).
    - ``vanish``: frames without a mask that end a track, at least 1 (default 5).
    - ``merge_overlap``: fraction of the smaller mask that two objects must share to be reported
      as merged, in (0, 1] (default 0.5).
    - ``new_overlap``: for new objects: a mask found by segment everything is new when at most
      this fraction of it is covered by tracked objects, in [0, 1) (default 0.2).
    - ``max_new_area``: for new objects: masks larger than this fraction of the frame are not
      taken (segment everything finds the background too), in (0, 1] (default 0.5).
    - ``divisions``: whether splits become divisions (default True; False: a split object
      stays one track).
    - ``finder``: the :class:`~napari_sam2.AutomaticMaskGenerator` that looks for new objects
      (default: one with its default options).
    """

    min_area: float = 20.0
    persist: int = 3
    vanish: int = 5
    merge_overlap: float = 0.5
    new_overlap: float = 0.2
    max_new_area: float = 0.5
    divisions: bool = True
    finder: object = None  # the AutomaticMaskGenerator of new objects (None: its defaults)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_area) and self.min_area >= 0):
            raise ValueError(f"min_area must be a number >= 0, got {self.min_area!r}")
        for name in ("persist", "vanish"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.merge_overlap <= 1:
            raise ValueError(f"merge_overlap must be in (0, 1], got {self.merge_overlap!r}")
        if not 0 <= self.new_overlap < 1:
            raise ValueError(f"new_overlap must be in [0, 1), got {self.new_overlap!r}")
        if not 0 < self.max_new_area <= 1:
            raise ValueError(f"max_new_area must be in (0, 1], got {self.max_new_area!r}")


@dataclass(frozen=True)
class Track:
    """One row of the lineage table: a track over frames first_frame..last_frame (inclusive;
    it may miss fewer than ``vanish`` frames in between); ``parent`` 0 for none."""

    id: int
    first_frame: int
    last_frame: int
    parent: int = 0


@dataclass(frozen=True)
class Merge:
    """Two tracks (``ids``) that became one mask on ``frame``; ``obj_ids``: their objects."""

    frame: int
    ids: tuple[int, int]
    obj_ids: tuple[int, int]

    def __str__(self) -> str:
        a, b = self.ids
        return f"tracks {a} and {b} merge on frame {self.frame}"


@dataclass(frozen=True)
class Components:
    """An object's mask on one frame as 8-connected components: ``areas`` (K,) in frame pixels,
    ``centroids`` (K, 2) (row, col) in frame pixels; ``labels``: the component image (0 outside,
    k + 1 for component k), kept only while the frame is not final (see :meth:`Lineage.record`)."""

    areas: np.ndarray
    centroids: np.ndarray
    labels: np.ndarray | None = None

    @classmethod
    def of(cls, mask: np.ndarray, scale: tuple[float, float] = (1.0, 1.0), keep=True):
        """The components of a (H, W) bool mask whose pixels are ``scale`` (rows, cols) frame
        pixels each (a low-resolution mask), centroids at pixel centres."""
        labels, n = ndimage.label(mask, structure=_EIGHT)
        if n == 0:
            return cls(np.zeros(0), np.zeros((0, 2)), None)
        index = np.arange(1, n + 1)
        counts = ndimage.sum_labels(np.ones_like(labels), labels, index)
        centroids = np.asarray(ndimage.center_of_mass(mask, labels, index), dtype=float)
        centroids = (centroids + 0.5) * np.asarray(scale) - 0.5
        areas = counts * scale[0] * scale[1]
        return cls(areas, centroids.reshape(n, 2), labels if keep and n > 1 else None)


@dataclass
class _Active:
    id: int
    centroid: np.ndarray
    last_seen: int
    split_start: int | None = None  # first frame of a split not yet lasting ``persist``


@dataclass
class _Replay:
    """The tracks derived from the summaries, frame by frame (see :meth:`Lineage._replay`)."""

    frame: int = -1
    active: dict[int, list[_Active]] = field(default_factory=dict)  # per object
    rows: dict[int, list[int]] = field(default_factory=dict)  # id -> [first, last, parent]
    assign: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # frame, obj -> ids
    merges: list[Merge] = field(default_factory=list)
    used: set[int] = field(default_factory=set)  # ids given to tracks


class Lineage:
    """The lineage of a tracker's objects, from their masks frame by frame.

    ``record(frame, obj_ids, masks)`` gives one frame's results (again for a frame propagated
    again); ``table()`` lists the tracks; ``track_ids(frame, obj_id)`` says which track each
    component of an object's mask belongs to, final once ``persist - 1`` later frames are
    recorded (or the propagation ended: :meth:`finish`)."""

    def __init__(self, options: LineageOptions | None = None) -> None:
        self.options = options or LineageOptions()
        self._frames: dict[int, dict[int, Components]] = {}
        self._pairs: dict[int, list[tuple[int, int, float]]] = {}  # frame -> overlaps
        self._state = _Replay()
        self.emitted: set[int] = set()  # track ids given to results: cleared where absent
        self.edits: list = []  # the user's corrections, applied in order (lineage_edits.py)
        self._edited: tuple | None = None  # (key, Edited) of the last derivation

    # ------------------------------------------------------------------ input
    def record(self, frame: int, obj_ids, masks, scale=(1.0, 1.0)) -> None:
        """The masks (N, H, W) bool of ``obj_ids`` on ``frame`` (pixels of ``scale`` frame
        pixels): replaces what was recorded for these objects there."""
        frame = int(frame)
        masks = np.asarray(masks, dtype=bool)
        entry = self._frames.setdefault(frame, {})
        for obj_id, mask in zip(obj_ids, masks):
            entry[int(obj_id)] = Components.of(mask, scale)
        self._pairs[frame] = _overlapping([int(i) for i in obj_ids], masks)
        if frame <= self._state.frame:
            self._state = _Replay()  # an earlier frame changed: derive everything again

    def keep_only(self, obj_ids) -> None:
        """Drop the results of objects not in ``obj_ids`` (removed from the tracker)."""
        keep = {int(i) for i in obj_ids}
        gone = {o for e in self._frames.values() for o in e} - keep
        if gone:
            for entry in self._frames.values():
                for obj_id in gone:
                    entry.pop(obj_id, None)
            self._state = _Replay()

    def clear_derived(self) -> None:
        """Derive the tracks again (the options changed)."""
        self._state = _Replay()

    def table_upto(self, upto: int | None) -> list[Track]:
        """The tracks as the frames up to ``upto`` (None: all) decide them."""
        rows = self._edited_state(upto).rows
        return [Track(i, *rows[i]) for i in sorted(rows)]

    def merges_upto(self, upto: int | None) -> list[Merge]:
        return list(self._replayed(upto).merges)

    def clear(self) -> None:
        self._frames.clear()
        self._pairs.clear()
        self._state = _Replay()

    def finish(self) -> None:
        """The propagation ended: component images are no longer needed."""
        for entry in self._frames.values():
            for obj_id, comp in entry.items():
                if comp.labels is not None:
                    entry[obj_id] = Components(comp.areas, comp.centroids)

    # ------------------------------------------------------------------ output
    def table(self, keep=None) -> list[Track]:
        """Every track, by id: (id, first_frame, last_frame, parent); with ``keep``, the
        objects not in it are forgotten first (removed from the tracker)."""
        if keep is not None:
            self.keep_only(keep)
        return self.table_upto(None)

    def used_ids(self) -> set[int]:
        """Every object and track id seen so far, and those the edits give out (new ids must
        avoid them)."""
        state = self._replayed()
        return set(state.used) | set(state.rows) | reserved_ids(self.edits)

    @property
    def merges(self) -> list[Merge]:
        return list(self._replayed().merges)

    def parents(self) -> dict[int, int]:
        """track id -> parent id (daughters only)."""
        return {t.id: t.parent for t in self.table() if t.parent}

    def track_ids(self, frame: int, obj_id: int, upto: int | None = None) -> np.ndarray:
        """The track id of each component of ``obj_id``'s mask on ``frame`` ((K,) int64), as
        the frames up to ``upto`` (default: all) decide it."""
        raw = self._replayed(upto).assign.get(int(frame), {}).get(int(obj_id), np.zeros(0, int))
        if not self.edits or not len(raw):
            return raw
        edited = self._edited_state(upto)
        return np.array([edited.id_at(int(i), int(frame)) for i in raw], dtype=np.int64)

    def components(self, frame: int, obj_id: int) -> Components | None:
        return self._frames.get(int(frame), {}).get(int(obj_id))

    def drop_labels(self, before: int) -> None:
        """Forget the component images of frames before ``before`` (already final)."""
        for frame, entry in self._frames.items():
            if frame < before:
                for obj_id, comp in entry.items():
                    if comp.labels is not None:
                        entry[obj_id] = Components(comp.areas, comp.centroids)

    # ------------------------------------------------------------------ corrections
    def cut(self, track: int, frame: int) -> list[tuple[int, int, int, int]]:
        """Cut ``track`` on ``frame``: from there on it is a new track (no parent). Returns the
        relabelling of labels written so far (:func:`~.lineage_edits.renames`)."""
        row = self._row(track)
        if not row.first_frame < frame <= row.last_frame:
            raise ValueError(
                f"track {track} runs over slices {row.first_frame}-{row.last_frame}: cut it on "
                f"a slice after {row.first_frame}, up to {row.last_frame}"
            )
        return self.add_edit(Cut(int(track), int(frame), self._next_id()))

    def join(self, first: int, second: int) -> list[tuple[int, int, int, int]]:
        """One track of two: the later-starting one continues the other (keeps its id)."""
        a, b = sorted((self._row(first), self._row(second)), key=lambda r: r.first_frame)
        if a.id == b.id:
            raise ValueError(f"track {a.id} cannot be joined with itself: pick two tracks")
        if a.last_frame >= b.first_frame:
            raise ValueError(
                f"tracks {a.id} (slices {a.first_frame}-{a.last_frame}) and {b.id} (slices "
                f"{b.first_frame}-{b.last_frame}) share slices, so they are two cells: cut one "
                "of them first"
            )
        return self.add_edit(Join(a.id, b.id))

    def divide(self, frame: int, parent: int, daughters) -> list[tuple[int, int, int, int]]:
        """``parent`` divides on ``frame`` into ``daughters`` (tracks that go on from there;
        ``parent`` itself may be one: the tracker followed one daughter as the cell)."""
        daughters = tuple(int(d) for d in daughters)
        row = self._row(parent)
        if not daughters or len(set(daughters)) != len(daughters):
            raise ValueError(f"a division needs daughter tracks, each once; got {daughters}")
        if frame <= row.first_frame:
            raise ValueError(
                f"track {parent} starts on slice {row.first_frame}: it can divide on a later "
                "slice only"
            )
        for d in daughters:
            r = self._row(d)
            if r.last_frame < frame:
                raise ValueError(
                    f"track {d} ends on slice {r.last_frame}, before slice {frame}: it cannot "
                    "be a daughter there"
                )
        start = self._next_id()
        new_ids = tuple(range(start, start + len(daughters) + 1))
        return self.add_edit(Division(int(frame), int(parent), daughters, new_ids))

    def add_edit(self, edit) -> list[tuple[int, int, int, int]]:
        """Add a correction (checked to apply to the table now); returns the relabelling."""
        before = self._edited_state()
        edits = [*self.edits, edit]
        after = apply_edits(self._replayed().rows, edits)
        if edit in after.skipped:
            raise ValueError(f"{edit}: does not apply to the tracks as they are now")
        self.edits = edits
        return renames(before, after)

    def remove_edit(self, edit=None) -> list[tuple[int, int, int, int]]:
        """Take back a correction (the last one by default); returns the relabelling."""
        if not self.edits:
            raise ValueError("there is no lineage correction to take back")
        before = self._edited_state()
        edits = list(self.edits)
        edits.remove(edits[-1] if edit is None else edit)
        self.edits = edits
        return renames(before, self._edited_state())

    def _row(self, track: int) -> Track:
        rows = {t.id: t for t in self.table_upto(None)}
        if int(track) not in rows:
            known = ", ".join(map(str, sorted(rows))) or "none yet: propagate first"
            raise ValueError(f"there is no track {track} in the lineage (tracks: {known})")
        return rows[int(track)]

    def _next_id(self) -> int:
        return max(self.used_ids() | {t.id for t in self.table_upto(None)}, default=0) + 1

    def _edited_state(self, upto: int | None = None) -> Edited:
        state = self._replayed(upto)
        key = (state.frame, tuple(self.edits))
        if self._edited is None or self._edited[0] is not state or self._edited[1] != key:
            self._edited = (state, key, apply_edits(state.rows, self.edits))
        return self._edited[2]

    # ------------------------------------------------------------------ derivation
    def _replayed(self, upto: int | None = None) -> _Replay:
        state = self._state
        later = [f for f in self._frames if f > state.frame and (upto is None or f <= upto)]
        for frame in sorted(later):
            self._step(state, frame)
            state.frame = frame
        return state

    def _step(self, s: _Replay, frame: int) -> None:
        opts = self.options
        s.assign[frame] = {}
        s.used.update(self._frames[frame])
        for obj_id, comp in self._frames[frame].items():
            tracks = s.active.setdefault(obj_id, [])
            # Tracks missing on the ``vanish`` frames before this one have ended.
            tracks[:] = [t for t in tracks if frame - t.last_seen <= opts.vanish]
            if len(comp.areas) and not tracks:
                new_id = obj_id if obj_id not in s.rows else self._fresh(s)
                tracks.append(_Active(new_id, comp.centroids[np.argmax(comp.areas)], frame))
                s.rows[new_id] = [frame, frame, 0]
                s.used.add(new_id)
            nearest = _nearest(comp.centroids, [t.centroid for t in tracks])
            ids = np.array([tracks[k].id for k in nearest], dtype=np.int64)
            s.assign[frame][obj_id] = ids
            for k, t in enumerate(list(tracks)):
                mine = np.flatnonzero(nearest == k)
                if len(mine) == 0:
                    t.split_start = None
                    if len(comp.areas) == 1:  # its part went to another track: joined it?
                        self._report(s, frame, (int(ids[0]), t.id), (obj_id, obj_id))
                    continue
                t.centroid = _weighted(comp, mine)
                t.last_seen = frame
                s.rows[t.id][1] = frame
                if not opts.divisions or np.count_nonzero(comp.areas[mine] >= opts.min_area) < 2:
                    t.split_start = None
                    continue
                if t.split_start is None:
                    t.split_start = frame
                if frame - t.split_start + 1 >= opts.persist:
                    self._divide(s, obj_id, t, tracks, frame)
        for a, b, shared in self._pairs.get(frame, ()):
            if shared <= opts.merge_overlap:
                continue
            ta, tb = s.assign[frame].get(a), s.assign[frame].get(b)
            if ta is not None and tb is not None and len(ta) and len(tb):
                self._report(s, frame, (int(ta[0]), int(tb[0])), (a, b))

    def _divide(self, s: _Replay, obj_id: int, parent: _Active, tracks, frame: int) -> None:
        """``parent`` splits on ``parent.split_start``: rewrite that frame and the later ones to
        two daughters (its two largest parts), matched frame to frame by nearest centroid; its
        other parts go to the nearer daughter."""
        start = parent.split_start
        daughters = np.array([self._fresh(s), 0], dtype=np.int64)
        s.used.add(int(daughters[0]))
        daughters[1] = self._fresh(s)
        s.used.add(int(daughters[1]))
        centroids = None
        for f in range(start, frame + 1):
            comp = self._frames.get(f, {}).get(obj_id)
            ids = s.assign.get(f, {}).get(obj_id)
            if comp is None or ids is None:
                continue
            mine = np.flatnonzero(ids == parent.id)
            big = mine[comp.areas[mine] >= self.options.min_area]
            if len(big) < 2:
                continue
            two = big[np.argsort(-comp.areas[big], kind="stable")[:2]]
            a, b = comp.centroids[two[0]], comp.centroids[two[1]]
            if centroids is not None and (
                _dist(a, centroids[1]) + _dist(b, centroids[0])
                < _dist(a, centroids[0]) + _dist(b, centroids[1])
            ):
                a, b = b, a  # keep each daughter on the part nearer to where it was
            centroids = [a, b]
            ids = ids.copy()
            ids[mine] = daughters[_nearest(comp.centroids[mine], centroids)]
            s.assign[f][obj_id] = ids
        row = s.rows[parent.id]
        if start > row[0]:
            row[1] = start - 1
            parent_id = parent.id
        else:  # in two parts from its first frame on: two tracks of their own, no parent
            del s.rows[parent.id]
            parent_id = 0
        tracks.remove(parent)
        for d, c in zip(daughters.tolist(), centroids):
            s.rows[d] = [start, frame, parent_id]
            tracks.append(_Active(d, np.asarray(c), frame))

    def _fresh(self, s: _Replay) -> int:
        return max(s.used | set(s.rows) | reserved_ids(self.edits), default=0) + 1

    def _report(self, s: _Replay, frame: int, ids, obj_ids) -> None:
        key = tuple(sorted(ids))
        if ids[0] == ids[1] or any(m.ids == key for m in s.merges):
            return
        s.merges.append(Merge(frame, key, tuple(obj_ids)))


def _nearest(points: np.ndarray, targets) -> np.ndarray:
    """For each point, the index of the nearest target."""
    if not len(targets):
        return np.zeros(len(points), dtype=np.int64)
    d = np.linalg.norm(np.asarray(points)[:, None] - np.asarray(targets)[None], axis=-1)
    return np.argmin(d, axis=1)


def _dist(a, b) -> float:
    return float(np.hypot(*(np.asarray(a) - np.asarray(b))))


def _weighted(comp: Components, index: np.ndarray) -> np.ndarray:
    w = comp.areas[index]
    return (comp.centroids[index] * w[:, None]).sum(0) / max(w.sum(), 1e-9)


def _overlapping(obj_ids: list[int], masks: np.ndarray):
    """(id, id, fraction of the smaller mask shared) of objects whose masks overlap."""
    if len(obj_ids) < 2:
        return []
    flat = masks.reshape(len(obj_ids), -1)
    areas = flat.sum(1)
    present = np.flatnonzero(areas)
    pairs = []
    for n, i in enumerate(present):
        for j in present[n + 1 :]:
            shared = np.count_nonzero(flat[i] & flat[j])
            if shared:
                pairs.append((obj_ids[i], obj_ids[j], shared / min(areas[i], areas[j])))
    return pairs
