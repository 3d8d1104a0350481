"""A tiled PromptSession propagates in native-resolution windows (engine/session_windows.py): a
WindowTracker given the session's prompts, corrections on propagated frames answered by it and
re-propagated, cancel, the downscaled fall-back (lineage), an embeddings store keeping the
windows. Real network, random weights, a 128-pixel input on 420 x 400 frames (tiled:
420 > 1.5 x 128)."""

from __future__ import annotations

import numpy as np
import pytest
from test_window_store import count_encodings
from test_windowed_prompts import big_frames  # two small discs near opposite corners

import napari_sam2 as ns
from napari_sam2.engine.session import PointRow, PromptSession
from napari_sam2.engine.window_frames import WindowFrameResult

CLICKS = [PointRow(1, 0, 370.0, 340.0, True), PointRow(2, 0, 40.0, 50.0, True)]


@pytest.fixture(scope="module")
def mini_model():
    from official import random_tiny

    return random_tiny(128, seed=6, object_bias=5.0)


def reference(model, frames, session):
    """ns.WindowTracker given the same clicks, with the session's intensity window."""
    tracker = ns.WindowTracker(model, frames, window=session.tracker.source.window)
    for p in CLICKS:
        tracker.add_prompt(p.frame, p.obj_id, points=[(p.row, p.col)], labels=[1])
    return tracker


def test_a_tiled_session_propagates_as_a_window_tracker_given_its_prompts(mini_model):
    frames = big_frames()
    session = PromptSession(mini_model, frames, tiles="auto")
    out = session.sync_frame(0, CLICKS, [])
    assert session.in_windows() and session.downscaled_because() is None
    assert session.plan() == 3
    results = {r.frame: r for r in session.propagate("forward")}
    expected = {r.frame: r for r in reference(mini_model, frames, session).propagate()}
    assert sorted(results) == [0, 1, 2]
    for t in (1, 2):
        assert isinstance(results[t], WindowFrameResult)
        assert results[t].windows == expected[t].windows
        np.testing.assert_array_equal(results[t].logits, expected[t].logits)
    # the clicked frame keeps the answers the user saw
    np.testing.assert_array_equal(results[0].masks, out.result.masks)
    assert session.recentrings == expected[2].recentred
    # moving to a propagated frame (any sync there) shows what the propagation wrote
    assert not session.prompts_waiting(True)
    shown = session._result(2)
    np.testing.assert_array_equal(shown.logits, results[2].logits)


def test_a_correction_on_a_propagated_frame_builds_on_its_memory_and_re_propagates(
    mini_model,
):
    frames = big_frames()
    session = PromptSession(mini_model, frames, tiles="auto")
    session.sync_frame(0, CLICKS, [])
    propagated = {r.frame: r for r in session.propagate("forward")}
    ref = reference(mini_model, frames, session)
    list(ref.propagate())
    fix = PointRow(1, 1, 380.0, 350.0, False)
    out = session.sync_frame(1, [fix], [])
    # what the window tracker gives for that click on its tracked frame (memory, tracked mask)
    want = ref.add_prompt(1, 1, points=[(380.0, 350.0)], labels=[0], replace=True)
    np.testing.assert_array_equal(out.result.masks[0], want.masks[0])
    assert dict(out.windows)[1] == want.windows[0]
    # the other object keeps its propagated mask there
    np.testing.assert_array_equal(out.result.logits[1], propagated[1].logits[1])
    assert session.prompts_waiting(True) is False  # the window tracker holds it already
    assert session.passes() == [(1, 2, False)]  # re-propagates from the correction
    again = {r.frame: r for r in session.propagate("forward")}
    expected = {r.frame: r for r in ref.propagate()}
    assert sorted(again) == [1, 2]
    np.testing.assert_array_equal(again[1].masks[0], want.masks[0])
    np.testing.assert_array_equal(again[2].logits, expected[2].logits)


def test_cancel_keeps_what_was_yielded_and_the_next_run_starts_again(mini_model):
    session = PromptSession(mini_model, big_frames(), tiles=True)
    session.sync_frame(0, CLICKS, [])
    run = session.propagate("forward")
    first = next(run)
    run.close()  # cancel after one frame
    assert first.frame == 0 and session.plan() == 3
    assert len(list(session.propagate("forward"))) == 3


