"""Propagation that finds new objects and follows divisions: what
``VideoTracker.propagate(..., new_objects=N, divisions=True)`` runs.

- **New objects** (``new_objects=N``): on frames 0, N, 2N, … of the first pass, segment
  everything (:class:`~.automatic.AutomaticMaskGenerator`) finds masks; a mask of which at most
  ``LineageOptions.new_overlap`` is covered by tracked objects, and no larger than
  ``max_new_area`` of the frame nor smaller than ``min_area``, becomes a new object (a fresh id,
  prompted with its mask on that frame) and is tracked from there on: the pass goes on from the
  next frame with it. With ``direction="both"`` (3-D stacks) the backward pass then starts at
  the last frame where an object was found, so that an object found on slice 40 also extends
  towards slice 0.
- **Lineage** (forward propagation, time-lapses): each frame's masks go to the tracker's
  :class:`~.lineage.Lineage`, and the results come back with *track* ids: a divided object's
  mask is cut into its daughters (see :mod:`.lineage`). A division is known only ``persist``
  frames after it starts, so results are yielded ``persist - 1`` frames late (all of them by
  the end of the pass). Merges are warned about once each.

The tracker itself knows nothing of this: it tracks objects; this module reads its results.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from ..model.sam2 import NO_OBJECT_LOGIT
from .lineage import Lineage, LineageOptions
from .results import FrameResult


def check_new_objects(new_objects) -> int | None:
    """``new_objects`` as an int >= 1 or None; ValueError otherwise."""
    if new_objects is None:
        return None
    if isinstance(new_objects, bool) or not isinstance(new_objects, (int, np.integer)):
        raise ValueError(f"new_objects must be a whole number of frames >= 1, got {new_objects!r}")
    if new_objects < 1:
        raise ValueError(f"new_objects must be at least 1 (every frame), got {new_objects}")
    return int(new_objects)


def propagate_with_lineage(
    tracker,
    direction: str,
    start: int | None,
    stop: int | None,
    new_objects: int | None = None,
    divisions: bool | None = None,
    options: LineageOptions | None = None,
    detector=None,
    edits=None,
) -> Iterator[FrameResult]:
    """Check everything, then return the generator of results (see the module docstring).
    ``divisions`` None: as the tracker's lineage had it (else False). ``edits``: the user's
    lineage corrections (:mod:`.lineage_edits`), replacing the lineage's."""
    every = check_new_objects(new_objects)
    if divisions is None:
        divisions = tracker._lineage is not None and tracker._lineage.options.divisions
    if options is not None and not isinstance(options, LineageOptions):
        raise TypeError(f"lineage_options must be a LineageOptions, got {type(options).__name__}")
    if divisions and direction != "forward":
        raise ValueError(
            "divisions are followed forward in time: use direction='forward' (a time-lapse), "
            f"not {direction!r}"
        )
    passes = tracker.plan(direction, start, stop)  # checks the range and the prompts
    if detector is None and options is not None:
        detector = options.finder
    if every is not None and detector is None:
        from .automatic import AutomaticMaskGenerator

        detector = AutomaticMaskGenerator(tracker.model, channel=tracker.source.channel)
    lineage = None
    if direction == "forward":
        lineage = tracker._lineage
        base = options or (lineage.options if lineage is not None else LineageOptions())
        wanted = LineageOptions(**{**base.__dict__, "divisions": bool(divisions)})
        if lineage is None:
            lineage = Lineage(wanted)
        elif lineage.options != wanted:
            lineage.options = wanted
            lineage.clear_derived()
        lineage.keep_only(tracker.obj_ids)
        if edits is not None:
            lineage.edits = list(edits)
        tracker._lineage = lineage
    else:
        tracker._lineage = None  # a lineage is of time running forward
    return _run(tracker, passes, lineage, every, detector, (options or LineageOptions()))


def _run(tracker, passes, lineage, every, detector, options) -> Iterator[FrameResult]:
    later = list(passes[1:])
    first, last, reverse = passes[0]
    relabel = _Relabel(tracker, lineage) if lineage is not None else None
    for result in _pass(tracker, first, last, reverse, every, detector, options):
        if relabel is None:
            yield result
        else:
            yield from relabel.push(result)
    if relabel is not None:
        yield from relabel.flush()
    for first, last, reverse in later:  # "both": backward from the last frame found on
        if reverse:
            lo, hi = last, first
            found = [f for f in tracker.prompted_frames() if lo <= f <= hi]
            first = max(found, default=first)
        name = "backward" if reverse else "forward"
        yield from tracker._propagate((name, first, last), tracker.plan(name, first, last))


