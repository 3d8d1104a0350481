"""Writing results into label arrays the user gives: every problem is found before the first
frame is tracked, and the labels are left exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import moving_disc

import napari_sam2 as ns

refused = pytest.mark.refused
handled = pytest.mark.handled


def prompted(model, obj_id=1, frames=5):
    t = ns.VideoTracker(model, moving_disc(frames))
    t.add_prompt(0, obj_id, points=[(15, 20)], labels=[1])
    return t


def nothing_tracked(tracker) -> bool:
    stats = tracker.memory_stats()
    return stats["tracked_in_ram"] == 0 and stats["tracked_on_disk"] == 0


@refused
@pytest.mark.parametrize(
    ("obj_id", "dtype", "match"),
    [
        (70_000, np.uint16, r"\[70000\] do not fit uint16 labels \(at most 65,535\).*uint32"),
        (200, np.int8, r"\[200\] do not fit int8 labels \(at most 127\)"),
        (2**33, np.uint32, r"do not fit uint32 labels.*uint64"),
        (2**63, np.int64, r"do not fit int64 labels.*uint64"),
    ],
)
def test_ids_that_do_not_fit_the_dtype(mini_model, obj_id, dtype, match):
    tracker = prompted(mini_model, obj_id)
    labels = np.full((5, 40, 56), 3, dtype)
    with pytest.raises(ns.LabelError, match=match):
        ns.track_to_labels(tracker, labels)
    assert (labels == 3).all() and nothing_tracked(tracker)


@refused
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda tmp: np.zeros((4, 40, 56), np.uint16),
            r"\(4, 40, 56\) are too short.*\(5, 40, 56\)",
        ),
        (lambda tmp: np.zeros((5, 40, 55), np.uint16), r"\(5, 40, 55\) are wrong.*\(5, 40, 56\)"),
        (lambda tmp: np.zeros((5, 40), np.uint16), r"\(T, H, W\) array"),
        (lambda tmp: np.zeros((5, 40, 56), np.float32), r"integer dtype, got float32"),
        (lambda tmp: np.zeros((5, 40, 56), np.uint16).copy().setflags(write=False), None),
        (lambda tmp: _read_only_zarr(tmp), r"read-only"),
    ],
    ids=["too-short", "wrong-width", "2-D", "float", "read-only-numpy", "read-only-zarr"],
)
def test_label_arrays_that_cannot_take_the_results(mini_model, tmp_path, make, match):
    labels = make(tmp_path)
    if labels is None:  # setflags returns None: build the read-only array here
        labels = np.zeros((5, 40, 56), np.uint16)
        labels.setflags(write=False)
        match = r"read-only.*labels\.copy\(\)"
    tracker = prompted(mini_model)
    before = np.array(labels[...]).copy()
    with pytest.raises(ns.LabelError, match=match):
        ns.track_to_labels(tracker, labels)
    np.testing.assert_array_equal(np.asarray(labels[...]), before)
    assert nothing_tracked(tracker)


def _read_only_zarr(tmp):
    zarr.open_array(tmp / "l.zarr", mode="w", shape=(5, 40, 56), dtype=np.uint16)
    return zarr.open_array(tmp / "l.zarr", mode="r")


@refused
def test_a_range_outside_the_stack_is_refused_before_tracking(mini_model):
    tracker = prompted(mini_model)
    labels = np.zeros((5, 40, 56), np.uint16)
    with pytest.raises(ns.FrameSourceError, match=r"frame 100 is out of range"):
        ns.track_to_labels(tracker, labels, start=100)
    assert not labels.any() and nothing_tracked(tracker)


@handled
@pytest.mark.parametrize(("obj_id", "dtype"), [(7, np.uint16), (70_000, np.uint32)])
def test_new_labels_are_as_narrow_as_the_ids_allow(mini_model, obj_id, dtype):
    labels = ns.track_to_labels(prompted(mini_model, obj_id))
    assert labels.dtype == dtype and (labels == obj_id).any()


@handled
def test_labels_of_a_signed_dtype_that_fits_are_written(mini_model):
    labels = np.zeros((5, 40, 56), np.int16)
    labels[:, 30:, 40:] = -1  # something the user painted, never overwritten
    ns.track_to_labels(prompted(mini_model, 300), labels)
    assert set(np.unique(labels)) == {-1, 0, 300} and (labels[:, 30:, 40:] == -1).all()


class LongStack:
    """A lazy stack of 10**6 small frames (a disc moving over noise), made when read."""

    def __init__(self, frames: int = 10**6) -> None:
        self.pattern = moving_disc(10)
        self.shape = (frames, *self.pattern.shape[1:])
        self.dtype = self.pattern.dtype
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, tuple):
            return self[index[0]][index[1:]]
        if isinstance(index, (int, np.integer)):
            return self.pattern[int(index) % len(self.pattern)]
        return np.stack([self[i] for i in range(*index.indices(len(self)))])


@handled
def test_a_few_frames_of_a_very_long_stack_cost_those_frames(mini_model):
    """4.5 GB of labels if allocated whole; tracking 3 frames must allocate and write only
    those (a zarr array in memory, frames outside the range read as 0)."""
    import tracemalloc

    tracker = ns.VideoTracker(mini_model, LongStack())
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    tracemalloc.start()
    try:
        labels = ns.track_to_labels(tracker, start=0, stop=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        tracker.close()
    assert labels.shape == (10**6, 40, 56) and labels.dtype == np.uint16
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB allocated for 3 frames"
    assert np.asarray(labels[0:3]).any() and not np.asarray(labels[3:100]).any()
    assert labels.nchunks_initialized <= 3  # frames outside the range: no chunk
