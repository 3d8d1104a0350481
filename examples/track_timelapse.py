"""Track every cell of the synthetic 16-bit time-lapse from one click each on the first frame.

    python examples/track_timelapse.py --checkpoint sam2.1_hiera_tiny.pt [--output labels.tif]
        [--model sam2.1_hiera_tiny] [--device cpu] [--frames N] [--image-size N]

Clicks are placed on the brightest spot of each cell (found by thresholding frame 0); all cells
are tracked together through the time-lapse and written as a (T, H, W) label TIFF, one label
value per cell.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tifffile
from scipy import ndimage

import napari_sam2 as ns
from napari_sam2._sample_data import synthetic_cells


def cell_clicks(frame: np.ndarray) -> list[tuple[int, int]]:
    """One (row, col) per bright blob of ``frame``: its smoothed maximum."""
    smooth = ndimage.gaussian_filter(frame.astype(np.float32), 2)
    blobs, n = ndimage.label(smooth > np.percentile(smooth, 80))
    peaks = ndimage.maximum_position(smooth, blobs, range(1, n + 1))
    sizes = ndimage.sum_labels(np.ones_like(blobs), blobs, range(1, n + 1))
    return [tuple(int(v) for v in p) for p, s in zip(peaks, sizes) if s >= 30]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="official SAM 2 .pt file")
    parser.add_argument("--model", default="sam2.1_hiera_tiny", choices=ns.MODEL_NAMES)
    parser.add_argument("--output", default="labels.tif", help="label TIFF to write")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best found)")
    parser.add_argument("--frames", type=int, default=None, help="track only the first N frames")
    parser.add_argument(
        "--image-size", type=int, default=1024, help="the model's input, a multiple of 64"
    )
    args = parser.parse_args(argv)

    movie = synthetic_cells()  # (T, H, W) uint16
    if args.frames:
        movie = movie[: args.frames]
    model = ns.load_model(
        args.model, checkpoint=args.checkpoint, device=args.device, image_size=args.image_size
    )
    tracker = ns.VideoTracker(model, movie)
    clicks = cell_clicks(movie[0])
    for obj_id, point in enumerate(clicks, start=1):
        tracker.add_prompt(0, obj_id, points=[point], labels=[1])
    print(f"time-lapse {movie.shape} {movie.dtype}: {len(clicks)} cells clicked on frame 0")

    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        print(f"\rtracking {done}/{total} frames", end="", flush=True)

    labels = ns.track_to_labels(tracker, direction="forward", progress=report)
    elapsed = time.perf_counter() - start
    print(f"\n{elapsed:.1f} s ({elapsed / len(movie):.2f} s/frame) on {model.device}")
    tifffile.imwrite(args.output, labels.astype(np.uint16))
    present = [int((labels == i).any(axis=(1, 2)).sum()) for i in range(1, len(clicks) + 1)]
    print(f"frames with each cell: {present} -> {args.output}")
    tracker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
