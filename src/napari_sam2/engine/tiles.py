"""Windows on big images: one geometry for prompting, segment everything and (later) tracking.

SAM 2 resizes every image to its input size (1024² for the released checkpoints). On a 4096²
image a 10-pixel nucleus becomes 2.5 pixels, below the network's 16-pixel feature grid. Tiles
keep the native resolution instead: the image is covered by windows of ``tile`` pixels (by
default the model's input size, so a window is embedded without any resize on its long side)
that overlap by ``halo`` pixels. With a stride of ``tile - halo``, every object no larger than
the halo lies whole in at least one window.

This module is pure geometry (no model, no pixels):

- :class:`TileGrid`: the windows of an image, the window that holds a prompt best, and which
  sides of a window are cut (inside the image) rather than image edges.
- :func:`resolve_tiles`: what ``tiles=True | False | "auto"`` means for one image.

A window is ``(min_row, min_col, max_row, max_col)`` with exclusive ends, so that
``image[r0:r1, c0:c1]`` is the window (the same convention as a box prompt's result
``Prediction.tile`` and ``MaskRecord.box``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Window = tuple[int, int, int, int]

# "auto" tiles an image whose longer side exceeds this many times the model's input.
AUTO_FACTOR = 1.5
# The default halo as a fraction of the tile: objects up to a quarter of a window lie whole in one.
HALO_FRACTION = 4


class TilesError(ValueError):
    """A tile option that cannot work, with what was given and what is accepted."""


def check_tile_options(tiles, tile, halo) -> None:
    """Refuse bad ``tiles`` / ``tile`` / ``halo`` values before any work (types and ranges that
    do not depend on the model; :func:`tile_geometry` checks the rest)."""
    if not (isinstance(tiles, (bool, np.bool_)) or tiles == "auto"):
        raise TilesError(f"tiles must be True, False or 'auto', got {tiles!r}")
    for name, value in (("tile", tile), ("halo", halo)):
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TilesError(
                f"{name} must be an integer number of pixels or None (the default), got "
                f"{value!r} ({type(value).__name__})"
            )
    if tile is not None and tile < 16:
        raise TilesError(f"tile must be at least 16 pixels (one feature cell), got {tile}")
    if halo is not None and halo < 0:
        raise TilesError(f"halo must be >= 0 pixels, got {halo}")


def tile_geometry(image_size: int, tile: int | None, halo: int | None) -> tuple[int, int]:
    """(tile, halo) in pixels: ``tile`` defaults to the model's input, ``halo`` to a quarter
    of the tile. Raises :class:`TilesError` when the halo leaves no stride."""
    tile = int(image_size if tile is None else tile)
    halo = int(tile // HALO_FRACTION if halo is None else halo)
    if halo >= tile:
        raise TilesError(
            f"halo ({halo} px) must be smaller than the tile ({tile} px): windows advance by "
            f"tile - halo; the default halo is a quarter of the tile ({tile // HALO_FRACTION})"
        )
    return tile, halo


def resolve_tiles(tiles, shape: tuple[int, int], image_size: int, tile: int) -> bool:
    """Whether an image of ``shape`` (H, W) is tiled: ``True`` and ``False`` as given (an image
    that fits in one window is never cut), ``"auto"`` when its longer side exceeds
    :data:`AUTO_FACTOR` times the model's input."""
    if len(shape) < 2:
        return False  # not an image: the caller's checks say so
    longest = max(int(shape[0]), int(shape[1]))
    if longest <= tile:
        return False
    if tiles == "auto":
        return longest > AUTO_FACTOR * image_size
    return bool(tiles)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` pixels, the last one flush with the end."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(n)]
    return sorted(set(starts))


@dataclass(frozen=True)
class TileGrid:
    """The windows covering an image of ``shape`` (H, W): ``tile`` x ``tile`` pixels (clipped to
    the image on a short side), overlapping by at least ``halo`` pixels, row by row."""

    shape: tuple[int, int]
    tile: int
    halo: int

    @property
    def row_starts(self) -> list[int]:
        return _starts(self.shape[0], self.tile, self.tile - self.halo)

    @property
    def col_starts(self) -> list[int]:
        return _starts(self.shape[1], self.tile, self.tile - self.halo)

    @property
    def windows(self) -> list[Window]:
        return self._windows(self.row_starts, self.col_starts)

    def _windows(self, rows, cols) -> list[Window]:
        h, w = self.shape
        return [(r, c, min(r + self.tile, h), min(c + self.tile, w)) for r in rows for c in cols]

    def windows_holding(self, rows: np.ndarray, cols: np.ndarray) -> list[Window]:
        """The grid windows that contain every coordinate (without listing the whole grid)."""
        th = min(self.tile, self.shape[0])
        tw = min(self.tile, self.shape[1])
        rs = [r for r in self.row_starts if r - 0.5 <= rows.min() and rows.max() <= r + th - 0.5]
        cs = [c for c in self.col_starts if c - 0.5 <= cols.min() and cols.max() <= c + tw - 0.5]
        return self._windows(rs, cs)

    def __len__(self) -> int:
        return len(self.windows)

    def window_around(self, r0: float, c0: float, r1: float, c1: float) -> Window | None:
        """A tile-sized window centred on the extent (r0, c0)-(r1, c1), clipped to the image;
        None when the extent does not fit in one window."""
        h, w = self.shape
        th, tw = min(self.tile, h), min(self.tile, w)
        if r1 - r0 > th - 1 or c1 - c0 > tw - 1:
            return None
        top = int(np.clip(round((r0 + r1) / 2 - th / 2), 0, h - th))
        left = int(np.clip(round((c0 + c1) / 2 - tw / 2), 0, w - tw))
        return (top, left, top + th, left + tw)

    def cut_sides(self, window: Window) -> tuple[bool, bool, bool, bool]:
        """(top, left, bottom, right): whether each side of ``window`` lies inside the image
        (a cut) rather than on the image's edge."""
        h, w = self.shape
        r0, c0, r1, c1 = window
        return (r0 > 0, c0 > 0, r1 < h, c1 < w)

    def margin(self, window: Window, rows: np.ndarray, cols: np.ndarray) -> float:
        """The smallest distance (pixels) of the coordinates to a cut side of ``window``;
        ``-inf`` if one lies outside it, ``inf`` if the window has no cut side."""
        r0, c0, r1, c1 = window
        if len(rows) == 0:
            return math.inf
        if rows.min() < r0 - 0.5 or cols.min() < c0 - 0.5:
            return -math.inf
        if rows.max() > r1 - 0.5 or cols.max() > c1 - 0.5:
            return -math.inf
        top, left, bottom, right = self.cut_sides(window)
        distances = [math.inf]
        if top:
            distances.append(float(rows.min()) - r0)
        if left:
            distances.append(float(cols.min()) - c0)
        if bottom:
            distances.append(r1 - 1 - float(rows.max()))
        if right:
            distances.append(c1 - 1 - float(cols.max()))
        return min(distances)

    def best_window(self, rows: np.ndarray, cols: np.ndarray) -> Window | None:
        """The window that holds the coordinates (a prompt's points and box corners, image
        pixels) farthest from its cut sides: the best grid window if one holds them at least
        ``halo / 2`` from every cut, else a window centred on them; None when they span more
        than a window (answer on the downscaled whole image)."""
        rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        best, best_margin = None, -math.inf
        for window in self.windows_holding(rows, cols):
            m = self.margin(window, rows, cols)
            if m > best_margin:
                best, best_margin = window, m
        if best is not None and best_margin >= self.halo / 2:
            return best
        around = self.window_around(rows.min(), cols.min(), rows.max(), cols.max())
        if around is None:
            return best if best_margin >= 0 else None
        if best is None or self.margin(around, rows, cols) > best_margin:
            return around
        return best


def check_window(window, shape: tuple[int, int]) -> Window:
    """A window given by the caller, as four ints inside an image of ``shape``."""
    try:
        r0, c0, r1, c1 = (int(v) for v in window)
    except (TypeError, ValueError):
        raise TilesError(
            f"a tile is (min_row, min_col, max_row, max_col) in pixels, e.g. a previous "
            f"Prediction.tile; got {window!r}"
        ) from None
    h, w = shape
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w) or min(r1 - r0, c1 - c0) < 8:
        raise TilesError(
            f"tile {(r0, c0, r1, c1)} must lie inside the image (H={h}, W={w}) with max > min "
            "and sides of at least 8 pixels"
        )
    return (r0, c0, r1, c1)
