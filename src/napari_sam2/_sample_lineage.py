"""Synthetic time-lapse with a lineage: cells that divide and cells that enter the field of
view, with their ground truth (per-frame label images and the CTC track table).

The sibling of :func:`napari_sam2._sample_data.synthetic_cells` (same cells, same camera), for
tracking benchmarks and tests. Plain numpy, no napari import.

- A **dividing** cell elongates along its long axis over ``_ELONGATE`` frames, as a dumbbell
  (two overlapping ellipses moving apart, shrinking to daughter size); on the next frame two
  separate daughters start, each about 3/4 of the mother's size, moving apart along that axis
  and growing back. Its track ends on its last dumbbell frame; the daughters are new tracks with
  it as parent, as the Cell Tracking Challenge writes them.
- An **entering** cell starts outside the image and moves in through an edge; its track starts
  on the first frame any of it is in the image.
- The ground truth of a cell is its half-maximum extent (where its edge profile is above 0.5),
  clipped to the image. Cells never touch (their masks stay at least 2 pixels apart): a scene
  that would is drawn again, so every label is one connected region and the CTC table is exact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ._sample_data import _as_dtype, _camera, _Cell, _cell_signal, _random_cell, _vignette

_ELONGATE = 4  # frames over which a mother turns into a dumbbell
_DAUGHTER = 0.75  # daughter semi-axes / mother's
_GAP = 3.5  # pixels between a daughter's ellipse and the division plane on its first frame
_SPLIT_SPEED = 0.8  # pixels per frame each daughter moves away from the other
_MIN_GAP = 2  # pixels between two cells' masks, at least


@dataclass(frozen=True)
class LineageSample:
    """A synthetic time-lapse and its ground truth.

    Attributes:
        frames: (T, H, W) image, the requested dtype.
        labels: (T, H, W) uint16, each cell's track id (0 background).
        tracks: (N, 4) int64 rows ``id, first_frame, last_frame, parent`` (0: none), the CTC
            ``res_track.txt`` / ``man_track.txt`` table, ordered by id.
    """

    frames: np.ndarray
    labels: np.ndarray
    tracks: np.ndarray

    @property
    def parents(self) -> dict[int, int]:
        """{daughter id: parent id}, as ``write_ctc`` takes it."""
        return {int(i): int(p) for i, _, _, p in self.tracks if p}


@dataclass(frozen=True)
class _Track:
    id: int
    first: int  # frame it is drawn from (may be before it is visible, for an entering cell)
    last: int  # last frame it is drawn on
    parent: int
    cell: _Cell  # center = position on ``first``, semi_axes = size on ``first``
    grow: float = 0.0  # relative growth of the semi-axes per frame
    divides: bool = False  # its last _ELONGATE frames are drawn as a dumbbell


def synthetic_lineage(
    n_frames: int = 30,
    shape: tuple[int, int] = (192, 256),
    n_cells: int = 4,
    n_divisions: int = 2,
    n_entering: int = 2,
    seed: int = 0,
    dtype: type | np.dtype = np.uint16,
) -> LineageSample:
    """Render a time-lapse of ``n_cells`` cells of which ``n_divisions`` divide (each once,
    between 30 % and 60 % of the movie), and ``n_entering`` more that enter through an edge
    (in the first half), with the ground truth. Depends only on the arguments.

    Args:
        n_frames: number of frames, at least 12 (room for a division and its daughters).
        shape: (height, width), each at least 64 pixels.
        n_cells: cells in the first frame, at least 0.
        n_divisions: how many of them divide, at most ``n_cells``.
        n_entering: cells that enter later, at least 0.
        seed: random seed.
        dtype: of ``frames`` (as :func:`~napari_sam2._sample_data.synthetic_cells`).

    Raises:
        ValueError: an argument out of range, or no scene without touching cells was found
            in 200 draws (too many cells for the image: fewer cells or a larger shape).
    """
    height, width = (int(s) for s in shape)
    if n_frames < 12:
        raise ValueError(f"n_frames must be at least 12, got {n_frames}")
    if height < 64 or width < 64:
        raise ValueError(f"shape must be at least (64, 64), got {tuple(shape)}")
    if n_cells < 0 or n_entering < 0:
        raise ValueError(f"n_cells and n_entering must be >= 0, got {n_cells}, {n_entering}")
    if not 0 <= n_divisions <= n_cells:
        raise ValueError(f"n_divisions must be between 0 and n_cells={n_cells}, got {n_divisions}")

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    for _attempt in range(200):
        tracks = _draw_scene(rng, n_frames, height, width, n_cells, n_divisions, n_entering)
        drawn = _draw_masks(tracks, n_frames, rows, cols)
        if drawn is not None:
            break
    else:
        raise ValueError(
            f"no scene of {n_cells} + {n_entering} cells without touching ones fits "
            f"{height}x{width}: use fewer cells or a larger shape"
        )
    labels, table, signals = drawn
    vignette = _vignette(height, width)
    frames = np.stack([_camera(signals[t], vignette, rng) for t in range(n_frames)])
    return LineageSample(_as_dtype(frames, dtype), labels, table)


def _draw_scene(rng, n_frames, height, width, n_cells, n_divisions, n_entering) -> list[_Track]:
    small = min(height, width)
    tracks: list[_Track] = []
    for k in range(n_cells):
        cell = _cell(rng, height, width, n_frames, small)
        if k < n_divisions:
            last = int(rng.integers(round(0.3 * n_frames), round(0.6 * n_frames) + 1))
            tracks.append(_Track(len(tracks) + 1, 0, last, 0, cell, divides=True))
        else:
            tracks.append(_Track(len(tracks) + 1, 0, n_frames - 1, 0, cell))
    for mother in [t for t in tracks if t.divides]:
        tracks.extend(_daughters(mother, len(tracks) + 1))
    for _ in range(n_entering):
        tracks.append(_entering(rng, len(tracks) + 1, n_frames, height, width, small))
    return tracks


def _cell(rng, height, width, n_frames, small) -> _Cell:
    """A cell of the stock kind, a little rounder and smaller (room for daughters), slower."""
    cell = _random_cell(rng, height, width, n_frames)
    semi = rng.uniform(small / 20, small / 13) * np.array([1.0, rng.uniform(0.8, 1.0)])
    speed = rng.uniform(0.15, 0.5)
    direction = rng.uniform(0, 2 * np.pi)
    margin = semi.max() * 1.8 + 6
    center = np.array([rng.uniform(margin, height - margin), rng.uniform(margin, width - margin)])
    return dataclasses.replace(
        cell,
        center=center,
        semi_axes=semi,
        velocity=speed * np.array([np.sin(direction), np.cos(direction)]),
        growth=0.0,
    )


def _axis(cell: _Cell) -> np.ndarray:
    """Unit vector (row, col) along the cell's first semi-axis."""
    return np.array([np.cos(cell.angle), np.sin(cell.angle)])


