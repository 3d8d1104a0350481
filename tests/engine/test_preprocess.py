"""Preprocessing: any 2-D frame → SAM 2's input, with uint8 RGB identical to the official path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_sam2.engine.preprocess import (
    DEFAULT_PERCENTILES,
    IntensityWindow,
    prepare_image,
    prepare_video_frame,
    to_model_input,
    to_rgb_unit,
)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- parity with the official sam2 transforms -----------------------------------------------------


def test_uint8_rgb_matches_official_sam2_transforms(rng):
    # The parity contract: no skip if sam2 is missing, this must fail instead.
    from sam2.utils.transforms import SAM2Transforms

    image = rng.integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    official = SAM2Transforms(resolution=1024, mask_threshold=0.0)(image)[None]
    ours = prepare_image(image)
    assert ours.shape == official.shape == (1, 3, 1024, 1024)
    assert ours.dtype == torch.float32
    assert (ours - official).abs().max().item() <= 1e-6
    assert torch.equal(to_model_input(to_rgb_unit(image)), ours)


def test_uint8_video_frame_is_the_official_video_loader_bit_for_bit(tmp_path, rng):
    # Every uint8 value, on each channel: the official loader's arithmetic (PIL resize, / 255
    # in float64, to float32, minus the mean, over the std) exactly, not within a tolerance.
    from PIL import Image
    from sam2.utils.misc import _load_img_as_tensor

    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    image[:16, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    Image.fromarray(image).save(tmp_path / "frame.png")
    img, _, _ = _load_img_as_tensor(tmp_path / "frame.png", 128)
    official = torch.zeros(1, 3, 128, 128, dtype=torch.float32)
    official[0] = img
    official -= torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    official /= torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    assert torch.equal(prepare_video_frame(image, image_size=128), official)


def test_uint8_video_frame_runs_no_torch_kernel(rng):
    # Frames are prepared in a background thread while the model computes: torch work there
    # would start a second thread team competing with the model's for the cores.
    from torch.profiler import profile

    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    prepare_video_frame(image, image_size=128)  # what is set up once, on the first call
    with profile() as prof:
        prepare_video_frame(image, image_size=128)
    kernels = {e.key for e in prof.key_averages()} - {"aten::from_numpy", "aten::lift_fresh"}
    assert not kernels, kernels


def test_resize_is_torchvision_resize(rng):
    from torchvision.transforms import Resize

    chw = torch.from_numpy(rng.random((3, 37, 61), dtype=np.float32))
    for size in (16, 64, 1024):  # downsampling (antialiased) and upsampling
        expected = Resize((size, size))(chw)
        ours = F.interpolate(
            chw[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        assert torch.equal(ours, expected)


def test_uint8_division_matches_to_tensor_for_every_value():
    from torchvision.transforms import ToTensor

    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = ToTensor()(values)[0].numpy()
    assert np.array_equal(to_rgb_unit(values)[:, :, 0], expected)


def test_model_input_normalises_with_imagenet_statistics():
    x = to_model_input(np.ones((4, 4, 3), dtype=np.float32), image_size=8)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, 0, 0], (1 - mean) / std)


def test_model_input_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*to_rgb_unit"):
        to_model_input(np.zeros((4, 4), dtype=np.float32))


# --- layouts -----------------------------------------------------------------------------------


def test_gray_uint8_becomes_three_equal_channels(rng):
    gray = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    rgb = to_rgb_unit(gray)
    assert rgb.shape == (20, 30, 3)
    assert rgb.dtype == np.float32
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 1])
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
    assert np.array_equal(rgb[:, :, 0], gray.astype(np.float32) / np.float32(255))
    assert np.array_equal(to_rgb_unit(gray[:, :, None]), rgb)


def test_rgba_drops_alpha(rng):
    rgba = rng.integers(0, 256, size=(10, 12, 4), dtype=np.uint8)
    assert np.array_equal(to_rgb_unit(rgba), to_rgb_unit(rgba[:, :, :3]))


def test_channel_selection_for_multichannel_image(rng):
    stack = rng.integers(0, 256, size=(10, 12, 5), dtype=np.uint8)
    for channel in range(5):
        rgb = to_rgb_unit(stack, channel=channel)
        assert np.array_equal(rgb, to_rgb_unit(stack[:, :, channel]))
    assert np.array_equal(to_rgb_unit(stack), to_rgb_unit(stack[:, :, 0]))  # default channel 0
    two = stack[:, :, :2]
    assert np.array_equal(to_rgb_unit(two, channel=1), to_rgb_unit(two[:, :, 1]))


@pytest.mark.parametrize("channel", [5, -1])
def test_channel_out_of_range_is_an_error(rng, channel):
    stack = rng.integers(0, 256, size=(10, 12, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match=rf"channel {channel} is out of range.*5 channels"):
        to_rgb_unit(stack, channel=channel)


def test_bool_maps_to_zero_and_one():
    mask = np.zeros((8, 9), dtype=bool)
    mask[2:4, 3:5] = True
    rgb = to_rgb_unit(mask)
    assert set(np.unique(rgb)) == {0.0, 1.0}
    assert np.array_equal(rgb[:, :, 1], mask.astype(np.float32))


# --- intensity windows -------------------------------------------------------------------------


def test_uint16_percentiles_map_to_zero_and_one_and_clip():
    # 0..9999, each value once: percentile p is exactly p * 9999 / 100 (linear interpolation).
    values = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    low, high = 0.005 * 9999, 0.995 * 9999
    window = IntensityWindow.from_percentiles(values)
    assert window.low == pytest.approx(low)
    assert window.high == pytest.approx(high)

    rgb = to_rgb_unit(values)
    expected = np.clip((values.astype(np.float64) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(rgb[:, :, 0], expected, atol=1e-6)
    assert rgb.min() == 0.0 and rgb.max() == 1.0
    assert np.count_nonzero(rgb[:, :, 0] == 0.0) == 50  # 0..49 at or below the low end
    assert np.count_nonzero(rgb[:, :, 0] == 1.0) == 50  # 9950..9999 at or above the high end


def test_float_ct_like_data_with_negative_values(rng):
    ct = rng.uniform(-1000.0, 3000.0, size=(64, 80)).astype(np.float32)
    ct[:8] = -1000.0  # air
    rgb = to_rgb_unit(ct)
    assert rgb.dtype == np.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    assert np.all(rgb[:8] == 0.0)
    window = IntensityWindow.from_percentiles(ct)
    assert -1000.0 <= window.low < 0.0 < 2900.0 < window.high <= 3000.0
    # Order is kept: brighter in, brighter (or equally clipped) out.
    flat_in, flat_out = ct.ravel(), rgb[:, :, 0].ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= 0)


def test_custom_window_is_used_as_given():
    frame = np.kron([[-100.0, 0.0], [50.0, 200.0]], np.ones((4, 4)))  # 8x8, four blocks
    rgb = to_rgb_unit(frame, window=IntensityWindow(0.0, 100.0))
    np.testing.assert_array_equal(rgb[::4, ::4, 0], [[0.0, 0.0], [0.5, 1.0]])


def test_window_shared_by_a_stack_keeps_intensities_comparable():
    dim = np.full((8, 8), 1000, dtype=np.uint16)
    dim[0, 0] = 2000
    bright = dim * 2
    window = IntensityWindow.from_percentiles(np.stack([dim, bright]), percentiles=(0, 100))
    assert to_rgb_unit(dim, window=window)[1, 1, 0] < to_rgb_unit(bright, window=window)[1, 1, 0]


def test_custom_percentiles():
    values = np.arange(101, dtype=np.float64).reshape(1, 101).repeat(2, axis=0)
    window = IntensityWindow.from_percentiles(values, percentiles=(10, 90))
    assert (window.low, window.high) == pytest.approx((10.0, 90.0))
    assert DEFAULT_PERCENTILES == (0.5, 99.5)


def test_constant_image_maps_to_zeros():
    constant = np.full((16, 16), 1234, dtype=np.uint16)
    window = IntensityWindow.from_percentiles(constant)
    assert window == IntensityWindow(1234.0, 1235.0)
    assert np.array_equal(to_rgb_unit(constant), np.zeros((16, 16, 3), dtype=np.float32))


def test_window_subsampling_is_deterministic_and_close(rng):
    data = rng.normal(500.0, 50.0, size=(40, 100, 100)).astype(np.float32)
    sampled = IntensityWindow.from_percentiles(data, max_samples=10_000)
    assert sampled == IntensityWindow.from_percentiles(data, max_samples=10_000)
    full = IntensityWindow.from_percentiles(data, max_samples=data.size)
    assert sampled.low == pytest.approx(full.low, abs=10.0)
    assert sampled.high == pytest.approx(full.high, abs=10.0)


def test_window_ignores_nan_but_fails_without_finite_values():
    data = np.array([np.nan, 1.0, 2.0, np.inf, 3.0])
    window = IntensityWindow.from_percentiles(data, percentiles=(0, 100))
    assert (window.low, window.high) == (1.0, 3.0)
    with pytest.raises(ValueError, match="no finite value.*nan_to_num"):
        IntensityWindow.from_percentiles(np.full((4, 4), np.nan))


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [(1.0, 1.0, "high > low"), (2.0, 1.0, "high > low"), (0.0, np.inf, "finite")],
)
def test_invalid_window_is_an_error(low, high, message):
    with pytest.raises(ValueError, match=message):
        IntensityWindow(low, high)


@pytest.mark.parametrize("percentiles", [(99.5, 0.5), (-1, 50), (50, 101), (1, 2, 3)])
def test_invalid_percentiles_are_an_error(percentiles):
    with pytest.raises(ValueError, match="two increasing numbers in \\[0, 100\\]"):
        IntensityWindow.from_percentiles(np.arange(10.0), percentiles=percentiles)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_is_an_error(bad):
    frame = np.ones((8, 8), dtype=np.float32)
    frame[3, 4] = bad
    with pytest.raises(ValueError, match=r"1 NaN or infinite value.*np\.nan_to_num"):
        to_rgb_unit(frame)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (4, 4, 0)])
def test_empty_frame_is_an_error(shape):
    with pytest.raises(ValueError, match="empty"):
        to_rgb_unit(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (10, 1), (7, 10, 3), (10, 7)])
def test_frame_below_8x8_is_an_error(shape):
    with pytest.raises(ValueError, match="at least 8x8 pixels"):
        to_rgb_unit(np.zeros(shape, dtype=np.uint16))


def test_channels_first_frame_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"channels-first.*np\.moveaxis"):
        to_rgb_unit(np.zeros((3, 64, 64), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (10,)])
def test_wrong_number_of_dimensions_is_an_error(shape):
    with pytest.raises(ValueError, match=r"one 2-D frame of shape \(H, W\) or \(H, W, C\)"):
        to_rgb_unit(np.zeros(shape, dtype=np.uint8))


def test_complex_is_an_error():
    with pytest.raises(ValueError, match=r"complex data.*np\.abs"):
        to_rgb_unit(np.zeros((4, 4), dtype=np.complex64))


def test_object_dtype_is_an_error():
    with pytest.raises(ValueError, match="unsupported dtype object"):
        to_rgb_unit(np.zeros((4, 4), dtype=object))


# --- properties --------------------------------------------------------------------------------


@st.composite
def small_frames(draw):
    dtype = np.dtype(
        draw(st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64]))
    )
    height, width = draw(st.integers(8, 12)), draw(st.integers(8, 12))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4, 6]))
    shape = (height, width) if channels is None else (height, width, channels)
    if dtype.kind == "f":
        # The whole range, float64's extremes included (windows scale before they subtract).
        elements = st.floats(
            allow_nan=False,
            allow_infinity=False,
            width=dtype.itemsize * 8,
        )
    else:
        elements = st.integers(np.iinfo(dtype).min, np.iinfo(dtype).max)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=200, deadline=None)
@given(frame=small_frames())
def test_output_is_rgb_float32_in_unit_range(frame):
    rgb = to_rgb_unit(frame)
    assert rgb.shape == (*frame.shape[:2], 3)
    assert rgb.dtype == np.float32
    assert np.all((rgb >= 0.0) & (rgb <= 1.0))
