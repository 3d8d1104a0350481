"""Tracking in windows (WindowTracker, ``segment --tiles``) refuses options that cannot work with
a TilesError or exit 2 that names the problem, before any work, and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from cli_helpers import FAST, NO_MODEL, refuses
from conftest import moving_disc

import napari_sam2 as ns
from napari_sam2.engine.window_tracking import WindowTracker, make_tracker


def big(t: int = 3):
    return np.tile(moving_disc(t), (1, 8, 6))  # (t, 320, 336)


@pytest.mark.refused
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"tile": 64}, "smaller than the model's input"),
        ({"tile": 8}, "at least 16 pixels"),
        ({"tile": 128.0}, "integer number of pixels"),
        ({"margin": 40}, "between 0 and a quarter of the tile"),
        ({"margin": -1}, "between 0 and a quarter"),
        ({"margin": True}, "margin must be an integer"),
    ],
)
def test_bad_window_options_are_refused(mini_model, options, match):
    with pytest.raises(ns.TilesError, match=match):
        WindowTracker(mini_model, big(), **options)


@pytest.mark.refused
def test_bad_tiles_value_and_lineage_in_windows_are_refused(mini_model):
    with pytest.raises(ns.TilesError, match="True, False or 'auto'"):
        make_tracker(mini_model, big(), tiles="yes")
    with WindowTracker(mini_model, big()) as tracker:
        tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
        before = (tracker.obj_ids, tracker.windows)
        with pytest.raises(ns.TilesError, match="divisions: new objects, divisions and lineage"):
            tracker.propagate("forward", divisions=True)
        with pytest.raises(ns.PromptError, match="outside the image"):
            tracker.add_prompt(0, 2, points=[(400, 20)], labels=[1])
        with pytest.raises(ns.PromptError, match="the mask prompt is empty"):
            tracker.add_prompt(0, 2, mask=np.zeros((320, 336), bool))
        assert (tracker.obj_ids, tracker.windows) == before
        assert tracker.num_windows == 1


@pytest.mark.refused
@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--divisions", "--direction", "forward"], "--divisions track whole frames"),
    ],
)
def test_tiles_on_with_options_that_need_whole_frames_exits_2(tmp_path, capsys, extra, match):
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, big(2).astype(np.uint16), photometric="minisblack")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col,label\n0,1,15,20,1\n")
    argv = ["segment", tif, "-p", tmp_path / "p.csv", "-o", tmp_path / "o.tif", *FAST, *NO_MODEL]
    refuses([*argv, "--tiles", "on", *extra], capsys, tmp_path, match)


@pytest.mark.handled
def test_a_stack_that_fits_one_window_tracks_exactly_as_video_tracker(mini_model):
    frames = moving_disc(4)  # 40 x 56: one window, the whole frame
    ours = WindowTracker(mini_model, frames)
    theirs = ns.VideoTracker(mini_model, frames)
    for t in (ours, theirs):
        t.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    assert ours.windows == {1: (0, 0, 40, 56)}
    for a, b in zip(ours.propagate("both"), theirs.propagate("both"), strict=True):
        assert a.frame == b.frame
        np.testing.assert_array_equal(a.logits, b.logits)
    ours.close()
    theirs.close()


@pytest.mark.handled
def test_multichannel_big_frames_use_the_chosen_channel_in_every_window(mini_model):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 1000, (2, 320, 336, 5)).astype(np.uint16)
    frames[:, 100:120, 100:120, 2] = 5000
    tracker = WindowTracker(mini_model, frames, channel=2)
    r = tracker.add_prompt(0, 1, points=[(110, 110)], labels=[1])
    r0, c0, r1, c1 = tracker.windows[1]
    crop = np.ascontiguousarray(frames[:, r0:r1, c0:c1])
    alone = ns.VideoTracker(mini_model, crop, channel=2, window=tracker.source.window)
    expected = alone.add_prompt(0, 1, points=[(110 - r0, 110 - c0)], labels=[1]).logits
    np.testing.assert_array_equal(r.logits[:, r0:r1, c0:c1], expected)
    tracker.close()
    alone.close()
