"""Masks kept as one window's part of a frame: what a tiled prediction returns and the cropped
form of a mask prompt (docs/big-images.md), so that nothing frame-sized is made on a giant
slice."""

from __future__ import annotations

import numpy as np

from .tiles import Window


class WindowMasks:
    """(K, H, W) masks, or one (H, W) mask, that are 0 (False) outside one window, kept as the
    window's part only.

    ``crop`` is the (K, h, w) or (h, w) part inside ``tile`` (min_row, min_col, max_row,
    max_col), max exclusive: ``WindowMasks(frame_mask[r0:r1, c0:c1], (r0, c0, r1, c1), (H, W))``.
    ``np.asarray(m)`` builds the full array and ``m[k]`` one full (H, W) mask; on a 20000² image
    each full mask is 400 MB, so prefer ``crop`` and ``tile`` there. A one-mask WindowMasks is
    accepted as a mask prompt (``add_prompt(..., mask=...)``) and resized to the model's input
    from its crop, without the full frame.

    Raises :class:`~.prompts.PromptError` for a window that is not four whole numbers or does not
    lie in the frame, and for a crop of another shape than its window."""

    def __init__(self, crop, tile: Window, image_shape: tuple[int, int]) -> None:
        from .prompts import PromptError

        try:
            whole = [tuple(int(v) for v in tile), tuple(int(v) for v in image_shape)]
            if [list(tile), list(image_shape)] != [list(t) for t in whole]:
                raise ValueError("not whole numbers")
            tile, shape = whole
        except (TypeError, ValueError):
            raise PromptError(
                f"a WindowMasks tile is (min_row, min_col, max_row, max_col) in whole pixels and "
                f"its image shape (H, W), got tile={tile!r}, image_shape={image_shape!r}"
            ) from None
        if len(tile) != 4 or len(shape) != 2 or min(shape) < 0:
            raise PromptError(
                f"a WindowMasks tile is (min_row, min_col, max_row, max_col) and its image shape "
                f"(H, W), got tile={tile}, image_shape={shape}"
            )
        r0, c0, r1, c1 = tile
        h, w = shape
        if not (0 <= r0 <= r1 <= h and 0 <= c0 <= c1 <= w):
            raise PromptError(
                f"the window {tile} of a cropped mask lies outside the frame of shape {shape}: "
                "it must hold 0 <= min_row <= max_row <= H and 0 <= min_col <= max_col <= W "
                "(max exclusive)"
            )
        crop = np.asarray(crop)
        if crop.ndim not in (2, 3) or crop.shape[-2:] != (r1 - r0, c1 - c0):
            raise PromptError(
                f"a cropped mask's crop must be the window's pixels, shape ({r1 - r0}, "
                f"{c1 - c0}) for the window {tile}, got {crop.shape}; cut it as "
                "mask[min_row:max_row, min_col:max_col]"
            )
        self.crop = crop
        self.tile = tile
        self.shape = (*crop.shape[:-2], h, w)

    @property
    def dtype(self) -> np.dtype:
        return self.crop.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _full(self, crop: np.ndarray) -> np.ndarray:
        r0, c0, r1, c1 = self.tile
        full = np.zeros((*crop.shape[:-2], *self.shape[-2:]), dtype=crop.dtype)
        full[..., r0:r1, c0:c1] = crop
        return full

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self._full(self.crop)
        return full if dtype is None else full.astype(dtype)

    def __getitem__(self, key):
        if self.ndim == 3 and isinstance(key, (int, np.integer)):
            return self._full(self.crop[key])
        return np.asarray(self)[key]

    def sum(self, *args, **kwargs):
        return np.asarray(self).sum(*args, **kwargs)

    def __repr__(self) -> str:
        return f"WindowMasks(shape={self.shape}, tile={self.tile})"


def mask_bounds(mask) -> Window | None:
    """(min_row, min_col, max_row, max_col), max exclusive, of the set pixels of an (H, W) mask
    (an array or a one-mask :class:`WindowMasks`, read from its crop), or None if none is set."""
    top, left = 0, 0
    if isinstance(mask, WindowMasks):
        top, left = mask.tile[:2]
        mask = mask.crop
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = top + int(rows[0]), top + int(rows[-1]) + 1
    return r0, left + int(cols[0]), r1, left + int(cols[-1]) + 1


def mask_rows(mask, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """The (r1 - r0, c1 - c0) part of an (H, W) mask inside its set pixels' bounds (an array or
    a one-mask :class:`WindowMasks`, whose bounds lie in its window)."""
    if isinstance(mask, WindowMasks):
        t, left = mask.tile[:2]
        return np.asarray(mask.crop[r0 - t : r1 - t, c0 - left : c1 - left])
    return np.asarray(mask[r0:r1, c0:c1])


__all__ = ["WindowMasks", "mask_bounds", "mask_rows"]
