"""Frame sources: read one frame at a time from any array-like stack, validate and preprocess it,
with the next frame prepared in a background thread while the current one is computed."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .preprocess import (
    DEFAULT_PERCENTILES,
    IntensityWindow,
    as_window,
    check_frame_layout,
    prepare_video_frame,
    select_channels,
)

_WINDOW_SAMPLE_FRAMES = 8


def window_sample_frames(num_frames: int) -> list[int]:
    """The frames a stack's intensity window is computed on: up to 8, evenly spaced."""
    picks = np.linspace(0, num_frames - 1, _WINDOW_SAMPLE_FRAMES).astype(int)
    return [int(t) for t in np.unique(picks)]


def sample_stack_window(
    read: Callable[[int, int], np.ndarray],
    num_frames: int,
    frame_pixels: int,
    percentiles,
    budget: int | None = None,
) -> IntensityWindow:
    """A stack's intensity window: the ``percentiles`` of up to 8 evenly spaced frames
    (:func:`window_sample_frames`). ``read(t, step)`` gives frame ``t``'s chosen channel(s),
    every ``step``-th row and column; ``step`` is 1 (whole frames, :class:`FrameSource`) unless
    a pixel ``budget`` is given, then the stride that keeps the sample near it (the strided
    reads of :class:`~napari_sam2.WindowTracker`, which never reads a whole big frame)."""
    picks = window_sample_frames(num_frames)
    step = 1
    if budget is not None:
        step = max(1, math.ceil(math.sqrt(frame_pixels * len(picks) / budget)))
    sample = np.stack([read(t, step) for t in picks])
    try:
        return IntensityWindow.from_percentiles(sample, percentiles)
    except ValueError as e:
        raise FrameSourceError(f"cannot set the stack's intensity window: {e}") from None


class FrameSourceError(ValueError):
    """A stack that cannot be read as frames, or a frame that does not fit the stack."""


