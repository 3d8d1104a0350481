"""Labels of objects in windows are written window by window: the same labels, bit for bit, as
resolving every object on the whole frame, without (N, H, W) full-frame logits (issue 18: on a
20000² slice one object's full-frame logits are 1.6 GB, and resolving them took 12 bytes more
per pixel)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from napari_sam2.engine.labels import _labels_of, compose_labels, result_labels
from napari_sam2.engine.results import FrameResult
from napari_sam2.engine.window_frames import WindowFrameResult
from napari_sam2.engine.windowed_prompts import Answer, WindowedResult


def old_compose(current: np.ndarray, result: FrameResult) -> np.ndarray:
    """compose_labels as it was: every object resolved on full-frame logits."""
    new = _labels_of(result, current.dtype)[0]
    owned = (current == 0) | np.isin(current, np.asarray(result.obj_ids, current.dtype))
    return np.where(owned, new, current)


def windowed_result(rng, shape, windows, low=8):
    low_res = torch.from_numpy(rng.normal(0, 2, (len(windows), 1, low, low)).astype(np.float32))
    return low_res, WindowFrameResult(3, list(range(1, len(windows) + 1)), low_res, shape, windows)


@pytest.mark.parametrize("seed", range(6))
def test_objects_in_overlapping_windows_get_the_whole_frame_labels(seed):
    rng = np.random.default_rng(seed)
    shape = (61, 73)
    windows = []
    for _ in range(7):
        r0, c0 = int(rng.integers(0, 40)), int(rng.integers(0, 50))
        windows.append((r0, c0, min(61, r0 + int(rng.integers(5, 30))), c0 + 23))
    windows[5] = windows[2]  # two objects in one window, equal logits: the first wins ties
    windows[6] = (0, 0, *shape)  # one object on the whole frame
    low_res, result = windowed_result(rng, shape, windows)
    low_res[5] = low_res[2]
    low_res[4] = -1024.0  # absent
    current = rng.integers(0, 12, shape).astype(np.uint16)  # ids 8..11 are someone else's
    expected = old_compose(current, result)
    assert (expected == 6).sum() == 0 and (expected == 3).any()  # the tie went to object 3
    assert np.array_equal(result_labels(result, np.uint16), _labels_of(result, np.uint16)[0])
    assert np.array_equal(compose_labels(current.copy(), result), expected)
    # selecting objects keeps their windows (without() is what the widget calls)
    part = result.without([1, 7])
    assert part.windows == tuple(windows[1:6])
    assert np.array_equal(result_labels(part, np.uint8), _labels_of(part, np.uint8)[0])


def test_windowed_answers_mixed_with_the_trackers_objects_get_the_same_labels():
    rng = np.random.default_rng(7)
    shape = (50, 64)
    low = torch.from_numpy(rng.normal(0, 2, (3, 1, 16, 16)).astype(np.float32))
    low[2] = -5.0  # the tracker's third object is nowhere present
    base = FrameResult(2, (4, 9, 12), low_res=low, shape=shape)
    answers = {}
    for obj_id, window in ((9, (10, 20, 40, 52)), (12, (0, 0, 20, 20))):
        r0, c0, r1, c1 = window
        crop = rng.random((r1 - r0, c1 - c0)) > 0.4
        logits = torch.from_numpy(rng.normal(0, 2, (1, 1, 8, 8)).astype(np.float32))
        answers[obj_id] = Answer(window, logits, crop, True)
    result = WindowedResult(base, answers)
    assert result.object_windows() == ((0, 0, 50, 64), (10, 20, 40, 52), (0, 0, 20, 20))
    current = rng.integers(0, 14, shape).astype(np.uint32)
    assert np.array_equal(compose_labels(current, result), old_compose(current, result))
    assert np.array_equal(result_labels(result, np.uint32), _labels_of(result, np.uint32)[0])


def test_labels_of_objects_in_windows_on_a_giant_frame_hold_no_full_frame_floats():
    """Three objects in 256-pixel windows of an 8000² frame. Before, writing them made their
    (3, H, W) float32 logits and a float32 maximum and an int64 winner per pixel: over 2.3 GB
    of numpy allocations; now the frame's new labels and one strip at a time."""
    rng = np.random.default_rng(1)
    side = 8000
    windows = [(1000, 1000, 1256, 1256), (1100, 1150, 1356, 1406), (7000, 300, 7256, 556)]
    _, result = windowed_result(rng, (side, side), windows, low=64)
    current = np.zeros((side, side), np.uint16)
    current[5000:5010, 5000:5010] = 2  # object 2's label from before, far from its window
    current[6000:6010, 6000:6010] = 40  # someone else's
    tracemalloc.start()
    try:
        new = compose_labels(current, result)
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    frame_bytes = current.nbytes  # the labels written: unavoidable
    assert traced < frame_bytes + 48 * 2**20, f"numpy allocated {traced / 2**20:.0f} MiB"
    assert (new[5000:5010, 5000:5010] == 0).all() and (new[6000:6010, 6000:6010] == 40).all()
    inside = new[1000:1356, 1000:1406]
    assert {1, 2} <= set(np.unique(inside).tolist())
    assert set(np.unique(new[7000:7256, 300:556]).tolist()) <= {0, 3}
    rest = new.copy()
    for r0, c0, r1, c1 in windows:
        rest[r0:r1, c0:c1] = 0
    rest[6000:6010, 6000:6010] = 0
    assert not rest.any()  # nothing written outside the windows


def test_the_widget_writes_a_giant_slice_without_full_slice_temporaries():
    """What the widget does with a result on a slice (``write_changes``: compose, find the box
    that changed, write it, list the slice's ids): the slice's new labels and strips of it.
    Before, the box search made a bool slice and the id count an int64 copy of the slice
    (eight bytes a pixel)."""
    from napari.layers import Labels

    from napari_sam2._qt import layers as L
    from napari_sam2.engine.stack import StackGeometry

    rng = np.random.default_rng(2)
    side = 6000
    windows = [(2000, 3000, 2256, 3256), (5700, 5700, 5956, 5956)]
    _, result = windowed_result(rng, (side, side), windows, low=64)
    data = np.zeros((1, side, side), np.uint16)
    data[0, 10:20, 10:20] = 1  # object 1 moves: its old pixels go
    layer = Labels(data)
    geometry = StackGeometry(data.shape, stack_axis=0)
    result.frame = 0
    tracemalloc.start()
    try:
        new, box, before = L.write_changes(layer, geometry, result)
        ids = L.label_ids(new)
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    slice_bytes = side * side * 2
    assert traced < slice_bytes + box_bytes(box) * 2 + 48 * 2**20, f"{traced / 2**20:.0f} MiB"
    assert box == (slice(10, 5956), slice(10, 5956))  # from the old pixels to the last window
    assert ids == set(np.flatnonzero(np.bincount(new.ravel())).tolist()) - {0} == {1, 2}
    assert np.array_equal(layer.data[0], old_compose(np.where(data[0] == 1, 0, data[0]), result))
    assert (before[:10, :10] == 1).all()


def box_bytes(box) -> int:
    return (box[0].stop - box[0].start) * (box[1].stop - box[1].start) * 2
