"""Synthetic sample data: 16-bit "cells" that drift and change size over frames.

Plain numpy, no napari import: napari calls the two ``make_sample_*`` functions through the
manifest (``napari.yaml``) and receives layer-data tuples. The data look like a fluorescence
acquisition (dim background around 400 counts, cells between about 1500 and 4000 counts, shot
noise), so they exercise the 16-bit path of the preprocessing rather than the 8-bit one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BACKGROUND = 400.0  # camera offset + autofluorescence, in counts
_READ_NOISE = 12.0  # counts, gaussian
_EDGE_WIDTH = 2.0  # pixels, sigma of the gaussian fall-off at a cell's border


@dataclass(frozen=True)
class _Cell:
    center: np.ndarray  # (2,) row, col at frame 0
    velocity: np.ndarray  # (2,) pixels per frame
    semi_axes: np.ndarray  # (2,) pixels at frame 0
    angle: float  # orientation of the first semi-axis, radians
    growth: float  # relative size change over the whole sequence
    brightness: float  # counts at the cell's centre, before texture
    texture_waves: np.ndarray  # (K, 4): row frequency, col frequency, phase, amplitude


def synthetic_cells(
    n_frames: int = 24,
    shape: tuple[int, int] = (192, 256),
    n_cells: int = 5,
    seed: int = 0,
    dtype: type | np.dtype = np.uint16,
) -> np.ndarray:
    """Render ``n_frames`` frames of blob-like cells drifting over a dim background.

    Each cell is an ellipse with a gaussian-edged border and a smooth texture that moves with
    it; it drifts at constant velocity (bouncing off the image border) and grows or shrinks
    slowly. Every frame gets fresh shot noise and read noise. The result depends only on the
    arguments (``seed`` fixes everything).

    Args:
        n_frames: number of frames (time points or z-slices), at least 1.
        shape: (height, width) of each frame, each at least 16 pixels.
        n_cells: number of cells, at least 0.
        seed: random seed.
        dtype: output dtype. Integer dtypes are rounded and clipped to their range (``np.uint8``
            saturates, since the intensities are 16-bit counts); float dtypes are cast.

    Returns:
        Array of shape (n_frames, height, width) and the requested dtype.
    """
    height, width = (int(s) for s in shape)
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if height < 16 or width < 16:
        raise ValueError(f"shape must be at least (16, 16), got {tuple(shape)}")
    if n_cells < 0:
        raise ValueError(f"n_cells must be non-negative, got {n_cells}")

    rng = np.random.default_rng(seed)
    cells: list[_Cell] = []
    for _ in range(n_cells):
        # Start the cells apart (a few tries, then accept an overlap): they may meet later.
        for _attempt in range(50):
            cell = _random_cell(rng, height, width, n_frames)
            if all(_apart(cell, other) for other in cells):
                break
        cells.append(cell)

    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    vignette = _vignette(height, width)

    frames = np.empty((n_frames, height, width), dtype=np.float64)
    for t in range(n_frames):
        signal = np.zeros((height, width))
        for cell in cells:
            # Overlapping cells occlude rather than add up.
            np.maximum(
                signal, _render_cell(cell, t, n_frames, rows, cols, height, width), out=signal
            )
        frames[t] = _camera(signal, vignette, rng)
    return _as_dtype(frames, dtype)


def _vignette(height: int, width: int) -> np.ndarray:
    """Uneven illumination: a faint, fixed vignette, as on a real widefield microscope."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    return 1.0 - 0.08 * (((rows - height / 2) / height) ** 2 + ((cols - width / 2) / width) ** 2)


