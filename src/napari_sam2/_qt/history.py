"""One undo history for the widget's session: clicks, boxes, painting, deleted objects and
propagations, with redo (Ctrl+Z, Ctrl+Shift+Z; also on *SAM2 labels*, where napari's own undo
would revert pixels behind the tracker's back).

A step records what it changed, small: the clicks and boxes tables before and after (a few
rows), the labels it wrote as bounding-box crops per slice (never whole volumes), and the
tracker work that goes beyond the tables (mask prompts of painted or deleted objects). Undoing
a step writes its crops back, restores the tables and prompts the tracker from them again, so
that what is shown is what the next propagation follows. The history keeps at most
``HISTORY_BUDGET`` bytes of crops; the oldest steps go first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import layers as L

HISTORY_BUDGET = 512 * 2**20  # bytes of label crops kept for undo
UNDO_KEYS = ("Control-Z", "Control-Shift-Z")


@dataclass
class Patch:
    """A box of the labels array (``region``, slices over every axis) before and after."""

    region: tuple[slice, ...]
    before: np.ndarray
    after: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.before.nbytes + self.after.nbytes


def frame_patch(geometry, frame: int, old: np.ndarray, new: np.ndarray) -> Patch | None:
    """The change of one tracked slice from ``old`` to ``new`` (H, W), cropped to the pixels
    that changed; None when nothing did."""
    box = L.changed_box(old, new)
    return None if box is None else box_patch(geometry, frame, box, old[box], new[box])


def box_patch(geometry, frame: int, box, before: np.ndarray, after: np.ndarray) -> Patch:
    """The change of the ``box`` (rows, cols) of one tracked slice, from ``before`` to
    ``after`` (the box's pixels)."""
    lead = tuple(slice(i, i + 1) for i in geometry.index(frame))
    shape = (1,) * len(lead) + (box[0].stop - box[0].start, box[1].stop - box[1].start)
    return Patch(lead + box, before.reshape(shape).copy(), after.reshape(shape).copy())


def paint_patch(data, atoms) -> Patch | None:
    """The change napari's paint-event atoms make to ``data``, as one box. The atoms say every
    changed pixel's old and new value, so the box comes out the same whether ``data`` holds
    the stroke yet or not (napari sends the event before a single ``paint`` writes, after a
    mouse stroke)."""
    lows, highs = [], []
    for atom in atoms:
        if hasattr(atom, "slice_key"):  # napari's masked atom: a bounding box
            lows.append([s.start or 0 for s in atom.slice_key])
            highs.append([_stop(s, n) for s, n in zip(atom.slice_key, data.shape)])
        elif len(atom[0]) and len(atom[0][0]):  # (indices, old values, new values)
            lows.append([int(np.min(i)) for i in atom[0]])
            highs.append([int(np.max(i)) + 1 for i in atom[0]])
    if not lows:
        return None
    lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    before = np.array(data[region])
    after = before.copy()
    for atom in atoms:  # the stroke, first atom first
        _apply(after, atom, lo, data.shape, undo=False)
    for atom in reversed(atoms):  # and undone, last atom first
        _apply(before, atom, lo, data.shape, undo=True)
    return Patch(region, before, after)


def _stop(s: slice, n: int) -> int:
    return n if s.stop is None else s.stop


def _apply(box: np.ndarray, atom, lo, shape, undo: bool) -> None:
    if hasattr(atom, "slice_key"):
        sub = tuple(
            slice((s.start or 0) - a, _stop(s, n) - a) for s, a, n in zip(atom.slice_key, lo, shape)
        )
        values = atom.old_values if undo else atom.new_value
        if atom.mask is None:
            box[sub] = values
        else:
            box[sub][atom.mask] = values
    elif len(atom[0]) and len(atom[0][0]):
        box[tuple(np.asarray(i) - a for i, a in zip(atom[0], lo))] = atom[1 if undo else 2]


def erase_objects(geometry, data, obj_ids, frames=None) -> list[Patch]:
    """Remove these objects' labels from the tracked slices (``frames``, default all), one
    slice at a time; returns the changes."""
    view = geometry.label_frames(data)
    ids = np.asarray(sorted(obj_ids))
    patches = []
    for t in range(geometry.num_frames) if frames is None else sorted(frames):
        old = np.array(view[t], copy=True)
        hit = np.isin(old, ids)
        if hit.any():
            new = np.where(hit, 0, old).astype(old.dtype)
            view[t] = new
            patches.append(frame_patch(geometry, t, old, new))
    return patches


def relabel_objects(geometry, data, mapping: dict[int, int]) -> list[Patch]:
    """Give these objects' labels new ids (``mapping`` old -> new) on every tracked slice;
    returns the changes."""
    view = geometry.label_frames(data)
    patches = []
    for t in range(geometry.num_frames):
        old = np.array(view[t], copy=True)
        new = old.copy()
        for a, b in mapping.items():
            new[old == a] = b
        patch = frame_patch(geometry, t, old, new)
        if patch is not None:
            view[t] = new
            patches.append(patch)
    return patches


@dataclass(frozen=True)
class PromptState:
    """The clicks and boxes tables at one moment (data and features, copied)."""

    points: np.ndarray
    point_features: object  # pandas DataFrame
    boxes: tuple[np.ndarray, ...]
    box_types: tuple[str, ...]
    box_features: object

    @classmethod
    def capture(cls, points, boxes) -> PromptState:
        return cls(
            np.array(points.data, copy=True),
            points.features.copy(),
            tuple(np.array(b, copy=True) for b in boxes.data),
            tuple(boxes.shape_type),
            boxes.features.copy(),
        )

    def same(self, other: PromptState | None) -> bool:
        return (
            other is not None
            and np.array_equal(self.points, other.points)
            and self.point_features.equals(other.point_features)
            and len(self.boxes) == len(other.boxes)
            and all(np.array_equal(a, b) for a, b in zip(self.boxes, other.boxes))
            and self.box_features.equals(other.box_features)
        )

    def restore(self, points, boxes) -> None:
        points.selected_data = set()
        points.data = self.points.copy()
        points.features = self.point_features.copy()
        L.color_points(points)
        boxes.selected_data = set()
        boxes.data = []
        if self.boxes:
            boxes.add([b.copy() for b in self.boxes], shape_type=list(self.box_types))
        boxes.features = self.box_features.copy()


@dataclass
class Step:
    """One undoable action: ``what`` it was (for the status line), the prompt tables before
    and after, the label crops it wrote, and tracker work beyond the tables."""

    what: str
    prompts: tuple[PromptState, PromptState] | None = None
    patches: list[Patch] = field(default_factory=list)
    undo_extra: Callable[[], None] | None = None
    redo_extra: Callable[[], None] | None = None
    dropped: bool = False  # too large to keep: its later writes are not recorded

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.patches)


