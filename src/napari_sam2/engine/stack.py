"""How an n-D image is seen as a stack of 2-D frames: which axis is the "video" axis, which
other axes stay fixed, and where each frame lives in the full array (for reading the image and
writing labels back)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class StackError(ValueError):
    """Image data that cannot be tracked as requested, with what to change."""


@dataclass(frozen=True)
class StackGeometry:
    """A view of an array of shape ``shape`` as frames of its last two (non-channel) axes.

    rgb: the last axis holds RGB(A) channels (napari's ``rgb=True``).
    stack_axis: the axis that is followed as time/depth, or None for a single 2-D image.
    fixed: index of every other leading axis (e.g. the Z slider of a (T, Z, Y, X) time-lapse
    tracked along T).
    """

    shape: tuple[int, ...]
    rgb: bool = False
    stack_axis: int | None = None
    fixed: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lead = self.leading_axes
        if len(self.spatial_shape) != 2 or min(self.spatial_shape) < 2:
            raise StackError(f"image data of shape {self.shape} has no 2-D frames to segment")
        if self.stack_axis is not None and self.stack_axis not in lead:
            raise StackError(
                f"axis {self.stack_axis} cannot be the stack axis of data shaped {self.shape}; "
                f"choose one of {list(lead)}"
            )
        missing = [a for a in lead if a != self.stack_axis and a not in self.fixed]
        if missing:
            raise StackError(f"axes {missing} need a fixed index (their slider position)")
        for axis, index in self.fixed.items():
            if not 0 <= index < self.shape[axis]:
                raise StackError(f"index {index} is out of range for axis {axis}")

    @property
    def ndim_spatial(self) -> int:
        """Number of axes without the RGB channel axis (what a Labels layer has)."""
        return len(self.shape) - (1 if self.rgb else 0)

    @property
    def leading_axes(self) -> tuple[int, ...]:
        return tuple(range(self.ndim_spatial - 2))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[self.ndim_spatial - 2 : self.ndim_spatial]

    @property
    def num_frames(self) -> int:
        return 1 if self.stack_axis is None else self.shape[self.stack_axis]

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return self.shape[: self.ndim_spatial]

    def index(self, frame: int) -> tuple[int, ...]:
        """The leading-axis index of ``frame`` in the full array."""
        idx = []
        for axis in self.leading_axes:
            idx.append(frame if axis == self.stack_axis else self.fixed[axis])
        return tuple(idx)

    def frame_of(self, point) -> tuple[int, float, float] | None:
        """(frame, row, col) of a full-dimensional data coordinate, or None when the point is
        not on the fixed slices (it belongs to another Z, say)."""
        p = np.asarray(point, dtype=float)
        for axis, index in self.fixed.items():
            if int(round(p[axis])) != index:
                return None
        frame = 0 if self.stack_axis is None else int(round(p[self.stack_axis]))
        if not 0 <= frame < self.num_frames:
            return None
        n = self.ndim_spatial
        return frame, float(p[n - 2]), float(p[n - 1])

    def frames(self, data) -> AxisFrames:
        """The image as a lazy (T, H, W[, C]) stack."""
        return AxisFrames(data, self)

    def label_frames(self, labels) -> AxisFrames:
        """A (T, H, W) read/write view of a labels array of shape :attr:`labels_shape`."""
        if tuple(labels.shape) != self.labels_shape:
            raise StackError(
                f"labels of shape {tuple(labels.shape)} do not match the image "
                f"({self.labels_shape})"
            )
        return AxisFrames(labels, self)


class AxisFrames:
    """Frames of an n-D array along the stack axis, read (and written) one at a time."""

    def __init__(self, data, geometry: StackGeometry) -> None:
        self.data = data
        self.geometry = geometry
        rest = tuple(data.shape[geometry.ndim_spatial - 2 :])
        self.shape = (geometry.num_frames, *rest)
        self.ndim = len(self.shape)
        self.dtype = data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _key(self, t: int):
        return self.geometry.index(int(t)) or ...  # a single image: the whole array

    def __getitem__(self, t: int):
        return self.data[self._key(t)]

    def __setitem__(self, t: int, value) -> None:
        self.data[self._key(t)] = value
