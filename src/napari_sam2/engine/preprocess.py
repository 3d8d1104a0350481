"""Turn any 2-D frame into SAM 2's input tensor.

Two steps, kept apart so that each can be checked on its own:

1. :func:`to_rgb_unit`: a frame of any layout and dtype → (H, W, 3) float32 in [0, 1].
2. :func:`to_model_input`: that → (1, 3, S, S) float32, resized and ImageNet-normalised exactly as
   the official ``sam2.utils.transforms.SAM2Transforms`` does after ``ToTensor``.

Why percentiles and not a cast: SAM 2 was trained on 8-bit photographs, so it expects the useful
intensities of an image to span [0, 1]. A 16-bit microscope image typically uses a few hundred to a
few thousand counts of 65,535; cast or divided by 65,535 it becomes an almost black picture, and
float data (CT in Hounsfield units, ratios, deconvolved stacks) have no fixed range at all. So every
dtype other than uint8 and bool is mapped through an :class:`IntensityWindow` whose ends are robust
percentiles (0.5 and 99.5 by default: a few hot pixels do not compress the rest).

uint8 is left alone: it is divided by 255, exactly as torchvision's ``ToTensor`` does on the
official path, so that results on 8-bit RGB images match the official predictor bit for bit.

For a stack or a time-lapse, compute one window for the whole stack
(``IntensityWindow.from_percentiles(stack)``) and pass it for every frame: then an intensity means
the same on every slice, and a cell does not look brighter on a slice just because that slice is
dimmer overall. Without a ``window`` each frame gets its own, which suits single images only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
MIN_SIDE = 8  # smaller frames are almost always a channel axis taken for a spatial one
# float64 holds every integer up to 2**53 exactly; beyond it, integers are offset before scaling.
_EXACT_IN_FLOAT64 = 2**53
# Interpolating between floats beyond this (b - a) can overflow float64.
_HUGE_FLOAT = 1e300
# Images with more pixels than this (4096², 16.7 MP) are reduced in strips before they become
# floats (prepare_large_image): the exact path needs about 30 bytes per pixel at once.
LARGE_IMAGE_PIXELS = 4096 * 4096
_STRIP_PIXELS = 1 << 19  # pixels read and converted at a time on the large-image path
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class IntensityWindow:
    """The intensity range mapped to [0, 1]: ``low`` → 0, ``high`` → 1, clipped outside.

    ``high > low`` always holds. :meth:`from_percentiles` on a constant image gives
    ``high = low + 1``, so that image maps to all zeros.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(
                f"IntensityWindow needs finite ends, got low={self.low}, high={self.high}"
            )
        if not self.high > self.low:
            raise ValueError(
                f"IntensityWindow needs high > low, got low={self.low}, high={self.high}; "
                "swap them or widen the window"
            )

    @classmethod
    def from_percentiles(
        cls,
        data: np.ndarray,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        max_samples: int = 1_000_000,
    ) -> IntensityWindow:
        """Window between two percentiles of ``data`` (any shape: a frame or a whole stack).

        Percentiles are computed on at most about ``max_samples`` values, taken with a fixed
        stride over the flattened array (deterministic, and fast on large stacks); NaN and inf
        are ignored. If both percentiles coincide (a constant image, or one that is almost
        entirely one value), ``high = low + 1``.

        Raises:
            ValueError: ``percentiles`` is not two increasing numbers in [0, 100], or ``data``
                holds no finite value.
        """
        low_pct, high_pct = _check_percentiles(percentiles)
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        values = np.asarray(data)
        _check_numeric_dtype(values.dtype)
        flat = values.ravel(order="K")  # a view when the memory layout allows it
        if flat.size > max_samples:
            flat = flat[:: math.ceil(flat.size / max_samples)]
        if np.issubdtype(flat.dtype, np.floating):
            flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            raise ValueError(
                "cannot compute an intensity window: the data hold no finite value "
                f"(shape {values.shape}); replace NaN/inf with np.nan_to_num or pass a window"
            )
        pcts = [low_pct, high_pct]
        if np.issubdtype(flat.dtype, np.integer) and _beyond_float64(flat):
            # 64-bit integers beyond 2**53 (e.g. a small range on a huge offset) would collapse
            # in float64: take percentiles of the exact offsets from the minimum, and keep the
            # window's ends as exact integers.
            origin = int(flat.min())
            p_low, p_high = np.percentile(_offsets(flat, origin), pcts)
            low, high = origin + math.floor(p_low), origin + math.ceil(p_high)
            return cls(low, high if high > low else low + 1)
        # In float64: float32 or float16 data could overflow while percentiles interpolate.
        sample = flat.astype(np.float64, copy=False)
        peak = float(np.abs(sample).max())
        if peak > _HUGE_FLOAT:  # interpolation computes b - a, which may overflow: scale first
            low, high = (float(v) * peak for v in np.percentile(sample / peak, pcts))
        else:
            low, high = (float(v) for v in np.percentile(sample, pcts))
        if not high > low:
            # A constant image maps to zeros. nextafter: for |low| > 2**53, low + 1 == low.
            high = max(low + 1.0, float(np.nextafter(low, np.inf)))
            if not math.isfinite(high):  # low is the largest float
                low, high = float(np.nextafter(low, -np.inf)), low
        return cls(low, high)

    def apply(self, data: np.ndarray) -> np.ndarray:
        """``(data - low) / (high - low)`` clipped to [0, 1], as float32.

        Exact for any data: 64-bit integers are offset before they become floats, and a window
        whose width overflows float64 is halved first."""
        data = np.asarray(data)
        low, high = self.low, self.high
        if (
            np.issubdtype(data.dtype, np.integer)
            and data.dtype.itemsize == 8
            and float(low).is_integer()
            and np.iinfo(data.dtype).min <= low <= np.iinfo(data.dtype).max
        ):
            span = float(int(high) - int(low)) if float(high).is_integer() else high - low
            scaled = _offsets(data, int(low)) / span
        else:
            values = data.astype(np.float64, copy=False)
            span = float(high) - float(low)
            if math.isfinite(span):
                with np.errstate(over="ignore"):  # far outside the window: ±inf, clipped below
                    scaled = (values - low) / span
            else:  # ends near the float64 limits: halve everything, the ratio is the same
                scaled = (values / 2 - low / 2) / (high / 2 - low / 2)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def as_window(window) -> IntensityWindow | None:
    """``window`` as an :class:`IntensityWindow`: None, an IntensityWindow, or a pair of numbers
    ``(low, high)`` (e.g. ``(0, 100)`` for a uint16 image whose objects lie in counts 0..100).

    Raises TypeError for anything else, ValueError (from IntensityWindow) for a pair that is not
    finite and increasing."""
    if window is None or isinstance(window, IntensityWindow):
        return window
    pair = None
    if not isinstance(window, (str, bytes)) and hasattr(window, "__len__") and len(window) == 2:
        pair = tuple(window)
    if pair is None or not all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        for v in pair
    ):
        raise TypeError(
            f"window must be an IntensityWindow or a pair of numbers (low, high), got "
            f"{window!r} ({type(window).__name__})"
        )
    return IntensityWindow(float(pair[0]), float(pair[1]))


