"""ImagePredictor against odd images and prompts: every dtype and memory layout works, bad
layouts and values are refused with the fix, prompts at the border work and beyond it fail.
Properties (hypothesis) where one fits."""

from __future__ import annotations

import warnings

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import napari_sam2 as ns

refused = pytest.mark.refused
handled = pytest.mark.handled


@pytest.fixture(scope="module")
def image():
    rows, cols = np.mgrid[:48, :64]
    return (((rows - 20) ** 2 + (cols - 30) ** 2 < 100) * 180 + 30).astype(np.uint8)


@pytest.fixture(scope="module")
def predictor(mini_model, image):
    p = ns.ImagePredictor(mini_model)
    p.set_image(image)
    return p


def logits_of(model, image, **kwargs):
    p = ns.ImagePredictor(model)
    p.set_image(image, **kwargs)
    return p.predict(points=[(image.shape[0] // 2, image.shape[1] // 2)], labels=[1]).logits


# ------------------------------------------------------------------------------ image data
@handled
@pytest.mark.parametrize(
    "dtype",
    ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16",
     "float32", "float64", "bool"],
)  # fmt: skip
def test_every_numeric_dtype_gives_finite_logits(mini_model, image, dtype):
    data = (image > 100) if dtype == "bool" else image.astype(dtype)
    assert np.isfinite(logits_of(mini_model, data)).all()


@handled
@pytest.mark.parametrize(
    "layout",
    [
        lambda a: np.asfortranarray(a),
        lambda a: a[::-1, ::-1].copy()[::-1, ::-1],  # negative strides
        lambda a: np.repeat(a, 2, axis=1)[:, ::2],  # non-contiguous
    ],
    ids=["fortran-order", "negative-strides", "strided-view"],
)
def test_memory_layout_does_not_change_the_result(mini_model, image, layout):
    data = layout(image.astype(np.uint16) * 200)
    assert not data.flags.c_contiguous
    expected = logits_of(mini_model, np.ascontiguousarray(data))
    np.testing.assert_array_equal(logits_of(mini_model, data), expected)


@handled
def test_float_extremes_are_windowed_without_overflow(mini_model, image):
    data = np.where(image > 100, 1.7e308, -1.7e308)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered" on the way
        logits = logits_of(mini_model, data)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits, logits_of(mini_model, (image > 100).astype(np.float32)))


@handled
def test_int64_small_range_on_a_huge_offset_keeps_its_contrast(mini_model, image):
    shifted = image.astype(np.int64) + 2**62  # float64 would round every value to the same one
    window = ns.IntensityWindow.from_percentiles(shifted)
    assert window.high - window.low >= 100  # the contrast survived
    np.testing.assert_allclose(
        logits_of(mini_model, shifted), logits_of(mini_model, image.astype(np.int64)), atol=1e-4
    )


@handled
@pytest.mark.parametrize("shape", [(8, 8), (8, 3000), (4096, 4096)], ids=["8x8", "strip", "16-MP"])
def test_tiny_thin_and_huge_frames(mini_model, shape):
    data = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    p = ns.ImagePredictor(mini_model)
    p.set_image(data)
    r = p.predict(points=[(shape[0] - 1, shape[1] - 1)], labels=[1])
    assert r.masks.shape == (3, *shape) and np.isfinite(r.logits).all()


@refused
@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros((3, 64, 64), np.uint8), r"channels-first.*np\.moveaxis\(image, 0, -1\)"),
        (np.zeros((2, 64, 64), np.uint16), r"at least 8x8 pixels, got 2x64.*channels-first"),
        (np.zeros((7, 64), np.uint8), r"at least 8x8 pixels, got 7x64"),
        (np.zeros((2, 48, 64, 3), np.uint8), r"one 2-D frame.*index a stack"),
        (np.zeros((48,), np.uint8), r"one 2-D frame"),
        (np.zeros((0, 64), np.uint8), r"empty"),
        (np.zeros((48, 64), np.complex64), r"complex data.*np\.abs"),
        (np.zeros((48, 64), object), r"unsupported dtype object"),
        (np.full((48, 64), np.nan, np.float32), r"NaN or infinite.*np\.nan_to_num"),
        (np.zeros((48, 64, 6), np.uint8), None),  # channel 9 of 6: see the channel below
    ],
    ids=["CHW", "2HW", "7-rows", "4-D", "1-D", "empty", "complex", "object", "nan", "channel"],
)
def test_bad_images_are_refused_and_the_old_image_is_kept(mini_model, image, data, match):
    p = ns.ImagePredictor(mini_model, channel=9)
    p.set_image(image)
    before = p.predict(points=[(20, 30)], labels=[1]).logits
    with pytest.raises(ValueError, match=match or r"channel 9 is out of range.*channel=0\.\.5"):
        p.set_image(data)
    assert p.image_shape == image.shape
    np.testing.assert_array_equal(p.predict(points=[(20, 30)], labels=[1]).logits, before)


