"""`napari-sam2 segment --tiles auto|on|off`: big frames are tracked in windows by default, and
the labels are what the Python API's WindowTracker writes (refusals:
tests/adversarial/test_window_tracking_inputs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_sam2 as ns
from napari_sam2 import weights
from napari_sam2.cli import main

FAST = ["--image-size", "128", "--device", "cpu", "--quiet"]
T, H, W = 4, 400, 360  # more than 1.5 x the 128-pixel input on a side


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(weights.SKIP_HASH_ENV, raising=False)


@pytest.fixture
def big(tmp_path):
    rows, cols = np.mgrid[:H, :W]
    frames = [((rows - 90) ** 2 + (cols - 80 - 6 * t) ** 2 < 144) * 3000 + 500 for t in range(T)]
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, np.stack(frames).astype(np.uint16), photometric="minisblack")
    csv = tmp_path / "prompts.csv"
    csv.write_text("frame,obj_id,row,col,label\n0,1,90,80,1\n0,2,300,250,1\n")
    return tif, csv


def segment(tif, csv, out, checkpoint, *extra):
    argv = ["segment", tif, "-p", csv, "-o", out, "--checkpoint", checkpoint, *FAST, *extra]
    return main([str(a) for a in argv])


@pytest.mark.parametrize("tiles", ["auto", "off"])
def test_segment_tracks_big_frames_in_windows_unless_told_not_to(
    big, random_tiny_checkpoint, tmp_path, tiles, capsys
):
    tif, csv = big
    out = tmp_path / f"{tiles}.tif"
    assert segment(tif, csv, out, random_tiny_checkpoint, "--tiles", tiles) == 0
    got = tifffile.imread(out)
    model = ns.load_model(checkpoint=random_tiny_checkpoint, device="cpu", image_size=128)
    frames = tifffile.imread(tif)
    kind = ns.WindowTracker if tiles == "auto" else ns.VideoTracker
    tracker = kind(model, frames)  # with the CLI's defaults (direction both)
    tracker.add_prompt(0, 1, points=[(90, 80)], labels=[1])
    tracker.add_prompt(0, 2, points=[(300, 250)], labels=[1])
    if tiles == "auto":
        assert tracker.num_windows == 2
    expected = ns.track_to_labels(tracker, direction="both")
    tracker.close()
    np.testing.assert_array_equal(got, expected)


def test_segment_with_an_embeddings_store_tracks_in_windows_and_keeps_them(
    big, random_tiny_checkpoint, tmp_path, capsys
):
    from napari_sam2.engine.embeddings import EmbeddingStore

    tif, csv = big
    assert segment(tif, csv, tmp_path / "ram.tif", random_tiny_checkpoint) == 0
    in_ram = tifffile.imread(tmp_path / "ram.tif")
    store = tmp_path / "big.embeddings.zarr"
    exact = ["--embeddings-dtype", "float32"]
    argv = ["embed", tif, "-o", store, "--checkpoint", random_tiny_checkpoint, *FAST, *exact]
    assert main([str(a) for a in argv]) == 0  # whole frames first: windows join them
    for run, tiles in (("first", "auto"), ("second", "on")):
        out = tmp_path / f"{run}.tif"
        extra = ["--tiles", tiles, "--embeddings", store]
        assert segment(tif, csv, out, random_tiny_checkpoint, *extra, *exact) == 0
        np.testing.assert_array_equal(tifffile.imread(out), in_ram)
    opened = EmbeddingStore.open(store, EmbeddingStore.read_signature(store), T, "float32")
    assert opened.frames_done == T
    windows = [opened.window(w) for w in opened.windows_stored]
    assert len(windows) >= 2 and all(w.frames_done >= 1 for w in windows)