def _camera(signal: np.ndarray, vignette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One noisy frame of ``signal`` (counts above background)."""
    expected = (_BACKGROUND + signal) * vignette
    # Shot noise (variance = mean, in counts) plus read noise; gaussian is close enough here.
    return expected + rng.normal(size=expected.shape) * np.sqrt(expected + _READ_NOISE**2)


def _as_dtype(frames: np.ndarray, dtype) -> np.ndarray:
    """Integer dtypes rounded and clipped to their range; float dtypes cast."""
    out_dtype = np.dtype(dtype)
    if np.issubdtype(out_dtype, np.integer):
        info = np.iinfo(out_dtype)
        return np.clip(np.rint(frames), info.min, info.max).astype(out_dtype)
    return frames.astype(out_dtype)


def _random_cell(rng: np.random.Generator, height: int, width: int, n_frames: int) -> _Cell:
    small = min(height, width)
    semi_axes = rng.uniform(small / 16, small / 8, size=2)
    margin = semi_axes.max() + 4
    center = np.array([rng.uniform(margin, height - margin), rng.uniform(margin, width - margin)])
    # Cross at most about a third of the frame over the whole sequence.
    speed = rng.uniform(0.1, 0.33) * small / max(n_frames, 1)
    direction = rng.uniform(0, 2 * np.pi)
    n_waves = 4
    texture_waves = np.column_stack(
        [
            rng.uniform(-0.35, 0.35, n_waves),  # cycles/pixel * 2 pi, row
            rng.uniform(-0.35, 0.35, n_waves),  # col
            rng.uniform(0, 2 * np.pi, n_waves),  # phase
            rng.uniform(0.03, 0.08, n_waves),  # relative amplitude
        ]
    )
    return _Cell(
        center=center,
        velocity=speed * np.array([np.sin(direction), np.cos(direction)]),
        semi_axes=semi_axes,
        angle=float(rng.uniform(0, np.pi)),
        growth=float(rng.uniform(-0.25, 0.35)),
        brightness=float(rng.uniform(1500, 3600)) - _BACKGROUND,
        texture_waves=texture_waves,
    )


def _apart(a: _Cell, b: _Cell) -> bool:
    gap = np.hypot(*(a.center - b.center)) - a.semi_axes.max() - b.semi_axes.max()
    return bool(gap > 4)


def _render_cell(
    cell: _Cell,
    t: int,
    n_frames: int,
    rows: np.ndarray,
    cols: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Signal (counts above background) of one cell at frame ``t``."""
    progress = t / max(n_frames - 1, 1)
    semi_axes = cell.semi_axes * (1.0 + cell.growth * progress)
    margin = semi_axes.max()
    center = np.array(
        [
            _bounce(cell.center[0] + cell.velocity[0] * t, margin, height - 1 - margin),
            _bounce(cell.center[1] + cell.velocity[1] * t, margin, width - 1 - margin),
        ]
    )

    return _cell_signal(center, semi_axes, cell, rows, cols)[0]


def _cell_signal(
    center: np.ndarray,
    semi_axes: np.ndarray,
    cell: _Cell,
    rows: np.ndarray,
    cols: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Signal (counts above background) of ``cell`` drawn at ``center`` with ``semi_axes``
    (its angle, brightness and texture from ``cell``), and its edge profile (1 inside the
    ellipse, a gaussian fall-off outside: ``profile > 0.5`` is the cell's half-maximum extent)."""
    # Coordinates in the cell's own frame: the texture moves and turns with the cell.
    cos_a, sin_a = np.cos(cell.angle), np.sin(cell.angle)
    d_row, d_col = rows - center[0], cols - center[1]
    u = cos_a * d_row + sin_a * d_col
    v = -sin_a * d_row + cos_a * d_col

    # Normalised radius: 1 on the ellipse. Outside, fall off as a gaussian of the (approximate)
    # distance to the border, so the edge is soft but the cell has a clear extent.
    radius = np.sqrt((u / semi_axes[0]) ** 2 + (v / semi_axes[1]) ** 2)
    distance_outside = np.maximum(radius - 1.0, 0.0) * semi_axes.mean()
    profile = np.exp(-0.5 * (distance_outside / _EDGE_WIDTH) ** 2)

    texture = np.ones_like(u)
    for row_freq, col_freq, phase, amplitude in cell.texture_waves:
        texture += amplitude * np.sin(row_freq * u + col_freq * v + phase)
    # A slightly brighter middle, as a nucleus-stained cell looks.
    texture *= 1.0 + 0.15 * np.exp(-0.5 * (radius / 0.45) ** 2)

    return cell.brightness * profile * texture, profile


def _bounce(position: float, low: float, high: float) -> float:
    """Reflect ``position`` into [low, high], as a ball bouncing between two walls."""
    if high <= low:
        return (low + high) / 2
    span = high - low
    offset = (position - low) % (2 * span)
    return low + (offset if offset <= span else 2 * span - offset)


def make_sample_stack() -> list[tuple[np.ndarray, dict, str]]:
    """napari sample: an anisotropic 3D stack (z spacing 4x the pixel size)."""
    data = synthetic_cells(n_frames=32, seed=1)
    return [(data, {"name": "SAM2 sample: 3D stack", "scale": (4.0, 1.0, 1.0)}, "image")]


def make_sample_timelapse() -> list[tuple[np.ndarray, dict, str]]:
    """napari sample: a time-lapse of drifting, growing and shrinking cells."""
    data = synthetic_cells(n_frames=24, seed=0)
    return [(data, {"name": "SAM2 sample: time-lapse", "scale": (1.0, 1.0, 1.0)}, "image")]
