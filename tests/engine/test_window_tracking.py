"""Tracking big frames in windows (engine/window_tracking.py): windows follow their objects,
objects in one window share its embedding, crops are read lazily and preprocessed as the whole
stack, results land in full-size labels. The real network with random weights at a 128-pixel
input on frames of about three inputs a side; Meta's predictor on the crops is the parity test
(tests/parity/test_window_tracking_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_sam2 as ns
from napari_sam2.engine.frames import FrameSource
from napari_sam2.engine.window_frames import WindowPlacer
from napari_sam2.engine.window_tracking import WindowTracker, make_tracker

H = W = 384


def moving(t: int = 10, speed: int = 20, dtype=np.uint8, value=220):
    """A disc crossing the frame left to right on a dim noisy background."""
    rr, cc = np.mgrid[:H, :W]
    rng = np.random.default_rng(0)
    frames = rng.integers(20, 40, (t, H, W)).astype(dtype)
    for i in range(t):
        frames[i][(rr - 64) ** 2 + (cc - 64 - speed * i) ** 2 < 12**2] = value
    return frames


class Reads:
    """An array-like stack that records the index of every read (nothing else is numpy)."""

    def __init__(self, frames):
        self.frames, self.shape, self.dtype = frames, frames.shape, frames.dtype
        self.keys = []

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, key):
        self.keys.append(key)
        return self.frames[key]


def encoder_calls(model):
    calls = []
    handle = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_placer_keeps_objects_off_cut_sides_and_recentres_near_them():
    placer = WindowPlacer((H, W), 128, 16)  # grid windows every 96 pixels, 128 wide
    window = placer.window_for([60, 70], [60, 70])
    r0, c0, r1, c1 = window
    assert (r1 - r0, c1 - c0) == (128, 128)
    assert placer.grid.margin(window, np.array([60, 70]), np.array([60, 70])) >= 16
    assert not placer.too_close(window, [60, 70], [60, 70])
    assert placer.too_close(window, [60, 70], [c1 - 6, c1 - 2])  # 1 px from the cut side
    moved = placer.window_for([60, 70], [c1 - 6, c1 - 2])
    assert moved != window and not placer.too_close(moved, [60, 70], [c1 - 6, c1 - 2])
    # the frame's own edges are not cuts: an object there stays put
    edge = placer.window_for([0, 8], [0, 8])
    assert edge[:2] == (0, 0) and not placer.too_close(edge, [0, 8], [0, 8])
    # larger than a window with its margins: the whole frame, downscaled
    assert placer.window_for([10, 110], [10, 20]) == (0, 0, H, W)
    # a frame that fits one window is one window
    assert WindowPlacer((100, 120), 128, 16).window_for([5], [5]) == (0, 0, 100, 120)


def test_an_object_leaving_its_window_is_followed_and_its_recentrings_counted(mini_model):
    frames = moving(10)
    stack = Reads(frames)
    tracker = WindowTracker(mini_model, stack)
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    first = tracker.windows[1]
    assert first[2] - first[0] == 128 and first[3] - first[1] == 128
    labels = ns.track_to_labels(tracker, direction="forward")
    assert labels.shape == (10, H, W)
    assert tracker.recentrings[1] >= 1
    assert tracker.trackers_made >= 2  # the prompt window and at least one re-centred one
    r0, c0, r1, c1 = first
    outside = labels.copy()
    outside[:, r0:r1, c0:c1] = 0
    assert (outside == 1).any(), "the object's labels never left its first window"
    # every read is one frame's window: never the whole stack, never a whole frame but in
    # a window that is the whole frame
    assert all(isinstance(k, tuple) and isinstance(k[0], int) for k in stack.keys)
    assert len(stack.keys) <= 10 * (1 + tracker.trackers_made)
    tracker.close()


def test_results_say_which_window_and_how_many_recentrings(mini_model):
    tracker = WindowTracker(mini_model, moving(8))
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    home = tracker.windows[1]
    results = list(tracker.propagate())
    assert results[0].windows == (home,) and results[0].recentred == {1: 0}
    counts = [r.recentred[1] for r in results]
    assert counts == sorted(counts) and counts[-1] == tracker.recentrings[1] >= 1
    moved = next(r for r in results if r.recentred[1])
    assert moved.windows[0] != home
    r0, c0, r1, c1 = moved.windows[0]
    logits = moved.logits[0]
    assert logits.shape == (H, W)
    outside = logits.copy()
    outside[r0:r1, c0:c1] = -1024
    assert (outside == -1024).all()  # nothing outside the window it was followed in
    assert "recentred" in repr(moved)
    tracker.close()


def test_a_recentred_object_returns_to_its_prompt_window_on_its_next_prompt(mini_model):
    frames = moving(8, speed=2)
    tracker = WindowTracker(mini_model, frames)
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    tracker.add_prompt(7, 1, points=[(64, 78)], labels=[1])
    home = tracker.windows[1]
    results = list(tracker.propagate())
    assert tracker.recentrings[1] >= 1  # random weights: masks fill their window
    assert results[-1].frame == 7 and results[-1].windows == (home,)
    expected = tracker.result(7).logits  # the prompt's own result, kept in its window
    np.testing.assert_array_equal(results[-1].logits, expected)
    tracker.close()


def test_objects_in_one_window_share_its_embedding(mini_model):
    frames = moving(6, speed=4)
    tracker = WindowTracker(mini_model, frames, margin=0)  # no re-centring: count exactly
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    tracker.add_prompt(0, 2, box=(30, 20, 50, 40))
    tracker.add_prompt(0, 3, points=[(300, 300)], labels=[1])
    assert tracker.windows[1] == tracker.windows[2] != tracker.windows[3]
    assert tracker.num_windows == 2
    calls, handle = encoder_calls(mini_model)
    try:
        results = list(tracker.propagate())
    finally:
        handle.remove()
    assert len(results) == 6
    # frame 0 was embedded by the prompts; frames 1-5 once per window, not once per object
    assert len(calls) == 5 * 2
    assert tracker.recentrings == {1: 0, 2: 0, 3: 0}
    tracker.close()


def test_crops_are_preprocessed_with_the_whole_stacks_intensity_window(mini_model):
    """uint16: the window is set once on the whole stack, so a crop's result equals a
    VideoTracker on the crop given that window, not one that measures the crop alone."""
    frames = moving(3, dtype=np.uint16, value=4000)
    frames[:, 300:, 300:] = 60000  # a bright corner the crop does not see
    tracker = WindowTracker(mini_model, frames)
    r = tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    r0, c0, r1, c1 = tracker.windows[1]
    crop = np.ascontiguousarray(frames[:, r0:r1, c0:c1])
    whole = FrameSource(frames, image_size=128).window
    same = ns.VideoTracker(mini_model, crop, window=whole)
    alone = ns.VideoTracker(mini_model, crop)
    assert alone.source.window != whole
    expected = same.add_prompt(0, 1, points=[(64 - r0, 64 - c0)], labels=[1]).logits
    other = alone.add_prompt(0, 1, points=[(64 - r0, 64 - c0)], labels=[1]).logits
    np.testing.assert_array_equal(r.logits[:, r0:r1, c0:c1], expected)
    assert not np.array_equal(expected, other)
    for t in (tracker, same, alone):
        t.close()


def test_label_prompts_are_placed_per_object_and_batched_per_window(mini_model):
    frames = moving(4, speed=4)
    labels = np.zeros((H, W), np.uint16)
    labels[54:75, 54:75] = 4
    labels[30:40, 20:30] = 5
    labels[290:310, 290:310] = 9
    tracker = WindowTracker(mini_model, frames, margin=0)
    r = tracker.add_labels(0, labels)
    assert r.obj_ids == (4, 5, 9) and r.dropped == ()
    assert tracker.windows[4] == tracker.windows[5] != tracker.windows[9]
    # a mask prompt's result is the mask itself (as in SAM 2), here at native resolution
    assert (r.masks[0] == (labels == 4)).mean() > 0.99
    out = ns.track_to_labels(tracker)
    assert out.shape == (4, H, W) and set(np.unique(out[0])) == {0, 4, 5, 9}
    tracker.close()


def test_a_prompt_that_moves_the_object_replays_its_prompts_in_the_new_window(mini_model):
    tracker = WindowTracker(mini_model, moving(4))
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    first = tracker.windows[1]
    tracker.add_prompt(2, 1, points=[(64, 140)], labels=[1])  # farther right: a new window
    second = tracker.windows[1]
    assert second != first and tracker.num_windows == 1
    r0, c0, _, _ = second
    alone = ns.VideoTracker(
        mini_model, np.ascontiguousarray(moving(4)[:, r0 : r0 + 128, c0 : c0 + 128])
    )
    alone.add_prompt(0, 1, points=[(64 - r0, 64 - c0)], labels=[1])
    expected = alone.add_prompt(2, 1, points=[(64 - r0, 140 - c0)], labels=[1]).logits
    np.testing.assert_array_equal(
        tracker.result(2).logits[:, r0 : r0 + 128, c0 : c0 + 128], expected
    )
    tracker.remove_object(1)
    assert tracker.num_windows == 0 and tracker.obj_ids == ()
    tracker.close()
    alone.close()


def test_make_tracker_tiles_frames_larger_than_one_and_a_half_inputs(mini_model):
    big = make_tracker(mini_model, moving(2))  # 384 > 1.5 x 128
    small = make_tracker(mini_model, moving(2)[:, :180, :180])  # 180 < 192
    forced = make_tracker(mini_model, moving(2)[:, :180, :180], tiles=True)
    off = make_tracker(mini_model, moving(2), tiles=False)
    assert isinstance(big, WindowTracker) and isinstance(forced, WindowTracker)
    assert type(small) is ns.VideoTracker and type(off) is ns.VideoTracker
    for t in (big, small, forced, off):
        t.close()


def test_cancel_keeps_the_yielded_frames_and_closes_recentred_windows(mini_model):
    tracker = WindowTracker(mini_model, moving(8))
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    seen = []
    with torch.inference_mode():
        for r in tracker.propagate():
            seen.append(r.frame)
            if len(seen) == 4:
                break
    assert seen == [0, 1, 2, 3]
    assert tracker._recentred == []  # the re-centred windows' trackers were released
    assert len(list(tracker.propagate())) == 8  # starts again from the prompted frame
    tracker.close()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])


def test_after_a_recentring_the_object_continues_from_its_last_mask_as_a_mask_prompt(
    mini_model,
):
    """The approximation, exactly as documented: from the frame after the move, the results
    are a VideoTracker's on the new window's crop, prompted on the frame of the move by the
    mask the object had there."""
    frames = moving(8)
    tracker = WindowTracker(mini_model, frames)
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    results = list(tracker.propagate())
    moved = next(i for i, r in enumerate(results) if r.recentred[1])
    last = results[moved - 1]
    window = results[moved].windows[0]
    assert window != last.windows[0]
    later = [r for r in results[moved:] if r.windows[0] == window and r.recentred[1] == 1]
    assert later, "the object left the new window at once"
    r0, c0, r1, c1 = window
    alone = ns.VideoTracker(mini_model, np.ascontiguousarray(frames[:, r0:r1, c0:c1]))
    alone.add_prompt(last.frame, 1, mask=last.masks[0][r0:r1, c0:c1])
    expected = {r.frame: r.logits for r in alone.propagate(start=last.frame)}
    for r in later:
        np.testing.assert_array_equal(r.logits[:, r0:r1, c0:c1], expected[r.frame])
    tracker.close()
    alone.close()


def test_lists_of_frames_and_dask_stacks_track_as_numpy(mini_model):
    import dask.array as da

    frames = moving(3)
    outs = []
    for source in (frames, list(frames), da.from_array(frames, chunks=(1, 128, 128))):
        tracker = WindowTracker(mini_model, source, margin=0)
        tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
        outs.append(ns.track_to_labels(tracker))
        tracker.close()
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_big_uint16_frames_are_never_read_whole(mini_model):
    """The intensity window comes from strided samples, the tracking from window crops: no
    read of a 2048² frame is more than a window or a sample of about a million pixels."""
    rng = np.random.default_rng(1)
    frames = rng.integers(300, 500, (3, 2048, 2048)).astype(np.uint16)
    frames[:, 1000:1020, 1000:1020] = 4000
    stack = Reads(frames)
    tracker = WindowTracker(mini_model, stack, margin=0)
    tracker.add_prompt(0, 1, points=[(1010, 1010)], labels=[1])
    ns.track_to_labels(tracker)
    assert stack.keys
    for key in stack.keys:
        assert isinstance(key, tuple), key
        _, rows, cols = key
        read = len(range(*rows.indices(2048))) * len(range(*cols.indices(2048)))
        assert read <= 1_000_000 // 3 + 2 * 2048, key
    # the whole stack's window, sampled: the bright square is too small to move it
    assert tracker.source.window.high < 1000
    tracker.close()


def test_clearing_a_prompt_moves_the_object_to_the_window_of_the_rest(mini_model):
    tracker = WindowTracker(mini_model, moving(4))
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    home = tracker.windows[1]
    tracker.add_prompt(2, 1, points=[(64, 140)], labels=[1])
    assert tracker.windows[1] != home and tracker.prompted_frames() == [0, 2]
    r = tracker.clear_prompts(2, 1)
    assert tracker.windows[1] == home and tracker.prompted_frames(1) == [0]
    assert r.windows == (home,)
    alone = WindowTracker(mini_model, moving(4))
    alone.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    np.testing.assert_array_equal(tracker.result(0).logits, alone.result(0).logits)
    tracker.close()
    alone.close()


def test_result_answers_from_the_window_the_object_was_followed_in_on_that_frame(mini_model):
    tracker = WindowTracker(mini_model, moving(8))
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    home = tracker.windows[1]
    results = {r.frame: r for r in tracker.propagate()}
    away = [t for t, r in results.items() if r.windows[0] != home]
    assert away, "random weights: the mask fills its window and re-centres"
    for t in results:  # re-centred frames too, exactly as yielded, after the pass
        shown = tracker.result(t)
        assert shown.windows == results[t].windows
        np.testing.assert_array_equal(shown.logits, results[t].logits)
    # a prompt there: its prompt window answers again
    t = away[-1]
    tracker.add_prompt(t, 1, points=[(64, 64)], labels=[1])
    assert tracker.result(t).windows == (tracker.windows[1],)
    tracker.close()


def test_after_a_cancel_the_next_propagation_gives_what_an_uninterrupted_one_gives(mini_model):
    frames = moving(8)
    whole = WindowTracker(mini_model, frames)
    whole.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    expected = [r.logits for r in whole.propagate()]
    assert whole.recentrings[1] >= 1  # the prompt window's tracker went idle mid-pass
    tracker = WindowTracker(mini_model, frames)
    tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
    run = tracker.propagate()
    for _ in range(5):
        next(run)
    run.close()  # cancel
    again = list(tracker.propagate())
    assert [r.frame for r in again] == list(range(8))
    for r, logits in zip(again, expected):
        np.testing.assert_array_equal(r.logits, logits)
    whole.close()
    tracker.close()
