"""ImagePredictor behaviour beyond parity: embedding reuse, data types, coordinates, errors.
The real network at a 256-pixel input with random weights (the ``small_model`` fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_sam2 as ns
from napari_sam2.engine.prompts import Prompt, to_model_points


@pytest.fixture
def predictor(small_model, gray16):
    p = ns.ImagePredictor(small_model)
    p.set_image(gray16)
    return p


def test_image_is_encoded_once_for_many_prompts(small_model, gray16):
    calls = []
    hook = small_model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        p = ns.ImagePredictor(small_model)
        p.set_image(gray16)
        p.predict(points=[(40, 60)], labels=[1])
        p.predict(points=[(40, 60), (10, 10)], labels=[1, 0], multimask=False)
        p.predict(box=(20, 40, 60, 80))
    finally:
        hook.remove()
    assert len(calls) == 1


def test_outputs_have_the_promised_shapes(predictor):
    r = predictor.predict(points=[(40, 60)], labels=[1])
    low = predictor.model.config.low_res_mask_size
    assert r.masks.shape == (3, 90, 140) and r.masks.dtype == bool
    assert r.scores.shape == (3,) and r.logits.shape == (3, low, low)
    assert r.logits.dtype == np.float32 and np.abs(r.logits).max() <= 32.0
    one = predictor.predict(points=[(40, 60)], labels=[1], multimask=False)
    assert one.masks.shape == (1, 90, 140)


def test_mask_input_round_trip_changes_the_answer(predictor):
    first = predictor.predict(points=[(40, 60)], labels=[1])
    again = predictor.predict(mask_input=first.logits[first.best], multimask=False)
    assert again.logits.shape == (1, *first.logits.shape[1:])
    with_points = predictor.predict(
        points=[(40, 60)], labels=[1], mask_input=first.logits[first.best][None], multimask=False
    )
    assert not np.allclose(again.logits, with_points.logits)


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 255, (60, 80), dtype=np.uint8),  # gray 8-bit
        np.random.default_rng(0).normal(0, 1000, (60, 80)).astype(np.float32),  # CT-like float
        np.random.default_rng(0).integers(0, 4000, (60, 80, 5), dtype=np.uint16),  # 5 channels
        np.random.default_rng(0).integers(0, 255, (60, 80, 4), dtype=np.uint8),  # RGBA
    ],
    ids=["uint8_gray", "float_ct", "uint16_5ch", "rgba"],
)
def test_any_dtype_and_channel_layout(small_model, image):
    p = ns.ImagePredictor(small_model)
    p.set_image(image)
    r = p.predict(points=[(30, 40)], labels=[1])
    assert r.masks.shape == (3, 60, 80)
    assert np.isfinite(r.logits).all()


def test_uint16_uses_percentile_window_unless_given(small_model, gray16):
    p = ns.ImagePredictor(small_model)
    p.set_image(gray16)
    auto = p.predict(points=[(40, 60)], labels=[1]).logits
    p.set_image(gray16, window=ns.IntensityWindow(0.0, 65535.0))
    fixed = p.predict(points=[(40, 60)], labels=[1]).logits
    assert not np.allclose(auto, fixed)


def test_points_are_row_col_and_scale_per_axis():
    # A non-square image: rows scale by S/H, columns by S/W, and (row, col) becomes (x, y).
    prompt = Prompt.build(
        (300, 500), points=[(150, 250), (0, 499)], labels=[1, 0], box=(30, 50, 270, 450)
    )
    coords, labels = to_model_points(prompt, (300, 500), image_size=1024)
    expected = torch.tensor(
        [
            [
                [50 / 500 * 1024, 30 / 300 * 1024],  # box top-left (x, y)
                [450 / 500 * 1024, 270 / 300 * 1024],  # box bottom-right
                [250 / 500 * 1024, 150 / 300 * 1024],
                [499 / 500 * 1024, 0.0],
            ]
        ]
    )
    assert torch.allclose(coords, expected)
    assert labels.tolist() == [[2, 3, 1, 0]]


def test_transposed_image_with_transposed_click_is_not_the_same_prompt(small_model):
    """Guards against a silent (x, y) / (row, col) swap: a click near one corner of a
    non-square image must segment around that corner, not around the mirrored one."""
    image = np.zeros((64, 128), dtype=np.uint8)
    p = ns.ImagePredictor(small_model)
    p.set_image(image)
    a = p.predict(points=[(10, 100)], labels=[1]).logits
    b = p.predict(points=[(100 * 64 / 128, 10 * 128 / 64)], labels=[1]).logits
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(points=[(200, 10)], labels=[1]), r"outside the image of shape \(H=90, W=140\)"),
        (dict(points=[(10, -3)], labels=[1]), "outside the image"),
        (dict(points=[(10, 10)], labels=[2]), "labels must be 1 .* or 0"),
        (dict(points=[(10, 10), (20, 20)], labels=[1]), "2 points but 1 labels"),
        (dict(points=[(10, 10)]), "labels are required"),
        (dict(points=[(1, 2, 3)], labels=[1]), r"shape \(N, 2\)"),
        (dict(points=[(np.nan, 2)], labels=[1]), "NaN"),
        (dict(box=(50, 10, 20, 30)), "min > max"),
        (dict(box=(10, 10, 20)), r"\(min_row, min_col, max_row, max_col\)"),
        (dict(box=(10, 10, 200, 30)), "outside the image"),
        (dict(mask_input=np.zeros((32, 32))), "mask_input must be low-res logits"),
        (dict(), "at least one of points"),
    ],
)
def test_bad_prompts_get_clear_errors(predictor, kwargs, match):
    with pytest.raises(ns.PromptError, match=match):
        predictor.predict(**kwargs)


def test_predict_before_set_image(small_model):
    with pytest.raises(RuntimeError, match=r"call set_image"):
        ns.ImagePredictor(small_model).predict(points=[(1, 1)], labels=[1])


def test_edge_clicks_within_half_a_pixel_are_accepted(predictor):
    r = predictor.predict(points=[(-0.5, 139.4)], labels=[1])
    assert r.masks.shape[1:] == (90, 140)


def test_bad_images_are_refused_before_encoding(small_model):
    p = ns.ImagePredictor(small_model)
    with pytest.raises(ValueError, match="NaN"):
        p.set_image(np.full((10, 10), np.nan, dtype=np.float32))
    with pytest.raises(ValueError):
        p.set_image(np.zeros((1, 1), dtype=np.uint8))
    assert not p.is_image_set
