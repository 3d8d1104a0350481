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
        ({"embeddings": "store.zarr"}, "holds whole frames"),
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
        (["--embeddings", "store"], "holds whole frames"),
        (["--divisions", "--direction", "forward"], "--divisions track whole frames"),
    ],
)
def test_tiles_on_with_options_that_need_whole_frames_exits_2(tmp_path, capsys, extra, match):
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, big(2).astype(np.uint16), photometric="minisblack")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col,label\n0,1,15,20,1\n")
    argv = ["segment", tif, "-p", tmp_path / "p.csv", "-o", tmp_path / "o.tif", *FAST, *NO_MODEL]
    refuses([*argv, "--tiles", "on", *extra], capsys, tmp_path, match)
