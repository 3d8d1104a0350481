"""What a propagation would redo: per object, the last complete propagation it was part of
(the call, the slices it covered, and the prompts it followed), so that pressing Propagate
again re-runs only the objects whose prompts changed since (objects are tracked independently:
each one's result depends on its own prompts only). Also an object's id changed in place in a
tracker, keeping its memory and results. Qt-free; the widget asks it before each run."""

from __future__ import annotations

from dataclasses import dataclass

from .prompts import check_obj_id


@dataclass(frozen=True)
class Covered:
    """One object's last complete propagation: its call (direction, start, stop), the slices
    it covered (first, last) and its prompts then (frame -> prompt object, compared by
    identity: the tracker makes a new one for every change)."""

    call: tuple
    span: tuple[int, int]
    prompts: tuple


def _prompts(tracker, obj_id: int) -> tuple:
    obj = tracker._objects[obj_id]
    return tuple(sorted(obj.prompts.items(), key=lambda kv: kv[0])) + tuple(
        ("pending", f) for f in sorted(obj.pending)
    )


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and x[1] is y[1] for x, y in zip(a, b))


class PropagationLedger:
    """Per object, the last complete propagation (see the module)."""

    def __init__(self) -> None:
        self._covered: dict[int, Covered] = {}

    def changed(self, tracker, call: tuple, obj_ids) -> list[int]:
        """The objects of ``obj_ids`` that ``call`` would not simply repeat: never propagated
        by this call, or prompted differently since."""
        out = []
        for obj_id in obj_ids:
            done = self._covered.get(obj_id)
            if (
                done is None
                or done.call != call
                or not _same(done.prompts, _prompts(tracker, obj_id))
            ):
                out.append(obj_id)
        return out

    def span(self, obj_ids) -> tuple[int, int] | None:
        """The slices (first, last) the last propagations of ``obj_ids`` covered."""
        spans = [self._covered[i].span for i in obj_ids if i in self._covered]
        if not spans:
            return None
        return min(a for a, _ in spans), max(b for _, b in spans)

    def started(self, obj_ids) -> None:
        """A propagation of these objects began: their labels no longer show the last one."""
        for obj_id in obj_ids:
            self._covered.pop(obj_id, None)

    def finished(self, tracker, call: tuple, span: tuple[int, int], obj_ids) -> None:
        """A propagation of these objects ran to its end."""
        for obj_id in obj_ids:
            if obj_id in tracker.obj_ids:
                self._covered[obj_id] = Covered(call, span, _prompts(tracker, obj_id))

    def rename(self, old: int, new: int) -> None:
        if old in self._covered:
            self._covered[new] = self._covered.pop(old)

    def clear(self) -> None:
        self._covered.clear()


def rename_tracked(tracker, old: int, new: int) -> None:
    """Give tracked object ``old`` the id ``new`` (unused), keeping its prompts, memory and
    results and its place in the tracking order. Raises KeyError for an unknown ``old`` and
    ValueError for a ``new`` in use."""
    new = check_obj_id(new)
    tracker._object(old)
    if new in tracker._objects:
        raise ValueError(f"object id {new} is in use; choose an unused id")
    objects = {}
    for obj_id, obj in tracker._objects.items():
        if obj_id == old:
            obj.obj_id = new
            obj_id = new
        objects[obj_id] = obj
    tracker._objects.clear()
    tracker._objects.update(objects)
    tracker.forget_interrupted()
