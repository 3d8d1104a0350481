"""Clicks and boxes on big frames answered at native resolution, for :class:`PromptSession`.

The tracker sees every frame resized to the model's input: on a 4096² slice a nucleus of ten
pixels becomes two or three. With tiles (``tiles="auto"``: frames larger than 1.5 times the
input on a side, :func:`~.tiles.resolve_tiles`), a prompt on such a frame is answered as
:class:`~.image.ImagePredictor` answers it on a tiled image: in the native-resolution window
that holds it best (``Answer.window``). That mask is what the frame shows, and it becomes the
object's mask prompt in the tracker there, so that propagation starts from it (at the tracker's
resolution: a mask too small to survive the resize to the input falls back to the clicks).
That mask is given cropped (:class:`~.window_masks.WindowMasks`), so a click on a giant slice
makes nothing frame-sized.

Propagation follows each object in a window too (``session_windows.py``); a prompt that no
window holds (a box larger than a window) is answered by the tracker; a correction click on a
frame propagated in windows is answered by the window tracker (with the object's memory), on
one propagated downscaled from the frame's clicks alone, in a window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .frame_prompts import model_masks
from .image import ImagePredictor
from .results import FrameResult
from .tiles import Window, check_tile_options, resolve_tiles, tile_geometry
from .video import VideoTracker
from .window_masks import WindowMasks

NO_OBJECT_LOGIT = -1024.0  # outside an object's window (as the tracker writes absent objects)


@dataclass(frozen=True)
class Answer:
    """One object's prompt on one frame answered in ``window``: the window's (1, 1, L, L)
    low-resolution logits and its mask at native resolution (h, w); ``conditions``: whether
    the mask is the tracker's prompt (else it was too small for the tracker's input, and the
    tracker follows the clicks)."""

    window: Window
    low_res: torch.Tensor
    crop: np.ndarray
    conditions: bool


class WindowedPrompts:
    """The native-resolution answers of a session's prompts on big frames (see the module)."""

    def __init__(self, tracker: VideoTracker, tiles=False, tile=None, halo=None) -> None:
        check_tile_options(tiles, tile, halo)
        self.tracker = tracker
        size = tracker.model.config.image_size
        self.tile, self.halo = tile_geometry(size, tile, halo)
        self.on = resolve_tiles(tiles, tracker.frame_shape, size, self.tile)
        self.answers: dict[tuple[int, int], Answer] = {}  # (frame, obj_id) -> answer
        self._predictor: ImagePredictor | None = None
        self._frame: int | None = None

    def _predictor_on(self, frame: int) -> ImagePredictor:
        """A tiled predictor on ``frame`` (its windows kept while prompts stay on that frame),
        reading the frame as the tracker does: its channel and intensity window."""
        if self._predictor is None:
            source = self.tracker.source
            self._predictor = ImagePredictor(
                self.tracker.model,
                channel=source.channel,
                percentiles=source.percentiles,
                tiles=True,
                tile=self.tile,
                halo=self.halo,
            )
        if self._frame != frame:
            source = self.tracker.source
            self._predictor.set_image(source.read(frame), window=source.window)
            self._frame = frame
        return self._predictor

    def prompt(self, frame: int, obj_id: int, points, box) -> bool:
        """Answer the object's prompt on ``frame`` (points: ((row, col, positive), ...), box or
        None) in a window and make the mask its prompt in the tracker. False (nothing done)
        when tiles are off or no window holds the prompt: the caller prompts the tracker."""
        if not self.on:
            return False
        coords = [(r, c) for r, c, _ in points] or None
        labels = [int(p) for _, _, p in points] or None
        predictor = self._predictor_on(frame)
        multimask = len(points) + (0 if box is None else 2) <= 1  # as the tracker chooses
        pred = predictor.predict(coords, labels, box, multimask=multimask)
        if pred.downscaled:
            return False
        best = pred.best if multimask else 0
        r0, c0, r1, c1 = pred.tile
        masks = pred.masks
        crop = masks.crop[best] if hasattr(masks, "crop") else masks[best][r0:r1, c0:c1]
        mask = WindowMasks(crop, pred.tile, self.tracker.frame_shape)  # never made full-frame
        survives = bool(model_masks([mask], self.tracker.model).any()) or not crop.any()
        if survives:
            self.tracker.add_prompt(frame, obj_id, mask=mask)
        else:  # too small for the tracker's input: it follows the clicks instead
            self.tracker.add_prompt(frame, obj_id, coords, labels, box, replace=True)
        low = torch.from_numpy(np.ascontiguousarray(pred.logits[best]))[None, None]
        self.record(frame, obj_id, pred.tile, low, crop, survives)
        return True

    def record(self, frame: int, obj_id: int, window: Window, low_res, crop, conditions) -> Answer:
        """Keep an answer in ``window`` (its (1, 1, L, L) logits and (h, w) mask) as what the
        object's prompt on ``frame`` shows."""
        answer = Answer(window, low_res, np.array(crop), bool(conditions))
        self.answers[(frame, obj_id)] = answer
        return answer

    def window(self, frame: int, obj_id: int) -> Window | None:
        answer = self.answers.get((frame, obj_id))
        return None if answer is None else answer.window

    def forget(self, frame: int | None = None, obj_id: int | None = None) -> None:
        """Drop the answers of ``obj_id`` (every object if None) on ``frame`` (every frame if
        None): their prompt there is no longer a windowed one."""
        for key in list(self.answers):
            if (frame is None or key[0] == frame) and (obj_id is None or key[1] == obj_id):
                del self.answers[key]

    def rename(self, old: int, new: int) -> None:
        for frame, obj_id in list(self.answers):
            if obj_id == old:
                self.answers[(frame, new)] = self.answers.pop((frame, obj_id))

    def result(self, result: FrameResult | None) -> FrameResult | None:
        """``result`` with the windowed answers of its frame in place of the tracker's masks."""
        if result is None:
            return None
        native = {
            o: self.answers[(result.frame, o)]
            for o in result.obj_ids
            if (result.frame, o) in self.answers
        }
        return WindowedResult(result, native) if native else result

    def close(self) -> None:
        self._predictor = None
        self._frame = None
        self.answers.clear()