def _pass(tracker, first, last, reverse, every, detector, options) -> Iterator[FrameResult]:
    """One pass from ``first`` to ``last``, started again after each frame with new objects."""
    step = -1 if reverse else 1
    name = "backward" if reverse else "forward"
    frame = first
    while True:
        restart = None
        # the tracker's own propagation (not this one again)
        results = tracker._propagate((name, frame, last), tracker.plan(name, frame, last))
        try:
            for result in results:
                t = result.frame
                if every is not None and t % every == 0 and _add_new(tracker, t, detector, options):
                    result = tracker.result(t)
                    restart = t + step
                yield result
                if restart is not None:
                    break
        finally:
            results.close()
        if restart is None or (restart > last if step > 0 else restart < last):
            return
        frame = restart


def _add_new(tracker, frame: int, detector, options: LineageOptions) -> list[int]:
    """Segment everything on ``frame``; prompt the masks no tracked object covers as new
    objects. Returns their ids."""
    image = tracker.source.read(frame)
    records = detector.generate(image, window=tracker.source.window)
    if not records:
        return []
    covered = tracker.result(frame).masks.any(axis=0) if tracker.obj_ids else None
    size = float(np.prod(tracker.frame_shape))
    taken = np.zeros(tracker.frame_shape, dtype=bool)
    labels = np.zeros(tracker.frame_shape, dtype=np.int64)
    used = set(tracker.obj_ids)
    if tracker._lineage is not None:
        used |= tracker._lineage.used_ids()
    next_id = max(used, default=0) + 1
    added = []
    for record in sorted(records, key=lambda r: -r.score):  # the best mask of a place wins
        if record.area < max(options.min_area, 1) or record.area > options.max_new_area * size:
            continue
        mask = record.mask
        other = taken if covered is None else (covered | taken)
        if np.count_nonzero(mask & other) > options.new_overlap * record.area:
            continue
        labels[mask & ~taken] = next_id
        taken |= mask
        added.append(next_id)
        next_id += 1
    if not added:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too small for the model's input: simply not added
        result = tracker.add_labels(frame, labels, obj_ids=added)
    return list(result.obj_ids)


class _Relabel:
    """Records each result in the lineage and yields it, ``persist - 1`` frames later, with
    track ids: one row per track (a divided object's mask cut along its components), plus an
    empty row for every other track id known, so that writing the frame clears stale labels."""

    def __init__(self, tracker, lineage: Lineage) -> None:
        self.tracker = tracker
        self.lineage = lineage
        self.buffer: list[FrameResult] = []
        self.warned: set[tuple[int, int]] = set()

    def push(self, result: FrameResult) -> Iterator[FrameResult]:
        low = result.low_res
        size = low.shape[-1]
        scale = (result.shape[0] / size, result.shape[1] / size)
        self.lineage.record(result.frame, result.obj_ids, (low[:, 0] > 0).numpy(), scale)
        self.buffer.append(result)
        while len(self.buffer) >= self.lineage.options.persist:
            yield self._relabelled(self.buffer.pop(0), upto=result.frame)

    def flush(self) -> Iterator[FrameResult]:
        while self.buffer:
            yield self._relabelled(
                self.buffer.pop(0), upto=self.buffer[-1].frame if self.buffer else None
            )
        self.lineage.finish()

    def _relabelled(self, result: FrameResult, upto) -> FrameResult:
        lineage, frame = self.lineage, result.frame
        low = result.low_res
        rows, ids = [], []
        for i, obj_id in enumerate(result.obj_ids):
            track = lineage.track_ids(frame, obj_id, upto)
            comp = lineage.components(frame, obj_id)
            distinct = sorted(set(track.tolist()))
            if len(distinct) == 1 or comp is None or comp.labels is None:
                if distinct:
                    rows.append(low[i : i + 1])
                    ids.append(distinct[0])
                continue
            labels = torch.from_numpy(comp.labels)
            for track_id in distinct:
                inside = torch.from_numpy(
                    np.isin(comp.labels, np.flatnonzero(track == track_id) + 1)
                )
                rows.append(
                    torch.where(inside & (labels > 0), low[i, 0], NO_OBJECT_LOGIT)[None, None]
                )
                ids.append(track_id)
        self._warn_merges(frame)
        lineage.drop_labels(before=frame + 1)
        lineage.emitted.update(ids)
        known = {t.id for t in lineage.table_upto(upto)} | lineage.emitted
        absent = sorted(known - set(ids))
        size = low.shape[-1]
        if absent:
            rows.append(torch.full((len(absent), 1, size, size), NO_OBJECT_LOGIT))
            ids.extend(absent)
        low_res = torch.cat(rows) if rows else torch.zeros(0, 1, size, size)
        return FrameResult(frame, ids, low_res=low_res, shape=result.shape)

    def _warn_merges(self, frame: int) -> None:
        for merge in self.lineage.merges_upto(frame):
            if merge.ids not in self.warned and merge.frame == frame:
                self.warned.add(merge.ids)
                warnings.warn(
                    f"{merge} (objects {merge.obj_ids[0]} and {merge.obj_ids[1]}): left as "
                    "they are; correct one of them if they are one cell",
                    stacklevel=4,
                )