def _beyond_float64(values: np.ndarray) -> bool:
    """Whether integer ``values`` hold a magnitude float64 cannot represent exactly."""
    return values.dtype.itemsize == 8 and (
        int(values.max()) > _EXACT_IN_FLOAT64 or int(values.min()) < -_EXACT_IN_FLOAT64
    )


def _offsets(values: np.ndarray, origin: int) -> np.ndarray:
    """``values - origin`` as float64 for integer ``values``, exact until the final rounding
    (the subtraction is done in wrap-around uint64 arithmetic); values below ``origin`` give 0.
    ``origin`` must lie in the range of the values' dtype."""
    o = np.array(origin, dtype=values.dtype)
    diff = values.astype(np.uint64) - o.astype(np.uint64)
    return np.where(values >= o, diff, np.uint64(0)).astype(np.float64)


def to_rgb_unit(
    frame: np.ndarray,
    *,
    channel: int = 0,
    window: IntensityWindow | tuple[float, float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Map one 2-D frame to an RGB image with values in [0, 1].

    Layout (channels last):
        - (H, W) or (H, W, 1): gray, replicated to three channels.
        - (H, W, 3): RGB.
        - (H, W, 4): RGBA; alpha is dropped.
        - (H, W, 2) or (H, W, C > 4): multichannel; channel ``channel`` (default 0) is taken as
          gray. SAM 2 sees one channel of such data; choose the one that shows the objects.

    Intensities:
        - uint8: divided by 255, exactly the official path (torchvision ``ToTensor``). ``window``
          and ``percentiles`` are not used.
        - bool: False → 0, True → 1.
        - any other integer or float dtype: mapped through ``window`` (an
          :class:`IntensityWindow` or a pair ``(low, high)``); when ``window`` is None it is
          computed from this frame (the selected channels) with ``percentiles``. RGB channels
          share one window, which keeps their balance. For stacks, pass one window computed
          over the whole stack.

    Returns:
        (H, W, 3) float32 array in [0, 1].

    Raises:
        ValueError: wrong number of dimensions, an empty frame or one below 8x8 pixels, an
            out-of-range ``channel``, complex or non-numeric data, or NaN/inf values.
    """
    window = as_window(window)
    image = select_channels(frame, channel)  # (H, W) gray or (H, W, 3) RGB

    if image.dtype == np.uint8:
        # float32 / 255 is correctly rounded in numpy and torch alike: identical to ToTensor.
        unit = image.astype(np.float32) / np.float32(255.0)
    elif image.dtype == np.bool_:
        unit = image.astype(np.float32)
    else:
        if window is None:
            window = IntensityWindow.from_percentiles(image, percentiles)
        unit = window.apply(image)

    if unit.ndim == 2:
        unit = np.repeat(unit[:, :, None], 3, axis=2)
    return np.ascontiguousarray(unit)


def to_model_input(rgb_unit: np.ndarray | torch.Tensor, image_size: int = 1024) -> torch.Tensor:
    """Resize and normalise an (H, W, 3) image in [0, 1] to SAM 2's (1, 3, S, S) input.

    The same operations, in the same order and precision, as the official ``SAM2Transforms``
    after ``ToTensor``: torchvision's ``Resize((S, S))`` on the float CHW tensor (bilinear with
    antialiasing, no padding, the aspect ratio is not kept), then ``Normalize`` with the ImageNet
    mean and std (subtract, then divide).

    Returns:
        (1, 3, image_size, image_size) float32 tensor on the CPU.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    rgb = torch.as_tensor(rgb_unit)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) RGB image, got shape {tuple(rgb.shape)}; "
            "convert it with to_rgb_unit first"
        )
    x = rgb.permute(2, 0, 1).contiguous().to(torch.float32)[None]  # (1, 3, H, W)
    # torchvision's Resize on a tensor is exactly this call.
    x = F.interpolate(
        x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )  # (1, 3, S, S)
    return _normalize(x)


