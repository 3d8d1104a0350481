"""The lineage rules on controlled mask sequences: splits, appearances, gaps, merges."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2.engine.lineage import Lineage, LineageOptions, Track

H, W = 40, 60


def disc(center, radius=5):
    rows, cols = np.mgrid[:H, :W]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def dividing(t: int, split_at: int = 4, apart: int = 14):
    """One cell that is one disc until ``split_at``, then two discs moving apart."""
    if t < split_at:
        return disc((20, 30))
    d = apart + (t - split_at)
    return disc((20, 30 - d // 2)) | disc((20, 30 + d // 2))


def record_all(lineage, frames):
    for t, masks in enumerate(frames):
        ids = sorted(masks)
        lineage.record(t, ids, np.stack([masks[i] for i in ids]))


def test_a_lasting_split_is_a_division_with_two_daughters():
    lineage = Lineage(LineageOptions(min_area=20, persist=3))
    record_all(lineage, [{1: dividing(t)} for t in range(10)])
    table = lineage.table()
    assert table[0] == Track(1, 0, 3, 0)  # the parent ends on the frame before the split
    assert [(t.first_frame, t.last_frame, t.parent) for t in table[1:]] == [(4, 9, 1)] * 2
    daughters = {t.id for t in table[1:]}
    assert daughters.isdisjoint({1}) and len(daughters) == 2
    # each daughter keeps its side of the split on every frame
    for t in range(4, 10):
        comp = lineage.components(t, 1)
        ids = lineage.track_ids(t, 1)
        left = ids[np.argmin(comp.centroids[:, 1])]
        assert left == min(daughters) or left == max(daughters)
        assert set(ids.tolist()) == daughters
    first_left = lineage.track_ids(4, 1)[np.argmin(lineage.components(4, 1).centroids[:, 1])]
    last_left = lineage.track_ids(9, 1)[np.argmin(lineage.components(9, 1).centroids[:, 1])]
    assert first_left == last_left


def test_a_short_split_or_a_small_part_is_not_a_division():
    short = [{1: dividing(t) if t in (4, 5) else disc((20, 30))} for t in range(10)]
    lineage = Lineage(LineageOptions(min_area=20, persist=3))
    record_all(lineage, short)
    assert lineage.table() == [Track(1, 0, 9, 0)]
    speck = [{1: disc((20, 30)) | disc((5, 5), radius=1)} for t in range(10)]
    lineage = Lineage(LineageOptions(min_area=20, persist=3))
    record_all(lineage, speck)
    assert lineage.table() == [Track(1, 0, 9, 0)]


def test_an_object_that_appears_later_starts_there():
    empty = np.zeros((H, W), bool)
    frames = [{1: disc((20, 15)), 2: disc((20, 45)) if t >= 3 else empty} for t in range(6)]
    lineage = Lineage()
    record_all(lineage, frames)
    assert lineage.table() == [Track(1, 0, 5, 0), Track(2, 3, 5, 0)]


def test_a_long_absence_ends_the_track_and_a_short_one_does_not():
    empty = np.zeros((H, W), bool)
    options = LineageOptions(vanish=3)
    short = [{1: empty if t in (3, 4) else disc((20, 30))} for t in range(8)]
    lineage = Lineage(options)
    record_all(lineage, short)
    assert lineage.table() == [Track(1, 0, 7, 0)]
    long = [{1: empty if 2 <= t <= 5 else disc((20, 30))} for t in range(9)]
    lineage = Lineage(options)
    record_all(lineage, long)
    first, second = lineage.table()
    assert first == Track(1, 0, 1, 0)
    assert (second.first_frame, second.last_frame, second.parent) == (6, 8, 0)
    assert second.id not in (0, 1)


def test_two_objects_that_merge_are_reported_with_ids_and_frame():
    frames = []
    for t in range(8):
        gap = max(0, 20 - 5 * t)
        frames.append({3: disc((20, 30 - gap)), 7: disc((20, 30 + gap))})
    lineage = Lineage()
    record_all(lineage, frames)
    (merge,) = lineage.merges
    assert merge.ids == (3, 7) and merge.frame == 4
    assert "3 and 7" in str(merge) and "frame 4" in str(merge)


def test_a_correction_that_removes_the_split_removes_the_daughters():
    lineage = Lineage(LineageOptions(persist=3))
    record_all(lineage, [{1: dividing(t)} for t in range(10)])
    assert len(lineage.table()) == 3
    for t in range(4, 10):  # propagated again after a correction: one cell throughout
        lineage.record(t, [1], disc((20, 30))[None])
    assert lineage.table() == [Track(1, 0, 9, 0)]


@pytest.mark.parametrize(
    "bad",
    [
        {"persist": 0},
        {"vanish": 1.5},
        {"min_area": -1},
        {"merge_overlap": 0},
        {"new_overlap": 1},
        {"max_new_area": 2},
    ],
)
def test_thresholds_out_of_range_are_refused_by_name(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        LineageOptions(**bad)


# ---------------------------------------------------------------------- the user's corrections
def test_a_cut_gives_the_rest_of_a_track_a_new_id_that_survives_recording_again():
    lineage = Lineage(LineageOptions(vanish=3))
    frames = [{1: disc((20, 30)) if t < 6 or t > 9 else np.zeros((H, W), bool)} for t in range(13)]
    record_all(lineage, frames[:6])
    moves = lineage.cut(1, 3)
    new = max(t.id for t in lineage.table())
    assert lineage.table() == [Track(1, 0, 2, 0), Track(new, 3, 5, 0)]
    assert moves == [(3, moves[0][1], 1, new)] and moves[0][1] >= 12  # frames 3 on: 1 -> new
    assert lineage.track_ids(4, 1).tolist() == [new] and lineage.track_ids(2, 1).tolist() == [1]
    record_all(lineage, frames)  # propagated again, further: the cut stays
    table = lineage.table()
    assert table[:2] == [Track(1, 0, 2, 0), Track(new, 3, 5, 0)]
    (later,) = table[2:]  # the object seen again after its gap: a track of its own
    assert later.first_frame == 10 and later.id not in (1, new)  # never the cut's id
    assert lineage.remove_edit() == [(3, moves[0][1], new, 1)]
    assert lineage.table()[0] == Track(1, 0, 5, 0)


def test_joining_two_tracks_makes_one_id_and_tracks_that_share_a_slice_are_refused():
    empty = np.zeros((H, W), bool)
    frames = [{1: disc((20, 15)) if t < 4 else empty, 2: disc((20, 18)) if t >= 5 else empty}
              for t in range(9)]  # fmt: skip
    lineage = Lineage()
    record_all(lineage, frames)
    moves = lineage.join(2, 1)  # either order: the earlier one keeps its id
    assert lineage.table() == [Track(1, 0, 8, 0)]
    assert lineage.track_ids(6, 2).tolist() == [1]
    assert moves == [(0, moves[0][1], 2, 1)]
    lineage = Lineage()
    record_all(lineage, [{1: disc((20, 15)), 2: disc((20, 45))} for t in range(4)])
    with pytest.raises(ValueError, match="share slices"):
        lineage.join(1, 2)
    with pytest.raises(ValueError, match="no track 9"):
        lineage.cut(9, 2)
    with pytest.raises(ValueError, match="slices 0-3"):
        lineage.cut(1, 0)
    assert lineage.edits == []  # nothing half-added


def test_a_marked_division_links_daughters_to_their_parent_and_survives_recording_again():
    """The tracker followed one daughter as the cell (object 1) and found the other as a new
    object (2): marking the division makes the parent end and both daughters start there."""
    empty = np.zeros((H, W), bool)
    frames = [{1: disc((20, 30 - (t >= 5) * 8)), 2: disc((20, 38)) if t >= 5 else empty}
              for t in range(9)]  # fmt: skip
    lineage = Lineage(LineageOptions(divisions=False))
    record_all(lineage, frames)
    moves = lineage.divide(5, 1, [1, 2])
    table = lineage.table()
    rest = next(t.id for t in table if t.id not in (1, 2))
    assert table == sorted([Track(1, 0, 4, 0), Track(2, 5, 8, 1), Track(rest, 5, 8, 1)],
                           key=lambda t: t.id)  # fmt: skip
    assert lineage.parents() == {2: 1, rest: 1}
    assert lineage.track_ids(6, 1).tolist() == [rest]
    assert [m[2:] for m in moves] == [(1, rest)]
    record_all(lineage, frames)  # propagated again: the same lineage
    assert lineage.table() == table
    with pytest.raises(ValueError, match="later slice"):
        lineage.divide(0, 1, [2])


def test_edits_are_saved_as_plain_dicts_and_bad_ones_are_refused():
    from napari_sam2.engine.lineage_edits import Cut, Division, Join, edit_from_dict, edit_to_dict

    for edit in (Cut(1, 3, 7), Join(1, 2), Division(4, 1, (1, 5), (8, 9, 10))):
        assert edit_from_dict(edit_to_dict(edit)) == edit
    with pytest.raises(ValueError, match="not a lineage edit"):
        edit_from_dict({"kind": "split", "track": 1})
    with pytest.raises(ValueError, match="whole numbers"):
        edit_from_dict({"kind": "cut", "track": "a", "frame": 1, "new_id": 2})
