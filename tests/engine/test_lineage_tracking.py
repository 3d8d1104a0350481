"""Propagation with new objects and divisions, on the real network (random weights, small
sizes): the plumbing — ids, lineage table, labels — not the quality."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2 import AutomaticMaskGenerator, VideoTracker, track_to_labels
from napari_sam2.engine.lineage import LineageOptions

T, H, W = 8, 48, 64


def disc(center, radius=6):
    rows, cols = np.mgrid[:H, :W]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def cell_masks(t: int):
    """One cell that divides on frame 3 into two that move apart."""
    if t < 3:
        return disc((24, 32))
    d = 8 + 2 * (t - 3)
    return disc((24, 32 - d)) | disc((24, 32 + d))


def frames_of(masks):
    rng = np.random.default_rng(0)
    stack = np.stack([400 + 2000 * m for m in masks]).astype(np.float32)
    return (stack + rng.normal(0, 30, stack.shape)).clip(0).astype(np.uint16)


def test_a_dividing_cell_becomes_two_daughter_tracks_in_the_labels(mini_model):
    masks = [cell_masks(t) for t in range(T)]
    tracker = VideoTracker(mini_model, frames_of(masks), embeddings=False)
    for t, m in enumerate(masks):  # every frame prompted: the results are these masks
        tracker.add_prompt(t, 1, mask=m)
    options = LineageOptions(min_area=20, persist=2)
    labels = track_to_labels(tracker, divisions=True, lineage_options=options)
    table = tracker.lineage
    parent, *daughters = table
    assert (parent.id, parent.first_frame, parent.last_frame, parent.parent) == (1, 0, 2, 0)
    assert [(d.first_frame, d.last_frame, d.parent) for d in daughters] == [(3, T - 1, 1)] * 2
    ids = {d.id for d in daughters}
    for t in range(T):
        present = set(np.unique(labels[t]).tolist()) - {0}
        assert present == ({1} if t < 3 else ids), t
    # each daughter is one side, the same side on every frame
    left = {int(np.median(labels[t][:, :32][labels[t][:, :32] > 0])) for t in range(3, T)}
    assert len(left) == 1
    # a correction that removes the division: one cell again, the daughters gone
    for t in range(3, T):
        tracker.add_prompt(t, 1, mask=disc((24, 32)))
    labels = track_to_labels(tracker, labels, direction="forward", start=0)
    assert [(r.id, r.first_frame, r.last_frame, r.parent) for r in tracker.lineage] == [
        (1, 0, T - 1, 0)
    ]
    assert set(np.unique(labels).tolist()) == {0, 1}
    tracker.close()


@pytest.mark.filterwarnings("ignore:tracks .* merge")
def test_objects_found_while_tracking_get_fresh_ids_and_start_where_found(mini_model):
    entering = [disc((24, 16)) | (disc((24, 48)) if t >= 4 else False) for t in range(T)]
    tracker = VideoTracker(mini_model, frames_of(entering), embeddings=False)
    tracker.add_prompt(0, 1, mask=disc((24, 16)))
    detector = AutomaticMaskGenerator(
        mini_model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    from napari_sam2.engine.lineage_tracking import propagate_with_lineage

    results = list(propagate_with_lineage(tracker, "forward", None, None, 4, False, None, detector))
    assert [r.frame for r in results] == list(range(T))  # every frame once, in order
    assert len(tracker.obj_ids) > 1  # random weights find something
    new = [i for i in tracker.obj_ids if i != 1]
    assert min(new) > 1
    for obj_id in new:
        (first,) = {f for f in tracker.prompted_frames(obj_id)}
        assert first in (0, 4)  # found on a frame 0, N, 2N, ...
    rows = {r.id: r for r in tracker.lineage}
    for r in results:  # results carry the lineage's ids, each present where its row says
        for i, m in zip(r.obj_ids, r.masks):
            if m.any():
                assert rows[i].first_frame <= r.frame <= rows[i].last_frame
    tracker.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"new_objects": 0}, "new_objects must be at least 1"),
        ({"new_objects": 2.5}, "new_objects must be a whole number"),
        ({"divisions": True, "direction": "both"}, "direction='forward'"),
    ],
)
def test_bad_lineage_options_are_refused_before_any_frame(mini_model, kwargs, message):
    tracker = VideoTracker(mini_model, frames_of([disc((24, 32))] * 3), embeddings=False)
    tracker.add_prompt(0, 1, mask=disc((24, 32)))
    with pytest.raises(ValueError, match=message):
        tracker.propagate(**kwargs)
    assert tracker.memory_stats()["tracked_in_ram"] == 0
    tracker.close()