class WindowedResult(FrameResult):
    """A frame's result in which some objects' logits come from native-resolution windows
    (the window's logits upsampled to the window's pixels; -1024 outside it), the others from
    the tracker's result, upsampled from its low resolution as usual."""

    def __init__(self, base: FrameResult, native: dict[int, Answer]) -> None:
        self.frame, self.obj_ids, self.shape = base.frame, base.obj_ids, base.shape
        self._base, self._native = base, native
        self._logits = None
        self._low_res = base.low_res

    @property
    def windows(self) -> dict[int, Window]:
        """Object id -> the window that answered its prompt on this frame."""
        return {o: a.window for o, a in self._native.items()}

    @property
    def logits(self) -> np.ndarray:
        if self._logits is None:
            parts = [block for _, block in self.chunks()]
            self._logits = (
                np.concatenate(parts) if parts else np.zeros((0, *self.shape), np.float32)
            )
        return self._logits

    def chunks(self, size: int = 16):
        if self._logits is not None:
            yield from super().chunks(size)
            return
        for start, block in self._base.chunks(size):
            ids = self.obj_ids[start : start + len(block)]
            if any(o in self._native for o in ids):
                block = np.array(block, dtype=np.float32, copy=True)
                for i, obj_id in enumerate(ids):
                    if obj_id in self._native:
                        block[i] = self._full(self._native[obj_id])
            yield start, block

    def _full(self, answer: Answer) -> np.ndarray:
        """The object's logits on the frame: the window's (:meth:`_inside`), -1024 outside."""
        r0, c0, r1, c1 = answer.window
        full = np.full(self.shape, NO_OBJECT_LOGIT, np.float32)
        full[r0:r1, c0:c1] = self._inside(answer)
        return full

    @staticmethod
    def _inside(answer: Answer) -> np.ndarray:
        """The object's logits inside its window, signed as its mask (the returned logits are
        clamped, so their upsampling may disagree with the mask at the edge)."""
        r0, c0, r1, c1 = answer.window
        up = F.interpolate(answer.low_res, (r1 - r0, c1 - c0), mode="bilinear", align_corners=False)
        up = up[0, 0].numpy()
        return np.where(answer.crop, np.maximum(up, 1e-3), np.minimum(up, -1e-3))

    def object_windows(self) -> tuple[Window, ...]:
        base = self._base.object_windows()
        return tuple(
            self._native[o].window if o in self._native else base[i]
            for i, o in enumerate(self.obj_ids)
        )

    def logits_in_window(self, index: int) -> np.ndarray:
        answer = self._native.get(self.obj_ids[index])
        return self._base.logits_in_window(index) if answer is None else self._inside(answer)

    def may_show(self, index: int) -> bool:
        answer = self._native.get(self.obj_ids[index])
        return self._base.may_show(index) if answer is None else bool(answer.crop.any())

    def without(self, obj_ids) -> FrameResult:
        drop = set(obj_ids)
        native = {o: a for o, a in self._native.items() if o not in drop}
        base = self._base.without(drop)
        return WindowedResult(base, native) if native else base


__all__ = ["Answer", "WindowedPrompts", "WindowedResult"]
