"""A tiled ImagePredictor answers each prompt as Meta's SAM2ImagePredictor (sam2==1.1.0) does on
the window that answered it: ``image[tile]`` with the prompt shifted into the window. Random
weights, identical state dicts, a 256-pixel input on a 600 x 700 uint8 RGB image, so windows are
256 pixels and overlap by a 64-pixel halo (3 x 4 windows)."""

from __future__ import annotations

import numpy as np
import pytest
from official import build_official
from sam2.sam2_image_predictor import SAM2ImagePredictor

import napari_sam2 as ns
from napari_sam2.model import CONFIGS, SAM2Model

NAME = "sam2.1_hiera_tiny"
IMAGE_SIZE = 256
H, W = 600, 700
TOL = 1e-4


@pytest.fixture(scope="module")
def image():
    """Noise with bright and dark rectangles, some across window borders."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 100, (H, W, 3), dtype=np.uint8)
    img[150:260, 170:330] += 140  # across the borders at row 192/256 and col 192/256
    img[380:470, 400:520, 0] = 250
    img[40:90, 560:640] = 10
    return img


@pytest.fixture(scope="module")
def models():
    official = build_official(NAME, seed=0, overrides=[f"++model.image_size={IMAGE_SIZE}"])
    ours = SAM2Model(CONFIGS[NAME].with_image_size(IMAGE_SIZE))
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours.eval()


class Official:
    """Meta's predictor, set once per window it is asked about."""

    def __init__(self, model, image):
        self.predictor = SAM2ImagePredictor(model)
        e = IMAGE_SIZE // 16
        self.predictor._bb_feat_sizes = [(4 * e, 4 * e), (2 * e, 2 * e), (e, e)]
        self.image, self.current = image, None

    def predict(self, tile, points=None, labels=None, box=None, mask_input=None, multimask=True):
        r0, c0, r1, c1 = tile
        if self.current != tile:
            self.predictor.set_image(np.ascontiguousarray(self.image[r0:r1, c0:c1]))
            self.current = tile
        kw = {"multimask_output": multimask}
        if points is not None:
            shifted = np.asarray(points, dtype=np.float64) - [r0, c0]
            kw["point_coords"] = shifted[:, ::-1].copy()
            kw["point_labels"] = np.asarray(labels)
        if box is not None:
            b0, b1, b2, b3 = np.asarray(box, dtype=np.float64) - [r0, c0, r0, c0]
            kw["box"] = np.array([b1, b0, b3, b2])
        if mask_input is not None:
            kw["mask_input"] = mask_input[None]
        return self.predictor.predict(**kw)


@pytest.fixture(scope="module")
def both(models, image):
    official, ours = models
    predictor = ns.ImagePredictor(ours, tiles=True)
    predictor.set_image(image)
    return Official(official, image), predictor


PROMPTS = {
    "click_inside_a_window": dict(points=[(420, 460)], labels=[1]),
    "click_near_a_window_border": dict(points=[(250, 100)], labels=[1]),
    "click_in_the_halo_of_two_windows": dict(points=[(220, 220)], labels=[1]),
    "points_with_negatives": dict(points=[(200, 250), (240, 300), (170, 180)], labels=[1, 1, 0]),
    "box": dict(box=(150, 170, 260, 330)),
    "box_and_points": dict(
        box=(380, 400, 470, 520), points=[(420, 460), (390, 410)], labels=[1, 0]
    ),
}


def assert_same(r, expected, tile):
    masks, scores, logits = expected
    r0, c0, r1, c1 = tile
    full = np.asarray(r.masks)
    assert full.shape == (len(scores), H, W) and full.dtype == bool
    assert r.logits.shape == (len(scores), IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    assert np.abs(r.logits - logits).max() <= TOL
    assert np.abs(r.scores - scores).max() <= TOL
    inside = full[:, r0:r1, c0:c1]
    assert (inside == masks.astype(bool)).mean() > 0.9999
    outside = full.copy()
    outside[:, r0:r1, c0:c1] = False
    assert not outside.any(), "a tiled mask is empty outside its window"
    assert logits.std() > 0.05, "compared logits are trivially constant"


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("name", list(PROMPTS))
def test_tiled_predict_matches_official_on_the_window(both, name, multimask):
    official, ours = both
    prompt = PROMPTS[name]
    r = ours.predict(multimask=multimask, **prompt)
    r0, c0, r1, c1 = r.tile
    assert (r1 - r0, c1 - c0) == (256, 256) and not r.downscaled
    assert_same(r, official.predict(r.tile, multimask=multimask, **prompt), r.tile)


def test_the_window_chosen_holds_the_prompt_farthest_from_its_cut_sides(both):
    _, ours = both
    grid = ours.grid
    assert len(grid) == 12
    point = np.array([250.0]), np.array([100.0])
    r = ours.predict(points=[(250, 100)], labels=[1])
    margins = {w: grid.margin(w, *point) for w in grid.windows}
    assert grid.margin(r.tile, *point) >= max(margins.values())
    assert r.tile[0] <= 250 - 50 and r.tile[2] >= 250 + 50  # not the window it nearly leaves


def test_mask_input_refines_on_the_same_window(both):
    official, ours = both
    first = ours.predict(points=[(220, 220)], labels=[1])
    previous = first.logits[first.best]
    with pytest.raises(ns.PromptError, match="tile=previous.tile"):
        ours.predict(points=[(230, 230)], labels=[1], mask_input=previous)
    prompt = dict(points=[(230, 230)], labels=[1])
    r = ours.predict(mask_input=previous, multimask=False, tile=first.tile, **prompt)
    assert r.tile == first.tile
    expected = official.predict(first.tile, mask_input=previous, multimask=False, **prompt)
    assert_same(r, expected, first.tile)


def test_a_box_larger_than_a_window_is_answered_on_the_downscaled_image(both):
    official, ours = both
    box = (50, 50, 550, 650)
    r = ours.predict(box=box)
    assert r.tile == (0, 0, H, W) and r.downscaled
    assert isinstance(r.masks, np.ndarray) and r.masks.shape == (3, H, W)
    assert_same(r, official.predict((0, 0, H, W), box=box), (0, 0, H, W))


def test_windows_are_embedded_only_when_a_prompt_needs_them(models, image):
    _, model = models
    predictor = ns.ImagePredictor(model, tiles="auto", cache_windows=2)
    predictor.set_image(image)
    assert predictor.windows_embedded == []
    a = predictor.predict(points=[(420, 460)], labels=[1])
    b = predictor.predict(points=[(430, 470)], labels=[1])
    assert a.tile == b.tile and predictor.windows_embedded == [a.tile]
    predictor.predict(points=[(100, 100)], labels=[1])
    predictor.predict(points=[(100, 600)], labels=[1])
    assert len(predictor.windows_embedded) == 2 and a.tile not in predictor.windows_embedded