class FrameSource:
    """A lazily read stack of frames: (T, H, W) or (T, H, W, C).

    ``frames`` is anything with ``len``/``shape`` and integer indexing that returns one frame:
    numpy arrays (memory-mapped ones included), dask and zarr arrays, tifffile memmaps, or a
    list of 2-D arrays. Nothing is read at construction except, for data that is not uint8 and
    when no ``window`` is given, up to 8 evenly spaced frames to set one intensity window for
    the whole stack (so that intensities mean the same on every slice).
    """

    def __init__(
        self,
        frames,
        *,
        image_size: int,
        channel: int = 0,
        window: IntensityWindow | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ) -> None:
        shape = getattr(frames, "shape", None)
        if shape is None:
            if not hasattr(frames, "__len__") or len(frames) == 0:
                raise FrameSourceError(
                    "frames must be an array-like stack (T, H, W) or (T, H, W, C), or a "
                    "non-empty list of 2-D frames"
                )
            first = np.asarray(frames[0])
            shape = (len(frames), *first.shape)
            dtype = _common_dtype(frames)
        else:
            dtype = np.dtype(getattr(frames, "dtype", np.float32))
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (3, 4):
            raise FrameSourceError(
                f"a stack must have shape (T, H, W) or (T, H, W, C), got {shape}; for a "
                "single image use ImagePredictor, for (T, Z, Y, X) pick the axis to track along "
                "and index the other (e.g. data[:, z])"
            )
        if shape[0] == 0:
            raise FrameSourceError("the stack has no frames (T = 0)")
        try:
            check_frame_layout(shape[1:], dtype, channel)
        except ValueError as e:
            raise FrameSourceError(f"stack of shape {shape}, dtype {dtype}: {e}") from None
        self.frames = frames
        self.shape = shape
        self.dtype = dtype
        self.image_size = image_size
        self.channel = channel
        self.percentiles = percentiles
        self.reads = 0  # frames read so far (for tests and diagnostics)
        window = as_window(window)  # a (low, high) pair is a window too
        if window is None and dtype not in (np.uint8, np.bool_):
            # On what SAM 2 will see: the chosen channel of multichannel data, not all of them.
            window = sample_stack_window(
                lambda t, step: self._checked(t, select_channels),
                len(self),
                shape[1] * shape[2],
                percentiles,
            )
        self.window = window

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W)."""
        return self.shape[1], self.shape[2]

    def check_index(self, frame) -> int:
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise FrameSourceError(f"a frame index must be an integer, got {frame!r}")
        if not 0 <= frame < len(self):
            raise FrameSourceError(
                f"frame {frame} is out of range: the stack has {len(self)} frames "
                f"(0..{len(self) - 1})"
            )
        return int(frame)

    def read(self, t: int) -> np.ndarray:
        """Frame ``t`` as a numpy array, checked against the stack's shape and dtype."""
        frame = np.asarray(self.frames[t])
        self.reads += 1
        if frame.shape != self.shape[1:]:
            raise FrameSourceError(
                f"frame {t} has shape {frame.shape}, but the stack's frames are {self.shape[1:]}; "
                "all frames must have the same shape"
            )
        if frame.dtype != self.dtype:
            raise FrameSourceError(
                f"frame {t} has dtype {frame.dtype}, but the stack is {self.dtype}; all frames "
                "must have the same dtype (convert them, e.g. frame.astype(np.float32))"
            )
        return frame

    def prepare(self, t: int) -> torch.Tensor:
        """Frame ``t`` as the model's (1, 3, S, S) input."""
        return self._checked(t, self._to_input)

    def prepare_with_frame(self, t: int) -> tuple[torch.Tensor, np.ndarray]:
        """Frame ``t`` as the model's input, and the raw frame it was made from (one read)."""
        return self._checked(t, lambda frame, channel: (self._to_input(frame, channel), frame))

    def _to_input(self, frame: np.ndarray, channel: int) -> torch.Tensor:
        return prepare_video_frame(
            frame,
            image_size=self.image_size,
            channel=channel,
            window=self.window,
            percentiles=self.percentiles,
        )

    def _checked(self, t: int, step):
        """``step(frame t, channel)``, with a bad frame's ValueError naming the frame."""
        frame = self.read(t)
        try:
            return step(frame, self.channel)
        except FrameSourceError:
            raise
        except ValueError as e:
            raise FrameSourceError(f"frame {t}: {e}") from None


def _common_dtype(frames) -> np.dtype:
    """The one dtype of a list of frames; mixed dtypes are refused (one window, one meaning)."""
    dtypes = [np.dtype(f.dtype if hasattr(f, "dtype") else np.asarray(f).dtype) for f in frames]
    if len(set(dtypes)) > 1:
        first = dtypes[0]
        odd = next(i for i, d in enumerate(dtypes) if d != first)
        raise FrameSourceError(
            f"the frames have mixed dtypes ({', '.join(sorted({str(d) for d in dtypes}))}): "
            f"frame 0 is {first}, frame {odd} is {dtypes[odd]}; convert them to one dtype first "
            "(e.g. [f.astype(np.float32) for f in frames])"
        )
    return dtypes[0]


class Prefetcher:
    """Prepares frames in one background thread, at most ``depth`` ahead."""

    def __init__(self, prepare: Callable[[int], torch.Tensor], depth: int = 1) -> None:
        self._prepare = prepare
        self._depth = depth
        self._pool: ThreadPoolExecutor | None = None
        self._futures: OrderedDict[int, Future] = OrderedDict()

    def request(self, t: int) -> None:
        if t in self._futures:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam2-frames")
        self._futures[t] = self._pool.submit(self._prepare, t)
        while len(self._futures) > self._depth + 1:
            self._futures.popitem(last=False)[1].cancel()

    def get(self, t: int) -> torch.Tensor:
        future = self._futures.pop(t, None)
        if future is not None:
            try:
                return future.result()
            except Exception:  # prepared in the background a while ago: the source may have
                pass  # recovered since (a network share back); read again, and fail only now
        return self._prepare(t)

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