def _daughters(mother: _Track, next_id: int) -> list[_Track]:
    end = mother.cell.center + mother.cell.velocity * (mother.last - mother.first)
    semi = mother.cell.semi_axes * _DAUGHTER
    axis = _axis(mother.cell)
    offset = semi[0] + _GAP
    out = []
    for k, sign in enumerate((-1.0, 1.0)):
        cell = dataclasses.replace(
            mother.cell,
            center=end + sign * offset * axis + mother.cell.velocity,
            semi_axes=semi,
            velocity=mother.cell.velocity + sign * _SPLIT_SPEED * axis,
            # sister cells: the same stain, each its own texture phase
            texture_waves=mother.cell.texture_waves + np.array([0, 0, 1.3 * (k + 1), 0]),
        )
        out.append(_Track(next_id + k, mother.last + 1, -1, mother.id, cell, grow=0.015))
    return out


def _entering(rng, track_id, n_frames, height, width, small) -> _Track:
    cell = _cell(rng, height, width, n_frames, small)
    reach = cell.semi_axes.max() + 3 * 2.0 + 1  # beyond it nothing of the cell shows
    first = int(rng.integers(2, max(n_frames // 2, 3)))
    speed = rng.uniform(1.5, 2.5)
    edge = int(rng.integers(4))
    along = rng.uniform(0.25, 0.75)
    if edge in (0, 1):  # top, bottom
        row = -reach if edge == 0 else height - 1 + reach
        center, inward = np.array([row, along * width]), np.array([1.0 if edge == 0 else -1.0, 0])
    else:  # left, right
        col = -reach if edge == 2 else width - 1 + reach
        center, inward = np.array([along * height, col]), np.array([0, 1.0 if edge == 2 else -1.0])
    drift = rng.uniform(-0.3, 0.3) * inward[::-1]
    cell = dataclasses.replace(cell, center=center, velocity=speed * inward + drift)
    return _Track(track_id, first - 1, -1, 0, cell)


def _draw_masks(tracks: list[_Track], n_frames, rows, cols):
    """Labels, CTC table and signal of ``tracks``; None if two cells touch, a cell leaves the
    image or a track has a frame without pixels."""
    height, width = rows.shape
    labels = np.zeros((n_frames, height, width), np.uint16)
    signals = np.zeros((n_frames, height, width))
    seen: dict[int, list[int]] = {t.id: [] for t in tracks}
    for t in range(n_frames):
        near = np.zeros((height, width), bool)  # the masks so far, grown by the minimum gap
        for track in tracks:
            last = n_frames - 1 if track.last < 0 else track.last
            if not track.first <= t <= last:
                continue
            signal, mask = _render(track, t, last, rows, cols)
            if not mask.any():
                continue
            if (mask & near).any():
                return None
            if track.parent == 0 and track.first == 0 and _touches_border(mask):
                return None  # a cell that was in the field from the start stays in it
            near |= _grow(mask, _MIN_GAP)
            labels[t][mask] = track.id
            np.maximum(signals[t], signal, out=signals[t])
            seen[track.id].append(t)
    table = []
    for track in tracks:
        frames = seen[track.id]
        last = n_frames - 1 if track.last < 0 else track.last
        # visible on a run of frames up to its end (an entering cell is not seen before it enters)
        if not frames or frames != list(range(frames[0], last + 1)):
            return None
        table.append((track.id, frames[0], last, track.parent))
    return labels, np.array(table, dtype=np.int64).reshape(-1, 4), signals


def _render(track: _Track, t: int, last: int, rows, cols):
    cell = track.cell
    age = t - track.first
    center = cell.center + cell.velocity * age
    semi = cell.semi_axes * (1.0 + track.grow * age)
    step = t - (last - _ELONGATE)  # 1 .. _ELONGATE on a dividing cell's last frames
    if not (track.divides and step >= 1):
        signal, profile = _cell_signal(center, semi, cell, rows, cols)
        return signal, profile > 0.5
    # Dumbbell: two halves moving apart along the long axis, shrinking to daughter size; on the
    # last frame they still overlap (0.9 of a daughter's semi-axis from the middle each).
    s = step / _ELONGATE
    half = semi * (1.0 - (1.0 - _DAUGHTER) * s)
    offset = s * 0.9 * semi[0] * _DAUGHTER
    signal = np.zeros(rows.shape)
    inside = np.zeros(rows.shape, bool)
    for sign in (-1.0, 1.0):
        part, profile = _cell_signal(center + sign * offset * _axis(cell), half, cell, rows, cols)
        np.maximum(signal, part, out=signal)
        inside |= profile > 0.5
    return signal, inside


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` dilated by ``pixels`` (a square neighbourhood)."""
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def make_sample_lineage() -> list[tuple[np.ndarray, dict, str]]:
    """napari sample: a time-lapse with dividing and entering cells, and its ground truth."""
    sample = synthetic_lineage(seed=0)
    return [
        (sample.frames, {"name": "SAM2 sample: lineage", "scale": (1.0, 1.0, 1.0)}, "image"),
        (sample.labels, {"name": "SAM2 sample: lineage ground truth", "opacity": 0.4}, "labels"),
    ]