def test_lineage_falls_back_to_the_downscaled_tracker(mini_model):
    frames = big_frames(t=2)
    session = PromptSession(mini_model, frames, tiles=True)
    session.sync_frame(0, CLICKS, [])
    assert not session.in_windows(divisions=True)
    assert "whole slices" in session.downscaled_because(new_objects=2)
    results = list(session.propagate("forward", divisions=True))
    assert [r.frame for r in results] == [0, 1]
    assert not isinstance(results[1], WindowFrameResult)  # the tracker's downscaled result
    untiled = PromptSession(mini_model, frames, tiles=False)
    assert not untiled.in_windows() and untiled.downscaled_because() is None
    session.close()


def test_an_embeddings_store_keeps_the_windows_and_a_second_session_encodes_nothing(
    mini_model, tmp_path
):
    frames = big_frames(t=3)
    ram = PromptSession(mini_model, frames, tiles=True)
    ram.sync_frame(0, CLICKS, [])
    expected = list(ram.propagate("forward"))
    ram.close()
    store = str(tmp_path / "e.zarr")
    runs = []
    for _ in range(2):
        stored = PromptSession(
            mini_model, frames, tiles=True, embeddings=store, embeddings_dtype="float32"
        )
        stored.sync_frame(0, CLICKS, [])  # (the clicks' answers embed their windows anew)
        assert stored.in_windows() and stored.downscaled_because() is None
        calls, hook = count_encodings(mini_model)
        try:
            results = list(stored.propagate("forward"))
        finally:
            hook.remove()
            stored.close()
        runs.append((results, len(calls)))
    (first, first_calls), (second, second_calls) = runs
    assert first_calls > 0 and second_calls == 0  # every window's frames read back
    assert [r.frame for r in second] == [0, 1, 2]
    assert all(isinstance(r, WindowFrameResult) for r in second[1:])  # followed in windows
    for a, b, c in zip(expected, first, second):
        np.testing.assert_array_equal(a.logits, b.logits)
        np.testing.assert_array_equal(a.logits, c.logits)


def test_a_renamed_object_keeps_its_windowed_results(mini_model):
    session = PromptSession(mini_model, big_frames(), tiles=True)
    session.sync_frame(0, CLICKS, [])
    results = {r.frame: r for r in session.propagate("forward")}
    session.rename_object(2, 7)
    shown = session._result(2)
    assert shown.obj_ids == (1, 7)
    np.testing.assert_array_equal(shown.logits, results[2].logits)


def test_a_click_while_it_propagates_waits_for_the_next_propagation(mini_model):
    session = PromptSession(mini_model, big_frames(), tiles=True)
    session.sync_frame(0, CLICKS, [])
    list(session.propagate("forward"))
    session.sync_frame(0, [*CLICKS, PointRow(1, 0, 360.0, 330.0, True)], [])
    run = session.propagate("forward")
    assert next(run).frame == 0
    # a click on a slice propagated in windows, far from the object's window, while the window
    # tracker runs: answered as a click on the slice, without touching its trackers
    out = session.sync_frame(2, [PointRow(1, 2, 100.0, 300.0, True)], [])
    assert out.result is not None and dict(out.windows).keys() == {1}
    assert [r.frame for r in run] == [1, 2]  # the run goes on to its end
    assert session.prompts_waiting(True)
    assert session.passes() == [(2, 2, False)]  # the next one follows the click
    assert [r.frame for r in session.propagate("forward")] == [2]
    assert not session.prompts_waiting(True)


def test_mask_prompts_and_their_refining_clicks_are_given_to_the_window_tracker(mini_model):
    frames = big_frames()
    rr, cc = np.mgrid[:420, :400]
    labels = np.zeros((420, 400), np.uint16)
    labels[(rr - 40) ** 2 + (cc - 50) ** 2 < 9**2] = 1  # segment everything's objects, say
    labels[(rr - 370) ** 2 + (cc - 340) ** 2 < 9**2] = 2
    session = PromptSession(mini_model, frames, tiles=True)
    session.add_label_prompts(0, labels)
    refine = PointRow(2, 0, 372.0, 342.0, True)
    session.sync_frame(0, [refine], [])
    results = {r.frame: r for r in session.propagate("forward")}
    ref = ns.WindowTracker(mini_model, frames, window=session.tracker.source.window)
    ref.add_labels(0, labels)
    ref.add_prompt(0, 2, points=[(372.0, 342.0)], labels=[1])
    expected = {r.frame: r for r in ref.propagate()}
    for t in (0, 1, 2):
        assert results[t].windows == expected[t].windows
        np.testing.assert_array_equal(results[t].logits, expected[t].logits)