class History:
    """Undo and redo stacks of :class:`Step` records, within a byte budget."""

    def __init__(self, budget: int = HISTORY_BUDGET) -> None:
        self.budget = budget
        self.done: list[Step] = []
        self.undone: list[Step] = []

    def push(self, step: Step) -> Step:
        self.done.append(step)
        self.undone.clear()
        return step

    def record(self, step: Step | None, patch: Patch | None) -> str | None:
        """Add ``patch`` to ``step``; returns a message when the history had to forget steps
        to stay within its budget."""
        if step is None or patch is None or step.dropped:
            return None
        step.patches.append(patch)
        total = sum(s.nbytes for s in self.done + self.undone)
        if total <= self.budget:
            return None
        self.undone.clear()
        while len(self.done) > 1 and self.done[0] is not step and total > self.budget:
            total -= self.done.pop(0).nbytes
        if total <= self.budget:
            return None
        step.dropped, step.patches = True, []  # this step alone is too big
        self.done.clear()
        mib = self.budget // 2**20
        return (
            f"The {step.what} changes more than {mib} MiB of labels: too much to keep for undo. "
            "The undo history starts after it."
        )

    def pop_undo(self) -> Step | None:
        if not self.done:
            return None
        step = self.done.pop()
        self.undone.append(step)
        return step

    def pop_redo(self) -> Step | None:
        if not self.undone:
            return None
        step = self.undone.pop()
        self.done.append(step)
        return step

    def clear(self) -> None:
        self.done.clear()
        self.undone.clear()


def frames_of(region: tuple[slice, ...], geometry) -> range:
    """The tracked slices a labels region covers."""
    if geometry.stack_axis is None:
        return range(1)
    s = region[geometry.stack_axis]
    return range(s.start or 0, geometry.num_frames if s.stop is None else s.stop)


__all__ = [
    "History",
    "Patch",
    "PromptState",
    "Step",
    "box_patch",
    "erase_objects",
    "frame_patch",
    "paint_patch",
    "relabel_objects",
]