# ------------------------------------------------------------------------------ prompts
@handled
@pytest.mark.parametrize(
    "prompt",
    [
        dict(points=[(-0.5, -0.5)], labels=[1]),  # the outer edge of the first pixel
        dict(points=[(47.5, 63.5)], labels=[1]),  # and of the last
        dict(points=np.array([[20, 30]], np.int64), labels=np.array([1], np.uint8)),
        dict(points=(20, 30), labels=1),  # one point, not a list of them
        dict(box=(10, 10, 10, 10)),  # zero-area box
        dict(box=(-0.5, -0.5, 47.5, 63.5)),  # the whole image
        dict(points=[(20, 30), (20, 30)], labels=[1, 0]),  # the same pixel, both ways
    ],
    ids=[
        "corner",
        "far-corner",
        "numpy-ints",
        "bare-point",
        "zero-box",
        "full-box",
        "contradiction",
    ],
)
def test_prompts_at_the_limits_give_a_result(predictor, prompt):
    r = predictor.predict(**prompt)
    assert r.masks.shape[1:] == (48, 64) and np.isfinite(r.logits).all()


@refused
@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        (dict(points=[(-1, 5)], labels=[1]), r"point \(row=-1, col=5\) lies outside .*H=48, W=64"),
        (dict(points=[(48, 5)], labels=[1]), r"lies outside"),
        (dict(points=[("a", "b")], labels=[1]), r"points must be numbers \(row, col\)"),
        (dict(points=[(1, None)], labels=[1]), r"NaN or inf"),
        (dict(points=[(np.nan, 5)], labels=[1]), r"NaN or inf"),
        (dict(points=[(5, 5, 5)], labels=[1]), r"shape \(N, 2\)"),
        (dict(points=[(5, 5)]), r"labels are required"),
        (dict(points=[(5, 5)], labels=[2]), r"labels must be 1 \(positive\) or 0"),
        (dict(points=[(5, 5)], labels=[1, 1]), r"1 points but 2 labels"),
        (dict(box=(30, 10, 10, 40)), r"min > max"),
        (dict(box=(0, 0, 10)), r"a box is \(min_row, min_col, max_row, max_col\)"),
        (dict(box=("0", "x", 1, 1)), r"a box must be numbers"),
        (dict(box=(0, 0, 100, 10)), r"box corner .* lies outside"),
        (dict(mask_input=np.full((32, 32), np.nan, np.float32)), r"mask_input contains NaN"),
        (dict(mask_input=np.full((1, 32, 32), np.inf, np.float32)), r"mask_input contains NaN"),
        (dict(mask_input=np.zeros((256, 256), np.float32)), r"shape \(32, 32\).*got \(256, 256\)"),
        (dict(mask_input="logits"), r"mask_input must be low-res logits"),
        (dict(), r"give at least one of points"),
    ],
)
def test_bad_prompts_are_refused(predictor, prompt, match):
    with pytest.raises(ns.PromptError, match=match):
        predictor.predict(**prompt)


# ------------------------------------------------------------------------------ properties
@st.composite
def any_image(draw):
    dtype = np.dtype(
        draw(st.sampled_from(["uint8", "uint16", "int16", "int64", "uint64", "float32", "float64"]))
    )
    shape = (draw(st.integers(8, 40)), draw(st.integers(8, 40)))
    if draw(st.booleans()):
        shape = (*shape, draw(st.sampled_from([1, 2, 3, 4, 5])))
    if dtype.kind == "f":
        elements = st.floats(allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)
    else:
        elements = st.integers(int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@handled
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=any_image())
def test_any_finite_image_of_8x8_or_more_gives_finite_logits(mini_model, data):
    p = ns.ImagePredictor(mini_model)
    p.set_image(data)
    r = p.predict(points=[(data.shape[0] / 2, data.shape[1] / 2)], labels=[1])
    assert np.isfinite(r.logits).all() and np.isfinite(r.scores).all()


def inside(h, w):
    return st.tuples(st.floats(-0.5, h - 0.5), st.floats(-0.5, w - 0.5))


@handled
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    points=st.lists(inside(48, 64), min_size=1, max_size=5),
    labels=st.lists(st.sampled_from([0, 1]), min_size=5, max_size=5),
    box=st.none() | st.tuples(inside(48, 64), inside(48, 64)),
)
def test_any_prompt_inside_the_image_gives_a_result(predictor, points, labels, box):
    if box is not None:
        (r0, c0), (r1, c1) = box
        box = (min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1))
    r = predictor.predict(points=points, labels=labels[: len(points)], box=box)
    assert r.masks.shape == (3 if len(points) == 1 and box is None else r.masks.shape[0], 48, 64)
    assert np.isfinite(r.logits).all()


@refused
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=st.floats(-1e6, 1e6) | st.sampled_from([-0.51, 47.51]),
    col=st.floats(-1e6, 1e6) | st.sampled_from([-0.51, 63.51]),
)
def test_any_point_outside_the_image_raises_prompt_error(predictor, row, col):
    if -0.5 <= row <= 47.5 and -0.5 <= col <= 63.5:
        return  # inside: the property above covers it
    with pytest.raises(ns.PromptError, match="lies outside the image"):
        predictor.predict(points=[(row, col)], labels=[1])
