"""Clicks on big frames through PromptSession(tiles=...): answered in a native-resolution
window as ImagePredictor(tiles=True) answers them, and that mask conditions propagation.
Real network, random weights, a 128-pixel input on 420-pixel frames (tiled: 420 > 1.5 x 128)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2 import ImagePredictor
from napari_sam2.engine.session import PointRow, PromptSession
from napari_sam2.engine.window_frames import WindowFrameResult


@pytest.fixture(scope="module")
def mini_model():
    from official import random_tiny

    return random_tiny(128, seed=6, object_bias=5.0)


def big_frames(t=3, h=420, w=400):
    """Small bright discs near two opposite corners, moving a little (uint16)."""
    rr, cc = np.mgrid[:h, :w]
    data = np.full((t, h, w), 300, np.uint16)
    for i in range(t):
        data[i][(rr - 40 - i) ** 2 + (cc - 50) ** 2 < 9**2] = 3000
        data[i][(rr - 370) ** 2 + (cc - 340 - i) ** 2 < 9**2] = 3000
    return data


def test_a_click_on_a_big_frame_is_answered_in_its_window_and_conditions_propagation(
    mini_model,
):
    frames = big_frames()
    session = PromptSession(mini_model, frames, tiles="auto")
    assert session.tiled and session.windows.tile == 128
    click = PointRow(1, 0, 370.0, 340.0, True)  # far from the first window (0, 0, 128, 128)
    out = session.sync_frame(0, [click], [])
    ((obj_id, window),) = out.windows
    r0, c0, r1, c1 = window
    assert obj_id == 1 and (r1 - r0, c1 - c0) == (128, 128) and r0 <= 370 < r1 and c0 <= 340 < c1

    # What ImagePredictor(tiles=True) gives on that frame, with the stack's intensity window.
    predictor = ImagePredictor(mini_model, tiles=True)
    predictor.set_image(frames[0], window=session.tracker.source.window)
    expected = predictor.predict([(370.0, 340.0)], [1])
    assert expected.tile == window
    mask = out.result.masks[0]
    np.testing.assert_array_equal(mask, np.asarray(expected.masks[expected.best]))
    assert mask.any() and not mask[:r0].any() and not mask[:, :c0].any()

    # The tracker's prompt there is that mask; propagation starts from it and the prompted
    # frame keeps its native answer.
    assert session.tracker._objects[1].prompts[0].is_mask
    results = {r.frame: r for r in session.propagate("forward")}
    assert sorted(results) == [0, 1, 2]
    np.testing.assert_array_equal(results[0].masks[0], mask)
    assert all(results[t].masks[0].any() for t in (1, 2))
    assert isinstance(results[1], WindowFrameResult)  # tracked in windows (session_windows.py)


def test_two_objects_one_windowed_and_removing_the_click_forgets_its_window(mini_model):
    session = PromptSession(mini_model, big_frames(t=2), tiles=True)
    clicks = [PointRow(1, 0, 40.0, 50.0, True), PointRow(2, 0, 370.0, 340.0, True)]
    out = session.sync_frame(0, clicks, [])
    assert dict(out.windows).keys() == {1, 2}
    assert out.result.windows == dict(out.windows)
    only_two = out.result.without([1])
    assert only_two.obj_ids == (2,) and only_two.windows == {2: dict(out.windows)[2]}
    np.testing.assert_array_equal(only_two.masks[0], out.result.masks[1])
    out = session.sync_frame(0, clicks[1:], [])
    assert out.removed == (1,) and set(session.windows.answers) == {(0, 2)}


def test_without_tiles_a_big_frame_is_answered_by_the_tracker_as_before(mini_model):
    frames = big_frames(t=2)
    session = PromptSession(mini_model, frames, tiles=False)
    click = PointRow(1, 0, 370.0, 340.0, True)
    out = session.sync_frame(0, [click], [])
    assert not session.tiled and out.windows == ()
    tracker = PromptSession(mini_model, frames).tracker
    expected = tracker.add_prompt(0, 1, [(370.0, 340.0)], [1])
    np.testing.assert_array_equal(out.result.masks, expected.masks)
    small = PromptSession(mini_model, frames[:, :150, :150], tiles="auto")
    assert not small.tiled  # 150 <= 1.5 x 128: not worth windows
