"""The window geometry shared by tiled prompting and tiled segment-everything."""

from __future__ import annotations

import numpy as np
import pytest

import napari_sam2 as ns
from napari_sam2.engine.tiles import TileGrid, TilesError, resolve_tiles, tile_geometry


@pytest.mark.parametrize("shape", [(600, 700), (1000, 257), (4096, 4096), (300, 2000)])
def test_windows_cover_the_image_and_overlap_by_the_halo(shape):
    grid = TileGrid(shape, 256, 64)
    cover = np.zeros(shape, dtype=np.int32)
    for r0, c0, r1, c1 in grid.windows:
        assert r1 - r0 == min(256, shape[0]) and c1 - c0 == min(256, shape[1])
        cover[r0:r1, c0:c1] += 1
    assert cover.min() >= 1
    # every object up to the halo's size lies whole in some window
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = rng.integers(0, shape[0] - 64)
        c = rng.integers(0, shape[1] - 64)
        assert any(
            w[0] <= r and r + 64 <= w[2] and w[1] <= c and c + 64 <= w[3] for w in grid.windows
        )


def test_best_window_keeps_the_prompt_away_from_cut_sides():
    grid = TileGrid((600, 700), 256, 64)
    window = grid.best_window(np.array([250.0]), np.array([100.0]))
    assert grid.margin(window, np.array([250.0]), np.array([100.0])) >= 32
    # a prompt wider than the halo but narrower than a window gets a window around it
    rows, cols = np.array([100.0, 300.0]), np.array([300.0, 300.0])
    window = grid.best_window(rows, cols)
    assert window is not None and grid.margin(window, rows, cols) >= 20
    # more than a window: no window
    assert grid.best_window(np.array([0.0, 400.0]), np.array([0.0, 0.0])) is None


def test_auto_tiles_beyond_one_and_a_half_inputs():
    assert not resolve_tiles("auto", (384, 384), 256, 256)
    assert resolve_tiles("auto", (385, 100), 256, 256)
    assert resolve_tiles(True, (300, 100), 256, 256)
    assert not resolve_tiles(True, (256, 256), 256, 256)  # one window: nothing to cut
    assert tile_geometry(1024, None, None) == (1024, 256)


@pytest.mark.refused
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tiles="yes"), "tiles must be True, False or 'auto'"),
        (dict(tiles=True, tile=256.0), "tile must be an integer"),
        (dict(tiles=True, tile=8), "at least 16"),
        (dict(tiles=True, halo=-1), "halo must be >= 0"),
        (dict(tiles=True, tile=128, halo=128), "must be smaller than the tile"),
    ],
)
def test_bad_tile_options_are_refused(mini_model, kwargs, match):
    with pytest.raises(TilesError, match=match):
        ns.ImagePredictor(mini_model, **kwargs)


@pytest.mark.refused
def test_a_tile_outside_the_image_is_refused(mini_model):
    p = ns.ImagePredictor(mini_model, tiles=True)
    p.set_image(np.zeros((300, 400), np.uint8))
    with pytest.raises(TilesError, match="inside the image"):
        p.predict(points=[(10, 10)], labels=[1], tile=(0, 0, 500, 128))
    untiled = ns.ImagePredictor(mini_model)
    untiled.set_image(np.zeros((100, 100), np.uint8))
    with pytest.raises(ns.PromptError, match="tile= is for tiled images"):
        untiled.predict(points=[(10, 10)], labels=[1], tile=(0, 0, 50, 50))


@pytest.mark.refused
def test_an_empty_prompt_on_a_tiled_image_embeds_nothing(mini_model):
    p = ns.ImagePredictor(mini_model, tiles=True)
    p.set_image(np.zeros((300, 400), np.uint8))
    with pytest.raises(ns.PromptError, match="give at least one of points"):
        p.predict()
    assert p.windows_embedded == []


@pytest.mark.refused
def test_bad_tile_options_of_segment_everything_are_refused(mini_model):
    with pytest.raises(TilesError, match="tiles must be True, False or 'auto'"):
        ns.AutomaticMaskGenerator(mini_model, tiles="no")
    with pytest.raises(TilesError, match="halo must be >= 0"):
        ns.AutomaticMaskGenerator(mini_model, tiles=True, halo=-3)
