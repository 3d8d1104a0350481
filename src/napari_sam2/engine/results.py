"""What tracking returns: every object's mask on a frame, at the frame's resolution, built
from the low-resolution logits only when read."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


class FrameResult:
    """All objects' masks on one frame.

    ``logits``: (N, H, W) float32 at the frame's resolution, one per object in ``obj_ids``
    order; -1024 where an object is judged absent or has no result on this frame. Built from
    the (N, 1, L, L) low-resolution logits when first read; with many objects on large frames
    that is N full-size float images, so label writing reads :meth:`chunks` instead, a few
    objects at a time.
    """

    def __init__(self, frame: int, obj_ids, logits=None, *, low_res=None, shape=None) -> None:
        if (logits is None) == (low_res is None):
            raise TypeError("give either logits (N, H, W) or low_res (N, 1, L, L) with shape")
        self.frame = int(frame)
        self.obj_ids = tuple(obj_ids)
        self._logits = None if logits is None else np.asarray(logits, dtype=np.float32)
        self._low_res = low_res
        self.shape = tuple(self._logits.shape[1:]) if logits is not None else tuple(shape)

    @property
    def logits(self) -> np.ndarray:
        if self._logits is None:
            self._logits = self._upscale(self._low_res)
        return self._logits

    @property
    def low_res(self):
        """(N, 1, L, L) logits at the model's mask resolution (None for a result made from
        full-size logits)."""
        return self._low_res

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool."""
        return self.logits > 0

    def chunks(self, size: int = 16) -> Iterator[tuple[int, np.ndarray]]:
        """(first index, (n, H, W) logits) for at most ``size`` objects at a time."""
        n = len(self.obj_ids)
        for start in range(0, n, size):
            if self._logits is not None:
                yield start, self._logits[start : start + size]
            else:
                yield start, self._upscale(self._low_res[start : start + size])

    # ------------------------------------------------------- objects confined to windows
    # Results whose objects come from windows (tracking or prompting big frames in windows)
    # override these three, so that labels are written window by window (labels.py) instead
    # of from (N, H, W) full-frame logits.

    def object_windows(self) -> tuple[tuple[int, int, int, int], ...]:
        """Per object, the box (min_row, min_col, max_row, max_col) outside which its logits
        are -1024: the whole frame here."""
        return ((0, 0, *self.shape),) * len(self.obj_ids)

    def logits_in_window(self, index: int) -> np.ndarray:
        """Object ``index``'s (h, w) float32 logits inside its :meth:`object_windows` box,
        the same values as ``logits[index]`` there."""
        if self._logits is not None:
            return self._logits[index]
        return self._upscale(self._low_res[index : index + 1])[0]

    def may_show(self, index: int) -> bool:
        """False when object ``index`` is nowhere above 0 (known from its low-resolution
        logits: bilinear upsampling takes convex combinations); True when it may be."""
        if self._low_res is None:
            return True
        return bool(self._low_res[index].max() > 0)

    def without(self, obj_ids) -> FrameResult:
        """The same result without the objects ``obj_ids`` (e.g. objects whose labels on this
        frame must stay as the user painted them)."""
        drop = set(obj_ids)
        return self.select([i for i, o in enumerate(self.obj_ids) if o not in drop])

    def select(self, keep) -> FrameResult:
        """The result of the objects at indices ``keep`` only, in that order."""
        ids = tuple(self.obj_ids[i] for i in keep)
        if self._logits is not None:
            return FrameResult(self.frame, ids, self._logits[keep])
        return FrameResult(self.frame, ids, low_res=self._low_res[keep], shape=self.shape)

    def _upscale(self, low_res: torch.Tensor) -> np.ndarray:
        if len(low_res) == 0:
            return np.zeros((0, *self.shape), np.float32)
        full = F.interpolate(low_res, size=self.shape, mode="bilinear", align_corners=False)
        return full[:, 0].numpy()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(frame={self.frame}, obj_ids={self.obj_ids}, shape={self.shape})"


class LabelsResult(FrameResult):
    """:meth:`VideoTracker.add_labels`' result: the prompted objects on the frame, and
    ``dropped``, the ids of the label image too small to be prompted."""

    def __init__(self, *args, dropped=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dropped = tuple(dropped)
