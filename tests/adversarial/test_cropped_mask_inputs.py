"""Cropped mask prompts (a WindowMasks of one mask: a crop placed in its window of the frame)
that cannot be used are refused with a PromptError that names the problem and the fix, before
anything changes; valid unusual ones (float probabilities, a window on the frame's edge) work."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import moving_disc, tracker_state

import napari_sam2 as ns
from napari_sam2.engine.window_masks import WindowMasks

SHAPE = (40, 56)


@pytest.mark.refused
@pytest.mark.parametrize(
    ("crop", "tile", "shape", "match"),
    [
        (np.ones((10, 10), bool), (35, 50, 45, 60), SHAPE, "lies outside the frame"),
        (np.ones((10, 10), bool), (-2, 0, 8, 10), SHAPE, "lies outside the frame"),
        (np.ones((10, 10), bool), (10, 10, 5, 20), SHAPE, "min_row <= max_row"),
        (np.ones((8, 10), bool), (0, 0, 10, 10), SHAPE, r"crop must be the window's pixels"),
        (np.ones(10, bool), (0, 0, 10, 10), SHAPE, r"mask\[min_row:max_row, min_col:max_col\]"),
        (np.ones((10, 10), bool), (0, 0, 10), SHAPE, r"\(min_row, min_col, max_row, max_col\)"),
        (np.ones((10, 10), bool), (0.5, 0, 10, 10), SHAPE, "whole pixels"),
    ],
)
def test_a_crop_that_does_not_fit_its_window_is_refused(crop, tile, shape, match):
    with pytest.raises(ns.PromptError, match=match):
        WindowMasks(crop, tile, shape)


def _nan_crop():
    crop = np.full((10, 10), 0.9)
    crop[3, 4] = np.nan
    return crop


@pytest.mark.refused
@pytest.mark.parametrize("make", [ns.VideoTracker, ns.WindowTracker])
@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (WindowMasks(_nan_crop(), (5, 5, 15, 15), SHAPE), "NaN or infinite"),
        (WindowMasks(np.full((10, 10), 2.0), (5, 5, 15, 15), SHAPE), r"probabilities in \[0, 1\]"),
        (WindowMasks(np.full((10, 10), 3), (5, 5, 15, 15), SHAPE), "labels == obj_id"),
        (WindowMasks(np.zeros((10, 10), bool), (5, 5, 15, 15), SHAPE), "the mask prompt is empty"),
        (WindowMasks(np.ones((10, 10), bool), (5, 5, 15, 15), (40, 60)), "frame's shape"),
        (WindowMasks(np.ones((2, 10, 10), bool), (5, 5, 15, 15), SHAPE), "one \\(h, w\\) crop"),
    ],
)
def test_a_cropped_mask_prompt_with_bad_values_changes_nothing(mini_model, make, mask, match):
    tracker = make(mini_model, moving_disc(3))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    before = tracker_state(tracker) if make is ns.VideoTracker else (tracker.windows,)
    with pytest.raises(ns.PromptError, match=match):
        tracker.add_prompt(0, 1, mask=mask)
    with pytest.raises(ns.PromptError, match=match):
        tracker.add_prompt(1, 2, mask=mask)
    after = tracker_state(tracker) if make is ns.VideoTracker else (tracker.windows,)
    assert after == before and tracker.obj_ids == (1,)


@pytest.mark.handled
@pytest.mark.parametrize("make", [ns.VideoTracker, ns.WindowTracker])
def test_a_probability_crop_on_the_frame_edge_is_the_thresholded_full_mask(mini_model, make):
    prob = np.zeros((16, 20))
    prob[4:16, 6:20] = 0.7  # reaching the bottom-right corner
    crop = WindowMasks(prob, (24, 36, 40, 56), SHAPE)
    full = np.asarray(crop) >= 0.5
    a, b = make(mini_model, moving_disc(3)), make(mini_model, moving_disc(3))
    np.testing.assert_array_equal(
        a.add_prompt(0, 1, mask=crop).logits, b.add_prompt(0, 1, mask=full).logits
    )
