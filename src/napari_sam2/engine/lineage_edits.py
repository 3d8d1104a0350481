"""The user's corrections of a lineage: mark a division, join two tracks, cut a track.

The tracks of :class:`~.lineage.Lineage` are derived from the tracking results; the edits are
kept beside them and applied, in the order made, each time the table is derived — so they
survive propagating again. An edit names tracks by the ids the user saw (edited ids) and
carries the new ids it gives out, chosen when it was made, so that a track cut today has the
same id after the next propagation (the lineage never gives these ids to other tracks).

- :class:`Cut` ``(track, frame, new_id)``: the track ends on ``frame - 1``; from ``frame`` on it
  is ``new_id``, a track without a parent (its daughters become ``new_id``'s).
- :class:`Join` ``(first, second)``: the later-starting track is the continuation of the other
  (one id, the earlier one's; its daughters follow). The two must not share a frame.
- :class:`Division` ``(frame, parent, daughters, new_ids)``: ``parent`` divides on ``frame``:
  it ends on ``frame - 1`` and each daughter starts on ``frame`` with ``parent`` as its parent.
  A daughter that is ``parent`` itself (the tracker followed one daughter as the cell) or that
  started earlier is cut on ``frame``; ``new_ids[0]`` is the parent's part from ``frame`` on,
  ``new_ids[k + 1]`` daughter k's.

An edit whose tracks are not (or not yet) in the table is skipped, and applies once they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_END = 2**62  # a frame after every frame


@dataclass(frozen=True)
class Cut:
    track: int
    frame: int
    new_id: int

    def __str__(self) -> str:
        return f"cut track {self.track} on slice {self.frame} (then {self.new_id})"


@dataclass(frozen=True)
class Join:
    first: int
    second: int

    def __str__(self) -> str:
        return f"join tracks {self.first} and {self.second}"


@dataclass(frozen=True)
class Division:
    frame: int
    parent: int
    daughters: tuple[int, ...]
    new_ids: tuple[int, ...]

    def __str__(self) -> str:
        kids = ", ".join(map(str, self.daughters))
        return f"track {self.parent} divides on slice {self.frame} into {kids}"


EDIT_KINDS = {"cut": Cut, "join": Join, "division": Division}


def edit_to_dict(edit) -> dict:
    """An edit as a JSON-able dict (``kind`` plus its fields)."""
    kind = next(k for k, cls in EDIT_KINDS.items() if isinstance(edit, cls))
    out = {"kind": kind}
    for name, value in edit.__dict__.items():
        out[name] = list(value) if isinstance(value, tuple) else int(value)
    return out


def edit_from_dict(data) -> Cut | Join | Division:
    """The edit of :func:`edit_to_dict`; ValueError naming what is wrong."""
    if not isinstance(data, dict) or data.get("kind") not in EDIT_KINDS:
        raise ValueError(f"{data!r} is not a lineage edit (kind cut, join or division)")
    cls = EDIT_KINDS[data["kind"]]
    fields = {k: v for k, v in data.items() if k != "kind"}
    names = set(cls.__dataclass_fields__)
    if set(fields) != names:
        raise ValueError(f"a {data['kind']} edit has the fields {sorted(names)}, got {data!r}")
    values = {}
    for name, value in fields.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
            raise ValueError(f"{data['kind']} edit: {name} must be whole numbers, got {value!r}")
        values[name] = tuple(value) if isinstance(value, list) else value
    edit = cls(**values)
    if isinstance(edit, Division) and len(edit.new_ids) != len(edit.daughters) + 1:
        raise ValueError(f"division edit: new_ids must have one id more than daughters: {data!r}")
    return edit


def reserved_ids(edits) -> set[int]:
    """The ids the edits give out (the lineage must not give them to other tracks)."""
    ids: set[int] = set()
    for edit in edits:
        if isinstance(edit, Cut):
            ids.add(edit.new_id)
        elif isinstance(edit, Division):
            ids.update(edit.new_ids)
    return ids


@dataclass
class Edited:
    """The tracks after the edits: ``rows`` id -> [first, last, parent]; ``spans``: per track id
    of the derived table, [[from_frame, id], ...], the id it has from each frame on;
    ``skipped``: edits that did not apply."""

    rows: dict[int, list[int]]
    spans: dict[int, list[list[int]]]
    skipped: list = field(default_factory=list)

    def id_at(self, raw: int, frame: int) -> int:
        current = raw
        for start, ident in self.spans.get(raw, ()):
            if start > frame:
                break
            current = ident
        return current


def apply_edits(rows: dict[int, list[int]], edits) -> Edited:
    """The derived ``rows`` (id -> [first, last, parent], not changed) with ``edits`` applied."""
    out = Edited({i: list(r) for i, r in rows.items()}, {i: [[-1, i]] for i in rows})
    for edit in edits:
        ok = True
        if isinstance(edit, Cut):
            ok = _cut(out, edit.track, edit.frame, edit.new_id)
        elif isinstance(edit, Join):
            ok = _join(out, edit.first, edit.second)
        elif isinstance(edit, Division):
            ok = _divide(out, edit)
        if not ok:
            out.skipped.append(edit)
    return out


def _cut(out: Edited, track: int, frame: int, new_id: int) -> bool:
    row = out.rows.get(track)
    if row is None or new_id in out.rows or not row[0] < frame <= row[1]:
        return False
    out.rows[new_id] = [frame, row[1], 0]
    row[1] = frame - 1
    for other in out.rows.values():
        if other[2] == track:
            other[2] = new_id
    for spans in out.spans.values():
        active = None
        for k, (start, ident) in enumerate(spans):
            if start <= frame:
                active = k
            elif ident == track:
                spans[k][1] = new_id
        if active is not None and spans[active][1] == track:
            if spans[active][0] == frame:
                spans[active][1] = new_id
            else:
                spans.insert(active + 1, [frame, new_id])
    return True


def _join(out: Edited, a: int, b: int) -> bool:
    ra, rb = out.rows.get(a), out.rows.get(b)
    if ra is None or rb is None or a == b:
        return False
    if rb[0] < ra[0]:
        a, b, ra, rb = b, a, rb, ra
    if ra[1] >= rb[0]:
        return False  # they share a frame: not one cell
    ra[1] = rb[1]
    del out.rows[b]
    for other in out.rows.values():
        if other[2] == b:
            other[2] = a
    for spans in out.spans.values():
        for span in spans:
            if span[1] == b:
                span[1] = a
    return True


def _divide(out: Edited, edit: Division) -> bool:
    parent = out.rows.get(edit.parent)
    if parent is None or parent[0] >= edit.frame:
        return False
    rest = None
    if parent[1] >= edit.frame and _cut(out, edit.parent, edit.frame, edit.new_ids[0]):
        rest = edit.new_ids[0]
    for k, daughter in enumerate(edit.daughters):
        track = rest if daughter == edit.parent else daughter
        row = out.rows.get(track) if track is not None else None
        if row is None:
            continue  # not (yet) in the table
        if row[0] < edit.frame:
            if not _cut(out, track, edit.frame, edit.new_ids[k + 1]):
                continue
            track = edit.new_ids[k + 1]
        out.rows[track][2] = edit.parent
    return True


def renames(before: Edited, after: Edited) -> list[tuple[int, int, int, int]]:
    """(first_frame, last_frame, old id, new id): how labels written with ``before``'s ids
    become ``after``'s (frames may run past the stack: clip them)."""
    out = []
    for raw in after.spans.keys() | before.spans.keys():
        starts = {s for s, _ in before.spans.get(raw, [[-1, raw]])}
        starts |= {s for s, _ in after.spans.get(raw, [[-1, raw]])}
        starts = sorted(starts)
        for k, start in enumerate(starts):
            end = starts[k + 1] - 1 if k + 1 < len(starts) else _END
            old, new = before.id_at(raw, start), after.id_at(raw, start)
            if old != new:
                out.append((max(start, 0), end, old, new))
    return sorted(out)