def prepare_image(
    frame: np.ndarray,
    *,
    image_size: int = 1024,
    channel: int = 0,
    window: IntensityWindow | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> torch.Tensor:
    """One frame → SAM 2's (1, 3, S, S) input: :func:`to_rgb_unit` then :func:`to_model_input`."""
    rgb = to_rgb_unit(frame, channel=channel, window=window, percentiles=percentiles)
    return to_model_input(rgb, image_size=image_size)


def prepare_large_image(
    image,
    *,
    image_size: int = 1024,
    channel: int = 0,
    window: IntensityWindow | tuple[float, float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> torch.Tensor:
    """:func:`prepare_image` for images above :data:`LARGE_IMAGE_PIXELS`, in bounded memory.

    ``image`` may be lazy (dask, zarr, a memmap): it is read in strips of rows, each strip mapped
    to [0, 1] and averaged over ``k x k`` blocks (partial blocks at the edges are averaged over
    what they hold, so the field of view is the whole image), with ``k`` chosen to leave at
    least twice the model's input per side; the reduced image then takes the ordinary resize.
    Without ``window`` the percentiles come from an evenly strided sample of about a million
    pixels. Memory: a strip of about :data:`_STRIP_PIXELS` pixels and the reduced image (at most
    three times the model's input per side), never the whole image. The result is close to,
    not identical with, :func:`prepare_image`."""
    shape, dtype = tuple(int(n) for n in image.shape), np.dtype(image.dtype)
    check_frame_layout(shape, dtype, channel)
    window = as_window(window)
    height, width = shape[:2]
    k = max(1, max(height, width) // (2 * image_size))
    if window is None and dtype not in (np.uint8, np.bool_):
        window = sample_window(image, channel, percentiles)
    rows_per_strip = k * max(1, _STRIP_PIXELS // (width * k))
    col_starts = np.arange(0, width, k)
    col_counts = np.diff(np.append(col_starts, width)).astype(np.float32)
    n_channels = 3 if len(shape) == 3 and shape[2] in (3, 4) else 1
    reduced = np.empty((-(-height // k), len(col_starts), n_channels), np.float32)
    for r0 in range(0, height, rows_per_strip):
        strip = _select_channels(np.asarray(image[r0 : r0 + rows_per_strip]), channel)
        _check_finite(strip)
        if strip.dtype == np.uint8:
            unit = strip.astype(np.float32) / np.float32(255.0)
        elif strip.dtype == np.bool_:
            unit = strip.astype(np.float32)
        else:
            unit = window.apply(strip)
        unit = unit.reshape(len(unit), width, n_channels)
        row_starts = np.arange(0, len(unit), k)
        row_counts = np.diff(np.append(row_starts, len(unit))).astype(np.float32)
        block = np.add.reduceat(np.add.reduceat(unit, row_starts, axis=0), col_starts, axis=1)
        block /= row_counts[:, None, None] * col_counts[None, :, None]
        reduced[r0 // k : r0 // k + len(block)] = block
    rgb = torch.from_numpy(reduced).expand(-1, -1, 3)  # gray: three views of one channel
    return to_model_input(rgb, image_size=image_size)


def sample_window(
    image, channel: int = 0, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> IntensityWindow:
    """The percentile window of a frame too big to read whole (lazy or not): computed on an
    evenly strided sample of about a million pixels, ``image[::s, ::s]``."""
    height, width = (int(n) for n in image.shape[:2])
    step = max(1, math.isqrt(height * width // 1_000_000))
    sample = _select_channels(np.asarray(image[::step, ::step]), channel)
    _check_finite(sample)
    return IntensityWindow.from_percentiles(sample, percentiles)


def _check_finite(values: np.ndarray) -> None:
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(
            "the image contains NaN or infinite values; replace them first, e.g. with "
            "np.nan_to_num(image, nan=..., posinf=..., neginf=...)"
        )


def prepare_video_frame(
    frame: np.ndarray,
    *,
    image_size: int = 1024,
    channel: int = 0,
    window: IntensityWindow | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> torch.Tensor:
    """One frame of a stack → SAM 2's (1, 3, S, S) input, as the official *video* predictor does.

    uint8 frames follow the official video loader exactly: the 8-bit RGB image is resized with
    PIL's bicubic filter, then divided by 255 (in float64, stored as float32) and normalised —
    so a stack gives the same network input as the JPEG frames the official predictor reads.
    Other dtypes go through :func:`prepare_image` (intensity ``window``, bilinear resize).
    """
    image = np.asarray(frame)
    if image.dtype != np.uint8:
        return prepare_image(
            image, image_size=image_size, channel=channel, window=window, percentiles=percentiles
        )
    rgb = select_channels(image, channel)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(rgb)).resize(
            (image_size, image_size), Image.Resampling.BICUBIC
        )
    )  # (S, S, 3) uint8
    # A uint8 value has 256 possible results: look them up, per channel, in a table made with
    # the official arithmetic (v / 255 in float64, to float32, minus the mean, over the std, in
    # float32): the same bits, several times faster than computing each pixel, and no torch
    # work in the frame-reading thread to compete with the model for the cores.
    table = _uint8_table()
    x = np.empty((1, 3, image_size, image_size), dtype=np.float32)
    for c in range(3):
        np.take(table[c], resized[:, :, c], out=x[0, c])
    return torch.from_numpy(x)


@functools.lru_cache(maxsize=1)
def _uint8_table() -> np.ndarray:
    """(3, 256) float32: the normalised network input of each uint8 value, per channel, by
    exactly the arithmetic of :func:`_normalize` on ``v / 255.0``."""
    unit = torch.from_numpy(np.arange(256) / 255.0).to(torch.float32)  # (256,)
    return _normalize(unit.reshape(1, 1, 1, 256).expand(1, 3, 1, 256).clone())[0, :, 0].numpy()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a (1, 3, S, S) float32 tensor in [0, 1], in place."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def check_frame_layout(shape: tuple[int, ...], dtype, channel: int = 0) -> None:
    """Check a frame's shape (H, W) or (H, W, C) and dtype without reading its pixels.

    Raises ValueError with what to change: wrong number of dimensions, an empty frame, a side
    below :data:`MIN_SIDE` (with a hint when the data look channels-first), an out-of-range
    ``channel``, complex or non-numeric data."""
    _check_numeric_dtype(np.dtype(dtype))
    if len(shape) not in (2, 3):
        raise ValueError(
            f"expected one 2-D frame of shape (H, W) or (H, W, C), got shape {shape}; "
            "index a stack down to one frame first (e.g. stack[t])"
        )
    if 0 in shape:
        raise ValueError(f"the frame is empty (shape {shape})")
    height, width = shape[:2]
    if height < MIN_SIDE or width < MIN_SIDE:
        hint = ""
        if len(shape) == 3 and shape[2] >= MIN_SIDE and height <= 4:
            hint = (
                f"; it looks channels-first ({height} channels of {width}x{shape[2]} pixels): "
                "move the channel axis last, e.g. np.moveaxis(image, 0, -1) for an image or "
                "np.moveaxis(stack, 1, -1) for a (T, C, H, W) stack"
            )
        raise ValueError(
            f"SAM 2 needs frames of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {height}x{width} "
            f"(shape {shape}){hint}"
        )
    if len(shape) == 3 and shape[2] not in (1, 3, 4) and not 0 <= channel < shape[2]:
        raise ValueError(
            f"channel {channel} is out of range for an image with {shape[2]} channels "
            f"(shape {shape}); pass channel=0..{shape[2] - 1}"
        )


def select_channels(frame: np.ndarray, channel: int = 0) -> np.ndarray:
    """Validate one frame and reduce it to what SAM 2 sees: (H, W) gray or (H, W, 3) RGB,
    dtype unchanged. The intensity window of a stack is computed on this."""
    image = np.asarray(frame)
    check_frame_layout(image.shape, image.dtype, channel)
    image = _select_channels(image, channel)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        n_bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise ValueError(
            f"the frame contains {n_bad} NaN or infinite value(s); replace them first, e.g. "
            "with np.nan_to_num(frame, nan=..., posinf=..., neginf=...), or mask them out"
        )
    return image


def _select_channels(image: np.ndarray, channel: int) -> np.ndarray:
    """(H, W[, C]) → (H, W) gray or (H, W, 3) RGB, following the rules of to_rgb_unit."""
    if image.ndim == 2:
        return image
    n_channels = image.shape[2]
    if n_channels == 3:
        return image
    if n_channels == 4:
        return image[:, :, :3]
    if n_channels == 1:
        return image[:, :, 0]
    return image[:, :, channel]


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    values = tuple(float(p) for p in percentiles)
    if len(values) != 2 or not 0.0 <= values[0] < values[1] <= 100.0:
        raise ValueError(
            f"percentiles must be two increasing numbers in [0, 100], got {tuple(percentiles)}; "
            f"the default is {DEFAULT_PERCENTILES}"
        )
    return values


def _check_numeric_dtype(dtype: np.dtype) -> None:
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(
            f"complex data ({dtype}) cannot be shown to SAM 2; pass a real image, "
            "e.g. np.abs(frame) for the magnitude"
        )
    numeric = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    if not (numeric or dtype == np.bool_):
        raise ValueError(
            f"unsupported dtype {dtype}: expected bool, integer or float pixels; "
            "convert the frame with frame.astype(np.float32) or similar"
        )
